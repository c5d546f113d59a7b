"""Seeded fuzzing of the DICOM engine (issue #19): 500 mutants of real files per run.

Mutants of small real files (pydicom's test files and the pydicom-data wheel's: native,
big endian, implicit, deflated, RLE, JPEG, JPEG-LS, JPEG 2000, multi-frame, colour) — byte
flips, truncations, deleted tags, absurd Rows/Columns/NumberOfFrames/BitsAllocated, huge
lengths, deep nesting, zeroed ranges, forged codestream sizes, broken fragments — go through
the code of ``xmedgpt info`` (scan, JSON and text listing) and ``xmedgpt render`` (open one
slice, load, window, PNG) plus the viewer's full-series load, in worker processes: 50 mutants
per worker, each announced before it starts, so an abort (signal death) or a hang (no answer
in 30 s) is pinned to one mutant and reported as a failure instead of taking pytest down.
After its mutants, each worker scans its whole folder: the unmutated files beside them must
still be listed and load.

Pass: zero crashes (an exception other than the engine's own ``XMedError``, or a dead worker),
zero hangs, every worker's peak RSS under 1 GB, every good file listed. The seed is fixed when
``CI`` is set (else drawn and printed; ``XMEDGPT_FUZZ_SEED`` replays one, ``XMEDGPT_FUZZ_N``
changes the count). Failing mutants are copied to ``test-output/dicom-fuzz/`` to replay.
"""

from __future__ import annotations

import io
import json
import os
import queue
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

resource = pytest.importorskip("resource")  # POSIX: peak RSS of the workers

REPO = Path(__file__).resolve().parents[2]

#: Base files (found by pydicom.data.get_testdata_file): small, and every codec and encoding the loader knows.
BASES = [
    "CT_small.dcm",  # explicit VR little endian, 16-bit (the fast path)
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",  # pydicom's reader, not ours
    "image_dfl.dcm",  # deflated
    "MR_small_RLE.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",  # colour, two frames
    "JPGExtended.dcm",  # JPEG extended 12-bit
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG baseline colour
    "JPEGLSNearLossless_08.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "emri_small_jpeg_ls_lossless.dcm",  # pydicom-data: multi-frame JPEG-LS
    "emri_small_jpeg_2k_lossless.dcm",  # pydicom-data: multi-frame JPEG 2000
    "SC_rgb.dcm",  # pydicom-data
]
PER_WORKER = 50
HANG_S = 30.0
PEAK_RSS_BYTES = 1024**3


def _unique_goods(bases: dict[str, bytes]) -> dict[str, bytes]:
    """The originals with SOP Instance UIDs of their own (pydicom's MR_small* files share one, and a
    scan rightly keeps one copy of an instance), so that each good file must be listed."""
    import pydicom
    from pydicom.uid import generate_uid

    out = {}
    for name, raw in bases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(raw))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False)
        out[name] = buf.getvalue()
    return out


def _base_files() -> dict[str, bytes]:
    from pydicom.data import get_testdata_file

    out = {}
    for name in BASES:
        try:
            path = get_testdata_file(name)
        except Exception:  # noqa: BLE001 - an older pydicom-data may lack one
            path = None
        if path:
            out[name] = Path(path).read_bytes()
    return out


# ---------------------------------------------------------------- mutations (parent side)


def _header_end(raw: bytes) -> int:
    """Rough end of the header: where pixel data starts (or the whole file)."""
    for tag in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        at = raw.find(tag, 132)
        if at > 0:
            return at
    return len(raw)


def _elements(raw: bytes) -> list[tuple[int, int, int, int]]:
    """(tag, length field offset, length field size, value offset) of the top-level elements that
    the fast reader sees (little-endian Part 10 files); [] for others."""
    from app.dicom import rawheader

    try:
        parsed = rawheader._parse(raw, True)  # noqa: SLF001 - the parser's own element offsets
    except Exception:  # noqa: BLE001
        return []
    if parsed is None:
        return []
    ds, pixel = parsed
    out = []
    for elem in list(ds.file_meta._dict.values()) + list(ds._dict.values()):  # noqa: SLF001
        start = elem.value_tell
        implicit = elem.is_implicit_VR and elem.tag.group != 2
        long = implicit or elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UN", "UR", "UT", "SV", "UV")
        out.append((int(elem.tag), start - 4 if long else start - 2, 4 if long else 2, start))
    if pixel is not None:
        out.append((0x7FE00010, pixel[1] - 4, 4, pixel[1]))
    return out


