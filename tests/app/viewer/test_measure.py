"""Measurements a reader reads off the screen: mm lengths, ROI HU statistics and areas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.dicom.model import Geometry
from app.viewer.measure import (
    ellipse_mask,
    ellipse_stats,
    length,
    rect_stats,
    spacing_of,
    value_unit_for,
)


def test_length_uses_anisotropic_pixel_spacing():
    # 0.5 mm between rows, 0.8 mm between columns
    spacing = (0.5, 0.8)
    assert length((0, 0), (10, 0), spacing).value == pytest.approx(8.0)
    assert length((0, 0), (0, 10), spacing).value == pytest.approx(5.0)
    d = length((2, 3), (5, 7), spacing)
    assert d.value == pytest.approx(math.hypot(3 * 0.8, 4 * 0.5))
    assert d.unit == "mm" and str(d) == f"{d.value:.1f} mm"


def test_length_without_spacing_is_in_pixels():
    d = length((0, 0), (3, 4), None)
    assert (d.value, d.unit) == (5.0, "px")


def test_spacing_of_rejects_missing_or_bad_geometry():
    g = Geometry(np.zeros((1, 3)), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.7, 0.6))
    assert spacing_of(g) == (0.7, 0.6)
    assert spacing_of(None) is None
    bad = Geometry(np.zeros((1, 3)), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0.0, 0.6))
    assert spacing_of(bad) is None


def _phantom() -> np.ndarray:
    """100×100 slice: background −1000 HU, a 20×20 block of 50 HU with a 0 HU centre row."""
    v = np.full((100, 100), -1000.0, dtype=np.float32)
    v[40:60, 30:50] = 50.0
    v[50, 30:50] = 0.0
    return v


def test_rect_stats_known_values():
    v = _phantom()
    s = rect_stats(v, 30, 40, 50, 60, spacing=(0.5, 0.5))
    inside = v[40:60, 30:50]
    assert s.pixels == 400
    assert s.mean == pytest.approx(inside.mean())
    assert s.sd == pytest.approx(inside.std(ddof=1))
    assert (s.min, s.max) == (0.0, 50.0)
    assert s.area == pytest.approx(20 * 20 * 0.25)  # mm²
    assert s.area_unit == "mm²"
    # dragging from the other corner gives the same region
    assert rect_stats(v, 50, 60, 30, 40, spacing=(0.5, 0.5)) == s


def test_rect_stats_partial_pixels_follow_pixel_centres():
    v = _phantom()
    # x from 29.6 to 50.6: column 29 (centre 29.5) is out, column 50 (centre 50.5) is in
    s = rect_stats(v, 29.6, 40, 50.6, 60, spacing=(1.0, 1.0))
    assert s.pixels == 21 * 20
    assert s.min == -1000.0  # column 50 is background
    s = rect_stats(v, 29.6, 40, 50.4, 60, spacing=(1.0, 1.0))
    assert s.pixels == 20 * 20 and s.min == 0.0


def test_ellipse_stats_circle_area_and_values():
    v = np.zeros((200, 200), dtype=np.float32)
    yy, xx = np.mgrid[0:200, 0:200]
    v[(xx + 0.5 - 100) ** 2 + (yy + 0.5 - 100) ** 2 <= 40**2] = 60.0
    s = ellipse_stats(v, 60, 60, 140, 140, spacing=(0.7, 0.7))  # circle r=40 px
    assert s.area == pytest.approx(math.pi * 40 * 40 * 0.49)
    assert s.mean == pytest.approx(60.0)
    assert s.sd == pytest.approx(0.0)
    assert s.pixels == pytest.approx(math.pi * 40 * 40, rel=0.02)
    # the bounding rectangle includes background corners, the ellipse does not
    r = rect_stats(v, 60, 60, 140, 140, spacing=(0.7, 0.7))
    assert r.min == 0.0 and r.mean < 60.0


def test_ellipse_mask_is_symmetric_and_degenerate_is_empty():
    m = ellipse_mask((50, 50), 10, 20, 40, 30)
    assert np.array_equal(m, m[:, ::-1][:, ::-1])
    assert m.sum() > 0 and m[:, :10].sum() == 0 and m[:20].sum() == 0
    assert ellipse_mask((50, 50), 10, 10, 10, 30).sum() == 0


def test_empty_roi_reports_no_pixels_not_an_error():
    s = rect_stats(np.zeros((10, 10)), 3.2, 3.2, 3.4, 3.4, spacing=None)
    assert s.pixels == 0 and s.area_unit == "px²"
    assert "no pixel inside" in s.lines()


def test_stats_lines_read_like_a_viewer():
    s = rect_stats(_phantom(), 30, 40, 50, 60, spacing=(0.5, 0.5))
    lines = s.lines()
    assert lines[0].startswith("Mean 47.5 HU")
    assert "Area 100.0 mm²" in lines


def test_value_unit():
    assert value_unit_for("CT") == "HU"
    assert value_unit_for("MR") == ""
