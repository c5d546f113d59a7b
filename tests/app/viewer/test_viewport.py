"""Viewer logic a reader notices: W/L drag direction, slice clamping, cine loop,
orientation letters that follow rotate/flip, corner texts."""

from __future__ import annotations

import numpy as np
import pytest

from app.dicom.model import Geometry, Instance, Series, Volume, Window
from app.viewer.viewport import (
    KEYED_PRESETS,
    DisplayTransform,
    StudyInfo,
    cine_interval_ms,
    cine_next,
    corner_texts,
    default_window,
    drag_window,
    orientation_label,
    pixel_aspect,
    slice_position_mm,
    step_slice,
    wheel_zoom_factor,
)

AXIAL = Geometry(
    origins=np.array([[-100.0, -100.0, z] for z in (10.0, 12.5, 15.0)]),
    row_direction=np.array([1.0, 0.0, 0.0]),
    col_direction=np.array([0.0, 1.0, 0.0]),
    spacing=(0.7, 0.7),
)
CORONAL = Geometry(
    origins=np.zeros((1, 3)),
    row_direction=np.array([1.0, 0.0, 0.0]),
    col_direction=np.array([0.0, 0.0, -1.0]),
    spacing=(1.0, 1.0),
)


def test_presets_match_the_issue():
    assert [(w.width, w.center) for w in KEYED_PRESETS] == [(400, 40), (1500, -600), (150, 90), (2500, 480), (80, 40)]


def test_drag_right_widens_and_down_darkens():
    w = Window(400, 40)
    assert drag_window(w, 150, 0).width == pytest.approx(800)
    assert drag_window(w, -150, 0).width == pytest.approx(200)
    assert drag_window(w, 0, 50).center > 40
    assert drag_window(w, 0, -50).center < 40
    assert drag_window(w, -10_000, 0).width >= 1.0
    assert drag_window(w, 0, 0) == Window(400, 40)


def test_step_slice_clamps_and_cine_loops():
    assert step_slice(0, -1, 10) == 0
    assert step_slice(9, 1, 10) == 9
    assert step_slice(3, 4, 10) == 7
    assert cine_next(9, 10) == 0
    assert cine_next(0, 10, -1) == 9
    assert cine_interval_ms(25) == 40
    assert cine_interval_ms(1000) == cine_interval_ms(60)


def test_wheel_zoom_is_symmetric():
    assert wheel_zoom_factor(15) * wheel_zoom_factor(-15) == pytest.approx(1.0)
    assert wheel_zoom_factor(15) > 1


def test_orientation_label_pure_and_oblique():
    assert orientation_label((1, 0, 0)) == "L"
    assert orientation_label((-1, 0, 0)) == "R"
    assert orientation_label((0, -1, 0)) == "A"
    assert orientation_label((0, 0, 1)) == "H"
    assert orientation_label((0.8, -0.6, 0.0)) == "LA"
    assert orientation_label((0.99, 0.1, 0.0)) == "L"  # slight obliquity ignored


def test_axial_markers_radiological_convention():
    m = DisplayTransform().markers(AXIAL)
    assert m == {"left": "R", "right": "L", "top": "A", "bottom": "P"}


def test_coronal_markers():
    m = DisplayTransform().markers(CORONAL)
    assert m == {"left": "R", "right": "L", "top": "H", "bottom": "F"}


def test_markers_follow_rotation_and_flips():
    t = DisplayTransform()
    cw = t.rotated_cw()
    # turning clockwise: what was at the top (A) comes to the right
    assert cw.markers(AXIAL) == {"left": "P", "right": "A", "top": "R", "bottom": "L"}
    assert t.flipped_h().markers(AXIAL) == {"left": "L", "right": "R", "top": "A", "bottom": "P"}
    assert t.flipped_v().markers(AXIAL)["top"] == "P"
    assert cw.rotated_ccw() == t
    assert t.rotated_cw().rotated_cw().rotated_cw().rotated_cw() == t
    assert t.flipped_h().flipped_h() == t
    assert cw.swaps_axes and not t.swaps_axes
    assert DisplayTransform().markers(None)["left"] == ""


def _volume(n=3, geometry=AXIAL, window=Window(400, 40, "Header")) -> Volume:
    inst = [
        Instance(path=f"/x/{i}.dcm", sop_instance_uid=str(i), sop_class_uid="1.2", rows=4, columns=4, slice_thickness=2.5)
        for i in range(n)
    ]
    series = Series(uid="1.2.3", number=4, description="Abdomen 2.5mm", modality="CT", instances=inst)
    frames = np.arange(n * 16, dtype=np.int16).reshape(n, 4, 4)
    return Volume(series, frames, np.ones(n), np.full(n, -1024.0), geometry, window, loaded=n)


def test_slice_position_along_normal():
    assert slice_position_mm(AXIAL, 1) == pytest.approx(12.5)
    assert slice_position_mm(None, 0) is None


def test_corner_texts_hold_what_a_reader_looks_for():
    v = _volume()
    info = StudyInfo("DOE^JANE", "PID42", "19600101", "F", "20240131", "CT ABDOMEN")
    t = corner_texts(v, 1, Window(1500, -600, "lung"), 1.5, info, inverted=True)
    assert t["top_left"][:2] == ["DOE, JANE", "PID42"]
    assert "2024-01-31" in t["top_right"] and "CT ABDOMEN" in t["top_right"]
    assert "Se 4: Abdomen 2.5mm" in t["top_right"]
    assert t["bottom_left"][0] == "Im 2/3"
    assert t["bottom_left"][1] == "Pos 12.5 mm  Th 2.50 mm"
    assert t["bottom_right"] == ["W 1500  L -600 (Lung)  INV", "Zoom 150%"]  # one display form of a window name


def test_corner_texts_show_loading_progress():
    v = _volume()
    v.loaded = 1
    assert "Loading 1/3" in corner_texts(v, 0, Window(400, 40), 1.0)["bottom_left"]


def test_default_window_from_header_or_data():
    assert default_window(_volume()) == Window(400, 40, "Header")
    auto = default_window(_volume(window=None))
    assert auto.name.lower() == "auto" and auto.width > 0


def test_pixel_aspect_honours_spacing():
    g = Geometry(np.zeros((1, 3)), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.5, 0.8))
    assert pixel_aspect(g) == (0.8, 0.5)  # (width, height) of one pixel on screen
    assert pixel_aspect(None) == (1.0, 1.0)


def test_pixel_readout_gives_hu_and_patient_position():
    from app.viewer.viewport import pixel_readout

    v = _volume()
    # stored value at (row 2, col 3) of frame 1 is 16 + 2*4 + 3 = 27 → 27 − 1024 HU
    text = pixel_readout(v, 1, 3.6, 2.2)
    assert text == "x 3  y 2  ·  (-97.9, -98.6, 12.5) mm  ·  -997 HU"
    assert pixel_readout(v, 1, -0.5, 2) == "" and pixel_readout(v, 1, 4.0, 0) == ""
    v.loaded = 1
    assert pixel_readout(v, 2, 0, 0).endswith("not loaded")


def test_colour_images_show_no_window():
    v = _volume()
    v.frames = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    assert corner_texts(v, 0, Window(400, 40), 1.0)["bottom_right"][0] == "RGB"
