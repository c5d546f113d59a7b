"""Managed storage: where imported copies and received instances are written, durably.

Layout: ``<storage>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``. A UID that is not a
well-formed DICOM UID (digits and dots, at most 64 characters) is replaced by its SHA-256 in
the path, so a hostile sender cannot write outside the storage folder.

:func:`write_instance` writes a temp file beside the target, fsyncs it, renames it into place
and fsyncs the folder: when it returns, the instance survives a power cut, which is what a
Storage SCP must guarantee before answering *success*. An instance already stored (same SOP
Instance UID) is not written again. A full disk raises :class:`StorageFull` and leaves no
partial file behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from app.core.errors import XMedError
from app.core.paths import fsync_dir

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


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


def _write(target: Path, write) -> bool:
    """Durably create ``target`` with ``write(fileobj)``; False if it already exists."""
    if target.exists():
        return False
    created: list[Path] = []
    parent = target.parent
    try:
        missing = [p for p in (parent.parent, parent) if not p.exists()]
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        created = missing
        fd, tmp_name = tempfile.mkstemp(prefix=".recv-", suffix=".tmp", dir=parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, target)  # atomic and never overwrites: a concurrent duplicate loses cleanly
            except FileExistsError:
                return False
            except OSError:
                if target.exists():
                    return False
                os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(parent)
        for d in created:
            fsync_dir(d.parent)
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(f"Disk full: cannot store {target.name} in {parent} ({exc.strerror}). "
                              "Instances already acknowledged are safe; free space and retrieve again.") from exc
        raise StorageError(f"Cannot write {target}: {exc.strerror or exc}.") from exc


def write_instance(target: Path, data: bytes) -> bool:
    """Store ``data`` (a DICOM file: preamble, meta, dataset) at ``target``; False if already there."""
    return _write(Path(target), lambda fh: fh.write(data))


def copy_instance(source: Path, target: Path) -> bool:
    """Durably copy ``source`` to ``target``; False if ``target`` already exists."""
    def write(fh) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fh, 1024 * 1024)
    return _write(Path(target), write)
