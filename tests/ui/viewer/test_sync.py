"""Synchronised viewports in the real window (issue #17, item 3): two series of one frame of reference (a 4 mm
and an 8 mm reconstruction of one generated study) scroll to the same z position, share window/level and zoom,
and show a linked cursor; a prior study (its own frame of reference) follows only once linked by hand, by the
offset at the moment of linking."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from PySide6.QtCore import Qt

from app.synthetic.sample import write_ct_study
from app.viewer.sync import series_identity
from ui.shell.main_window import MainWindow
from ui.testing import image_to_widget, wheel

N = 40  # slices of the thin series (330 mm / 40 = 8.25 mm)


def thick_copy(src, dst, every: int = 2) -> None:
    """Every other slice of ``src`` as a new series of the same study and frame of reference."""
    dst.mkdir(parents=True)
    series_uid = generate_uid()
    for i, f in enumerate(sorted(src.glob("*.dcm"))[::every]):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 3
        ds.SeriesDescription = "Thick"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        ds.SliceThickness = float(ds.SliceThickness) * every
        ds.save_as(dst / f"TH{i + 1:04d}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("sync")
    thin = write_ct_study(root / "current" / "thin", n_slices=N, size=128, seed=31)
    thick_copy(thin, root / "current" / "thick")
    prior = write_ct_study(root / "prior" / "ct", n_slices=30, size=128, seed=32)
    (root / "current" / "thin" / "ground_truth.json").unlink(missing_ok=True)
    return root / "current", prior.parent


@pytest.fixture
def win(qtbot, studies):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1400, 800)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.shutdown()


def wait_loaded(qtbot, w, vps):
    qtbot.waitUntil(lambda: not w.is_busy() and all(vp.volume is not None and vp.volume.loaded == len(vp.volume)
                                                    for vp in vps), timeout=60_000)


def z_of(vp) -> float:
    return float(vp.volume.geometry.origins[vp.slice_index][2])


def show_two(qtbot, win, paths, first_desc=None):
    win.open_paths(paths)
    qtbot.waitUntil(lambda: win.grid.viewports[0].volume is not None, timeout=60_000)
    win.set_layout("1x2")
    a, b = win.grid.viewports[:2]
    wait_loaded(qtbot, win, [a, b])
    return a, b


def test_series_of_one_frame_of_reference_scroll_to_the_same_z(qtbot, win, studies):
    current, _ = studies
    a, b = show_two(qtbot, win, [current])
    assert series_identity(a.volume).frame_of_reference == series_identity(b.volume).frame_of_reference != ""
    assert len(a.volume) != len(b.volume)
    thin, thick = (a, b) if len(a.volume) == N else (b, a)
    for k in (0, 5, 17, 30, N - 1):
        thin.set_slice(k)
        zs = thick.volume.geometry.origins[:, 2]
        want = int(np.argmin(np.abs(zs - z_of(thin))))
        assert thick.slice_index == want, k
        assert abs(z_of(thick) - z_of(thin)) <= 8.25 / 2 * 2 + 1e-6  # within half a thick slice
    # by position, not index: the thick series is at about half the thin one's index
    thin.set_slice(20)
    assert thick.slice_index == 10 and z_of(thick) == pytest.approx(z_of(thin))
    # the wheel, and the other way round
    wheel(thick.view.viewport(), thick.view.viewport().rect().center(), -3)
    assert thick.slice_index == 13 and thin.slice_index == 26 and z_of(thin) == pytest.approx(z_of(thick))


def test_window_zoom_and_linked_cursor_follow(qtbot, win, studies):
    current, _ = studies
    a, b = show_two(qtbot, win, [current])
    a.apply_preset(2)
    assert b.window == a.window and b.window.name == a.window.name
    a.zoom_by(2.0)
    sa, sb = (win.grid.sync.mm_per_screen_pixel(v) for v in (a, b))
    assert sa == pytest.approx(sb, rel=1e-3)
    # the pointer over pixel (40, 70) of a: a cross on b at the same patient point
    a.set_slice(20)
    seen = []
    a.pointer_moved.connect(seen.append)
    a.pointer_at(image_to_widget(a, 40.5, 70.5))
    at = win.grid.sync.cursor_at(b)
    assert at is not None
    x, y = seen[-1]  # the image point under the pointer (on screen pixels: within a tenth of a pixel of 40.5, 70.5)
    assert (x, y) == pytest.approx((40.5, 70.5), abs=0.1)
    p = a.volume.geometry.pixel_to_patient(a.slice_index, x - 0.5, y - 0.5)
    assert at == pytest.approx(b.volume.geometry.patient_to_pixel(b.slice_index, p), abs=1e-6)
    assert win.grid.sync.cursor_at(a) is None  # never on the viewport under the pointer
    a.pointer_at(None)
    assert win.grid.sync.cursor_at(b) is None


def test_a_prior_study_follows_only_once_linked(qtbot, win, studies):
    current, prior = studies
    win.open_paths([current / "thin", prior])
    qtbot.waitUntil(lambda: win.grid.viewports[0].volume is not None, timeout=60_000)
    win.set_layout("1x2")
    a, b = win.grid.viewports[:2]
    wait_loaded(qtbot, win, [a, b])
    assert series_identity(a.volume).frame_of_reference != series_identity(b.volume).frame_of_reference
    a.set_slice(10)
    b.set_slice(12)
    a.set_slice(14)
    assert b.slice_index == 12, "another frame of reference: no automatic sync"
    a.set_slice(10)
    win.actions_by_name["link_viewports"].trigger()
    assert win.actions_by_name["link_viewports"].isChecked()
    assert "linked" in win.statusBar().currentMessage()
    gap_a = 330.0 / N
    gap_b = 330.0 / 30
    a.set_slice(14)  # 4 thin slices further = 33 mm
    assert b.slice_index == 12 + round(4 * gap_a / gap_b)
    b.set_slice(20)
    assert a.slice_index == 10 + round(8 * gap_b / gap_a)
    win.actions_by_name["link_viewports"].trigger()  # unlink
    assert not win.actions_by_name["link_viewports"].isChecked()
    before = b.slice_index
    a.set_slice(2)
    assert b.slice_index == before


def test_link_key_is_ctrl_l(qtbot, win, studies):
    current, prior = studies
    win.open_paths([current / "thin", prior])
    qtbot.waitUntil(lambda: win.grid.viewports[0].volume is not None, timeout=60_000)
    win.set_layout("1x2")
    wait_loaded(qtbot, win, win.grid.viewports[:2])
    win.grid.viewports[0].setFocus()
    qtbot.keyClick(win.grid.viewports[0], Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert win.grid.sync.is_linked
