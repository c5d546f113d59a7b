"""Synchronised viewports without Qt (issue #17, item 3): series of one frame of reference follow each other
by patient position along the normal (not slice index); a manual link keeps the offset it was made at; the
linked cursor lands on the same patient point."""

from __future__ import annotations

import numpy as np
import pytest

from app.dicom.model import Geometry
from app.viewer.sync import Pane, SyncModel, nearest_slice, parallel, slice_gap

ROW, COL = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])


def axial(n: int, step: float, z0: float = 0.0, spacing=(0.7, 0.7), xy=(-100.0, -120.0)) -> Geometry:
    origins = np.array([[xy[0], xy[1], z0 - step * k] for k in range(n)])  # head to feet, as scanners write
    return Geometry(origins, ROW, COL, spacing)


def test_same_frame_of_reference_scrolls_by_position_not_index():
    thin = Pane(1, axial(100, 1.0), 100, (256, 256), "1.2.FOR", "CT")
    thick = Pane(2, axial(20, 5.0, z0=-2.0), 20, (512, 512), "1.2.FOR", "CT")
    m = SyncModel()
    assert m.link_kind(thin, thick) == "frame"
    for k in range(100):
        z = -1.0 * k
        want = int(np.argmin(np.abs((-2.0 - 5.0 * np.arange(20)) - z)))
        assert m.target_slice(thin, k, thick) == want
    # and back: the thick slice k shows the thin slice at the same z
    for k in range(20):
        assert m.target_slice(thick, k, thin) == min(99, round(2.0 + 5.0 * k))
    # a series without a frame of reference, or of another one, does not follow
    other = Pane(3, axial(20, 5.0), 20, (512, 512), "9.9.FOR", "CT")
    none = Pane(4, axial(20, 5.0), 20, (512, 512), "", "CT")
    assert m.target_slice(thin, 10, other) is None and m.target_slice(thin, 10, none) is None


def test_slices_that_are_not_parallel_do_not_scroll_together():
    sag = Geometry(np.array([[float(x), -120.0, 50.0] for x in range(-50, 50, 2)]), np.array([0, 1.0, 0]),
                   np.array([0, 0, -1.0]), (1.0, 1.0))
    a = Pane(1, axial(40, 2.0), 40, (128, 128), "F", "CT")
    s = Pane(2, sag, 50, (128, 128), "F", "CT")
    assert not parallel(a.geometry, s.geometry)
    assert SyncModel().target_slice(a, 10, s) is None
    # slices turned by a few degrees still count as parallel
    t = np.radians(4)
    tilted = Geometry(axial(40, 2.0).origins, ROW, np.array([0, np.cos(t), np.sin(t)]), (0.7, 0.7))
    assert parallel(a.geometry, tilted)


def test_manual_link_keeps_the_offset_it_was_made_at():
    current = Pane(1, axial(60, 2.0, z0=0.0), 60, (256, 256), "CUR", "CT")
    prior = Pane(2, axial(40, 3.0, z0=500.0, xy=(0.0, 0.0)), 40, (256, 256), "PRIOR", "CT")
    m = SyncModel()
    assert m.link_kind(current, prior) is None
    assert m.link([current, prior], {1: 10, 2: 5}) == 1  # current slice 10 (z −20) is prior slice 5 (z 485)
    assert m.link_kind(current, prior) == "manual"
    assert m.target_slice(current, 10, prior) == 5
    # 6 mm further in the current (3 slices) is 6 mm further in the prior (2 slices)
    assert m.target_slice(current, 13, prior) == 7
    assert m.target_slice(prior, 7, current) == 13
    assert m.target_slice(current, 59, prior) == 38  # z −118 + 505 = 387 mm: prior slice (500 − 387) / 3 = 37.7
    m.unlink()
    assert m.target_slice(current, 13, prior) is None


def test_manual_link_without_geometry_keeps_the_slice_offset():
    a = Pane(1, None, 30, (64, 64), "", "CR")
    b = Pane(2, None, 30, (64, 64), "", "CR")
    m = SyncModel()
    m.link([a, b], {1: 4, 2: 9})
    assert m.target_slice(a, 10, b) == 15 and m.target_slice(b, 15, a) == 10 and m.target_slice(a, 29, b) == 29
    m.forget(2)
    assert m.target_slice(a, 10, b) is None


