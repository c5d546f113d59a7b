"""The quick header path (no pydicom objects) and the single-read pixel path must change nothing
a reader could see: same instances, same problems, same pixels as the general readers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

import app.dicom.header as header
from app.dicom import rawheader
from app.dicom.loader import load_series
from app.dicom.scan import scan

FILES = sorted(p for p in map(Path, get_testdata_files()) if p.is_file())


def _general(path: Path, monkeypatch) -> object:
    """The header as the reader before the quick path gave it (raw data set + pydicom)."""
    with monkeypatch.context() as m:
        m.setattr(header, "_quick_spec", lambda: None)
        return header.read_header(path)


def _same(a, b, label) -> None:
    assert type(a) is type(b), label
    if isinstance(a, header.FileProblem):
        assert a.reason == b.reason, label
        return
    for f in dataclasses.fields(a):
        assert getattr(a, f.name) == getattr(b, f.name), (label, f.name)


def _quick_used(path: Path) -> bool:
    got = rawheader.read_fast(path, header._keep_tags(), header._quick_spec())
    return got is not None and type(got[0]) is rawheader.Values


def test_quick_path_matches_the_general_reader_on_every_test_file(monkeypatch):
    used = 0
    for path in FILES:
        _same(header.read_header(path), _general(path, monkeypatch), path.name)
        used += _quick_used(path)
    assert used > 120, used  # the quick path really is the common one


def _sample(tmp_path: Path, n: int = 6, size: int = 64) -> Path:
    from app.synthetic.sample import write_ct_study

    folder = tmp_path / "ct"
    write_ct_study(folder, n_slices=n, size=size, seed=0)
    return folder


def test_quick_path_matches_on_the_sample_study(tmp_path, monkeypatch):
    folder = _sample(tmp_path)
    files = sorted(folder.glob("*.dcm"))
    assert files and all(_quick_used(p) for p in files)
    for p in files:
        _same(header.read_header(p), _general(p, monkeypatch), p.name)


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    with pydicom.config.disable_value_validation():  # damaged values on purpose
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(dst, enforce_file_format=True)
    return dst


@pytest.mark.parametrize(
    "changes, quick",
    [
        ({"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Müller^Jörg"}, True),
        ({"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Müller^Jörg"}, True),
        ({"SpecificCharacterSet": "ISO_IR 144", "PatientName": "Иванов^Иван"}, False),
        ({"SpecificCharacterSet": "ISO_IR 100", "PatientName": ["A^B", "C^D"]}, False),
        ({"PatientName": "  Padded^Name  "}, True),
        ({"WindowCenter": ["40", "-600"], "WindowWidth": ["400", "1500"]}, True),
        ({"InstanceNumber": ""}, True),
    ],
)
def test_character_sets_and_odd_values_agree(tmp_path, monkeypatch, changes, quick):
    src = sorted(_sample(tmp_path, n=1).glob("*.dcm"))[0]
    dst = _rewrite(src, tmp_path / "x.dcm", **changes)
    assert _quick_used(dst) is quick
    _same(header.read_header(dst), _general(dst, monkeypatch), changes)


def test_sequences_in_wanted_tags_fall_back_to_the_general_reader(tmp_path, monkeypatch):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    src = sorted(_sample(tmp_path, n=1).glob("*.dcm"))[0]
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.LUTData = np.array([0, 100, 200, 300], dtype="<u2").tobytes()
    dst = _rewrite(src, tmp_path / "voi.dcm", VOILUTSequence=Sequence([item]))
    assert not _quick_used(dst)
    inst = header.read_header(dst)
    assert inst.has_voi_lut
    _same(inst, _general(dst, monkeypatch), "voi")


@pytest.mark.parametrize("raw", [b"abc ", b"1,5 ", b"\x00\x00\x00\x00"])
def test_damaged_numbers_agree(tmp_path, monkeypatch, raw):
    src = sorted(_sample(tmp_path, n=1).glob("*.dcm"))[0]
    dst = _rewrite(src, tmp_path / "x.dcm", RescaleSlope="9.75")
    data = dst.read_bytes()
    assert data.count(b"9.75") == 1
    dst.write_bytes(data.replace(b"9.75", raw))
    assert _quick_used(dst)
    _same(header.read_header(dst), _general(dst, monkeypatch), raw)


@pytest.mark.parametrize("cut", [100, 140, 300, 700, 2000])
def test_cut_sample_files_give_the_same_reason(tmp_path, monkeypatch, cut):
    src = sorted(_sample(tmp_path, n=1).glob("*.dcm"))[0]
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(src.read_bytes()[:cut])
    got = header.read_header(bad)
    assert isinstance(got, header.FileProblem)
    _same(got, _general(bad, monkeypatch), cut)


def test_long_header_needs_more_than_one_read(tmp_path, monkeypatch):
    src = sorted(_sample(tmp_path, n=1).glob("*.dcm"))[0]
    dst = _rewrite(src, tmp_path / "long.dcm", ImageComments="x" * 40000)
    assert _quick_used(dst)
    _same(header.read_header(dst), _general(dst, monkeypatch), "long")


def test_unreadable_and_empty_files(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert header.read_header(empty).reason == "empty file (0 bytes)"
    assert header.read_header(tmp_path / "missing.dcm").reason.startswith("cannot be read")
    assert header.read_header(tmp_path).reason.startswith("cannot be read")


def test_scan_and_load_on_the_quick_path_give_pydicoms_values(tmp_path):
    folder = _sample(tmp_path, n=8, size=96)
    (series,) = scan(folder).all_series()
    vol = load_series(series)
    assert not vol.frame_problems
    for k, inst in enumerate(series.instances):
        ds = pydicom.dcmread(inst.path)
        assert np.array_equal(vol.frames[k], ds.pixel_array.astype(vol.frames.dtype))
        assert vol.slopes[k] == float(ds.RescaleSlope) and vol.intercepts[k] == float(ds.RescaleIntercept)


def test_file_cut_after_the_scan_gives_a_frame_problem_not_an_exception(tmp_path):
    folder = _sample(tmp_path, n=4, size=64)
    (series,) = scan(folder).all_series()
    victim = series.instances[2].path
    victim.write_bytes(victim.read_bytes()[:-100])
    vol = load_series(series)
    assert vol.frame_problems == {2: "image data ends early: file truncated"}
    assert vol.loaded == 4


def test_native_reads_without_preadv(tmp_path, monkeypatch):
    import os

    folder = _sample(tmp_path, n=3, size=64)
    (series,) = scan(folder).all_series()
    expected = load_series(series).frames.copy()
    monkeypatch.delattr(os, "preadv", raising=False)
    assert np.array_equal(load_series(series).frames, expected)


def test_first_slice_lands_first_and_cancel_stops(tmp_path):
    from app.dicom.loader import LoadCancelled

    folder = _sample(tmp_path, n=12, size=64)
    (series,) = scan(folder).all_series()
    seen: list[int] = []
    load_series(series, on_frame=lambda k, v: seen.append(k))
    assert seen == list(range(12))
    with pytest.raises(LoadCancelled):
        load_series(series, on_frame=lambda k, v: None, cancel=lambda: True)
