"""Turn what the reader opened (folders, files, DICOMDIR, zip) into candidate files.

Folders are walked recursively; a DICOMDIR contributes the files it references
(a referenced file that is missing becomes a problem); a zip archive is
extracted once into a cache folder keyed by the archive's path, size and time,
so the instances found inside stay loadable after the scan. The cache holds patient
data: it is private to the user (mode 0700) and entries unused for ``ZIP_CACHE_DAYS`` are
removed the next time an archive is opened.

Nothing here trusts the input (issue #19; limits in :mod:`app.dicom.limits`): only regular
files (or links to them) become candidates — named pipes, devices and sockets are listed as
skipped and never opened; a DICOMDIR only reaches files inside its own folder (after
resolving links); a zip's member count, declared sizes, total, compression ratio and the
free disk space are checked before anything is unpacked, and again while unpacking.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import struct
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from app.dicom.limits import (
    MAX_ZIP_BYTES,
    MAX_ZIP_MEMBER_BYTES,
    MAX_ZIP_MEMBERS,
    MAX_ZIP_RATIO,
    ZIP_CACHE_DAYS,
    ZIP_FREE_DISK_MARGIN,
    ZIP_RATIO_MIN_BYTES,
)
from app.dicom.model import FileProblem
from app.dicom.rawheader import printable, special_file_reason

log = logging.getLogger(__name__)


_SKIP_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
BACKSLASH = "\\"  # how DICOM writes the components of a Referenced File ID


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
        try:
            mode = os.stat(path).st_mode  # follows links: what would be opened
        except FileNotFoundError:
            out.problems.append(FileProblem(path, "not found"))
            continue
        except OSError as exc:
            out.problems.append(FileProblem(path, f"cannot be read ({exc.strerror or exc})"))
            continue
        if stat.S_ISDIR(mode):
            _walk(path, out)
        elif not stat.S_ISREG(mode):
            out.problems.append(FileProblem(path, special_file_reason(mode) or "not a regular file"))
        elif zipfile.is_zipfile(path) and path.suffix.lower() in {".zip", ""} | {".dcmzip"}:
            _unzip(path, out)
        elif is_dicomdir(path):
            _dicomdir(path, out)
        else:
            out.add(path)
    return out


def _not_regular(path: Path) -> str:
    """The reason a walked entry that is no regular file is skipped (it is never opened)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return "cannot be read (broken link)" if os.path.islink(path) else f"cannot be read ({exc.strerror or exc})"
    return special_file_reason(mode) or "not a regular file"


def _walk(folder: Path, out: Candidates) -> None:
    """Files under ``folder`` in ``os.walk`` order (sorted, top-down, links to folders not entered).

    ``DirEntry.is_file()`` answers from the directory listing for plain files (no extra system
    call per file) and follows links: FIFOs, devices, sockets and broken links are skipped with a
    reason and never opened (opening a FIFO blocks until someone writes to it).
    """
    found = 0
    stack = [str(folder)]
    while stack:
        root = stack.pop()
        try:
            with os.scandir(root) as it:
                entries = list(it)
        except OSError:
            continue  # as os.walk: an unreadable folder is passed over
        files: list[os.DirEntry] = []
        subdirs: list[str] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(entry)
            elif not entry.name.startswith(".") and not entry.is_symlink():
                subdirs.append(entry.name)
        for entry in sorted(files, key=lambda e: e.name):
            name = entry.name
            if name.startswith(".") or name.lower() in _SKIP_NAMES:
                continue
            path = Path(root) / name
            found += 1
            if is_dicomdir(path):
                # Files a DICOMDIR lists live under this folder tree and are walked anyway;
                # the directory itself only adds what the walk cannot see (nothing, usually).
                continue
            try:
                regular = entry.is_file()
            except OSError:
                regular = False
            if not regular:
                out.problems.append(FileProblem(path, _not_regular(path)))
            elif name.lower().endswith(".zip") and zipfile.is_zipfile(path):
                _unzip(path, out)
            else:
                out.add(path)
        stack.extend(os.path.join(root, d) for d in sorted(subdirs, reverse=True))
    if found == 0:
        out.problems.append(FileProblem(folder, "folder is empty: no files to open"))


def _inside(base_real: str, target: Path) -> bool:
    """Whether ``target``, links resolved, lies inside the folder whose real path is ``base_real``."""
    real = os.path.realpath(target)
    return real == base_real or real.startswith(base_real.rstrip(os.sep) + os.sep)


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
    base = os.path.realpath(path.parent)
    for rec in records:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [str(p) for p in ([ref] if isinstance(ref, str) else list(ref))]
        target = path.parent.joinpath(*parts)
        listed += 1
        escape = f"DICOMDIR entry {printable(BACKSLASH.join(parts))!r} points outside its folder: not opened"
        # Only files inside the DICOMDIR's own folder: no '..', no absolute path, no link out.
        if not _inside(base, target):
            out.problems.append(FileProblem(path, escape))
            continue
        if not target.exists():
            # Media written on Windows/ISO9660 often differ in case only.
            target = _case_insensitive(path.parent, parts) or target
            if not _inside(base, target):
                out.problems.append(FileProblem(path, escape))
                continue
        try:
            mode = os.stat(target).st_mode
        except OSError:
            out.problems.append(FileProblem(target, "listed in the DICOMDIR but missing on disk"))
            continue
        if stat.S_ISREG(mode):
            out.add(target)
        else:
            out.problems.append(FileProblem(target, special_file_reason(mode) or "not a regular file"))
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