def _flip(rng: random.Random, raw: bytearray) -> str:
    n = rng.choice([1, 2, 4, 8, 16, 64])
    end = _header_end(bytes(raw)) + 64
    for _ in range(n):
        pos = rng.randrange(min(end, len(raw))) if rng.random() < 0.7 else rng.randrange(len(raw))
        raw[pos] ^= rng.randrange(1, 256)
    return f"flip {n} bytes"


def _truncate(rng: random.Random, raw: bytearray) -> str:
    end = _header_end(bytes(raw)) + 16
    at = rng.randrange(min(end, len(raw))) if rng.random() < 0.5 else rng.randrange(len(raw))
    del raw[at:]
    return f"truncate at {at}"


def _zero_range(rng: random.Random, raw: bytearray) -> str:
    start = rng.randrange(len(raw))
    size = rng.choice([8, 64, 512, 4096, len(raw)])
    raw[start : start + size] = bytes(len(raw[start : start + size]))
    return f"zero {size} bytes at {start}"


def _duplicate_chunk(rng: random.Random, raw: bytearray) -> str:
    start = rng.randrange(len(raw))
    size = rng.choice([4, 8, 12, 100, 1000])
    at = rng.randrange(len(raw))
    raw[at:at] = raw[start : start + size]
    return f"insert {size} copied bytes at {at}"


def _via_pydicom(raw: bytearray, change) -> bool:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(io.BytesIO(bytes(raw)), force=True)
            change(ds)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=False)
        except Exception:  # noqa: BLE001 - pydicom refused this change: the caller flips bytes instead
            return False
    raw[:] = out.getvalue()
    return True


ABSURD = {
    "Rows": [0, 1, 2, 65535, 32768, 4097],
    "Columns": [0, 1, 3, 65535, 32768, 4097],
    "NumberOfFrames": ["0", "-1", "2147483647", "1000", "65535", "x", "3"],
    "BitsAllocated": [0, 1, 7, 12, 24, 32, 64, 255, 65535],
    "BitsStored": [0, 1, 17, 33, 64, 65535],
    "HighBit": [0, 31, 65535],
    "SamplesPerPixel": [0, 2, 3, 4, 255, 65535],
    "PixelRepresentation": [1, 2, 65535],
    "PlanarConfiguration": [1, 2, 65535],
    "PhotometricInterpretation": ["PALETTE COLOR", "YBR_FULL_422", "RGB", "MONOCHROME1", "XYZ", ""],
    "RescaleSlope": ["0", "1e308", "-1e308", "nan", "inf"],
    "WindowWidth": ["0", "-5", "1e308", "nan"],
}


def _absurd(rng: random.Random, raw: bytearray) -> str:
    changes = rng.sample(sorted(ABSURD), rng.choice([1, 1, 2, 3]))
    picked = {k: rng.choice(ABSURD[k]) for k in changes}

    def change(ds):
        for key, value in picked.items():
            setattr(ds, key, value)

    if _via_pydicom(raw, change):
        return f"set {picked}"
    return _flip(rng, raw)


def _delete_tag(rng: random.Random, raw: bytearray) -> str:
    keywords = ["Rows", "Columns", "BitsAllocated", "BitsStored", "SamplesPerPixel", "PixelData",
                "PhotometricInterpretation", "NumberOfFrames", "PixelRepresentation", "SOPInstanceUID",
                "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"]
    key = rng.choice(keywords)
    meta = rng.random() < 0.15

    def change(ds):
        if meta:
            del ds.file_meta.TransferSyntaxUID
        elif key in ds:
            delattr(ds, key)

    if _via_pydicom(raw, change):
        return "delete TransferSyntaxUID" if meta else f"delete {key}"
    return _flip(rng, raw)


def _huge_length(rng: random.Random, raw: bytearray) -> str:
    elements = _elements(bytes(raw))
    if not elements:
        return _flip(rng, raw)
    tag, at, size, _start = rng.choice(elements)
    if size == 2:
        value = rng.choice([0xFFFF, 0xFFFE, 0x8001, 1])
        struct.pack_into("<H", raw, at, value)
    else:
        value = rng.choice([0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF, 0x10000000, len(raw) * 2 + 1, 3])
        struct.pack_into("<L", raw, at, value)
    return f"length of ({tag >> 16:04X},{tag & 0xFFFF:04X}) := {value:#x}"


