"""The pre-read queue: studies that arrive are read by the AI in the background, one job at a time.

Jobs live in the study database (table ``jobs``, schema version 2), one per image series, so the
queue survives restarts: at start-up, jobs left ``running`` by a process that is gone go back to
``queued`` (:meth:`JobQueue.recover`). A job's work is a plain function handed in (``runner``:
:class:`app.assistant.study_preread.StudyPrereader` runs the series pre-read), so this package
stays below the assistant. The runner returns a :class:`JobOutcome` (worst tier, lesion count,
where the result was written) or raises; a job stopped by :meth:`JobQueue.stop` goes back to
``queued``.

The study's AI state in the index follows its jobs (:func:`refresh_study`): ``queued`` while a
job waits, ``running`` while one runs, then ``done`` with the worst tier of its series (red >
amber > green; none found: empty), or ``failed`` when a series could not be read (a partial
pre-read is never shown as done).

**Arrival** (:class:`ArrivalWatcher`): attached to the Storage SCP's :class:`~app.studies.scp.Receiver`,
a study is queued when the association that brought it is released and the study is complete, or
when no new instance of it has arrived for ``quiet_seconds`` (a modality that keeps its association
open, or sends each image on its own). An aborted association leaves the study incomplete and
unqueued until more of it arrives.

Nothing here blocks the caller: enqueueing is one insert, the work runs on the queue's own thread.
Every queued, finished and failed job goes into the audit trail (``preread.queued``,
``preread.done``, ``preread.failed``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from app.core.errors import XMedError
from app.studies.db import StudyDB, now
from app.studies.importer import Audit, notify, record

log = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "done", "failed")
#: Series of these modalities hold no images to pre-read (reports, presentation states, documents).
NOT_IMAGES = frozenset({"SR", "PR", "KO", "DOC", "REG", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "AU", "ECG"})
#: The order of reliability tiers, worst last.
TIER_ORDER = ("", "none", "green", "amber", "red")

CancelFn = Callable[[], bool]


class JobCancelled(XMedError):
    """The job was stopped before it finished (the queue is stopping); it runs again later."""


@dataclass
class JobOutcome:
    tier: str = ""  # the worst reliability tier of what was found ('' when nothing was found)
    lesions: int | None = None
    result_path: str = ""


Runner = Callable[["Job", CancelFn], JobOutcome]


@dataclass
class Job:
    id: int
    kind: str
    study_uid: str
    series_uid: str
    instances: int
    state: str
    tier: str
    lesions: int | None
    result_path: str
    error: str
    attempts: int
    owner: str
    reason: str
    created_at: str
    started_at: str
    finished_at: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_JOB_COLUMNS = ("id, kind, study_uid, series_uid, instances, state, tier, lesions, result_path, error, attempts, "
                "owner, reason, created_at, started_at, finished_at")


def worst_tier(tiers: Iterable[str]) -> str:
    """The worst of ``tiers`` (red > amber > green > none); '' when there is none."""
    rank = {t: i for i, t in enumerate(TIER_ORDER)}
    worst = ""
    for t in tiers:
        t = (t or "").lower()
        if rank.get(t, 1) > rank.get(worst, 0):
            worst = t if t in rank else "none"
    return worst


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # the database is local: a job claimed elsewhere is not being run any more
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def refresh_study(db: StudyDB, study_uid: str) -> str:
    """Set the study's AI state and worst tier from its jobs; returns the state."""
    rows = db.rows("SELECT state, tier FROM jobs WHERE study_uid = ?", (study_uid,))
    states = [s for s, _ in rows]
    if not states:
        state, tier = "none", ""
    elif "running" in states:
        state, tier = "running", ""
    elif "queued" in states:
        state, tier = "queued", ""
    elif "failed" in states:
        state, tier = "failed", worst_tier(t for s, t in rows if s == "done")
    else:
        state, tier = "done", worst_tier(t for _, t in rows)
    current = db.get(study_uid)
    if current is not None and (current.ai_state, current.ai_worst_tier) != (state, tier):
        db.set_ai(study_uid, state, tier)
    return state


