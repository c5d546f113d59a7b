"""Angle and Cobb angle tools: the patient's angle in mm, not the pixel grid's (issue #17, item 4).

Every expected number is worked out by hand from the points and the anisotropic pixel spacing
(0.5 mm between rows, 0.8 mm between columns): a point (x, y) in pixels is (0.8·x, 0.5·y) in mm.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.viewer.measure import Angle, angle, cobb, evaluate

SPACING = (0.5, 0.8)  # (row, column) mm, as PixelSpacing


def test_angle_uses_the_anisotropic_spacing_not_the_pixel_grid():
    # arms from the vertex (0, 0): to (10, 0) = (8, 0) mm and to (10, 10) = (8, 5) mm.
    # On the pixel grid that is 45°; in the patient atan(5/8) = 32.005°.
    a = angle((10, 0), (0, 0), (10, 10), SPACING)
    assert a.value == pytest.approx(math.degrees(math.atan(5 / 8)), abs=1e-9)
    assert a.value == pytest.approx(32.00538, abs=1e-5)
    assert angle((10, 0), (0, 0), (10, 10), None).value == pytest.approx(45.0)  # no spacing: square pixels
    assert str(a) == "32.0°"


def test_angle_is_measured_at_the_vertex_up_to_180_degrees():
    # the second arm to (-10, 10) = (-8, 5) mm: 180° − 32.005° = 147.995°
    assert angle((10, 0), (0, 0), (-10, 10), SPACING).value == pytest.approx(180 - 32.00538, abs=1e-5)
    # a vertex away from the origin and the order of the ends do not matter
    v = (40.0, 25.0)
    a = angle((v[0] + 10, v[1]), v, (v[0] + 10, v[1] + 10), SPACING).value
    b = angle((v[0] + 10, v[1] + 10), v, (v[0] + 10, v[1]), SPACING).value
    assert a == pytest.approx(b) == pytest.approx(32.00538, abs=1e-5)
    # straight line: 180°; folded back: 0°
    assert angle((0, 0), (5, 5), (10, 10), SPACING).value == pytest.approx(180.0)
    assert angle((10, 10), (5, 5), (10, 10), SPACING).value == pytest.approx(0.0, abs=1e-6)


def test_cobb_is_the_acute_angle_between_two_lines_in_mm():
    # line a along the columns: (8, 0) mm; line b from (0, 0) to (10, 16) px = (8, 8) mm: 45° in the patient
    # (on the pixel grid atan(16/10) = 57.99°)
    c = cobb((0, 0), (10, 0), (0, 0), (10, 16), SPACING)
    assert c.value == pytest.approx(45.0, abs=1e-9)
    # the way each line was drawn does not matter, nor which line came first
    assert cobb((10, 0), (0, 0), (0, 0), (10, 16), SPACING).value == pytest.approx(45.0)
    assert cobb((0, 0), (10, 16), (10, 0), (0, 0), SPACING).value == pytest.approx(45.0)
    # two endplates far apart, tilted the other way: (−8, 8) mm against (8, 0) mm: 135° between the vectors → 45°
    assert cobb((100, 200), (110, 200), (30, 40), (20, 56), SPACING).value == pytest.approx(45.0)
    # perpendicular lines: 90°; parallel: 0°
    assert cobb((0, 0), (10, 0), (0, 0), (0, 7), SPACING).value == pytest.approx(90.0)
    assert cobb((0, 0), (10, 0), (3, 9), (13, 9), SPACING).value == pytest.approx(0.0, abs=1e-9)


def test_cobb_stays_within_0_and_90_degrees():
    rng = np.random.default_rng(7)
    for _ in range(200):
        pts = rng.uniform(-50, 50, size=(4, 2))
        c = cobb(*pts, SPACING).value
        assert 0.0 <= c <= 90.0 + 1e-9
        # the same lines in mm, independently
        u = (pts[1] - pts[0]) * [0.8, 0.5]
        v = (pts[3] - pts[2]) * [0.8, 0.5]
        cos = abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))
        assert c == pytest.approx(math.degrees(math.acos(min(1.0, cos))), abs=1e-6)


def test_an_arm_of_no_length_has_no_angle():
    a = angle((3, 3), (3, 3), (9, 1), SPACING)
    assert math.isnan(a.value) and str(a) == "—°"
    assert math.isnan(cobb((0, 0), (0, 0), (1, 1), (4, 2), SPACING).value)
    assert evaluate("angle", [(3, 3), (3, 3), (9, 1)], SPACING).values == {}


def test_evaluate_gives_every_kind_its_numbers_units_and_label():
    ev = evaluate("angle", [(10, 0), (0, 0), (10, 10)], SPACING)
    assert ev.values == {"angle": pytest.approx(32.00538, abs=1e-5)} and ev.unit == "deg" and ev.text == "32.0°"
    ev = evaluate("cobb", [(0, 0), (10, 0), (0, 0), (10, 16)], SPACING)
    assert ev.values["angle"] == pytest.approx(45.0) and ev.text == "Cobb 45.0°"
    ev = evaluate("length", [(0, 0), (10, 0)], SPACING)
    assert ev.values == {"length": pytest.approx(8.0)} and ev.unit == "mm" and ev.text == "8.0 mm"
    values = np.full((20, 20), 40.0, dtype=np.float32)
    ev = evaluate("rect", [(2, 2), (12, 8)], SPACING, values, "HU")
    assert ev.values["mean"] == pytest.approx(40.0) and ev.values["sd"] == pytest.approx(0.0)
    assert ev.values["area"] == pytest.approx(10 * 6 * 0.4) and ev.unit == "mm²" and ev.value_unit == "HU"
    with pytest.raises(ValueError):
        evaluate("angle", [(0, 0), (1, 1)], SPACING)
    assert isinstance(angle((1, 0), (0, 0), (0, 1), SPACING), Angle)
