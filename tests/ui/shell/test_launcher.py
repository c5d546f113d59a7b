"""`xmedgpt view`: the window opens on the given study (or the bundled sample)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from app.core.errors import XMedError
from app.synthetic.sample import write_ct_study
from ui.shell.app_setup import SAMPLE
from ui.shell.launcher import launch, open_window


def test_view_opens_the_study_with_the_model_folder(qtbot, tmp_path):
    study = write_ct_study(tmp_path / "ct", n_slices=5, size=64, seed=2)
    win = open_window(argparse.Namespace(path=study, model=tmp_path))
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.grid.active.volume is not None and not win.is_busy(), timeout=20_000)
    assert len(win.grid.active.volume) == 5
    assert win.model_path == tmp_path and win.isVisible()
    win.shutdown()


@pytest.mark.skipif(not SAMPLE.exists(), reason="bundled sample not present")
def test_view_without_a_path_opens_the_sample_first_and_the_study_list_once_it_has_studies(qtbot, tmp_path,
                                                                                           monkeypatch):
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    win = open_window(argparse.Namespace(path=None, model=None))  # the first start: nothing to list yet
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: win.grid.active.volume is not None and not win.is_busy(), timeout=30_000)
    assert win.grid.active.volume.series.instances[0].path.parent.resolve() == SAMPLE.resolve()
    qtbot.waitUntil(lambda: win.studies.db.count() == 1, timeout=10_000)  # the sample opened: it is listed
    win.shutdown()
    # the next start (a shift): the study list in front, no study opened for the reader
    win = open_window(argparse.Namespace(path=None, model=None))
    qtbot.addWidget(win)
    qtbot.wait(300)
    assert win.grid.active.volume is None and not win.is_busy()
    assert len(win.studies.widget.local.uids()) == 1
    assert not win.studies.widget.visibleRegion().isEmpty()  # its tab is the one in front
    win.shutdown()


def test_view_refuses_a_missing_study(tmp_path):
    with pytest.raises(XMedError, match="does not exist"):
        launch(argparse.Namespace(path=tmp_path / "nothing", model=None))


def test_view_refuses_a_missing_model_folder(tmp_path):
    with pytest.raises(XMedError, match="model folder"):
        launch(argparse.Namespace(path=tmp_path, model=Path("/no/such/model")))


def test_view_without_display_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(XMedError, match="no display found"):
        launch(argparse.Namespace(path=tmp_path, model=None))