class JobQueue:
    """The queue in ``db``; :meth:`start` runs its jobs on a background thread with ``runner``."""

    def __init__(self, db: StudyDB, runner: Runner | None = None, *, audit: Audit | None = None,
                 kind: str = "preread", poll_seconds: float = 0.5) -> None:
        self.db = db
        self.runner = runner
        self.audit = audit
        self.kind = kind
        self.poll_seconds = poll_seconds
        self.watchers: list[ArrivalWatcher] = []
        self.listeners: list[Callable[[Job], None]] = []  # called (on the queue's thread) when a job changes
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: Job | None = None
        self._lock = threading.Lock()
        self.owner = owner_id()

    # ---- adding ------------------------------------------------------------------------------
    def enqueue_study(self, study_uid: str, *, reason: str = "") -> list[int]:
        """Queue each image series of the study that has not been read as it is now (a series
        already queued or running, or read with the same number of instances, is left alone).
        Returns the new job ids."""
        study = self.db.get(study_uid)
        if study is None:
            raise XMedError(f"Study {study_uid} is not in the local database.")
        added: list[int] = []
        with self.db.transaction() as c:
            for s in self.db.series(study_uid):
                if s["instances"] <= 0 or (s["modality"] or "").upper() in NOT_IMAGES:
                    continue
                busy = c.execute(
                    "SELECT 1 FROM jobs WHERE kind = ? AND series_uid = ? AND (state IN ('queued', 'running') "
                    "OR (state IN ('done', 'failed') AND instances = ?))",
                    (self.kind, s["series_uid"], s["instances"])).fetchone()
                if busy:
                    continue
                cur = c.execute(
                    "INSERT INTO jobs (kind, study_uid, series_uid, instances, state, reason, created_at) "
                    "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                    (self.kind, study_uid, s["series_uid"], s["instances"], reason, now()))
                added.append(int(cur.lastrowid))
        if added:
            refresh_study(self.db, study_uid)
            self._audit("preread.queued", {"jobs": added, "series": len(added), "reason": reason}, study_uid)
            log.info("pre-read queued for study %s: %d series (%s)", study_uid, len(added), reason or "asked")
            self._wake.set()
        return added

    def retry(self, job_ids: Iterable[int] | None = None) -> int:
        """Failed jobs (all, or those named) back to the queue."""
        ids = list(job_ids) if job_ids is not None else None
        with self.db.transaction() as c:
            sql = "UPDATE jobs SET state = 'queued', error = '', owner = '' WHERE state = 'failed' AND kind = ?"
            params: list[Any] = [self.kind]
            if ids is not None:
                sql += f" AND id IN ({','.join('?' * len(ids))})"
                params += ids
            studies = [u for (u,) in c.execute(
                "SELECT DISTINCT study_uid FROM jobs WHERE state = 'failed' AND kind = ?" +
                (f" AND id IN ({','.join('?' * len(ids))})" if ids is not None else ""),
                [self.kind, *(ids or [])])]
            n = c.execute(sql, params).rowcount
        for uid in studies:
            refresh_study(self.db, uid)
        self._wake.set()
        return n

    # ---- reading -----------------------------------------------------------------------------
    def jobs(self, study_uid: str | None = None, state: str | None = None) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE kind = ?"
        params: list[Any] = [self.kind]
        if study_uid is not None:
            sql += " AND study_uid = ?"
            params.append(study_uid)
        if state is not None:
            sql += " AND state = ?"
            params.append(state)
        return [Job(*row) for row in self.db.rows(sql + " ORDER BY id", params)]

    def job(self, job_id: int) -> Job | None:
        rows = self.db.rows(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return Job(*rows[0]) if rows else None

    def pending(self) -> int:
        return int(self.db.rows("SELECT COUNT(*) FROM jobs WHERE kind = ? AND state IN ('queued', 'running')",
                                (self.kind,))[0][0])

    @property
    def current(self) -> Job | None:
        return self._current

    # ---- restarts ----------------------------------------------------------------------------
    def recover(self) -> int:
        """Jobs left ``running`` by a process that is gone (a crash, a kill) go back to ``queued``."""
        stale = [(i, uid, owner) for i, uid, owner in self.db.rows(
            "SELECT id, study_uid, owner FROM jobs WHERE state = 'running' AND kind = ?", (self.kind,))
            if owner != self.owner and not _owner_alive(owner)]
        if not stale:
            return 0
        with self.db.transaction() as c:
            c.executemany("UPDATE jobs SET state = 'queued', owner = '' WHERE id = ? AND state = 'running'",
                          [(i,) for i, _, _ in stale])
        for uid in {u for _, u, _ in stale}:
            refresh_study(self.db, uid)
        log.warning("pre-read queue: %d job(s) interrupted by a restart are queued again", len(stale))
        self._audit("preread.recovered", {"jobs": [i for i, _, _ in stale]})
        return len(stale)

    # ---- running -----------------------------------------------------------------------------
    def _claim(self) -> Job | None:
        with self.db.transaction() as c:
            row = c.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = 'queued' AND kind = ? "
                            "ORDER BY id LIMIT 1", (self.kind,)).fetchone()
            if row is None:
                return None
            job = Job(*row)
            c.execute("UPDATE jobs SET state = 'running', owner = ?, attempts = attempts + 1, started_at = ?, "
                      "error = '' WHERE id = ?", (self.owner, now(), job.id))
        job.state, job.owner, job.attempts = "running", self.owner, job.attempts + 1
        refresh_study(self.db, job.study_uid)
        return job

    def run_once(self) -> Job | None:
        """Claim the oldest queued job and run it here (the worker thread's step; tests call it)."""
        if self.runner is None:
            raise XMedError("The pre-read queue has no runner (no model to read with).")
        job = self._claim()
        if job is None:
            return None
        self._current = job
        self._notify(job)
        try:
            outcome = self.runner(job, self._stop.is_set)
            if self._stop.is_set():
                raise JobCancelled("stopped")
        except JobCancelled:
            self._finish(job, "queued")
            log.info("pre-read of series %s stopped; it runs again at the next start", job.series_uid)
        except Exception as exc:  # noqa: BLE001 - any failure of one job is recorded, the queue goes on
            message = str(exc) if isinstance(exc, XMedError) else f"{exc.__class__.__name__}: {exc}"
            log.error("pre-read of series %s failed: %s", job.series_uid, message)
            self._finish(job, "failed", error=message)
            self._audit("preread.failed", {"job": job.id, "series_uid": job.series_uid, "error": message},
                        job.study_uid)
        else:
            self._finish(job, "done", outcome=outcome)
            self._audit("preread.done", {"job": job.id, "series_uid": job.series_uid, "tier": outcome.tier,
                                         "lesions": outcome.lesions, "result": outcome.result_path}, job.study_uid)
        finally:
            self._current = None
        return self.job(job.id)

    def _finish(self, job: Job, state: str, *, error: str = "", outcome: JobOutcome | None = None) -> None:
        with self.db.transaction() as c:
            if state == "queued":
                c.execute("UPDATE jobs SET state = 'queued', owner = '' WHERE id = ?", (job.id,))
            else:
                o = outcome or JobOutcome()
                c.execute("UPDATE jobs SET state = ?, tier = ?, lesions = ?, result_path = ?, error = ?, owner = '', "
                          "finished_at = ? WHERE id = ?",
                          (state, o.tier, o.lesions, o.result_path, error[:2000], now(), job.id))
        refresh_study(self.db, job.study_uid)
        done = self.job(job.id)
        if done is not None:
            self._notify(done)

    def start(self) -> "JobQueue":
        """Recover interrupted jobs and run the queue on a background (daemon) thread."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"{self.kind}-queue", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            for w in self.watchers:
                try:
                    w.poll()
                except Exception:  # noqa: BLE001
                    log.exception("arrival watcher failed")
            try:
                job = self.run_once() if self.runner is not None else None
            except Exception:  # noqa: BLE001 - the database was busy or gone; try again later
                log.exception("pre-read queue step failed")
                job = None
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the current job (which is asked to cancel and goes back to the queue)."""
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                log.warning("pre-read queue: the running job did not stop within %.0f s", timeout)
                return False
        self._thread = None
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Until no job is queued or running (tests, ``listen`` on exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending() == 0 and not any(w.waiting() for w in self.watchers):
                return True
            time.sleep(0.05)
        return False

    # ---- helpers -----------------------------------------------------------------------------
    def _notify(self, job: Job) -> None:
        notify(self.listeners, job, what="pre-read queue listener")

    def _audit(self, action: str, data: dict[str, Any], study_uid: str = "") -> None:
        record(self.audit, action, data, study_uid, keep_going=True)


class ArrivalWatcher:
    """Queues received studies once they are complete: association released (study complete), or no new
    instance for ``quiet_seconds``. Attach it to a Receiver with :meth:`attach`."""

    def __init__(self, queue: JobQueue, *, quiet_seconds: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if quiet_seconds <= 0:
            raise ValueError("quiet_seconds must be positive")
        self.queue = queue
        self.quiet_seconds = quiet_seconds
        self.clock = clock
        self._last: dict[str, float] = {}  # study UID -> when its last new instance arrived
        self._lock = threading.Lock()
        queue.watchers.append(self)

    def attach(self, receiver: Any) -> "ArrivalWatcher":
        receiver.on_stored.append(self.instance_stored)
        receiver.on_finished.append(self.association_finished)
        return self

    def instance_stored(self, study_uid: str) -> None:
        with self._lock:
            self._last[study_uid] = self.clock()

    def association_finished(self, transfer: Any, outcome: str) -> None:
        for uid in transfer.studies:  # the studies it brought new instances of
            study = self.queue.db.get(uid)
            if outcome == "released" and study is not None and study.state == "complete":
                with self._lock:
                    self._last.pop(uid, None)
                self._enqueue(uid, "association released, study complete")
            elif outcome != "released":
                with self._lock:  # half a study: wait for the rest (a later retrieve or send)
                    self._last.pop(uid, None)
                log.info("study %s arrived incomplete (%s); not queued for the pre-read", uid, outcome)

    def poll(self) -> list[str]:
        """Queue the studies quiet for ``quiet_seconds``; returns their UIDs (the queue's loop calls it)."""
        t = self.clock()
        with self._lock:
            quiet = [uid for uid, last in self._last.items() if t - last >= self.quiet_seconds]
            for uid in quiet:
                del self._last[uid]
        for uid in quiet:
            self._enqueue(uid, f"no new instance for {self.quiet_seconds:g} s")
        return quiet

    def waiting(self) -> bool:
        with self._lock:
            return bool(self._last)

    def _enqueue(self, uid: str, reason: str) -> None:
        try:
            self.queue.enqueue_study(uid, reason=reason)
        except XMedError as exc:
            log.warning("pre-read not queued for %s: %s", uid, exc)
