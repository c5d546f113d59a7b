"""Reslicable volume: geometry, orthogonal planes, slabs and oblique planes against independent references.

References are computed without app.dicom: pydicom reads every file of a generated CT study,
the slices are sorted by ImagePositionPatient along the slice normal and the HU stack is
indexed with numpy (orthogonal planes, slabs) or resampled by SimpleITK (oblique planes).
pydicom-data holds no real multi-slice CT/MR series (the files that share a SeriesInstanceUID
there are one slice in several encodings), so the generated study is the multi-slice case.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from app.core.errors import XMedError
from app.dicom.loader import load_series
from app.dicom.model import Geometry, Series, Volume, Window
from app.dicom.scan import scan
from app.dicom.volume import reslicable, slab_range
from app.synthetic.sample import write_ct_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = write_ct_study(tmp_path_factory.mktemp("mpr") / "ct", n_slices=40, size=128, seed=3, noise_hu=0.0)
    (series,) = [s for s in scan(out).all_series() if s.modality == "CT"]
    volume = load_series(series)
    return out, volume, json.loads((out / "ground_truth.json").read_text())


@pytest.fixture(scope="module")
def reference(study):
    """HU stack sorted along the normal, its position/orientation, from pydicom alone."""
    out = study[0]
    dss = [pydicom.dcmread(p) for p in sorted(out.glob("*.dcm"))]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda ds: float(np.array(ds.ImagePositionPatient, dtype=float) @ normal))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in dss])
    ipp = np.array([ds.ImagePositionPatient for ds in dss], dtype=float)
    ps = np.array(dss[0].PixelSpacing, dtype=float)
    return hu.astype(np.float32), ipp, iop, ps


def _superior_first(hu, ipp):
    """Reference stack with the most superior slice first (coronal/sagittal rows: head at the top)."""
    order = np.argsort(-ipp[:, 2])
    return hu[order], ipp[order]


def test_uniform_series_is_a_view_with_its_geometry(study, reference):
    _, volume, _ = study
    rv = reslicable(volume)
    assert np.shares_memory(rv.voxels, volume.frames) and not rv.resampled and rv.warnings == []
    hu, ipp, iop, ps = reference
    gaps = np.abs(np.diff(ipp @ np.cross(iop[:3], iop[3:])))
    assert rv.spacing == pytest.approx([ps[1], ps[0], gaps.mean()])
    assert rv.frame_of_reference  # read from the header
    # every voxel centre maps back to its own index
    ijk = np.array([[0, 0, 0], [127, 5, 39], [64, 100, 20]])
    for idx in ijk:
        assert np.allclose(rv.patient_to_index(rv.index_to_patient(idx)), idx)
    # voxel (0, 0, k) is the ImagePositionPatient of a slice
    for k in range(40):
        assert np.abs(ipp - rv.index_to_patient([0, 0, k])).max(axis=1).min() < 1e-3


def test_orthogonal_planes_equal_the_pydicom_reference(study, reference):
    _, volume, _ = study
    rv = reslicable(volume)
    hu, ipp, iop, ps = reference
    sup, _ = _superior_first(hu, ipp)
    assert np.allclose(iop, [1, 0, 0, 0, 1, 0])  # rows along +x (patient left), columns along +y
    for k in (0, 17, 39):
        img = rv.reslice("axial", k)
        z = img.plane.origin[2]
        ref = hu[int(np.argmin(np.abs(ipp[:, 2] - z)))]
        np.testing.assert_array_equal(img.values(), ref)
    for j in (0, 60, 127):
        img = rv.reslice("coronal", j)
        assert img.stored.shape == (40, 128)
        np.testing.assert_array_equal(img.values(), sup[:, j, :])
        assert img.plane.spacing == pytest.approx((rv.spacing[2], ps[1]))  # aspect from spacing
    for i in (0, 70, 127):
        img = rv.reslice("sagittal", i)
        np.testing.assert_array_equal(img.values(), sup[:, :, i])
    # by patient position: the plane through a point is the slice that holds it
    p = rv.index_to_patient([33, 71, 12])
    assert rv.reslice("coronal", position=p).index == 71
    assert rv.reslice("sagittal", position=p).index == 33


@pytest.mark.parametrize("mode,fn", [("mip", np.max), ("minip", np.min), ("mean", np.mean)])
def test_slabs_equal_the_reference(study, reference, mode, fn):
    _, volume, _ = study
    rv = reslicable(volume)
    hu, ipp, _, ps = reference
    sup, _ = _superior_first(hu, ipp)
    j = 64
    m = int(round(20.0 / ps[0]))  # slices in a 20 mm slab
    lo = j - (m - 1) // 2
    img = rv.reslice("coronal", j, slab_mm=20.0, mode=mode)
    np.testing.assert_allclose(img.values(), fn(sup[:, lo:lo + m, :], axis=1), rtol=0, atol=1e-3)
    assert img.slab_mm == pytest.approx(m * ps[0]) and img.mode == mode
    i = 50  # sagittal: the columns (the numba kernel over contiguous runs)
    m = int(round(20.0 / ps[1]))
    lo = i - (m - 1) // 2
    img = rv.reslice("sagittal", i, slab_mm=20.0, mode=mode)
    np.testing.assert_allclose(img.values(), fn(sup[:, :, lo:lo + m], axis=2), rtol=0, atol=1e-3)
    # an axial slab along the slice axis: 20 mm is 2–3 slices of 8.25 mm
    k = 20
    img = rv.reslice("axial", k, slab_mm=20.0, mode=mode)
    lo, hi = slab_range(k, 40, 20.0, rv.spacing[2])
    zs = [rv.index_to_patient([0, 0, kk])[2] for kk in range(lo, hi)]
    rows = [int(np.argmin(np.abs(ipp[:, 2] - z))) for z in zs]
    np.testing.assert_allclose(img.values(), fn(hu[rows], axis=0), atol=1e-3)


def test_lesion_centres_land_on_the_right_pixel_in_all_three_planes(study):
    _, volume, truth = study
    rv = reslicable(volume)
    checked = 0
    for les in truth["lesions"]:
        if les["size_mm"] < 10:
            continue  # a 6 mm nodule is one 3 mm pixel in a coronal of 8 mm slices: no plateau to check
        centre = np.array(les["center_patient_mm"])
        k = rv.index_at("axial", centre)
        gt_slice = truth["slices"][k]
        boxes = [b for b in gt_slice["boxes"] if b["lesion_id"] == les["id"]]
        assert boxes, f"{les['id']}: slice {k} has no box"
        for view in ("axial", "coronal", "sagittal"):
            img = rv.reslice(view, position=centre)
            col, row = img.plane.patient_to_pixel(centre)
            c, r = int(round(col)), int(round(row))
            assert 0 <= c < img.stored.shape[1] and 0 <= r < img.stored.shape[0]
            assert img.values()[r, c] == pytest.approx(les["hu"], abs=1.0), (les["id"], view)
            if view == "axial":
                b = boxes[0]
                assert b["x0"] <= c < b["x1"] and b["y0"] <= r < b["y1"]
            else:
                assert r == k  # coronal/sagittal rows are the axial slices, head first
        checked += 1
    assert checked >= 3


def _grid_volume(n=12, rows=20, cols=24, spacing=(0.8, 0.6), positions=None, slopes=None):
    """A volume whose voxels are their own flat index (unique values)."""
    frames = np.arange(n * rows * cols, dtype=np.int32).reshape(n, rows, cols).astype(np.int16 if n * rows * cols < 32767 else np.int32)
    if positions is None:
        positions = np.array([[-10.0, -20.0, 100.0 - 2.5 * k] for k in range(n)])
    geometry = Geometry(origins=np.asarray(positions, float), row_direction=np.array([1.0, 0, 0]),
                        col_direction=np.array([0, 1.0, 0]), spacing=spacing)
    series = Series(uid="1.2.3", number=1, description="grid", modality="CT")
    return Volume(series=series, frames=frames, slopes=np.ones(n) if slopes is None else np.asarray(slopes, float),
                  intercepts=np.full(n, -1024.0), geometry=geometry, default_window=Window(400, 40), loaded=n)


def test_pixel_patient_and_other_planes_are_exact_to_a_voxel():
    vol = _grid_volume()
    rv = reslicable(vol)
    rng = np.random.default_rng(1)
    for _ in range(50):
        i, j, k = int(rng.integers(24)), int(rng.integers(20)), int(rng.integers(12))
        p = rv.index_to_patient([i, j, k])
        want = int(vol.frames[k, j, i])
        for view in ("axial", "coronal", "sagittal"):
            img = rv.reslice(view, position=p)
            c, r = img.plane.patient_to_pixel(p)
            assert (c, r) == (pytest.approx(round(c)), pytest.approx(round(r)))
            assert int(img.stored[int(round(r)), int(round(c))]) == want
            # and back: the pixel's centre is the voxel's centre
            assert np.allclose(img.plane.pixel_to_patient(round(c), round(r)), p)


def test_non_uniform_spacing_is_resampled_and_says_so():
    pos = np.array([[-10.0, -20.0, 100.0 - 2.5 * k] for k in range(12)])
    keep = [k for k in range(12) if k != 5]  # one slice missing: a 5 mm gap
    vol = _grid_volume(positions=pos)
    vol = Volume(series=vol.series, frames=vol.frames[keep], slopes=vol.slopes[keep], intercepts=vol.intercepts[keep],
                 geometry=Geometry(pos[keep], vol.geometry.row_direction, vol.geometry.col_direction, (0.8, 0.6)),
                 default_window=vol.default_window, loaded=11)
    rv = reslicable(vol)
    assert rv.resampled and rv.voxels.shape[0] == 12 and rv.spacing[2] == pytest.approx(2.5)
    assert any("resampled to a uniform 2.50 mm" in w for w in rv.warnings)
    np.testing.assert_array_equal(rv.voxels[7], vol.frames[6])  # kept slices stay exact
    # the missing slice is the linear mean of its neighbours
    np.testing.assert_allclose(rv.voxels[5], (vol.frames[4].astype(float) + vol.frames[5]) / 2, atol=0.51)


def test_what_cannot_be_resliced_says_why():
    vol = _grid_volume()
    with pytest.raises(XMedError, match="no geometry"):
        reslicable(Volume(vol.series, vol.frames, vol.slopes, vol.intercepts, None, None))
    dup = vol.geometry.origins.copy()
    dup[3] = dup[2]
    with pytest.raises(XMedError):
        reslicable(Volume(vol.series, vol.frames, vol.slopes, vol.intercepts,
                          Geometry(dup, vol.geometry.row_direction, vol.geometry.col_direction, (0.8, 0.6)), None))
    with pytest.raises(XMedError, match="Unknown plane"):
        reslicable(vol).reslice("transverse", 0)


def test_oblique_plane_matches_simpleitk(study, reference):
    _, volume, _ = study
    rv = reslicable(volume)
    hu, ipp, iop, ps = reference
    # the independent image: pydicom's stack as an ITK image (slices in increasing-normal order)
    img = sitk.GetImageFromArray(hu)
    normal = np.cross(iop[:3], iop[3:])
    img.SetOrigin(tuple(ipp[0]))
    img.SetSpacing((float(ps[1]), float(ps[0]), float(np.abs(np.diff(ipp @ normal)).mean())))
    img.SetDirection(tuple(np.stack([iop[:3], iop[3:], normal], axis=1).reshape(-1)))
    theta = np.radians(30)
    n = np.array([np.sin(theta), np.cos(theta), 0.0])  # a coronal plane turned 30° about the feet–head axis
    centre = rv.index_to_patient([60, 70, 20])
    plane = rv.oblique_plane(centre, n, up=[0, 0, -1], size_mm=300.0, pixel_mm=2.0)
    ours = rv.sample(plane).values()
    rf = sitk.ResampleImageFilter()
    rf.SetOutputOrigin(tuple(plane.origin))
    rf.SetOutputSpacing((plane.spacing[1], plane.spacing[0], 1.0))
    rf.SetOutputDirection(tuple(np.stack([plane.u, plane.v, plane.normal], axis=1).reshape(-1)))
    rf.SetSize((plane.shape[1], plane.shape[0], 1))
    rf.SetInterpolator(sitk.sitkLinear)
    rf.SetDefaultPixelValue(-99999.0)
    ref = sitk.GetArrayFromImage(rf.Execute(img))[0]
    inside = ref > -99999.0
    assert inside.mean() > 0.3
    np.testing.assert_allclose(ours[inside], ref[inside], atol=0.05)
    # the plane's centre pixel is the crosshair point
    c, r = plane.patient_to_pixel(centre)
    assert np.allclose(plane.pixel_to_patient(c, r), centre) and abs(c - (plane.shape[1] - 1) / 2) < 1e-9