def test_linked_cursor_lands_on_the_same_patient_point():
    g1 = axial(50, 2.0, spacing=(0.5, 0.5))
    g2 = axial(20, 5.0, spacing=(1.0, 1.0), xy=(-110.0, -130.0))
    a = Pane(1, g1, 50, (512, 512), "F", "CT")
    b = Pane(2, g2, 20, (256, 256), "F", "CT")
    m = SyncModel()
    k = 20  # z = −40
    kb = m.target_slice(a, k, b)
    assert kb == 8  # z −40 in the 5 mm series
    c, r = m.cursor(a, k, 100.0, 60.0, b, kb)
    p = g1.pixel_to_patient(k, 100.0, 60.0)
    assert (c, r) == pytest.approx(g2.patient_to_pixel(kb, p))
    assert (c, r) == pytest.approx(((-100 + 50) - (-110), (-120 + 30) - (-130)))
    # far from the slice shown: no cross
    assert m.cursor(a, k, 100.0, 60.0, b, kb + 3) is None
    # outside the other image: no cross
    assert m.cursor(a, k, 0.0, 0.0, b, kb) is not None
    small = Pane(3, axial(20, 5.0, spacing=(0.1, 0.1)), 20, (64, 64), "F", "CT")
    assert m.cursor(a, k, 500.0, 500.0, small, kb) is None


def test_helpers():
    g = axial(10, 2.5)
    assert slice_gap(g) == pytest.approx(2.5)
    assert nearest_slice(g, [0, 0, -7.4]) == 3


def test_pan_maps_the_centre_by_patient_point():
    """Pan sync: the pixel of the other series that shows the same patient point (another spacing, another
    origin), anywhere in its plane; not across non-parallel slices, nor without geometry."""
    g1 = axial(50, 2.0, spacing=(0.5, 0.5))
    g2 = axial(20, 5.0, spacing=(1.25, 1.25), xy=(-110.0, -130.0))
    a = Pane(1, g1, 50, (512, 512), "F", "CT")
    b = Pane(2, g2, 20, (256, 256), "F", "CT")
    m = SyncModel()
    for col, row in ((100.0, 60.0), (-40.0, 700.0)):
        c, r = m.map_pixel(a, 20, col, row, b, 8)
        assert (c, r) == pytest.approx(((-100 + 0.5 * col + 110) / 1.25, (-120 + 0.5 * row + 130) / 1.25))
        assert g2.pixel_to_patient(8, c, r)[:2] == pytest.approx(g1.pixel_to_patient(20, col, row)[:2])
    assert m.map_pixel(a, 20, 10.0, 10.0, b, 3) == pytest.approx(m.map_pixel(a, 20, 10.0, 10.0, b, 8))
    sag = Geometry(np.array([[float(x), -120.0, 50.0] for x in range(-50, 50, 2)]), np.array([0, 1.0, 0]),
                   np.array([0, 0, -1.0]), (1.0, 1.0))
    assert m.map_pixel(a, 20, 10.0, 10.0, Pane(3, sag, 50, (128, 128), "F", "CT"), 5) is None
    assert m.map_pixel(a, 20, 10.0, 10.0, Pane(4, g2, 20, (256, 256), "OTHER", "CT"), 5) is None
    flat = SyncModel()
    flat.link([Pane(5, None, 9, (64, 64)), Pane(6, None, 9, (64, 64))], {5: 0, 6: 0})
    assert flat.map_pixel(Pane(5, None, 9, (64, 64)), 0, 1.0, 1.0, Pane(6, None, 9, (64, 64)), 0) is None


def test_a_manual_link_keeps_the_offset_between_the_view_centres():
    """Linked while the reader shows the same anatomy at the centre of both views (panned off the image
    centres): that in-plane offset is kept; scrolling is unchanged (the offset along the normal is the same)."""
    current = Pane(1, axial(60, 2.0, z0=0.0), 60, (256, 256), "CUR", "CT")
    prior = Pane(2, axial(40, 3.0, z0=500.0, xy=(0.0, 0.0)), 40, (256, 256), "PRIOR", "CT")
    m = SyncModel()
    m.link([current, prior], {1: 10, 2: 5}, {1: (100.0, 140.0), 2: (60.0, 90.0)})
    assert m.map_pixel(current, 10, 100.0, 140.0, prior, 5) == pytest.approx((60.0, 90.0))
    assert m.map_pixel(current, 10, 110.0, 140.0, prior, 5) == pytest.approx((70.0, 90.0))  # same spacing: 1:1
    assert m.cursor(current, 10, 100.0, 140.0, prior, 5) == pytest.approx((60.0, 90.0))
    assert m.target_slice(current, 13, prior) == 7 and m.target_slice(prior, 7, current) == 13
    # without the centres: the slice centres, as before
    m.link([current, prior], {1: 10, 2: 5})
    assert m.map_pixel(current, 10, 127.5, 127.5, prior, 5) == pytest.approx((127.5, 127.5))
