"""The fast header reader must agree with pydicom's reader, field for field, on real files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydicom.data import get_testdata_files

import app.dicom.header as header
from app.dicom.rawheader import read_fast

FILES = sorted(p for p in map(Path, get_testdata_files()) if p.is_file())


def _slow(path: Path, monkeypatch) -> object:
    with monkeypatch.context() as m:
        m.setattr(header, "read_fast", lambda *a: None)
        return header.read_header(path)


def test_fast_reader_matches_pydicom_reader_on_every_test_file(monkeypatch):
    used = 0
    for path in FILES:
        fast = header.read_header(path)
        slow = _slow(path, monkeypatch)
        used += read_fast(path) is not None
        assert type(fast) is type(slow), path
        if isinstance(fast, header.FileProblem):
            assert fast.reason == slow.reason, path
            continue
        for f in dataclasses.fields(fast):
            assert getattr(fast, f.name) == getattr(slow, f.name), (path.name, f.name)
    assert used > 150  # the fast path really is the common one


@pytest.mark.parametrize("cut", [140, 400, 1000])
def test_cut_files_are_reported_as_truncated(tmp_path, cut):
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[:cut])
    result = header.read_header(bad)
    assert isinstance(result, header.FileProblem)
    assert "truncated" in result.reason or "damaged" in result.reason, result.reason
