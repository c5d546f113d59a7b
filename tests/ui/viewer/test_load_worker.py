"""Background loading: the first slice is on screen before the series has
arrived, progress is reported, cancel stops the load, errors become messages."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from app.core.errors import XMedError
from app.dicom.loader import load_series
from app.dicom.scan import scan
from app.synthetic.sample import write_ct_study
from ui.viewer.load_worker import ScanWorker, SeriesLoadWorker, ThumbnailWorker
from ui.viewer.viewport import Viewport


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_ct_study(tmp_path_factory.mktemp("ct"), n_slices=16, size=128, seed=3)


@pytest.fixture(scope="module")
def series(study):
    return scan(study).all_series()[0]


def slow_loader(delay: float, gate: threading.Event | None = None):
    """The real loader, with each frame's arrival slowed down (a slow disk)."""

    def load(series, on_frame=None, cancel=None):
        def frame(k, volume):
            on_frame(k, volume)
            if gate is not None and k == 0:
                gate.wait(5)
            time.sleep(delay)

        return load_series(series, on_frame=frame, cancel=cancel, workers=1)

    return load


def test_first_slice_is_shown_before_the_rest_arrives(qtbot, series):
    vp = Viewport()
    qtbot.addWidget(vp)
    vp.resize(300, 300)
    gate = threading.Event()
    worker = SeriesLoadWorker(series, load_fn=slow_loader(0.01, gate))
    seen = {}

    def first(volume):
        vp.set_volume(volume, complete=False)
        vp.frames_loaded(volume.loaded)
        seen["loaded_at_first"] = volume.loaded
        seen["image_max"] = int(vp.image.image.max())
        seen["text"] = vp.corner_text()["bottom_left"]

    worker.first_frame.connect(first)
    worker.frame_loaded.connect(lambda k, n: vp.frames_loaded(k + 1))
    with qtbot.waitSignal(worker.first_frame, timeout=10_000):
        worker.start()
    assert seen["loaded_at_first"] < len(series.instances)
    assert seen["image_max"] > 0, "frame 0 must be drawn, not black"
    assert any(line.startswith("Loading") for line in seen["text"])
    # frames not yet here are black and say so
    vp.set_slice(len(series.instances) - 1)
    assert vp.image.image.max() == 0
    assert "(not loaded yet)" in vp.corner_text()["bottom_left"]
    with qtbot.waitSignal(worker.loaded, timeout=20_000) as done:
        gate.set()
    volume = done.args[0]
    assert volume.loaded == len(volume) == len(series.instances)
    vp.load_finished()
    assert vp.image.image.max() > 0
    assert not any(line.startswith("Loading") for line in vp.corner_text()["bottom_left"])
    worker.wait(2000)


def test_cancel_stops_the_load(qtbot, series):
    worker = SeriesLoadWorker(series, load_fn=slow_loader(0.05))
    landed = []
    worker.frame_loaded.connect(lambda k, n: landed.append(k))
    worker.first_frame.connect(lambda v: worker.cancel())
    with qtbot.waitSignal(worker.cancelled, timeout=10_000):
        worker.start()
    assert worker.wait(5000)
    assert worker.is_cancelled
    assert max(landed, default=0) < len(series.instances) - 1


def test_load_error_becomes_a_message(qtbot, series):
    def broken(series, on_frame=None, cancel=None):
        raise XMedError("This series cannot be opened: no images")

    worker = SeriesLoadWorker(series, load_fn=broken)
    with qtbot.waitSignal(worker.failed, timeout=5000) as sig:
        worker.start()
    assert sig.args == ["This series cannot be opened: no images"]
    worker.wait(2000)


def test_unexpected_error_is_a_one_line_message_not_a_traceback(qtbot, series):
    def crash(series, on_frame=None, cancel=None):
        raise RuntimeError("boom")

    worker = SeriesLoadWorker(series, load_fn=crash)
    with qtbot.waitSignal(worker.failed, timeout=5000) as sig:
        worker.start()
    assert "\n" not in sig.args[0] and "Traceback" not in sig.args[0]
    worker.wait(2000)


def test_scan_worker_reports_progress_and_problems(qtbot, study, tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not dicom")
    progress = []
    worker = ScanWorker([study, junk])
    worker.progress.connect(lambda d, t: progress.append((d, t)))
    with qtbot.waitSignal(worker.scanned, timeout=20_000) as sig:
        worker.start()
    result = sig.args[0]
    assert len(result.all_series()) == 1
    assert any(p.path.name == "notes.txt" for p in result.problems)
    assert progress and progress[-1][0] == progress[-1][1]
    worker.wait(2000)


def test_thumbnail_worker_renders_the_middle_image(qtbot, series):
    worker = ThumbnailWorker([series], size=48)
    with qtbot.waitSignal(worker.thumbnail, timeout=10_000) as sig:
        worker.start()
    index, img = sig.args
    assert index == 0 and max(img.shape) <= 48 and img.std() > 5
    worker.wait(2000)
