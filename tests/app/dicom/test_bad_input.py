"""Bad input gives one clear line per file, never an exception, and the rest still opens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate

from app.dicom.loader import load_series
from app.dicom.scan import scan
from tests.app.dicom.test_scan import write_series, write_slice


def _reasons(result) -> dict[str, str]:
    return {Path(p.path).name: p.reason for p in result.problems}


def _edit(path: Path, **changes) -> Path:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)
    return path


def test_each_bad_file_gets_its_reason_and_good_slices_still_load(tmp_path):
    write_series(tmp_path, [0, 5, 10, 15])
    good = write_slice(tmp_path / "z.dcm", 20, 5)
    data = good.read_bytes()

    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) - 200])
    (tmp_path / "cut_header.dcm").write_bytes(data[:300])
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "garbage.bin").write_bytes(np.random.default_rng(1).bytes(5000))
    (tmp_path / "empty.dcm").write_bytes(b"")
    _edit(write_slice(tmp_path / "nobits.dcm", 30, 7), BitsAllocated=None)
    huge = write_slice(tmp_path / "huge.dcm", 35, 8)
    _edit(huge, Rows=65535, Columns=65535, NumberOfFrames=1000)
    video = write_slice(tmp_path / "video.dcm", 40, 9)
    ds = pydicom.dcmread(video)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    ds.save_as(video)
    nots = write_slice(tmp_path / "nots.dcm", 45, 10)
    ds = pydicom.dcmread(nots)
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(nots, enforce_file_format=False)

    result = scan(tmp_path)
    reasons = _reasons(result)
    assert "truncated" in reasons["truncated.dcm"]
    assert "truncated" in reasons["cut_header.dcm"] or "damaged" in reasons["cut_header.dcm"]
    assert reasons["notes.txt"] == "not a DICOM file"
    assert reasons["garbage.bin"] == "not a DICOM file"
    assert reasons["empty.dcm"] == "empty file (0 bytes)"
    assert "Bits Allocated is missing" in reasons["nobits.dcm"]
    assert "too large" in reasons["huge.dcm"]
    assert "cannot decode" in reasons["video.dcm"] and "H.264" in reasons["video.dcm"]
    assert "transfer syntax missing" in reasons["nots.dcm"]
    assert all("\n" not in r and len(r) < 160 for r in reasons.values())

    (series,) = result.all_series()
    assert series.frame_count == 5
    vol = load_series(series)
    assert not vol.frame_problems
    assert sorted(float(vol.values(k)[0, 0]) for k in range(5)) == [1, 2, 3, 4, 5]


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    result = scan([tmp_path / "empty", tmp_path / "nowhere"])
    reasons = [p.reason for p in result.problems]
    assert any("folder is empty" in r for r in reasons)
    assert "not found" in reasons
    assert result.patients == []


def test_damaged_compressed_frame_is_a_frame_problem_not_an_exception(tmp_path):
    from pydicom.uid import RLELossless

    files = write_series(tmp_path, [0, 5, 10])
    ds = pydicom.dcmread(files[1])
    ds.compress(RLELossless, ds.pixel_array)
    frags = b"\x01\x00\x00\x00" + b"\xff" * 60  # RLE header claiming one segment, then junk
    ds.PixelData = encapsulate([frags])
    ds.save_as(files[1])
    (series,) = scan(tmp_path).all_series()
    vol = load_series(series)
    assert len(vol.frame_problems) == 1
    (k, reason), = vol.frame_problems.items()
    assert "decode" in reason or "damaged" in reason
    assert np.all(vol.frames[k] == 0)
    assert vol.loaded == 3


def test_missing_transfer_syntax_on_native_file_is_inferred_and_opens(tmp_path):
    path = write_slice(tmp_path / "a.dcm", 0, 42)
    ds = pydicom.dcmread(path)
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(path, enforce_file_format=False)
    (series,) = scan(tmp_path).all_series()
    assert any("transfer syntax" in w for w in series.warnings)
    vol = load_series(series)
    assert float(vol.values(0)[0, 0]) == 42.0
