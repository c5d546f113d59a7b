"""Import studies into the index: in place (the files stay where they are) or copied into managed
storage; open the library (rebuilding a damaged index from the files).

Headers are read with :func:`app.dicom.scan.scan` (``stop_before_pixels``); pixels are never
decoded to index a study. Folders imported in place are remembered in ``sources.json`` so that a
damaged database can be rebuilt from managed storage plus those folders.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from app.core.errors import XMedError
from app.core.paths import set_aside, write_atomic
from app.dicom.header import DicomInstance
from app.dicom.model import FileProblem
from app.dicom.scan import scan
from app.dicom.sources import cache_root
from app.studies.db import InstanceRecord, StudyDB, now
from app.studies.locations import StudyPaths
from app.studies.storage import copy_instance, instance_path

log = logging.getLogger(__name__)


class Audit(Protocol):
    """What this package needs of the audit trail (``app.report.audit.AuditLog`` has it)."""

    def append(self, action: str, data: dict[str, Any] | None = None, *, study_uid: str = "") -> Any: ...


def record(audit: Audit | None, action: str, data: dict[str, Any], study_uid: str = "", *,
           keep_going: bool = False) -> None:
    """Append to the audit trail when there is one. A failing trail raises (the operation must not run
    unrecorded) unless ``keep_going``: then it is logged loudly and the caller carries on — for work that
    has already happened and must not be lost (an instance received, a report sent, a job finished)."""
    if audit is None:
        return
    try:
        audit.append(action, data, study_uid=study_uid)
    except XMedError as exc:
        if not keep_going:
            raise
        log.error("audit trail: %s", exc)


def notify(listeners, *args: Any, what: str = "listener") -> None:
    """Call every listener; one listener's bug is logged and never stops the others or the caller."""
    for listener in list(listeners):
        try:
            listener(*args)
        except Exception:  # noqa: BLE001
            log.exception("%s failed", what)


@dataclass
class ImportResult:
    studies: dict[str, int] = field(default_factory=dict)  # study UID -> instances found
    new_instances: int = 0
    copied: int = 0
    problems: list[FileProblem] = field(default_factory=list)


def record_from_instance(inst: DicomInstance, path: Path | None = None) -> InstanceRecord:
    p = Path(path) if path is not None else Path(inst.path)
    try:
        size = p.stat().st_size
    except OSError:
        size = 0
    return InstanceRecord(
        sop_instance_uid=inst.sop_instance_uid, study_uid=inst.study_uid, series_uid=inst.series_uid,
        path=str(p), sop_class_uid=inst.sop_class_uid, size=size, patient_name=inst.patient_name,
        patient_id=inst.patient_id, birth_date=inst.birth_date, sex=inst.sex, accession=inst.accession,
        study_date=inst.study_date, study_time=inst.study_time, study_description=inst.study_description,
        series_number=inst.series_number, series_description=inst.series_description, modality=inst.modality)


def _instances(paths: Iterable[Path], progress: Callable[[int, int], None] | None) -> tuple[list[DicomInstance], list[FileProblem]]:
    result = scan([Path(p) for p in paths], progress=progress)
    out: list[DicomInstance] = []
    for s in result.all_series():
        for inst in s.instances:
            if isinstance(inst, DicomInstance) and inst.study_uid and inst.sop_instance_uid:
                out.append(inst)
    problems = list(result.problems) + [pr for s in result.all_series() for pr in s.problems]
    return out, problems


def _in_cache(path: Path) -> bool:
    try:
        Path(path).resolve().relative_to(cache_root().resolve())
        return True
    except ValueError:
        return False


