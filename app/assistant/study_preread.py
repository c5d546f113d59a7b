"""The pre-read of a study that arrived: the work of one :mod:`app.studies.queue` job.

One job is one series of a study in the local database: its files are read from the index, the
main stack of the series is loaded (the largest one when the DICOM series holds several) and
:func:`app.assistant.preread.preread` runs on it (sweep, 3-D linking, reasoning and reliability at
each lesion's key slice). The lesion list is written as JSON (the same document as ``xmedgpt
preread --json``) to ``<results>/<StudyUID>/<SeriesUID>.json``, the AI request and output go into
the audit trail as for ``xmedgpt preread``, and the queue gets back the worst tier of the lesions
(none found: '').

The engine is made on first use, on the queue's thread, by ``engine_factory`` (so the model loads
in the background, once) and kept for the next jobs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.assistant.preread import PrereadOptions, preread
from app.assistant.session import frame_ref
from app.core.errors import XMedError
from app.core.paths import write_atomic
from app.dicom.loader import load_series
from app.dicom.model import Series
from app.dicom.scan import scan
from app.studies.db import StudyDB, now
from app.studies.queue import Job, JobCancelled, JobOutcome, refresh_study, worst_tier
from inference.imaging import ImageSpec
from inference.types import Engine

log = logging.getLogger(__name__)

EngineFactory = Callable[[], tuple[Engine, ImageSpec | None]]


def pick(series: list[Series], series_uid: str) -> Series:
    """The main stack of DICOM series ``series_uid`` among the scanned ones."""
    mine = [s for s in series if (s.series_instance_uid or s.uid) == series_uid or s.uid == series_uid]
    if not mine:
        raise XMedError(f"Series {series_uid} has no readable image in the local database's files.")
    return max(mine, key=lambda s: (s.frame_count, -s.part))


def result_path(results_dir: Path, study_uid: str, series_uid: str) -> Path:
    """Where the pre-read of a series is kept (one file per series: the newest pre-read)."""
    return Path(results_dir) / study_uid / f"{series_uid}.json"


def preread_document(out: Any, study_uid: str, series_uid: str, series: Series, slices: int) -> dict:
    """The saved form of a pre-read: ``xmedgpt preread --json``'s document, with its study and series."""
    document = out.to_json()
    document["study_uid"] = study_uid
    document["series"] = {"uid": series_uid, "number": series.number, "description": series.description,
                          "modality": series.modality, "slices": slices}
    return document


def document_tier(document: dict) -> str:
    """The worst tier of the document's lesions ('' when it lists none)."""
    return worst_tier((les.get("reliability") or {}).get("tier", "none") or "none" for les in document["lesions"])


VIEWER_REASON = "read in the viewer"


