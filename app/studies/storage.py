"""Managed storage: where imported copies and received instances are written, durably.

Layout: ``<storage>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``. A UID that is not a
well-formed DICOM UID (digits and dots, at most 64 characters) is replaced by its SHA-256 in
the path, so a hostile sender cannot write outside the storage folder.

:func:`write_instance` writes a temp file beside the target, fsyncs it, renames it into place
and fsyncs the folder: when it returns, the instance survives a power cut, which is what a
Storage SCP must guarantee before answering *success*. An instance already stored (same SOP
Instance UID) is not written again. A full disk raises :class:`StorageFull` and leaves no
partial file behind.

Group durability (retrieves, :class:`Staged`): :func:`stage_instance` writes the temp file without
fsync; :func:`commit_staged` later fsyncs a whole group of them, links each into place and fsyncs
each folder once. The invariant stays the same in both ways: **a file under its final name is
whole and durable** (only temp files, ``.recv-*.tmp``, can be lost or torn by a power cut), so
"already stored" never means "half written".

Temp files left by a process that died mid-write (a crash, a power cut, a killed retrieve) are never
acknowledged instances: the first write into a folder in each process removes those older than
:data:`STALE_TEMP_S` (younger ones may belong to another process writing right now).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.core.errors import XMedError
from app.core.paths import fsync_dir

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STALE_TEMP_S = 3600.0  # a temp file this old is left over from a write that died
_swept: set[str] = set()  # folders this process has already cleared of stale temp files

log = logging.getLogger(__name__)


class StorageError(XMedError):
    """An instance could not be written to managed storage."""


class StorageFull(StorageError):
    """No space left on the storage device (ENOSPC/EDQUOT)."""


def safe_component(uid: str) -> str:
    uid = (uid or "").strip()
    if uid and len(uid) <= 64 and _UID_RE.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def instance_path(storage: Path, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
    return Path(storage) / safe_component(study_uid) / safe_component(series_uid) / (
        safe_component(sop_instance_uid) + ".dcm")


def _error(target: Path, exc: OSError) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"Disk full: cannot store {target.name} in {target.parent} ({exc.strerror}). "
                           "Instances already acknowledged are safe; free space and retrieve again.")
    return StorageError(f"Cannot write {target}: {exc.strerror or exc}.")


def _link(tmp: Path, target: Path) -> bool:
    """Move the finished temp file to ``target``; False if ``target`` exists (the temp file stays)."""
    try:
        os.link(tmp, target)  # atomic and never overwrites: a concurrent duplicate loses cleanly
    except FileExistsError:
        return False
    except OSError:
        if target.exists():
            return False
        os.replace(tmp, target)
    return True


@dataclass
class Staged:
    """An instance written to a temp file beside its target, not yet fsynced nor under its name."""

    target: Path
    tmp: Path
    created: list[Path] = field(default_factory=list)  # folders staging created (their parents need an fsync)


def sweep_stale_temps(folder: Path, max_age_s: float = STALE_TEMP_S) -> int:
    """Remove ``.recv-*.tmp`` files older than ``max_age_s`` in ``folder`` (not below it); how many.
    They are the remains of writes that died before their instance was acknowledged."""
    cutoff = time.time() - max_age_s
    removed = 0
    try:
        with os.scandir(folder) as entries:
            for e in entries:
                if not (e.name.startswith(".recv-") and e.name.endswith(".tmp")):
                    continue
                try:
                    if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(e.path)
                        removed += 1
                except OSError:
                    continue
    except OSError:
        return removed
    if removed:
        log.info("removed %d unfinished temp file(s) of an interrupted receive from %s", removed, folder)
    return removed


def _sweep_once(folder: Path) -> None:
    key = str(folder)
    if key not in _swept:
        _swept.add(key)
        sweep_stale_temps(folder)


def _stage(target: Path, write, *, sync: bool) -> Staged | None:
    if target.exists():
        return None
    parent = target.parent
    missing = [p for p in (parent.parent, parent) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not missing:
        _sweep_once(parent)
    fd, tmp_name = tempfile.mkstemp(prefix=".recv-", suffix=".tmp", dir=parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(target, tmp, missing)


def _write(target: Path, write) -> bool:
    """Durably create ``target`` with ``write(fileobj)``; False if it already exists."""
    try:
        staged = _stage(target, write, sync=True)
        if staged is None:
            return False
        try:
            if not _link(staged.tmp, target):
                return False
        finally:
            staged.tmp.unlink(missing_ok=True)
        fsync_dir(target.parent)
        for d in staged.created:
            fsync_dir(d.parent)
        return True
    except OSError as exc:
        raise _error(target, exc) from exc


def _writer(data: bytes | Sequence[bytes | memoryview]):
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)

    def write(fh) -> None:
        for part in parts:
            fh.write(part)
    return write


def write_instance(target: Path, data: bytes | Sequence[bytes | memoryview]) -> bool:
    """Store ``data`` (a DICOM file: preamble, meta, dataset; or its parts in order) at ``target``,
    durably before returning; False if already there."""
    return _write(Path(target), _writer(data))


def stage_instance(target: Path, data: bytes | Sequence[bytes | memoryview]) -> Staged | None:
    """Write ``data`` to a temp file beside ``target`` (no fsync, not yet under its name); None if
    ``target`` exists already. Make it durable and visible with :func:`commit_staged`."""
    target = Path(target)
    try:
        return _stage(target, _writer(data), sync=False)
    except OSError as exc:
        raise _error(target, exc) from exc


def commit_staged(items: Sequence[Staged]) -> list[bool]:
    """Make a group of staged instances durable: fsync every temp file, link each into place, fsync
    each folder once (and the parents of folders staging created). Returns, per item, whether it is
    new (False: the target appeared meanwhile, a duplicate). On an error no item of the group is
    left half done: the temp files are removed and StorageFull/StorageError is raised; files already
    linked stay (they are whole and fsynced)."""
    done: list[bool] = []
    current = items[0].target if items else Path()
    try:
        for st in items:
            current = st.target
            fd = os.open(st.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        folders: dict[Path, None] = {}
        for st in items:
            current = st.target
            done.append(_link(st.tmp, st.target))
            st.tmp.unlink(missing_ok=True)
            folders[st.target.parent] = None
            for d in st.created:
                folders.setdefault(d.parent, None)
        for folder in folders:
            fsync_dir(folder)
        return done
    except OSError as exc:
        raise _error(current, exc) from exc
    finally:
        for st in items:
            st.tmp.unlink(missing_ok=True)


def copy_instance(source: Path, target: Path) -> bool:
    """Durably copy ``source`` to ``target``; False if ``target`` already exists."""
    def write(fh) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh, 1024 * 1024)
    return _write(Path(target), write)