def _deep_nesting(rng: random.Random, raw: bytearray) -> str:
    from tests.hostile.test_dicom_input import meta_end, nested_sequences

    depth = rng.choice([65, 200, 1000, 3000, 10000])
    try:
        at = meta_end(bytes(raw))
    except struct.error:
        return _flip(rng, raw)
    ts = raw[132:at]
    big = b"1.2.840.10008.1.2.2\x00" in ts or b"1.2.840.10008.1.2.2 " in ts
    implicit = b"1.2.840.10008.1.2\x00" in ts
    if rng.random() < 0.3:  # defined lengths: nothing to skip by delimiter, pydicom still recurses
        e = ">" if big else "<"
        inner = b""
        for _ in range(min(depth, 2000)):
            item = struct.pack(e + "HHL", 0xFFFE, 0xE000, len(inner)) + inner
            head = struct.pack(e + "HH", 0x0008, 0x1140)
            inner = head + (struct.pack(e + "L", len(item)) if implicit else b"SQ\0\0" + struct.pack(e + "L", len(item)))
            inner += item
        raw[at:at] = inner
        return f"nest {min(depth, 2000)} defined-length sequences"
    raw[at:at] = nested_sequences(depth, implicit=implicit, big=big)
    return f"nest {depth} undefined-length sequences"


def _codestream(rng: random.Random, raw: bytearray) -> str:
    """Forge the size a JPEG/JPEG-LS SOF or JPEG 2000 SIZ declares (the GDCM abort of issue #19)."""
    data = bytes(raw)
    sofs = [i for i in range(_header_end(data), len(data) - 10)
            if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC3, 0xF7)]
    sizs = [i for i in range(_header_end(data), len(data) - 44) if data[i : i + 4] == b"\xff\x4f\xff\x51"]
    if sofs and (not sizs or rng.random() < 0.5):
        at = rng.choice(sofs)
        rows, cols = rng.choice([(65535, 1), (1, 65535), (0, 0), (8, 8), (4096, 4096), (rng.randrange(65536), 7)])
        struct.pack_into(">HH", raw, at + 5, rows, cols)
        if rng.random() < 0.3:
            raw[at + 4] = rng.choice([1, 2, 16, 17, 255])  # precision
        if rng.random() < 0.2:
            raw[at + 9] = rng.choice([0, 2, 4, 255])  # components
        return f"SOF at {at} says {cols}×{rows}"
    if sizs:
        at = rng.choice(sizs)
        x, y = rng.choice([(65535, 1), (1, 65535), (0, 0), (1 << 31, 1 << 31), (4096, 4096)])
        struct.pack_into(">LL", raw, at + 8, x, y)
        if rng.random() < 0.3:
            struct.pack_into(">H", raw, at + 40, rng.choice([0, 2, 4, 16384]))  # components
        return f"SIZ at {at} says {x}×{y}"
    return _fragments(rng, raw)


def _fragments(rng: random.Random, raw: bytearray) -> str:
    data = bytes(raw)
    items = [i for i in range(_header_end(data), len(data) - 8) if data[i : i + 4] == b"\xfe\xff\x00\xe0"]
    if not items:
        return _huge_length(rng, raw)
    at = rng.choice(items)
    value = rng.choice([0, 1, 3, 0xFFFFFFFF, 0x7FFFFFFF, len(data)])
    struct.pack_into("<L", raw, at + 4, value)
    return f"fragment item at {at} length := {value:#x}"


MUTATORS = [_flip, _truncate, _zero_range, _duplicate_chunk, _absurd, _delete_tag, _huge_length,
            _deep_nesting, _codestream, _fragments]