def keep_viewer_preread(db: StudyDB, results_dir: Path, volume: Any, out: Any) -> Path | None:
    """A pre-read the reader ran in the viewer, kept as a pre-read on arrival is: its document written next to
    theirs, a done job in the study database (so the study list shows the study's AI state and worst tier, the
    pre-read on arrival skips the series as read, and reopening the study shows the lesions again without a
    new pre-read). None when the series is not in the local database (a folder opened without indexing)."""
    series = volume.series
    uid = series.uid
    dicom_uid = series.series_instance_uid or uid
    rows = db.rows("SELECT study_uid, instance_count FROM series WHERE series_uid = ?", (dicom_uid,))
    if not rows:
        return None
    study_uid, instances = str(rows[0][0]), int(rows[0][1] or 0)
    if uid != dicom_uid:  # a split-off stack of the series: counted as its own, never as the series read
        instances = 0
    document = preread_document(out, study_uid, uid, series, len(volume))
    target = result_path(results_dir, study_uid, uid)
    write_atomic(target, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    stamp = now()
    with db.transaction() as c:
        c.execute("INSERT INTO jobs (kind, study_uid, series_uid, instances, state, tier, lesions, result_path, "
                  "reason, created_at, started_at, finished_at) VALUES ('preread', ?, ?, ?, 'done', ?, ?, ?, ?, ?, "
                  "?, ?)", (study_uid, uid, instances, document_tier(document), len(document["lesions"]),
                            str(target), VIEWER_REASON, stamp, stamp, stamp))
    refresh_study(db, study_uid)
    return target


class StudyPrereader:
    """``runner(job, cancel) -> JobOutcome`` for :class:`app.studies.queue.JobQueue`."""

    def __init__(self, db: StudyDB, engine_factory: EngineFactory, results_dir: Path, *,
                 options: PrereadOptions | None = None, audit: Any = None, weights_sha256: str = "") -> None:
        self.db = db
        self.engine_factory = engine_factory
        self.results_dir = Path(results_dir)
        self.options = options or PrereadOptions()
        self.audit = audit
        self.weights_sha256 = weights_sha256
        self._engine: tuple[Engine, ImageSpec | None] | None = None
        self._lock = threading.Lock()

    def engine(self) -> tuple[Engine, ImageSpec | None]:
        with self._lock:
            if self._engine is None:
                self._engine = self.engine_factory()
            return self._engine

    def result_path(self, study_uid: str, series_uid: str) -> Path:
        return result_path(self.results_dir, study_uid, series_uid)

    def __call__(self, job: Job, cancel: Callable[[], bool]) -> JobOutcome:
        paths = self.db.instance_paths(job.study_uid, series_uid=job.series_uid)
        if not paths:
            raise XMedError(f"Series {job.series_uid} has no files in the local database.")
        result = scan(paths)
        series = pick(result.all_series(), job.series_uid)
        try:
            volume = load_series(series, cancel=cancel)
        except XMedError:
            if cancel():
                raise JobCancelled("stopped while loading") from None
            raise
        if len(volume) == 0:
            raise XMedError(f"Series {job.series_uid}: no slice could be read.")
        engine, spec = self.engine()
        study = self.db.get(job.study_uid)
        description = study.description if study is not None else ""
        out = preread(engine, volume, self.options, image_spec=spec, study_description=description, cancel=cancel)
        if out.cancelled or cancel():
            raise JobCancelled("stopped during the pre-read")
        document = preread_document(out, job.study_uid, job.series_uid, series, len(volume))
        target = self.result_path(job.study_uid, job.series_uid)
        write_atomic(target, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        lesions = document["lesions"]
        tier = document_tier(document)
        self._audit(job, out, document, volume)
        log.info("pre-read of series %s: %d lesion(s), worst tier %s", job.series_uid, len(lesions), tier or "-")
        return JobOutcome(tier=tier, lesions=len(lesions), result_path=str(target))

    def _audit(self, job: Job, out: Any, document: dict, volume: Any) -> None:
        if self.audit is None:
            return
        sops = [frame_ref(volume, k).sop_instance_uid for k in range(len(volume))]
        try:
            self.audit.append("ai.request", {
                "model_id": out.model, "weights_sha256": self.weights_sha256, "prompt": "series pre-read",
                "image": {"series_uid": job.series_uid, "slices": len(volume)}, "source": "pre-read on arrival",
                "job": job.id}, study_uid=job.study_uid)
            self.audit.append("ai.output", {
                "model_id": out.model, "weights_sha256": self.weights_sha256,
                "text": json.dumps(document["lesions"], ensure_ascii=False), "reasoning": [],
                "boxes": [{"lesion": les["id"], "frame": les["key_slice"], "box_pixels": les["box_pixels"],
                           "sop_instance_uid": sops[les["key_slice"]]} for les in document["lesions"]],
                "reliability": {}, "engine": out.engine, "source": "pre-read on arrival", "job": job.id},
                study_uid=job.study_uid)
        except XMedError as exc:
            log.error("audit trail: %s", exc)



@dataclass(frozen=True)
class SavedPreread:
    """The latest finished pre-read on arrival of a series: its document and when it finished."""

    document: dict
    finished_at: str  # ISO time (UTC) the job finished
    path: Path
    reason: str = ""  # the job's: "retrieved", "arrival …", or VIEWER_REASON

    @property
    def origin(self) -> str:
        """How the panel names it: "in the viewer" or "on arrival"."""
        return "in the viewer" if self.reason == VIEWER_REASON else "on arrival"


def saved_preread(db: StudyDB, series_uid: str) -> SavedPreread | None:
    """The newest done pre-read job of ``series_uid`` and its result; None when there is none. XMedError when its
    file is gone or does not read as a pre-read (logged; nothing is deleted)."""
    rows = db.rows("SELECT result_path, finished_at, reason FROM jobs WHERE series_uid = ? AND state = 'done' "
                   "AND result_path != '' ORDER BY id DESC LIMIT 1", (series_uid,))
    if not rows:
        return None
    path, finished, reason = Path(rows[0][0]), str(rows[0][1] or ""), str(rows[0][2] or "")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("the saved pre-read of series %s cannot be read (%s): %s", series_uid, path, exc)
        raise XMedError(f"its file cannot be read ({path.name}: {type(exc).__name__}).") from None
    if not isinstance(document, dict):
        raise XMedError(f"its file is not a pre-read ({path.name}).")
    return SavedPreread(document, finished, path, reason)
