"""Issue #19, DICOM input: no single hostile file may crash, hang or take a study down.

Each test builds the attack in ``tmp_path`` (from pydicom's own test files or the suite's
synthetic slices), opens it beside a good file, and checks that the bad one becomes one
line a radiologist understands while the good one still lists and renders. Anything that
could kill or hang the interpreter on a regression (a native decoder abort, a FIFO, a
zero-filled gigabyte) runs ``xmedgpt`` in a subprocess with a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from app.dicom import sources
from app.dicom.limits import MAX_SEQUENCE_DEPTH
from app.dicom.scan import scan
from tests.app.dicom.test_scan import write_series, write_slice

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- helpers


def xmedgpt(*args: str, tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``xmedgpt ARGS`` through the real console entry, in its own process (a crash stays there)."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XMEDGPT_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "ui.shell.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def clean_exit(proc: subprocess.CompletedProcess, codes=(0,)) -> None:
    """No signal death (SIGABRT from a native decoder), no traceback, no C++ terminate message."""
    assert proc.returncode >= 0, f"killed by signal {signal.Signals(-proc.returncode).name}: {proc.stderr[-2000:]}"
    assert proc.returncode in codes, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "terminate called" not in proc.stderr, proc.stderr[-2000:]


def info_json(folder: Path, tmp_path: Path, timeout: float = 60) -> dict:
    proc = xmedgpt("info", str(folder), "--json", tmp_path=tmp_path, timeout=timeout)
    clean_exit(proc, codes=(0, 1))
    return json.loads(proc.stdout)


def reasons(info: dict) -> dict[str, str]:
    return {Path(p["path"]).name: p["reason"] for p in info["problems"]}


def one_line(reason: str) -> bool:
    return "\n" not in reason and 0 < len(reason) < 200


def listed_files(result) -> set[str]:
    return {i.path.name for s in result.all_series() for i in s.instances}


def sample_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def meta_end(raw: bytes) -> int:
    """Offset of the first data set element after a Part 10 file's meta group."""
    pos = 132
    while struct.unpack_from("<H", raw, pos)[0] == 0x0002:
        vr = raw[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            pos += 12 + struct.unpack_from("<L", raw, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", raw, pos + 6)[0]
    return pos


def nested_sequences(depth: int, *, implicit: bool = False, big: bool = False) -> bytes:
    """``depth`` undefined-length sequences, each the only element of its parent's one item."""
    e = ">" if big else "<"

    def tag(group: int, elem: int) -> bytes:
        return struct.pack(e + "HH", group, elem)

    sq = tag(0x0008, 0x1140) + (b"" if implicit else b"SQ\0\0") + struct.pack(e + "L", 0xFFFFFFFF)
    item = tag(0xFFFE, 0xE000) + struct.pack(e + "L", 0xFFFFFFFF)
    close = tag(0xFFFE, 0xE00D) + struct.pack(e + "L", 0) + tag(0xFFFE, 0xE0DD) + struct.pack(e + "L", 0)
    return (sq + item) * depth + close * depth


def with_nesting(src: Path, dst: Path, depth: int, **kw) -> Path:
    raw = src.read_bytes()
    at = meta_end(raw)
    dst.write_bytes(raw[:at] + nested_sequences(depth, **kw) + raw[at:])
    return dst


def new_sop(path: Path, **changes) -> Path:
    """``path`` rewritten with a fresh SOP Instance UID (so the scan does not merge it) and ``changes``."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)
    return path


# ---------------------------------------------------------------- 1. native decoder abort


def test_jpegls_with_forged_rows_columns_is_a_bad_file_not_an_abort(tmp_path):
    """Rows/Columns changed to 65535×1 made GDCM abort the process (SIGABRT) on decode."""
    folder = tmp_path / "study"
    folder.mkdir()
    src = sample_file("JPEGLSNearLossless_08.dcm")
    shutil.copy(src, folder / "good.dcm")
    bad = folder / "bad.dcm"
    shutil.copy(src, bad)
    new_sop(bad, Rows=65535, Columns=1)

    info = info_json(folder, tmp_path)
    why = reasons(info)["bad.dcm"]
    assert one_line(why) and "damaged file" in why and "1×65535" in why and "10×45" in why
    (series,) = [s for p in info["patients"] for st in p["studies"] for s in st["series"]]
    assert (series["rows"], series["columns"], series["instances"]) == (45, 10, 1)

    out = tmp_path / "good.png"
    proc = xmedgpt("render", str(folder), "--out", str(out), tmp_path=tmp_path)
    clean_exit(proc)
    assert out.stat().st_size > 0 and "10×45" in proc.stdout


def _patch_second_frame_size(src: Path, dst: Path, rows: int, columns: int) -> None:
    """Frame 2's JPEG-LS SOF55 says ``columns``×``rows``; the DICOM header and frame 1 stay right."""
    raw = bytearray(src.read_bytes())
    sof = [i for i in range(len(raw) - 1) if raw[i] == 0xFF and raw[i + 1] == 0xF7]
    assert len(sof) >= 2
    struct.pack_into(">HH", raw, sof[1] + 5, rows, columns)
    dst.write_bytes(bytes(raw))


def test_loader_checks_every_compressed_frame_before_the_decoder(tmp_path):
    """The scan checks the first frame; the loader checks each frame just before decoding it, so a
    bad frame deep in a multi-frame file is one black slice with a reason, not a dead process."""
    folder = tmp_path / "mf"
    folder.mkdir()
    _patch_second_frame_size(sample_file("emri_small_jpeg_ls_lossless.dcm"), folder / "cine.dcm", 65535, 1)
    script = (
        "import json\n"
        "from app.dicom.scan import scan\n"
        "from app.dicom.loader import load_series\n"
        f"(s,) = scan({str(folder)!r}).all_series()\n"
        "v = load_series(s)\n"
        "print(json.dumps({'n': len(v), 'bad': {str(k): r for k, r in v.frame_problems.items()}}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    clean_exit(proc)
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["n"] == 10 and len(got["bad"]) == 1
    ((k, why),) = got["bad"].items()
    assert one_line(why) and "64×64" in why and "1×65535" in why

    image = str(int(k) + 1)  # the viewer's number of the damaged slice
    proc = xmedgpt("render", str(folder), "--out", str(tmp_path / "k.png"), "--slice", image, tmp_path=tmp_path)
    clean_exit(proc, codes=(1,))
    line = proc.stderr.strip().splitlines()[-1]  # after the loader's own log line, if any
    assert line.startswith(f"xmedgpt: Image {image} cannot be shown: damaged file") and "1×65535" in line
    other = "1" if image != "1" else "2"
    clean_exit(xmedgpt("render", str(folder), "--out", str(tmp_path / "o.png"), "--slice", other, tmp_path=tmp_path))


# ---------------------------------------------------------------- 2. deep nesting


def test_3000_deep_sequences_mark_the_file_bad_and_the_folder_still_opens(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(sample_file("CT_small.dcm"), folder / "good.dcm")
    with_nesting(sample_file("CT_small.dcm"), folder / "deep_explicit.dcm", 3000)
    with_nesting(sample_file("MR_small_implicit.dcm"), folder / "deep_implicit.dcm", 3000, implicit=True)
    # Big endian is not the fast reader's: pydicom reads it, and pydicom recurses per sequence.
    with_nesting(sample_file("MR_small_bigendian.dcm"), folder / "deep_bigendian.dcm", 3000, big=True)

    info = info_json(folder, tmp_path)
    why = reasons(info)
    for name in ("deep_explicit.dcm", "deep_implicit.dcm", "deep_bigendian.dcm"):
        assert one_line(why[name]) and "nested" in why[name] and "deep" in why[name], why
    assert info["series_count"] == 1 and "good.dcm" not in why
    clean_exit(xmedgpt("render", str(folder), "--out", str(tmp_path / "x.png"), tmp_path=tmp_path))


def test_nesting_just_inside_the_limit_still_opens(tmp_path):
    """The depth guard is a limit on hostile files, not on real ones: 20 levels open as before."""
    shallow = with_nesting(sample_file("CT_small.dcm"), tmp_path / "shallow.dcm", 20)
    deep = with_nesting(sample_file("MR_small.dcm"), tmp_path / "deep.dcm", MAX_SEQUENCE_DEPTH + 5)
    result = scan(tmp_path)
    assert listed_files(result) == {"shallow.dcm"}
    assert [p.path.name for p in result.problems] == ["deep.dcm"]
    assert shallow.exists() and deep.exists()


# ---------------------------------------------------------------- 3. DICOMDIR escapes


def test_dicomdir_cannot_reach_outside_its_folder(tmp_path):
    from pydicom.fileset import FileSet

    src = write_series(tmp_path / "src", [0, 5, 10, 15])
    fs = FileSet()
    for f in src:
        fs.add(pydicom.dcmread(f))
    media = tmp_path / "media"
    fs.write(media)
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = write_slice(outside / "evil.dcm", 0, 1, series_uid=generate_uid())
    new_sop(evil, PatientName="Outside^Patient", PatientID="OUT")
    (media / "link.dcm").symlink_to(evil)

    dicomdir = media / "DICOMDIR"
    ds = pydicom.dcmread(dicomdir)
    images = [r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
    assert len(images) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns: not valid CS values (that is the attack)
        images[0].ReferencedFileID = ["..", "outside", "evil.dcm"]
        images[1].ReferencedFileID = str(evil)  # absolute
        images[2].ReferencedFileID = ["link.dcm"]  # a link inside the folder to a file outside it
        ds.save_as(dicomdir)

    result = scan(dicomdir)
    assert {p.name for p in result.patients} == {"Test^Phantom"}
    (series,) = result.all_series()
    assert series.frame_count == 1
    escapes = [p.reason for p in result.problems if "outside its folder" in p.reason]
    assert len(escapes) == 3 and all(one_line(r) for r in escapes)

    from app.cli import main

    out = tmp_path / "x.png"
    assert main(["render", str(dicomdir), "--out", str(out)]) == 0
    assert out.exists()


# ---------------------------------------------------------------- 4. FIFOs and devices


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_and_devices_are_skipped_never_opened(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    write_series(folder, [0, 5])
    os.mkfifo(folder / "x.dcm")
    (folder / "link_to_fifo.dcm").symlink_to(folder / "x.dcm")
    (folder / "zero.dcm").symlink_to("/dev/zero")
    (folder / "broken.dcm").symlink_to(tmp_path / "nowhere.dcm")

    t0 = time.monotonic()
    info = info_json(folder, tmp_path, timeout=30)
    why = reasons(info)
    assert "named pipe" in why["x.dcm"] and "named pipe" in why["link_to_fifo.dcm"]
    assert "device" in why["zero.dcm"] and "broken link" in why["broken.dcm"]
    assert all(one_line(r) for r in why.values())
    assert info["series_count"] == 1

    # the pipe named on the command line itself, and render of the folder
    proc = xmedgpt("info", str(folder / "x.dcm"), str(folder / "zero.dcm"), tmp_path=tmp_path, timeout=30)
    clean_exit(proc, codes=(1,))
    assert "named pipe" in proc.stdout and "device" in proc.stdout
    clean_exit(xmedgpt("render", str(folder), "--out", str(tmp_path / "x.png"), tmp_path=tmp_path, timeout=30))
    assert time.monotonic() - t0 < 60


# ---------------------------------------------------------------- 5. zero-filled and sparse files


def _sparse(path: Path, head: bytes, size: int = 1 << 30) -> Path:
    with open(path, "wb") as fp:
        fp.write(head)
        fp.truncate(size)  # a hole: zeros that take no disk space
    return path


def _meta(syntax: str) -> bytes:
    """Preamble, 'DICM' and a file meta group naming ``syntax``: where the data set would start."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = pydicom.dataset.FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta)
    return bytes(128) + b"DICM" + buf.getvalue()


def test_zero_filled_and_sparse_gigabytes_are_rejected_in_moments(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    write_series(folder, [0, 5])
    _sparse(folder / "sparse.dcm", b"")
    _sparse(folder / "preamble_only.dcm", bytes(128) + b"DICM")
    _sparse(folder / "implicit.dcm", _meta("1.2.840.10008.1.2"))
    _sparse(folder / "explicit.dcm", _meta("1.2.840.10008.1.2.1"))
    _sparse(folder / "bigendian.dcm", _meta("1.2.840.10008.1.2.2"))
    _sparse(folder / "deflated.dcm", _meta("1.2.840.10008.1.2.1.99"))
    # no preamble, a plausible first element, then a gigabyte of zeros
    _sparse(folder / "plausible_start.dcm", b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")

    t0 = time.monotonic()
    info = info_json(folder, tmp_path, timeout=30)
    took = time.monotonic() - t0
    why = reasons(info)
    bad = {"sparse.dcm", "preamble_only.dcm", "implicit.dcm", "explicit.dcm", "bigendian.dcm", "deflated.dcm",
           "plausible_start.dcm"}
    assert bad <= set(why), why
    assert all(one_line(why[n]) for n in bad)
    assert info["series_count"] == 1
    assert took < 20, f"7 GB of zeros took {took:.1f} s to reject"


def test_deflated_data_set_bomb_and_trailing_gigabyte(tmp_path):
    """A deflated data set is inflated by pydicom all at once, in memory: a stream unpacking 1000× is
    refused after a few MiB of streaming; a good one with a sparse gigabyte after it opens unread."""
    import io

    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "bomb.dcm").write_bytes(_meta("1.2.840.10008.1.2.1.99") + _zeros_member(1024)[0])
    good = pydicom.dcmread(sample_file("image_dfl.dcm"))
    good.SOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    good.save_as(buf)
    _sparse(folder / "then_zeros.dcm", buf.getvalue())
    shutil.copy(sample_file("image_dfl.dcm"), folder / "good.dcm")

    t0 = time.monotonic()
    result = scan(folder)
    assert time.monotonic() - t0 < 10
    (problem,) = result.problems
    assert problem.path.name == "bomb.dcm" and "deflated data set unpacks to more than" in problem.reason
    assert listed_files(result) == {"good.dcm", "then_zeros.dcm"}
    from app.dicom.loader import load_series

    for series in result.all_series():
        assert not load_series(series).frame_problems


def test_header_reads_are_capped(tmp_path, monkeypatch):
    """A header that never reaches pixel data stops at MAX_HEADER_BYTES (lowered here)."""
    from app.dicom import header, rawheader

    monkeypatch.setattr(rawheader, "MAX_HEADER_BYTES", 1 << 20)
    monkeypatch.setattr(header, "MAX_HEADER_BYTES", 1 << 20)
    good = write_slice(tmp_path / "good.dcm", 0, 1)
    raw = good.read_bytes()
    at = meta_end(raw)
    # 4 MiB of a valid, repeated private element (0009,0010) LO "x " before the real header
    filler = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 2) + b"x "
    (tmp_path / "long.dcm").write_bytes(raw[:at] + filler * ((4 << 20) // len(filler)) + raw[at:])
    result = scan(tmp_path)
    assert listed_files(result) == {"good.dcm"}
    (problem,) = result.problems
    assert "larger than 1 MiB" in problem.reason


# ---------------------------------------------------------------- 6. zip archives


def _zip(path: Path, members: list[tuple[str, bytes, int, int]]) -> Path:
    """A zip written by hand: (name, raw deflate stream, CRC-32, declared size) per member."""
    out = bytearray()
    central = bytearray()
    for name, data, crc, size in members:
        offset = len(out)
        n = name.encode()
        out += struct.pack("<LHHHHHLLLHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(n), 0) + n + data
        central += struct.pack("<LHHHHHHLLLHHHHHLL", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    eocd = struct.pack("<LHHHHLLH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))
    return path


def _deflate(data: bytes) -> tuple[bytes, int, int]:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(), zlib.crc32(data), len(data)


def _zeros_member(size_mib: int) -> tuple[bytes, int, int]:
    """A raw deflate stream of ``size_mib`` MiB of zeros in ~1 KB per MiB, built in milliseconds:
    one fully flushed (self-contained) block repeated, then an empty final block."""
    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = 0
    for _ in range(size_mib):
        crc = zlib.crc32(mib, crc)
    return block * size_mib + end, crc, size_mib << 20


def _good_members(tmp_path: Path) -> list[tuple[str, bytes, int, int]]:
    files = write_series(tmp_path / "src", [0, 5, 10])
    return [(f"CT/{f.name}", *_deflate(f.read_bytes())) for f in files]


def _cache_bytes(tmp_path: Path) -> int:
    root = tmp_path / "cache"
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0


def test_zip_bomb_member_is_refused_before_unpacking_and_the_rest_opens(tmp_path, monkeypatch):
    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    archive = _zip(tmp_path / "study.zip", [*_good_members(tmp_path), ("CT/bomb.dcm", *_zeros_member(1024))])
    assert archive.stat().st_size < 1_200_000  # 1.1 MB on disk, 1 GiB inside

    t0 = time.monotonic()
    result = scan(archive)
    assert time.monotonic() - t0 < 10
    (series,) = result.all_series()
    assert series.frame_count == 3
    (problem,) = result.problems
    assert "zip bomb" in problem.reason and one_line(problem.reason)
    assert _cache_bytes(tmp_path) < 1 << 20  # the gigabyte never reached the disk


def test_zip_member_lying_about_its_size_is_cut_at_the_declared_size(tmp_path, monkeypatch):
    """The header says 1000 bytes (CRC of those 1000), the stream holds 64 MiB: 1000 bytes land."""
    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    data, _crc, _size = _zeros_member(64)
    archive = _zip(tmp_path / "liar.zip", [*_good_members(tmp_path), ("liar.dcm", data, zlib.crc32(bytes(1000)), 1000)])
    result = scan(archive)
    assert len(result.all_series()) == 1
    assert _cache_bytes(tmp_path) < 1 << 20


def test_unpacking_stops_when_a_member_streams_more_than_it_declared(tmp_path, monkeypatch):
    """Our own limit while streaming, whatever zipfile does: the archive is refused and removed."""
    import io
    import zipfile

    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    archive = _zip(tmp_path / "s.zip", _good_members(tmp_path))
    real_open = zipfile.ZipFile.open

    def lying_open(self, member, *a, **kw):  # the last member streams 5 MiB, whatever it declared
        name = member.filename if isinstance(member, zipfile.ZipInfo) else member
        if name == self.infolist()[-1].filename:
            return io.BytesIO(bytes(5 << 20))
        return real_open(self, member, *a, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "open", lying_open)
    result = scan(archive)
    assert result.all_series() == []
    (problem,) = result.problems
    assert "more than its header says" in problem.reason
    assert not list((tmp_path / "cache" / "xmedgpt" / "zip").iterdir())  # nothing half-unpacked stays


def test_zip_member_count_size_and_disk_space_limits(tmp_path, monkeypatch):
    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    members = _good_members(tmp_path)
    many = _zip(tmp_path / "many.zip", [(f"f{i}.dcm", *_deflate(b"x" * 10)) for i in range(12)] + members)
    monkeypatch.setattr(sources, "MAX_ZIP_MEMBERS", 10)
    (problem,) = scan(many).problems
    assert "15 files, more than 10" in problem.reason
    monkeypatch.undo()

    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "MAX_ZIP_MEMBER_BYTES", 1000)
    result = scan(_zip(tmp_path / "big.zip", members))
    assert result.all_series() == [] and len(result.problems) == 3
    assert all("more than one image can be" in p.reason for p in result.problems)
    monkeypatch.undo()

    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "ZIP_FREE_DISK_MARGIN", 1 << 62)
    (problem,) = scan(_zip(tmp_path / "disk.zip", members)).problems
    assert "not enough free disk space" in problem.reason


def test_zip_slip_names_stay_inside_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XMEDGPT_CACHE", str(tmp_path / "cache"))
    evil = _deflate(b"owned")
    names = ["../evil1.dcm", "/tmp/evil2.dcm", "C:/evil3.dcm", "a/../../evil4.dcm", "..\\evil5.dcm"]
    archive = _zip(tmp_path / "slip.zip", [*_good_members(tmp_path), *[(n, *evil) for n in names]])
    result = scan(archive)
    assert len(result.all_series()) == 1
    # '..' and drive letters are refused; a leading '/' is dropped (the name stays inside the cache)
    assert sum("unsafe path" in p.reason for p in result.problems) == 4
    assert not [p for p in tmp_path.rglob("evil*") if "cache" not in p.parts]
    assert not Path("/tmp/evil2.dcm").exists()


def test_a_good_study_beside_every_attack_at_once(tmp_path):
    """All of the above in one folder: the good series still lists, with one line per bad file."""
    folder = tmp_path / "study"
    folder.mkdir()
    write_series(folder, [0, 5, 10])
    bad = folder / "jls.dcm"
    shutil.copy(sample_file("JPEGLSNearLossless_08.dcm"), bad)
    new_sop(bad, Rows=65535, Columns=1)
    with_nesting(sample_file("CT_small.dcm"), folder / "deep.dcm", 3000)
    _sparse(folder / "sparse.dcm", b"", 1 << 28)
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.dcm")
    info = info_json(folder, tmp_path, timeout=30)
    why = reasons(info)
    assert {"jls.dcm", "deep.dcm", "sparse.dcm"} <= set(why) and all(one_line(r) for r in why.values())
    frames = [s["frames"] for p in info["patients"] for st in p["studies"] for s in st["series"]]
    assert 3 in frames
    assert len(frames) == info["series_count"]