class _ZipRefused(Exception):
    """The archive is not unpacked (any further); ``str(exc)`` is the reason, one line."""


def _declared_member_count(path: Path) -> int | None:
    """Entries the archive's end-of-central-directory record declares (read before zipfile parses
    a central directory that may hold millions of entries), or None if not found."""
    try:
        with open(path, "rb") as fp:
            size = fp.seek(0, os.SEEK_END)
            start = max(0, size - (22 + 65535))
            fp.seek(start)
            tail = fp.read()
            at = tail.rfind(b"PK\x05\x06")
            if at < 0 or at + 22 > len(tail):
                return None
            count = struct.unpack_from("<H", tail, at + 10)[0]
            if count != 0xFFFF or at < 20 or tail[at - 20 : at - 16] != b"PK\x06\x07":
                return count
            (z64,) = struct.unpack_from("<Q", tail, at - 20 + 8)  # zip64 end-of-central-directory record
            fp.seek(z64)
            rec = fp.read(56)
            if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
                return None
            return struct.unpack_from("<Q", rec, 32)[0]
    except (OSError, struct.error):
        return None


def _member_refusal(m: zipfile.ZipInfo) -> str | None:
    """Why this one member is not unpacked, judged from its declared sizes alone (None: unpack it)."""
    if m.file_size > MAX_ZIP_MEMBER_BYTES:
        return (f"would unpack to {m.file_size / 1024**3:.1f} GiB, more than one image can be: "
                "not unpacked")
    if m.file_size >= ZIP_RATIO_MIN_BYTES and m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1):
        ratio = m.file_size / max(m.compress_size, 1)
        return (f"zip bomb: unpacks to {ratio:.0f}× its packed size ({m.file_size / 1024**3:.1f} GiB): "
                "not unpacked")
    return None


def _archive_refusal(members: list[zipfile.ZipInfo]) -> str | None:
    """Why no member of the archive is unpacked: too many, or too much in all."""
    if len(members) > MAX_ZIP_MEMBERS:
        return f"zip archive holds {len(members)} files, more than {MAX_ZIP_MEMBERS}: not unpacked"
    total = sum(m.file_size for m in members)
    if total > MAX_ZIP_BYTES:
        return f"zip archive too large to unpack ({total / 1e9:.1f} GB)"
    return None


def _extract(zf: zipfile.ZipFile, m: zipfile.ZipInfo, target: Path) -> int:
    """Unpack one member, never writing more than it declared (a lying header is refused)."""
    written = 0
    with zf.open(m) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > m.file_size:
                raise _ZipRefused("zip archive is damaged or hostile: a member unpacks to more than its header "
                                  "says; not unpacked")
            dst.write(chunk)
    return written


def _unzip(path: Path, out: Candidates) -> None:
    dest: Path | None = None
    complete = True
    try:
        st = path.stat()
        count = _declared_member_count(path)
        if count is not None and count > MAX_ZIP_MEMBERS:
            out.problems.append(FileProblem(path, f"zip archive holds {count} files, more than {MAX_ZIP_MEMBERS}: "
                                                  "not unpacked"))
            return
        key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        prune_zip_cache()
        dest = root / "zip" / key
        done = dest / ".complete"
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            empty = not members
            # Judged before a single byte is unpacked, from the sizes each member declares.
            refusal = _archive_refusal(members)
            if refusal:
                out.problems.append(FileProblem(path, refusal))
                return
            skipped = {id(m): why for m in members if (why := _member_refusal(m))}
            for m in members:
                if id(m) in skipped:
                    out.problems.append(FileProblem(path / printable(m.filename), skipped[id(m)]))
            members = [m for m in members if id(m) not in skipped]
            if not done.exists():
                total = sum(m.file_size for m in members)
                free = shutil.disk_usage(root).free
                if total + ZIP_FREE_DISK_MARGIN > free:
                    out.problems.append(FileProblem(
                        path, f"not enough free disk space to unpack this zip archive ({total / 1e9:.1f} GB)"))
                    return
                complete = False
                dest.mkdir(parents=True, exist_ok=True)
                for m in members:
                    target = _safe_member_path(dest, m.filename)
                    if target is None:
                        out.problems.append(FileProblem(path / printable(m.filename),
                                                        "unsafe path inside the zip; skipped"))
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _extract(zf, m, target)
                done.touch()
                complete = True
            else:
                done.touch()  # last used now: kept by the cache pruning
    except _ZipRefused as exc:
        out.problems.append(FileProblem(path, str(exc)))
        return
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, RuntimeError, EOFError, ValueError) as exc:
        log.debug("zip %s failed: %s", path, exc)
        out.problems.append(FileProblem(path, "zip archive is damaged or encrypted"))
        return
    finally:
        if not complete and dest is not None:
            shutil.rmtree(dest, ignore_errors=True)  # nothing half-unpacked stays in the cache
    if empty:
        out.problems.append(FileProblem(path, "zip archive is empty"))
        return
    if not members:
        return  # every member was refused, each with its reason
    before = len(out.files)
    _walk(dest, out)
    log.info("zip %s: %d files unpacked to %s", path, len(out.files) - before, dest)


def _safe_member_path(dest: Path, name: str) -> Path | None:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".", "/")]
    if not parts or any(p == ".." for p in parts) or ":" in parts[0]:
        return None
    return dest.joinpath(*parts)
