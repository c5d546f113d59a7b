"""AI on every plane in the real window (issue #17, item 5): a lesion boxed slice by slice on the axial series
(as the pre-read draws it) is drawn in the coronal and sagittal MPR views as its extent, on exactly the voxels of
the lesion; measurements (an angle) work in the MPR views; a screenshot for a person to look at."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.synthetic.sample import write_ct_study
from app.viewer.mpr import Extent
from inference.types import Box
from ui.shell.main_window import MainWindow
from ui.testing import image_to_widget, mouse_drag


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_ct_study(tmp_path_factory.mktemp("mpr-lesion") / "ct", n_slices=80, size=256, seed=3, noise_hu=0)


@pytest.fixture
def win(qtbot, study):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1600, 800)
    w.show()
    qtbot.waitExposed(w)
    w.open_paths([study])
    qtbot.waitUntil(lambda: not w.is_busy() and w.grid.viewports[0].volume is not None
                    and w.grid.viewports[0].volume.loaded == len(w.grid.viewports[0].volume), timeout=60_000)
    yield w
    w.shutdown()


def lesion_boxes(study, min_mm=30):
    truth = json.loads((study / "ground_truth.json").read_text())
    les = next(le for le in truth["lesions"] if le["size_mm"] >= min_mm)
    boxes = {s["index"]: (b["x0"], b["y0"], b["x1"], b["y1"]) for s in truth["slices"] for b in s["boxes"]
             if b["lesion_id"] == les["id"]}
    return les, boxes


def test_lesion_boxes_become_extents_on_coronal_and_sagittal(qtbot, win, study, output_dir):
    les, boxes = lesion_boxes(study)
    vp = win.grid.viewports[0]
    for k, (x0, y0, x1, y1) in boxes.items():  # the pre-read's per-slice boxes, one label
        vp.overlays.add_box(k, Box(x0, y0, x1, y1), f"{les['id']} · mass", "ai")
    win.actions_by_name["layout_mpr"].trigger()
    panel = win.grid.mpr
    st = panel.state
    axial, coronal, sagittal = (panel.by_plane(n) for n in ("axial", "coronal", "sagittal"))
    centre = np.array(les["center_patient_mm"])
    st.set_point(centre)
    panel.refresh()
    (ext,) = panel.extents()
    assert ext.slices == (min(boxes), max(boxes)) and ext.label == f"{les['id']} · mass"
    for view in (coronal, sagittal, axial):
        (b,) = view.projected
        img = view.volume.frames[0]
        # the dashed rectangle is on voxel edges and holds the lesion the plane cuts (lesion HU vs lung around)
        for v in (b.x0, b.y0, b.x1, b.y1):
            assert v == pytest.approx(round(v), abs=1e-6), view.plane_name
        rect, _ = view.extent_items[b.id]
        r = rect.rect()
        assert (r.left(), r.top(), r.right(), r.bottom()) == pytest.approx((b.x0, b.y0, b.x1, b.y1))
        inside = img[int(b.y0):int(b.y1), int(b.x0):int(b.x1)]
        assert inside.size and (inside.astype(float) * st.volume.slope + st.volume.intercept > les["hu"] - 60).any()
    # the coronal rectangle: the boxes' column range (the union over slices) × the lesion's slices
    (cb,) = coronal.projected
    cut = [k for k, (x0, y0, x1, y1) in boxes.items()
           if y0 <= st.crosshair("axial")[1] + 0.5 < y1]
    assert cb.x0 == pytest.approx(min(boxes[k][0] for k in cut)) and cb.x1 == pytest.approx(max(boxes[k][2] for k in cut))
    rows = sorted(st.plane("coronal").patient_to_pixel(vp.volume.geometry.origins[k])[1] for k in (min(cut), max(cut)))
    assert (cb.y0, cb.y1) == pytest.approx((rows[0], rows[1] + 1))
    # off the lesion: the coronal plane 40 voxels away does not cut it, nothing is drawn there
    st.set_slice("coronal", st.index("coronal") + 40)
    panel.refresh()
    assert coronal.projected == [] and coronal.extent_items == {}
    st.set_point(centre)
    panel.refresh()

    # an angle in the coronal view (keys and mouse, as in the 2-D viewer), measured on that plane
    coronal.setFocus()
    win.actions_by_name["tool_angle"].trigger()
    assert coronal.tool == "angle" and axial.tool == "angle"
    target = coronal.view.viewport()
    cx, cy = st.crosshair("coronal")
    a0, vtx, a2 = (cx + 40, cy - 12), (cx - 10, cy + 6), (cx + 30, cy + 20)
    mouse_drag(target, image_to_widget(coronal, *a0), image_to_widget(coronal, *vtx))
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    QTest.mouseMove(target, image_to_widget(coronal, *a2).toPoint())
    qtbot.wait(30)
    QTest.mouseClick(target, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     image_to_widget(coronal, *a2).toPoint())
    (m,) = coronal.measurements.items
    assert not m.pending and m.frame == st.index("coronal")
    assert st.index("coronal") == st.index("coronal")  # the crosshair did not move while measuring
    from app.viewer.measure import angle

    row_sp, col_sp = coronal.volume.geometry.spacing
    assert m.evaluation.values["angle"] == pytest.approx(angle(*m.points(), (row_sp, col_sp)).value)
    win.actions_by_name["tool_pan"].trigger()
    qtbot.wait(100)
    for v in panel.views:
        v.settle()
    win.grab().save(str(output_dir / "mpr_lesion_extent_angle.png"))
    # scrolling the coronal plane away hides the angle (it belongs to its slice) and the lesion's extent
    coronal.step(30)
    assert not m.roi.isVisible() and coronal.projected == []
    coronal.step(-30)
    assert m.roi.isVisible()


def test_preread_lesions_can_be_given_directly(qtbot, win, study):
    les, boxes = lesion_boxes(study)
    win.actions_by_name["layout_mpr"].trigger()
    panel = win.grid.mpr
    panel.set_extents([Extent("lesion:7", dict(boxes), "L7 · mass", "ai")])
    panel.state.set_point(np.array(les["center_patient_mm"]))
    panel.refresh()
    for name in ("coronal", "sagittal"):
        (b,) = panel.by_plane(name).projected
        assert b.id == "lesion:7" and b.label == "L7 · mass"


def test_extents_appear_at_once_when_boxes_arrive_while_the_mpr_is_open(qtbot, win, study):
    """A pre-read that finishes (or an assistant answer) while the MPR layout is open draws its boxes on the
    axial viewport of the series; the coronal and sagittal views show the extent at once, without the crosshair
    moving, follow a relabelled box (accepted into the report) and drop it when the boxes go."""
    les, boxes = lesion_boxes(study)
    vp = win.grid.viewports[0]
    win.actions_by_name["layout_mpr"].trigger()
    panel = win.grid.mpr
    panel.state.set_point(np.array(les["center_patient_mm"]))
    panel.refresh()
    coronal, sagittal = panel.by_plane("coronal"), panel.by_plane("sagittal")
    assert coronal.projected == [] and sagittal.projected == []
    for k, (x0, y0, x1, y1) in boxes.items():  # as the pre-read panel draws a finished run's lesions
        vp.overlays.add_box(k, Box(x0, y0, x1, y1), "P1 · 30 mm · green", source="preread",
                            box_id=f"preread:P1:{k}", editable=False)
    qtbot.waitUntil(lambda: len(coronal.projected) == 1 and len(sagittal.projected) == 1, timeout=3000)
    assert coronal.projected[0].label == "P1 · 30 mm · green"
    for k in boxes:  # accepted into the report: the label changes on every slice
        vp.overlays.set_label(f"preread:P1:{k}", "P1 · 30 mm · accepted")
    qtbot.waitUntil(lambda: coronal.projected and coronal.projected[0].label == "P1 · 30 mm · accepted", timeout=3000)
    vp.overlays.clear(source="preread")
    qtbot.waitUntil(lambda: coronal.projected == [] and sagittal.projected == [], timeout=3000)


def test_two_labels_at_one_extent_do_not_cover_each_other(qtbot, win, study):
    """Seen in a real window: a pre-read lesion accepted into the report has its lesion label and its finding's
    at the same corner of the coronal extent, one printed over the other. They stack, as on the axial image."""
    from PySide6.QtCore import QRectF

    les, boxes = lesion_boxes(study)
    vp = win.grid.viewports[0]
    for k, (x0, y0, x1, y1) in boxes.items():
        vp.overlays.add_box(k, Box(x0, y0, x1, y1), "P1 · 15 mm · accepted", "ai")
        vp.overlays.add_box(k, Box(x0, y0, x1, y1), "AI 1 · nodule · red", "accepted")
    win.actions_by_name["layout_mpr"].trigger()
    panel = win.grid.mpr
    panel.state.set_point(np.array(les["center_patient_mm"]))
    panel.refresh()
    coronal = panel.by_plane("coronal")
    qtbot.waitUntil(lambda: len(coronal.extent_items) == 2, timeout=5000)

    def screen_rect(text) -> QRectF:
        return text.mapRectToScene(text.boundingRect())

    def overlap() -> float:
        a, b = (screen_rect(t) for _, t in coronal.extent_items.values())
        i = a.intersected(b)
        return i.width() * i.height()

    assert overlap() == 0
    coronal.vb.scaleBy((0.5, 0.5))  # zoomed: the labels keep their size, so they are stacked again
    qtbot.wait(50)
    assert overlap() == 0
