"""AI on every plane (issue #17, item 5): a lesion's boxes on the acquired slices, projected into the coronal and
sagittal (and axial) MPR views as the lesion's extent, exact to a voxel: the rectangle covers exactly the voxels
of the lesion that the plane cuts, checked against the resliced image itself."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app.dicom.model import Volume
from app.dicom.volume import reslicable
from app.viewer.mpr import (
    Extent,
    MprState,
    extent_of_lesion,
    extents_from_boxes,
    project_extent,
)
from tests.app.dicom.test_volume import _grid_volume

# slice → box (x0, y0, x1, y1) in pixel edges: a lesion growing then shrinking over slices 4–7
BOXES = {4: (10, 6, 14, 10), 5: (9, 5, 16, 12), 6: (8, 5, 17, 13), 7: (11, 7, 15, 11)}


def lesion_volume() -> Volume:
    """Anisotropic pixels (0.8 mm rows, 0.6 mm columns), 2.5 mm slices running feet-ward; 1000 inside the boxes."""
    vol = _grid_volume(n=12, rows=20, cols=24, spacing=(0.8, 0.6))
    frames = np.zeros_like(vol.frames)
    for k, (x0, y0, x1, y1) in BOXES.items():
        frames[k, y0:y1, x0:x1] = 1000
    vol.frames = frames
    return vol


def covered(box, shape) -> np.ndarray:
    """Pixels whose centres lie inside a projected box (pixel c covers [c, c+1))."""
    rows, cols = shape
    cy = np.arange(rows) + 0.5
    cx = np.arange(cols) + 0.5
    return ((cy > box.y0) & (cy < box.y1))[:, None] & ((cx > box.x0) & (cx < box.x1))[None, :]


def bounding(mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(mask)
    if mask.any():
        r = np.flatnonzero(mask.any(axis=1))
        c = np.flatnonzero(mask.any(axis=0))
        out[r[0]:r[-1] + 1, c[0]:c[-1] + 1] = True
    return out


@pytest.fixture()
def setup():
    vol = lesion_volume()
    st = MprState(reslicable(vol))
    return vol, st, Extent("les-1", dict(BOXES), "AI 1 · nodule", "ai")


@pytest.mark.parametrize("view", ["coronal", "sagittal", "axial"])
def test_projection_covers_exactly_the_lesion_voxels_the_plane_cuts(setup, view):
    vol, st, ext = setup
    seen = 0
    for index in range(st.count(view)):
        st.set_slice(view, index)
        img = st.image(view).stored
        lesion = img == 1000
        box = project_extent(st, vol.geometry, ext, view)
        if not lesion.any():
            assert box is None, f"{view} {index}: the plane misses the lesion, nothing is drawn"
            continue
        seen += 1
        assert box is not None
        # the rectangle's edges are voxel edges, and it covers the lesion's voxels in this plane, no more
        for v in (box.x0, box.y0, box.x1, box.y1):
            assert v == pytest.approx(round(v), abs=1e-6)
        np.testing.assert_array_equal(covered(box, img.shape), bounding(lesion), err_msg=f"{view} {index}")
        assert (box.id, box.label, box.source) == ("les-1", "AI 1 · nodule", "ai")
    assert seen >= 4


def test_coronal_through_the_lesion_spans_its_columns_and_slices(setup):
    vol, st, ext = setup
    st.set_slice("coronal", 8)  # row 8 lies in every slice's box
    box = project_extent(st, vol.geometry, ext, "coronal")
    assert (box.x0, box.x1) == pytest.approx((8, 17))  # the union of the boxes' columns
    rows = st.plane("coronal").shape[0]
    # slices 4–7 of a feet-ward series: the coronal rows run head to feet, one row per slice; the rows
    # holding slices 4 and 7 (centres r) are covered edge to edge: [r4, r7 + 1) in pixel edges
    r = sorted(st.plane("coronal").patient_to_pixel(vol.geometry.origins[k])[1] for k in (4, 7))
    assert (box.y0, box.y1) == pytest.approx((r[0], r[1] + 1))
    assert box.y1 - box.y0 == pytest.approx(4) and 0 <= box.y0 < rows


def test_a_slab_that_reaches_the_lesion_shows_it(setup):
    vol, st, ext = setup
    st.set_slice("coronal", 2)  # 2 rows above the lesion's first row (5): 2 × 0.8 mm away
    assert project_extent(st, vol.geometry, ext, "coronal") is None
    st.set_slab(5.0)
    assert project_extent(st, vol.geometry, ext, "coronal") is not None


def test_lesions_from_the_preread_and_from_boxes_on_slices():
    cand = SimpleNamespace(id="3", phrase="nodule",
                           detections={5: SimpleNamespace(box=SimpleNamespace(x0=1, y0=2, x1=3, y1=4)),
                                       6: SimpleNamespace(box=SimpleNamespace(x0=1, y0=2, x1=5, y1=4))})
    e = extent_of_lesion(cand)
    assert e.boxes == {5: (1, 2, 3, 4), 6: (1, 2, 5, 4)} and e.slices == (5, 6) and e.label == "L3 · nodule"
    j = extent_of_lesion({"id": 4, "boxes": {"7": {"x0": 1, "y0": 1, "x1": 2, "y1": 2}}, "phrase": "mass"})
    assert j.boxes == {7: (1.0, 1.0, 2.0, 2.0)} and j.id == "lesion:4"
    rows = [("preread:1:3", 3, (0, 0, 1, 1), "L1", "preread"), ("preread:1:4", 4, (0, 0, 2, 2), "L1", "preread"),
            ("preread:1:6", 6, (0, 0, 2, 2), "L1", "preread"),  # slice 5 missing: still the same lesion
            ("c", 10, (0, 0, 1, 1), "L1", "preread"),  # far away: another lesion
            ("d", 4, (5, 5, 6, 6), "You 2 · finding", "user"), ("e", 4, (7, 7, 8, 8), "", "ai")]
    out = extents_from_boxes(rows)
    assert sorted(sorted(e.boxes) for e in out) == [[3, 4, 6], [4], [4], [10]]
    les = next(e for e in out if e.label == "L1" and 3 in e.boxes)
    assert les.slices == (3, 6) and les.id == "preread:1:3" and les.source == "preread"
