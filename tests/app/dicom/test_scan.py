"""Scanning: grouping, sorting along the slice normal and what a reader is warned about."""

from __future__ import annotations

import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from app.dicom.loader import load_series
from app.dicom.scan import scan

STUDY = generate_uid()
SERIES = generate_uid()


def write_slice(
    path: Path,
    z: float,
    number: int,
    *,
    pixels: np.ndarray | None = None,
    series_uid: str = SERIES,
    sop_uid: str | None = None,
    orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    size: int = 16,
    position=None,
) -> Path:
    """A small but complete CT slice (explicit VR little endian, HU = stored − 1024)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Test^Phantom", "P1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.SeriesNumber = "20260101", "101500", "CT", 3
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
    ds.SeriesDescription = "Chest"
    ds.ImageType = list(image_type)
    ds.InstanceNumber = number
    ds.ImagePositionPatient = list(position) if position is not None else [-100.0, -120.0, float(z)]
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = [0.5, 0.8]
    ds.SliceThickness = 5.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if pixels is None:
        pixels = np.full((size, size), 1024 + number, dtype=np.uint16)
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, zs, numbers=None, **kw) -> list[Path]:
    numbers = list(numbers or range(1, len(zs) + 1))
    names = [f"{random.Random(i).getrandbits(40):x}.dcm" for i in range(len(zs))]
    return [write_slice(folder / n, z, num, **kw) for n, z, num in zip(names, zs, numbers)]


def positions(series) -> list[float]:
    return [i.image_position[2] for i in series.instances]


def test_sorts_by_position_not_instance_number(tmp_path):
    zs = [float(z) for z in range(0, 50, 5)]
    numbers = list(range(1, 11))
    random.Random(3).shuffle(numbers)
    write_series(tmp_path, zs, numbers)
    (series,) = scan(tmp_path).all_series()
    z = positions(series)
    assert z == sorted(z) or z == sorted(z, reverse=True)
    assert len(z) == 10
    assert series.warnings == []
    # the loaded volume follows the same order: slice k carries its file's value
    vol = load_series(series)
    for k, inst in enumerate(series.instances):
        assert vol.values(k)[0, 0] == inst.instance_number
        assert vol.geometry.origins[k][2] == pytest.approx(inst.image_position[2])


def test_keeps_scanner_direction_when_instance_numbers_run_against_position(tmp_path):
    zs = [float(z) for z in range(0, 50, 5)]
    write_series(tmp_path, zs, numbers=list(range(10, 0, -1)))  # instance 1 at the top (head first)
    (series,) = scan(tmp_path).all_series()
    assert positions(series) == sorted(zs, reverse=True)
    assert [i.instance_number for i in series.instances] == list(range(1, 11))


def test_non_uniform_spacing_is_reported(tmp_path):
    write_series(tmp_path, [0, 5, 10, 12, 20, 25, 31])
    (series,) = scan(tmp_path).all_series()
    assert any("non-uniform slice spacing" in w for w in series.warnings)


def test_missing_slices_are_reported(tmp_path):
    write_series(tmp_path, [0, 5, 10, 15, 30, 35, 40])
    (series,) = scan(tmp_path).all_series()
    assert any("2 slices missing" in w for w in series.warnings), series.warnings


def test_duplicates_same_uid_and_same_position(tmp_path):
    files = write_series(tmp_path / "a", [0, 5, 10, 15])
    shutil.copy(files[0], tmp_path / "copy.dcm")  # same SOP instance twice
    write_slice(tmp_path / "b" / "again.dcm", 10, 99)  # a second image at z = 10
    (series,) = scan(tmp_path).all_series()
    assert len(series.instances) == 5
    assert any("duplicate copy of the same image ignored" in w for w in series.warnings)
    assert any("share a position" in w for w in series.warnings)


def test_localizer_and_other_plane_go_to_their_own_stacks(tmp_path):
    write_series(tmp_path, [0, 5, 10, 15])
    write_slice(tmp_path / "scout.dcm", 0, 100, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                orientation=(0, 1, 0, 0, 0, -1))
    write_slice(tmp_path / "sag.dcm", 0, 101, orientation=(0, 1, 0, 0, 0, -1))
    stacks = scan(tmp_path).all_series()
    assert [s.frame_count for s in stacks] == [4, 1, 1]
    main = stacks[0]
    assert any("localizer" in w for w in main.warnings)
    assert any("mixed orientations" in w for w in main.warnings)
    assert len({s.uid for s in stacks}) == 3
    assert {getattr(s, "series_instance_uid") for s in stacks} == {SERIES}
    assert any("sagittal" in s.description for s in stacks[1:])


def test_single_slice_and_missing_positions(tmp_path):
    write_slice(tmp_path / "one" / "a.dcm", 0, 1, series_uid=generate_uid())
    for i in (3, 1, 2):
        p = write_slice(tmp_path / "nopos" / f"{i}.dcm", 0, i, series_uid=SERIES)
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    result = scan(tmp_path)
    single = next(s for s in result.all_series() if s.frame_count == 1)
    assert single.warnings == []  # one image is not a problem (issue #20, item 10)
    nopos = next(s for s in result.all_series() if s.frame_count == 3)
    assert [i.instance_number for i in nopos.instances] == [1, 2, 3]
    assert any("ordered by instance number" in w for w in nopos.warnings)


def test_zip_input_is_unpacked_and_loadable(tmp_path, monkeypatch):
    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    files = write_series(tmp_path / "src", [0, 5, 10])
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in files:
            zf.write(f, f"CT/{f.name}")
        zf.writestr("../evil.dcm", b"x")
    shutil.rmtree(tmp_path / "src")
    result = scan(archive)
    (series,) = result.all_series()
    assert series.frame_count == 3
    assert any("unsafe path" in p.reason for p in result.problems)
    vol = load_series(series)
    assert sorted(float(vol.values(k)[0, 0]) for k in range(3)) == [1.0, 2.0, 3.0]


def test_dicomdir_written_by_pydicom_is_followed(tmp_path):
    from pydicom.fileset import FileSet

    src = write_series(tmp_path / "src", [0, 5, 10, 15])
    fs = FileSet()
    for f in src:
        fs.add(pydicom.dcmread(f))
    fs.write(tmp_path / "media")
    result = scan(tmp_path / "media" / "DICOMDIR")
    (series,) = result.all_series()
    assert series.frame_count == 4 and not result.problems


def test_real_dicomdir_from_pydicom_testdata():
    from pydicom.data import get_testdata_file
    from pydicom.fileset import FileSet

    path = Path(get_testdata_file("DICOMDIR"))
    expected = {inst.SOPInstanceUID for inst in FileSet(pydicom.dcmread(path))}
    result = scan(path)
    found = {i.sop_instance_uid for s in result.all_series() for i in s.instances}
    assert found == expected
    names = {p.name for p in result.patients}
    assert len(names) >= 2


def test_unpacked_zips_are_private_and_pruned_when_unused(tmp_path, monkeypatch):
    """Unpacked archives hold patient data: owner-only, and deleted after a week unused."""
    import os
    import time
    import zipfile

    import pydicom.data

    from app.dicom import sources

    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    src = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(src, "CT_small.dcm")
    first = scan([archive])
    assert len(first.all_series()) == 1
    root = sources.cache_root()
    assert (root.stat().st_mode & 0o777) == 0o700
    (entry,) = list((root / "zip").iterdir())
    old = time.time() - 8 * 86400
    os.utime(entry / ".complete", (old, old))
    assert sources.prune_zip_cache() == 1 and not entry.exists()
    # opening the archive again unpacks it again
    assert len(scan([archive]).all_series()) == 1
