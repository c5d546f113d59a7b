"""MPR in the real main window: Ctrl+3 opens axial/coronal/sagittal; a click in the axial view
moves the coronal and sagittal planes to the clicked voxel; reference lines sit where the other
planes cross; S / M change the slab; screenshots go to test-output/ for a person to look at."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app.synthetic.sample import write_ct_study
from ui.shell.main_window import MainWindow
from ui.testing import image_to_widget
from ui.viewer.mpr import pixel_of_line


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_ct_study(tmp_path_factory.mktemp("mpr-ui") / "ct", n_slices=80, size=256, seed=3)


@pytest.fixture
def win(qtbot, study):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1600, 800)
    w.show()
    qtbot.waitExposed(w)
    w.open_paths([study])
    qtbot.waitUntil(lambda: not w.is_busy() and w.grid.viewports[0].volume is not None, timeout=60_000)
    yield w
    w.shutdown()


def _click(view, col: float, row: float) -> None:
    """A real left click on image pixel (col, row) (pixel centres at integers)."""
    pos = image_to_widget(view, col + 0.5, row + 0.5).toPoint()
    QTest.mouseMove(view.view.viewport(), pos)
    QTest.mouseClick(view.view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)


def test_mpr_click_in_axial_moves_the_other_planes_and_draws_reference_lines(qtbot, win, study, output_dir):
    win.actions_by_name["layout_mpr"].trigger()
    assert win.grid.is_mpr and win.grid.layout_name == "mpr"
    panel = win.grid.mpr
    st = panel.state
    assert st is not None and [v.isVisible() for v in panel.views] == [True, True, True, False]
    axial, coronal, sagittal = (panel.by_plane(n) for n in ("axial", "coronal", "sagittal"))
    axial.apply_preset(2)  # lung window: the window follows in all three views
    assert coronal.window == axial.window == sagittal.window
    # the 32 mm right lower lobe mass of the ground truth
    truth = json.loads((study / "ground_truth.json").read_text())
    les = next(le for le in truth["lesions"] if le["size_mm"] >= 30)
    centre = np.array(les["center_patient_mm"])
    k = st.volume.index_at("axial", centre)
    axial.set_slice(k)
    assert st.index("axial") == k
    col, row = st.volume.plane("axial", k).patient_to_pixel(centre)
    c, r = int(round(col)), int(round(row))
    qtbot.wait(50)
    _click(axial, c, r)
    qtbot.waitUntil(lambda: st.index("sagittal") == c and st.index("coronal") == r, timeout=5000)
    assert st.index("axial") == k  # the clicked view keeps its slice
    # each view shows the plane the state says, and the lesion is under the crosshair in all three
    for view in (axial, coronal, sagittal):
        np.testing.assert_array_equal(view.volume.frames[0], st.volume.reslice(view.plane_name, st.index(view.plane_name)).stored)
        cc, rr = st.crosshair(view.plane_name)
        hu = view.volume.values(0)[int(round(rr)), int(round(cc))]
        assert abs(hu - les["hu"]) < 60, (view.plane_name, hu)
    # reference lines: in the axial view the coronal plane is the row r, the sagittal the column c
    # (each line is two pieces that leave a gap around the crosshair)
    lines = axial.reference_line_items()
    ends = [p for it in lines["coronal"] for p in pixel_of_line(it)]
    assert len(ends) == 4 and all(p[1] == pytest.approx(r) for p in ends)
    xs = sorted(p[0] for p in ends)
    assert xs[0] == pytest.approx(-0.5) and xs[-1] == pytest.approx(255.5) and xs[1] < c < xs[2]
    ends = [p for it in lines["sagittal"] for p in pixel_of_line(it)]
    assert all(p[0] == pytest.approx(c) for p in ends)
    # in the coronal view the axial plane is row k (head at the top), the sagittal column c
    lines = coronal.reference_line_items()
    assert all(p[1] == pytest.approx(k) for it in lines["axial"] for p in pixel_of_line(it))
    assert all(p[0] == pytest.approx(c) for it in lines["sagittal"] for p in pixel_of_line(it))
    # Th is the voxel size along the coronal normal (the row spacing), not the header's 4.12 mm
    assert f"Th {st.volume.spacing[1]:.2f} mm" in " ".join(coronal.corner_text()["bottom_left"])
    # aspect from spacing: the coronal pixel is one pixel spacing wide and one slice high
    t = coronal.image.transform()
    assert t.m11() == pytest.approx(st.volume.spacing[0]) and t.m22() == pytest.approx(st.volume.spacing[2])
    assert coronal.markers()["left"] == "R" and coronal.markers()["top"] in ("H", "S")
    qtbot.wait(100)
    win.grab().save(str(output_dir / "mpr_1x3_crosshair.png"))

    # slab: S four times → 20 mm (the key, pressed in a view, and the menu action), M → MinIP
    axial.setFocus()
    QTest.keyClick(axial, Qt.Key.Key_S)
    assert st.slab_mm == 2.0
    QTest.keyClick(axial, Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)
    assert st.slab_mm == 0.0
    for _ in range(4):
        win.actions_by_name["slab_thicker"].trigger()
    assert st.slab_mm == 20.0 and st.mode == "mip"
    np.testing.assert_array_equal(coronal.volume.frames[0],
                                  st.volume.reslice("coronal", r, slab_mm=20, mode="mip").stored)
    assert "MIP 20 mm" in " ".join(coronal.corner_text()["bottom_left"])
    assert len(axial.reference_line_items()["coronal"]) == 4  # the plane (two pieces) and its two dashed slab edges
    qtbot.wait(100)
    win.grab().save(str(output_dir / "mpr_1x3_mip20.png"))
    win.actions_by_name["slab_mode"].trigger()
    assert st.mode == "minip" and coronal.volume.frames[0].min() <= st.volume.reslice("coronal", r).stored.min()

    # Alt+R turns the crosshair: the coronal and sagittal become oblique (trilinear), the axial lines turn
    win.actions_by_name["slab_mode"].trigger()
    win.actions_by_name["slab_mode"].trigger()  # back to MIP
    win.actions_by_name["slab_thinner"].trigger()
    win.actions_by_name["slab_thinner"].trigger()
    win.actions_by_name["slab_thinner"].trigger()
    win.actions_by_name["slab_thinner"].trigger()
    assert st.slab_mm == 0
    for _ in range(2):
        win.actions_by_name["mpr_rotate"].trigger()
    assert st.angle_deg == 30 and st.is_oblique("coronal") and coronal.volume.frames[0].dtype == np.float32
    assert "oblique 30°" in " ".join(coronal.corner_text()["bottom_left"])
    (p0, p1) = pixel_of_line(axial.reference_line_items()["coronal"][0])
    slope = (p1[1] - p0[1]) / (p1[0] - p0[0])
    assert abs(abs(slope) - np.tan(np.radians(30))) < 1e-6  # square axial pixels: the line is at 30°
    cc, rr = st.crosshair("coronal")
    assert abs(coronal.volume.values(0)[int(round(rr)), int(round(cc))] - les["hu"]) < 60  # still on the lesion
    qtbot.wait(100)
    win.grab().save(str(output_dir / "mpr_1x3_oblique30.png"))
    win.actions_by_name["mpr_rotate_back"].trigger()
    win.actions_by_name["mpr_rotate_back"].trigger()
    assert st.angle_deg == 0 and not st.is_oblique("coronal")
    win.actions_by_name["slab_mode"].trigger()  # MinIP for the 2×2 picture
    for _ in range(4):
        win.actions_by_name["slab_thicker"].trigger()

    # 2×2 adds the whole-volume axial MIP; Ctrl+1 goes back to the plain viewer
    win.actions_by_name["layout_mpr_2x2"].trigger()
    assert win.grid.layout_name == "mpr2x2" and all(v.isVisible() for v in panel.views)
    qtbot.wait(100)
    win.grab().save(str(output_dir / "mpr_2x2_minip20.png"))
    win.actions_by_name["layout_1x1"].trigger()
    assert not win.grid.is_mpr and not panel.isVisible() and win.grid.viewports[0].isVisible()


def test_mpr_without_a_series_says_what_to_do(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    assert w.show_mpr() == "Open a series first, then choose MPR"
    assert not w.grid.is_mpr
    assert "MPR" in w._slab(lambda p: p.step_slab(1))
    w.shutdown()


def test_opening_a_series_while_in_mpr_reslices_that_series(qtbot, win):
    win.actions_by_name["layout_mpr"].trigger()
    panel = win.grid.mpr
    first = panel.state
    axial = panel.by_plane("axial")
    win.grid.set_active(axial)
    win.show_series(0, win.grid.active)  # double-click in the study browser
    qtbot.waitUntil(lambda: panel.state is not first, timeout=10_000)
    assert win.grid.is_mpr and axial.state is panel.state and axial.volume.frames.shape[0] == 1
    assert panel.by_plane("coronal").volume.frames.shape[1:] == (80, 256)


def test_mpr_refuses_what_it_cannot_reslice(qtbot):
    from app.core.errors import XMedError
    from ui.testing import synthetic_volume
    from ui.viewer.mpr import MprPanel

    panel = MprPanel()
    qtbot.addWidget(panel)
    with pytest.raises(XMedError, match="stack of slices"):
        panel.set_volume(synthetic_volume(n=1))
    vol = synthetic_volume(n=6, rows=32, cols=40, spacing=(0.5, 0.8), thickness=2.0)
    assert panel.set_volume(vol) is None and panel.state is not None
    cor = panel.by_plane("coronal")
    assert cor.volume.frames.shape[1:] == (6, 40)
    t = cor.image.transform()
    assert (t.m11(), t.m22()) == (pytest.approx(0.8), pytest.approx(2.0))  # column spacing × slice spacing


def test_mpr_in_a_narrow_area_puts_the_axial_beside_the_other_two_and_follows_the_docks(qtbot, win):
    """On a 1366-px screen with the study list and the assistant docked, three columns left 170-px strips."""
    win.resize(1000, 760)
    win.actions_by_name["layout_mpr"].trigger()
    panel = win.grid.mpr
    qtbot.waitUntil(lambda: panel.width() < 1.5 * panel.height())
    axial, coronal, sagittal = (panel.by_plane(n) for n in ("axial", "coronal", "sagittal"))
    qtbot.waitUntil(lambda: axial.height() > 1.5 * coronal.height())
    assert coronal.x() == sagittal.x() > axial.x() and sagittal.y() > coronal.y()
    assert min(v.width() for v in (axial, coronal, sagittal)) > panel.width() / 3 + 20
    win.resize(2400, 760)   # wide again (a dock closed, a wider screen): side by side
    qtbot.waitUntil(lambda: axial.y() == coronal.y() == sagittal.y() and axial.x() < coronal.x() < sagittal.x())
