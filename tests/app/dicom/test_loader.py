"""Loading: progressive frames in slice order, cancel, int16 storage, geometry, enhanced multi-frame."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.core.errors import XMedError
from app.dicom.loader import load_series
from app.dicom.scan import scan
from tests.app.dicom.test_scan import write_series, write_slice


def _ct(tmp_path, n=12, size=32):
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(n):
        px = rng.integers(0, 4095, (size, size), dtype=np.uint16)
        write_slice(tmp_path / f"s{i:03d}.dcm", z=-2.5 * i, number=i + 1, pixels=px, size=size)
        truth[i + 1] = px.astype(np.int32) - 1024
    (series,) = scan(tmp_path).all_series()
    return series, truth


def test_fast_path_values_dtype_and_progress_order(tmp_path):
    series, truth = _ct(tmp_path)
    seen = []
    vol = load_series(series, on_frame=lambda k, v: seen.append((k, v.loaded)), workers=4)
    assert vol.frames.dtype == np.int16  # 12-bit unsigned stored values fit int16
    assert seen == [(k, k + 1) for k in range(len(vol))]  # in order, frame 0 first
    for k, inst in enumerate(series.instances):
        np.testing.assert_array_equal(vol.values(k), truth[inst.instance_number])
    assert vol.default_window.width == 400 and vol.default_window.center == 40


def test_cancel_stops_with_a_readable_error(tmp_path):
    series, _ = _ct(tmp_path, n=20)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(XMedError, match="cancelled"):
        load_series(series, cancel=cancel)


def test_only_loads_requested_slice(tmp_path):
    series, truth = _ct(tmp_path, n=6)
    vol = load_series(series, only=[3])
    np.testing.assert_array_equal(vol.values(3), truth[series.instances[3].instance_number])
    assert not vol.frames[0].any()


def test_geometry_from_headers(tmp_path):
    series, _ = _ct(tmp_path, n=4)
    vol = load_series(series)
    g = vol.geometry
    assert g.spacing == (0.5, 0.8)
    # origin of each frame is its ImagePositionPatient, frames in the series' order
    np.testing.assert_allclose(g.origins[:, 2], [i.image_position[2] for i in series.instances])
    p = g.pixel_to_patient(1, col=10, row=20)
    np.testing.assert_allclose(p, [-100 + 10 * 0.8, -120 + 20 * 0.5, series.instances[1].image_position[2]])


def test_enhanced_ct_frames_sorted_with_per_frame_rescale():
    path = get_testdata_file("eCT_Supplemental.dcm")
    (series,) = scan(path).all_series()
    vol = load_series(series)
    ds = pydicom.dcmread(path)
    assert len(vol) == int(ds.NumberOfFrames)
    z = vol.geometry.origins @ np.cross(vol.geometry.row_direction, vol.geometry.col_direction)
    assert np.all(np.diff(z) > 0) or np.all(np.diff(z) < 0)
    ref = ds.pixel_array
    for k, (_, j) in enumerate(vol.frame_sources):
        item = ds.PerFrameFunctionalGroupsSequence[j].PixelValueTransformationSequence[0] \
            if "PixelValueTransformationSequence" in ds.PerFrameFunctionalGroupsSequence[j] \
            else ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
        expected = ref[j] * float(item.RescaleSlope) + float(item.RescaleIntercept)
        np.testing.assert_allclose(vol.values(k), expected)
        pos = ds.PerFrameFunctionalGroupsSequence[j].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(vol.geometry.origins[k], [float(v) for v in pos])


def test_color_multiframe_and_ybr_become_rgb():
    path = get_testdata_file("SC_ybr_full_uncompressed.dcm")
    (series,) = scan(path).all_series()
    vol = load_series(series)
    assert vol.is_color and vol.frames.dtype == np.uint8 and vol.frames.shape[-1] == 3
    np.testing.assert_array_equal(vol.frames[0], pydicom.dcmread(path).pixel_array)  # pydicom converts to RGB


def test_series_with_mixed_frame_failures_still_loads(tmp_path):
    files = write_series(tmp_path, [0, 5, 10])
    data = files[2].read_bytes()
    (series,) = scan(tmp_path).all_series()
    files[2].write_bytes(data[:-100])  # damaged after the scan
    vol = load_series(series)
    assert len(vol.frame_problems) == 1 and "truncated" in next(iter(vol.frame_problems.values()))
    assert vol.loaded == 3