def import_paths(db: StudyDB, paths: Iterable[Path], *, copy: bool = False, storage: Path | None = None,
                 sources_file: Path | None = None, audit: Audit | None = None, origin: str | None = None,
                 progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Index the studies under ``paths`` (folders, files, DICOMDIR, zip).

    ``copy``: copy each instance into ``storage`` first (a zip is always copied: its unpacked
    members live in a cache that is pruned). Returns what was found and what was new.
    """
    paths = [Path(p).expanduser().resolve() for p in paths]
    for p in paths:
        if not p.exists():
            raise XMedError(f"{p} does not exist.")
    instances, problems = _instances(paths, progress)
    result = ImportResult(problems=problems)
    if not instances:
        return result
    if not copy and any(_in_cache(i.path) for i in instances):
        copy = True
    if copy and storage is None:
        raise XMedError("No managed storage folder to copy into.")
    records: list[InstanceRecord] = []
    for inst in instances:
        if copy:
            target = instance_path(storage, inst.study_uid, inst.series_uid, inst.sop_instance_uid)
            if copy_instance(Path(inst.path), target):
                result.copied += 1
            records.append(record_from_instance(inst, target))
        else:
            records.append(record_from_instance(inst))
        result.studies[inst.study_uid] = result.studies.get(inst.study_uid, 0) + 1
    mode = origin or ("copy" if copy else "import")
    locations = {}
    if copy:
        locations = {uid: str(instance_path(storage, uid, "x", "x").parent.parent) for uid in result.studies}
    new = 0
    for uid in result.studies:  # per study, so each gets its own location
        batch = [r for r in records if r.study_uid == uid]
        loc = locations.get(uid) or _common_folder([r.path for r in batch])
        n, _ = db.add_instances(batch, origin=mode, state="complete", location=loc)
        new += n
    result.new_instances = new
    if not copy and sources_file is not None:
        remember_sources(sources_file, [p for p in paths])
    if audit is not None:
        for uid, n in result.studies.items():
            audit.append("studies.import", {"paths": [str(p) for p in paths], "mode": mode, "instances": n},
                         study_uid=uid)
    return result


def index_scan(db: StudyDB, result: Any, *, origin: str = "opened") -> dict[str, int]:
    """Index what the viewer has already scanned (an :class:`app.dicom.model.ScanResult`), in place, without
    reading any file again. Files unpacked from a zip into the cache are left out (the cache is pruned;
    ``xmedgpt import`` copies them). Returns study UID → instances indexed."""
    by_study: dict[str, list[InstanceRecord]] = {}
    for series in result.all_series():
        for inst in series.instances:
            if isinstance(inst, DicomInstance) and inst.study_uid and inst.sop_instance_uid \
                    and not _in_cache(Path(inst.path)):
                by_study.setdefault(inst.study_uid, []).append(record_from_instance(inst))
    for uid, batch in by_study.items():
        db.add_instances(batch, origin=origin, location=_common_folder([r.path for r in batch]))
    return {uid: len(batch) for uid, batch in by_study.items()}


def _common_folder(paths: list[str]) -> str:
    try:
        return os.path.commonpath([str(Path(p).parent) for p in paths])
    except ValueError:
        return str(Path(paths[0]).parent)


# ---- sources.json ------------------------------------------------------------------------

def load_sources(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data["sources"]
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("path"), str) for i in items):
            raise ValueError("sources is not a list of {path: ...}")
        return items
    except (OSError, ValueError, KeyError, TypeError) as exc:
        set_aside(path, f"unreadable list of imported folders ({exc})")
        return []


def remember_sources(path: Path, folders: Iterable[Path]) -> None:
    items = load_sources(path)
    known = {i["path"] for i in items}
    added = False
    for f in folders:
        if str(f) not in known:
            items.append({"path": str(f), "added_at": now()})
            known.add(str(f))
            added = True
    if added:
        write_atomic(Path(path), json.dumps({"schema_version": 1, "sources": items}, indent=2) + "\n")


# ---- opening the library -------------------------------------------------------------------

def open_library(paths: StudyPaths | None = None, *, audit: Audit | None = None) -> StudyDB:
    """The study database at its data location; a damaged one is set aside and rebuilt from managed
    storage and the folders imported in place (``db.recovered_from`` says where the old file went)."""
    paths = (paths or StudyPaths.detect()).ensure()
    db = StudyDB(paths.database)
    if db.recovered_from is not None or (db.created and any(paths.storage.iterdir())):
        rebuild(db, paths)
        if audit is not None and db.recovered_from is not None:
            audit.append("studies.rebuild", {"set_aside": str(db.recovered_from), "studies": db.count()})
    return db


def rebuild(db: StudyDB, paths: StudyPaths) -> int:
    """Re-index managed storage and every folder imported in place; returns the number of studies."""
    if any(paths.storage.iterdir()):
        import_paths(db, [paths.storage], origin="rebuilt")
    for src in load_sources(paths.sources_file):
        folder = Path(src["path"])
        if folder.exists():
            import_paths(db, [folder], origin="import")
        else:
            log.warning("study index rebuild: imported folder %s is gone", folder)
    log.warning("study index rebuilt from files: %d studies", db.count())
    return db.count()