def make_mutants(seed: int, n: int, bases: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
    """(base name, what was done, bytes) × n, the same for the same seed."""
    import logging

    rng = random.Random(seed)
    names = sorted(bases)
    out = []
    logging.getLogger("pydicom").disabled = True  # pydicom warns about every absurd value we write
    try:
        return _mutate(rng, names, n, bases, out)
    finally:
        logging.getLogger("pydicom").disabled = False


def _mutate(rng: random.Random, names: list[str], n: int, bases: dict[str, bytes], out: list) -> list:
    for _ in range(n):
        base = rng.choice(names)
        raw = bytearray(bases[base])
        done = [rng.choice(MUTATORS)(rng, raw)]
        if rng.random() < 0.25 and raw:
            done.append(rng.choice(MUTATORS)(rng, raw))
        if not raw:
            raw = bytearray(b"\0")
        out.append((base, "; ".join(done), bytes(raw)))
    return out


# ---------------------------------------------------------------- worker (its own process)


def _peak_rss() -> int:
    """This worker's own peak resident memory. On Linux that is VmHWM of its address space: ru_maxrss
    would start at the RSS of the pytest process it was forked from (Linux keeps it across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024 if sys.platform != "darwin" else kb


def _through_info_and_render(path: Path, out_png: Path) -> str:
    """What ``xmedgpt info``, ``xmedgpt render`` and the viewer do with one file. Returns how it
    ended ("ok", "refused: …"); raises for anything the engine did not turn into a reason."""
    from app.commands.info import print_text, to_dict
    from app.core.errors import XMedError
    from app.dicom.display import render
    from app.dicom.loader import load_series
    from app.dicom.png import write_png
    from app.dicom.scan import scan
    from app.dicom.slice_request import open_slice

    result = scan([path])
    json.dumps(to_dict(result))
    with io.StringIO() as sink:
        stdout, sys.stdout = sys.stdout, sink
        try:
            print_text(result)
        finally:
            sys.stdout = stdout
    for pr in result.problems:
        assert "\n" not in pr.reason and pr.reason, f"reason not one line: {pr.reason!r}"
        assert "unexpected error" not in pr.reason, "the scan's last-resort guard caught an exception"
    try:
        opened = open_slice([path])  # render: series 0, the middle slice
        write_png(out_png, render(opened.volume, opened.index, opened.window))
    except XMedError as exc:
        assert "\n" not in str(exc)
        return f"refused: {exc}"
    for series in result.all_series()[:3]:  # the viewer: every frame of every series
        vol = load_series(series)
        for k in range(len(vol)):
            if k not in vol.frame_problems:
                render(vol, k, None)
    return "ok"


def worker(job: Path) -> None:
    """Read the job (mutant paths, folder, good files), announce and check each mutant, then the folder."""
    spec = json.loads(job.read_text())
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import app.dicom.scan  # noqa: F401 - imports before the first BEGIN (not timed as a mutant)
    import app.dicom.slice_request  # noqa: F401

    out_png = Path(spec["folder"]) / "render.png.out"

    def say(**kw) -> None:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    for name in spec["mutants"]:
        say(event="begin", name=name)
        t0 = time.perf_counter()
        try:
            outcome = _through_info_and_render(Path(spec["folder"]) / name, out_png)
            crash = None
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as a crash
            outcome = "crash"
            crash = "".join(traceback.format_exception(exc)[-6:])[-3000:]
        say(event="end", name=name, outcome=outcome[:200], crash=crash, s=time.perf_counter() - t0, rss=_peak_rss())
    say(event="begin", name="<folder>")
    from app.dicom.loader import load_series
    from app.dicom.scan import scan

    t0 = time.perf_counter()
    crash = None
    listed: list[str] = []
    loaded: list[str] = []
    try:
        result = scan(spec["folder"])
        goods = set(spec["goods"])
        for series in result.all_series():
            names = {i.path.name for i in series.instances}
            if names & goods:
                listed.extend(sorted(names & goods))
                vol = load_series(series)
                for k, (src, _j) in enumerate(vol.frame_sources):
                    if src.name in goods and k not in vol.frame_problems:
                        loaded.append(src.name)
    except BaseException as exc:  # noqa: BLE001
        crash = "".join(traceback.format_exception(exc)[-6:])[-3000:]
    say(event="end", name="<folder>", outcome="ok" if crash is None else "crash", crash=crash,
        s=time.perf_counter() - t0, rss=_peak_rss(), listed=sorted(set(listed)), loaded=sorted(set(loaded)))


# ---------------------------------------------------------------- parent: run workers, watch them


def _run_batch(folder: Path, mutants: list[str], goods: list[str], tmp: Path) -> list[dict]:
    """Run the batch, restarting a fresh worker after a death or hang; one record per mutant + folder."""
    records: list[dict] = []
    todo = list(mutants)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XMEDGPT_CACHE": str(tmp / "cache"),
           "PYTHONFAULTHANDLER": "1"}
    folder_done = False
    attempt = 0
    while not folder_done:
        attempt += 1
        job = folder.parent / f"{folder.name}.job{attempt}.json"
        job.write_text(json.dumps({"folder": str(folder), "mutants": todo, "goods": goods}))
        proc = subprocess.Popen([sys.executable, "-m", "tests.hostile.test_dicom_fuzz", str(job)], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        err: list[str] = []
        threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
        current = None
        deadline = time.monotonic() + HANG_S + 20  # the worker's imports come before its first mutant
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                proc.wait()
                records.append({"name": current or "<startup>", "outcome": "hang", "s": HANG_S})
                break
            if line is None:
                proc.wait()
                # died inside a mutant (abort, segfault, os._exit), or before the first one
                records.append({"name": current or "<startup>", "outcome": "died", "rc": proc.returncode,
                                "stderr": "".join(err)[-3000:]})
                break
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if msg["event"] == "begin":
                current = msg["name"]
                deadline = time.monotonic() + (HANG_S * 4 if current == "<folder>" else HANG_S)
            else:
                records.append(msg)
                current = None
                if msg["name"] == "<folder>":
                    folder_done = True
                    proc.wait()
                    break
                todo.remove(msg["name"])
                deadline = time.monotonic() + HANG_S
        last = records[-1]
        if not folder_done and last["outcome"] in ("hang", "died"):
            if last["name"] in todo:
                todo.remove(last["name"])  # go on with the rest in a fresh worker
            else:
                folder_done = True  # the folder scan or the worker's start failed: reported, not retried
    return records


def _seed() -> int:
    if os.environ.get("XMEDGPT_FUZZ_SEED"):
        return int(os.environ["XMEDGPT_FUZZ_SEED"])
    if os.environ.get("CI"):
        return 19
    return random.SystemRandom().randrange(1 << 31)


@pytest.mark.slow
def test_500_mutants_neither_crash_hang_nor_take_the_good_files_down(tmp_path, output_dir):
    seed = _seed()
    n = int(os.environ.get("XMEDGPT_FUZZ_N", "500"))
    print(f"DICOM fuzz seed {seed} ({n} mutants); replay with XMEDGPT_FUZZ_SEED={seed}")
    bases = _base_files()
    assert len(bases) >= 10, sorted(bases)
    mutants = make_mutants(seed, n, bases)
    goods_by_base = _unique_goods(bases)

    batches = []
    for b in range(0, n, PER_WORKER):
        folder = tmp_path / f"batch{b // PER_WORKER:02d}"
        folder.mkdir()
        names, used = [], set()
        for i, (base, _done, data) in enumerate(mutants[b : b + PER_WORKER], start=b):
            name = f"m{i:04d}_{Path(base).stem}.dcm"
            (folder / name).write_bytes(data)
            names.append(name)
            used.add(base)
        goods = []
        for base in sorted(used):  # each unmutated original beside its mutants (sorted first: '0')
            good = f"0_good_{base}"
            (folder / good).write_bytes(goods_by_base[base])
            goods.append(good)
        batches.append((folder, names, goods))

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda job: _run_batch(*job, tmp_path), batches))
    took = time.monotonic() - t0
    records = [r for batch in results for r in batch]
    what = {f"m{i:04d}_{Path(base).stem}.dcm": done for i, (base, done, _d) in enumerate(mutants)}

    bad = [r for r in records if r["outcome"] in ("crash", "hang", "died")]
    slow = [r for r in records if r.get("s", 0) > HANG_S]
    peak = max((r.get("rss", 0) for r in records), default=0)
    missing = []
    for (folder, _names, goods), batch in zip(batches, results):
        summary = next((r for r in batch if r["name"] == "<folder>"), None)
        if summary is None or summary["outcome"] != "ok" or sorted(summary.get("listed", [])) != goods \
                or sorted(summary.get("loaded", [])) != goods:
            missing.append((folder.name, goods, summary))

    if bad or missing:
        keep = output_dir / "dicom-fuzz" / f"seed{seed}"
        keep.mkdir(parents=True, exist_ok=True)
        for r in bad:
            for folder, names, _g in batches:
                if r["name"] in names:
                    shutil.copy(folder / r["name"], keep / r["name"])
    report = "\n".join(
        f"  {r['name']} [{what.get(r['name'], '')}]: {r['outcome']} rc={r.get('rc')} "
        f"{r.get('crash') or (r.get('stderr') or '')[:600]}" for r in bad[:15]
    )
    counts = {}
    for r in records:
        key = r["outcome"].split(":")[0]
        counts[key] = counts.get(key, 0) + 1
    print(f"fuzz: {len(records)} runs in {took:.0f} s, outcomes {counts}, peak worker RSS {peak / 1e6:.0f} MB")
    assert not bad, f"seed {seed}: {len(bad)} crash/hang/death(s):\n{report}"
    assert not slow, f"seed {seed}: over {HANG_S} s: {[(r['name'], r['s']) for r in slow]}"
    assert not missing, f"seed {seed}: good files not listed/loaded beside mutants: {missing}"
    # each worker reports its own peak (VmHWM); RUSAGE_CHILDREN of this pytest process would also count
    # every subprocess earlier tests in the session waited for (training runs, servers)
    assert peak < PEAK_RSS_BYTES, f"seed {seed}: peak worker RSS {peak / 1e6:.0f} MB"


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
