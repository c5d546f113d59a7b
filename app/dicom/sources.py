"""Turn what the reader opened (folders, files, DICOMDIR, zip) into candidate files.

Folders are walked recursively; a DICOMDIR contributes the files it references
(a referenced file that is missing becomes a problem); a zip archive is
extracted once into a cache folder keyed by the archive's path, size and time,
so the instances found inside stay loadable after the scan. The cache holds patient
data: it is private to the user (mode 0700) and entries unused for ``ZIP_CACHE_DAYS`` are
removed the next time an archive is opened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from app.dicom.model import FileProblem

log = logging.getLogger(__name__)

#: Refuse to unpack archives whose members add up to more than this.
MAX_ZIP_BYTES = 32 * 1024**3

#: Unpacked archives not opened for this many days are deleted.
ZIP_CACHE_DAYS = 7

_SKIP_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


@dataclass
class Candidates:
    """Files to read headers from, plus inputs that failed before any header was read."""

    files: list[Path] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False)

    def add(self, path: Path) -> None:
        key = os.path.normcase(os.path.abspath(path))  # no syscalls: a scan adds thousands of files
        if key not in self._seen:
            self._seen.add(key)
            self.files.append(path)


def cache_root() -> Path:
    base = os.environ.get("XMEDGPT_CACHE") or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) / "xmedgpt" if base else Path(tempfile.gettempdir()) / f"xmedgpt-{os.getuid()}"
    return root


def is_dicomdir(path: Path) -> bool:
    return path.name.upper() == "DICOMDIR" or path.name.upper().startswith("DICOMDIR.")


def expand(paths: Iterable[os.PathLike | str]) -> Candidates:
    """Every candidate file under ``paths``, in a stable order, without duplicates."""
    out = Candidates()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            out.problems.append(FileProblem(path, "not found"))
        elif path.is_dir():
            _walk(path, out)
        elif zipfile.is_zipfile(path) and path.suffix.lower() in {".zip", ""} | {".dcmzip"}:
            _unzip(path, out)
        elif is_dicomdir(path):
            _dicomdir(path, out)
        else:
            out.add(path)
    return out


def _walk(folder: Path, out: Candidates) -> None:
    found = 0
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in sorted(files):
            if name.startswith(".") or name.lower() in _SKIP_NAMES:
                continue
            path = Path(root) / name
            found += 1
            if is_dicomdir(path):
                # Files a DICOMDIR lists live under this folder tree and are walked anyway;
                # the directory itself only adds what the walk cannot see (nothing, usually).
                continue
            if name.lower().endswith(".zip") and zipfile.is_zipfile(path):
                _unzip(path, out)
            else:
                out.add(path)
    if found == 0:
        out.problems.append(FileProblem(folder, "folder is empty: no files to open"))


def _dicomdir(path: Path, out: Candidates) -> None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        records = ds.DirectoryRecordSequence
    except Exception as exc:  # noqa: BLE001 - any failure is a reason, not a crash
        log.debug("DICOMDIR %s unreadable: %s", path, exc)
        out.problems.append(FileProblem(path, "DICOMDIR is damaged or not a DICOM directory"))
        return
    listed = 0
    for rec in records:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        target = path.parent.joinpath(*[str(p) for p in parts])
        if not target.exists():
            # Media written on Windows/ISO9660 often differ in case only.
            target = _case_insensitive(path.parent, [str(p) for p in parts]) or target
        listed += 1
        if target.is_file():
            out.add(target)
        else:
            out.problems.append(FileProblem(target, "listed in the DICOMDIR but missing on disk"))
    if listed == 0:
        out.problems.append(FileProblem(path, "DICOMDIR lists no images"))


def _case_insensitive(base: Path, parts: list[str]) -> Path | None:
    cur = base
    for part in parts:
        try:
            match = next((c for c in cur.iterdir() if c.name.upper() == part.upper()), None)
        except OSError:
            return None
        if match is None:
            return None
        cur = match
    return cur


def prune_zip_cache(max_age_days: float = ZIP_CACHE_DAYS, now: float | None = None) -> int:
    """Delete unpacked archives not opened for ``max_age_days``; return how many were removed."""
    zips = cache_root() / "zip"
    if not zips.is_dir():
        return 0
    limit = (time.time() if now is None else now) - max_age_days * 86400
    removed = 0
    for entry in zips.iterdir():
        marker = entry / ".complete"
        try:
            last_used = (marker if marker.exists() else entry).stat().st_mtime
        except OSError:
            continue
        if last_used < limit:
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
    return removed


def _unzip(path: Path, out: Candidates) -> None:
    try:
        st = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        prune_zip_cache()
        dest = root / "zip" / key
        done = dest / ".complete"
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            total = sum(m.file_size for m in members)
            if total > MAX_ZIP_BYTES:
                out.problems.append(FileProblem(path, f"zip archive too large to unpack ({total / 1e9:.1f} GB)"))
                return
            if not done.exists():
                dest.mkdir(parents=True, exist_ok=True)
                for m in members:
                    target = _safe_member_path(dest, m.filename)
                    if target is None:
                        out.problems.append(FileProblem(path / m.filename, "unsafe path inside the zip; skipped"))
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(m) as src, open(target, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            dst.write(chunk)
                done.touch()
            else:
                done.touch()  # last used now: kept by the cache pruning
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError, EOFError) as exc:
        log.debug("zip %s failed: %s", path, exc)
        out.problems.append(FileProblem(path, "zip archive is damaged or encrypted"))
        return
    if not members:
        out.problems.append(FileProblem(path, "zip archive is empty"))
        return
    before = len(out.files)
    _walk(dest, out)
    log.info("zip %s: %d files unpacked to %s", path, len(out.files) - before, dest)


def _safe_member_path(dest: Path, name: str) -> Path | None:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." for p in parts) or ":" in parts[0]:
        return None
    return dest.joinpath(*parts)
