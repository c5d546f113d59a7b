"""The local study database: one SQLite file indexing every study opened, imported or received.

Per study: patient name/ID/birth date/sex, accession, study date/time, modalities,
description, series and instance counts, where its files are, how it arrived, whether it is
complete (``receiving`` while an association is open, ``incomplete`` after an abort or a
retrieve that came back short, ``complete``), the AI pre-read state and worst reliability
tier, and the report state (``none``/``draft``/``signed``). Series and instances (with their
file paths) are kept too, so the files of a study can be found again without a scan.

The schema is versioned with ``PRAGMA user_version`` and upgraded by :data:`MIGRATIONS` (one
list of statements per version, each applied in one transaction). Version 2 adds the pre-read job
queue (``jobs``, :mod:`app.studies.queue`) and the outbox of signed results (``outbox``,
:mod:`app.studies.outbox`), so both survive restarts. The journal is WAL, so the
viewer can search while the listener writes. A file SQLite cannot read is never deleted: it is
renamed ``studies.sqlite.corrupt-N`` (with its ``-wal``/``-shm``) and a new, empty database is
created; :attr:`StudyDB.recovered_from` says so and the caller rebuilds the index from the
files (:func:`app.studies.importer.open_library`).

Thread-safe: one connection guarded by a lock (the Storage SCP writes from its association
threads).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from app.core.errors import XMedError
from app.core.paths import set_aside

log = logging.getLogger(__name__)

STATES = ("receiving", "incomplete", "complete")
AI_STATES = ("none", "queued", "running", "done", "failed")
REPORT_STATES = ("none", "draft", "signed")

#: Version N is reached by applying MIGRATIONS[N - 1] to a database at version N - 1.
MIGRATIONS: list[list[str]] = [
    [  # 1: the first schema
        """CREATE TABLE studies (
            study_uid TEXT PRIMARY KEY,
            patient_name TEXT NOT NULL DEFAULT '',
            patient_search TEXT NOT NULL DEFAULT '',
            patient_id TEXT NOT NULL DEFAULT '',
            birth_date TEXT NOT NULL DEFAULT '',
            sex TEXT NOT NULL DEFAULT '',
            accession TEXT NOT NULL DEFAULT '',
            study_date TEXT NOT NULL DEFAULT '',
            study_time TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL DEFAULT '',
            modalities TEXT NOT NULL DEFAULT '',
            series_count INTEGER NOT NULL DEFAULT 0,
            instance_count INTEGER NOT NULL DEFAULT 0,
            expected_instances INTEGER,
            state TEXT NOT NULL DEFAULT 'complete' CHECK (state IN ('receiving', 'incomplete', 'complete')),
            origin TEXT NOT NULL DEFAULT '',
            location TEXT NOT NULL DEFAULT '',
            ai_state TEXT NOT NULL DEFAULT 'none'
                CHECK (ai_state IN ('none', 'queued', 'running', 'done', 'failed')),
            ai_worst_tier TEXT NOT NULL DEFAULT '',
            report_state TEXT NOT NULL DEFAULT 'none' CHECK (report_state IN ('none', 'draft', 'signed')),
            added_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        )""",
        "CREATE INDEX studies_patient_id ON studies (patient_id COLLATE NOCASE)",
        "CREATE INDEX studies_accession ON studies (accession COLLATE NOCASE)",
        "CREATE INDEX studies_date ON studies (study_date, study_time)",
        "CREATE INDEX studies_patient_search ON studies (patient_search)",
        """CREATE TABLE study_modalities (
            modality TEXT NOT NULL,
            study_uid TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
            PRIMARY KEY (modality, study_uid)
        ) WITHOUT ROWID""",
        """CREATE TABLE series (
            series_uid TEXT PRIMARY KEY,
            study_uid TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
            number INTEGER,
            modality TEXT NOT NULL DEFAULT '',
            description TEXT NOT NULL DEFAULT '',
            instance_count INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX series_study ON series (study_uid)",
        """CREATE TABLE instances (
            sop_instance_uid TEXT PRIMARY KEY,
            series_uid TEXT NOT NULL,
            study_uid TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
            sop_class_uid TEXT NOT NULL DEFAULT '',
            path TEXT NOT NULL,
            size INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX instances_study ON instances (study_uid)",
        "CREATE INDEX instances_series ON instances (series_uid)",
    ],
    [  # 2: the pre-read job queue (app.studies.queue) and the outbox of signed results (app.studies.outbox)
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL DEFAULT 'preread',
            study_uid TEXT NOT NULL REFERENCES studies (study_uid) ON DELETE CASCADE,
            series_uid TEXT NOT NULL DEFAULT '',
            instances INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'running', 'done', 'failed')),
            tier TEXT NOT NULL DEFAULT '',
            lesions INTEGER,
            result_path TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT '',
            attempts INTEGER NOT NULL DEFAULT 0,
            owner TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            started_at TEXT NOT NULL DEFAULT '',
            finished_at TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX jobs_state ON jobs (state, id)",
        "CREATE INDEX jobs_study ON jobs (study_uid)",
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            node TEXT NOT NULL,
            via TEXT NOT NULL DEFAULT 'dimse' CHECK (via IN ('dimse', 'dicomweb')),
            path TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT '',
            study_uid TEXT NOT NULL DEFAULT '',
            sop_instance_uid TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            sent_at TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX outbox_state ON outbox (state, next_attempt)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


class StudyDBError(XMedError):
    """The study database cannot be used."""


@dataclass(frozen=True)
class InstanceRecord:
    """What the index keeps of one instance (read from its header, never from its pixels)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    path: str
    sop_class_uid: str = ""
    size: int = 0
    patient_name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    accession: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    series_number: int | None = None
    series_description: str = ""
    modality: str = ""


@dataclass
class Study:
    study_uid: str
    patient_name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    accession: str = ""
    study_date: str = ""
    study_time: str = ""
    description: str = ""
    modalities: list[str] = field(default_factory=list)
    series: int = 0
    instances: int = 0
    expected_instances: int | None = None
    state: str = "complete"
    origin: str = ""
    location: str = ""
    ai_state: str = "none"
    ai_worst_tier: str = ""
    report_state: str = "none"
    added_at: str = ""
    updated_at: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["complete"] = self.state == "complete"
        return d


_STUDY_COLUMNS = (
    "study_uid, patient_name, patient_id, birth_date, sex, accession, study_date, study_time, description, "
    "modalities, series_count, instance_count, expected_instances, state, origin, location, ai_state, "
    "ai_worst_tier, report_state, added_at, updated_at"
)


def _study(row: tuple) -> Study:
    (uid, name, pid, birth, sex, acc, date, tm, desc, mods, nser, ninst, expected, state, origin, loc,
     ai_state, tier, report, added, updated) = row
    return Study(uid, name, pid, birth, sex, acc, date, tm, desc, [m for m in mods.split("\\") if m], nser, ninst,
                 expected, state, origin, loc, ai_state, tier, report, added, updated)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def search_key(name: str) -> str:
    """A patient name as searched: DICOM ``^``/``=`` separators become spaces, upper case."""
    return " ".join(name.replace("^", " ").replace("=", " ").upper().split())


def normalise_date(text: str) -> str:
    """``2026-12-06`` / ``20261206`` → ``20261206`` (what DICOM DA holds); else ValueError."""
    t = text.strip().replace("-", "").replace(".", "").replace("/", "")
    if len(t) != 8 or not t.isdigit():
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD or YYYYMMDD)")
    try:
        datetime.strptime(t, "%Y%m%d")
    except ValueError:
        raise ValueError(f"no such date: {text!r}") from None
    return t


_DATE_RANGE = re.compile(r"(\d{4}-?\d{2}-?\d{2})?\s*(-|\.\.|to)?\s*(\d{4}-?\d{2}-?\d{2})?")


def dicom_date_range(text: str) -> str:
    """A study date or range as a reader types it -- ``2026-12-06``, ``20261206``, ``2026-12-01-2026-12-06``,
    ``20261201-20261206``, ``2026-12-01..2026-12-06``, open ``2026-12-01-`` / ``-2026-12-06`` -- as a DICOM
    query value (``20261201-20261206``); "" stays ""; else ValueError."""
    t = text.strip()
    if not t:
        return ""
    m = _DATE_RANGE.fullmatch(t)
    if m is None or not (m.group(1) or m.group(3)) or (m.group(1) and m.group(3) and not m.group(2)):
        raise ValueError(f"not a date or date range: {text!r} (use YYYY-MM-DD, or FROM-TO)")
    first = normalise_date(m.group(1)) if m.group(1) else ""
    last = normalise_date(m.group(3)) if m.group(3) else ""
    if not m.group(2):
        return first
    if first and last and last < first:
        raise ValueError(f"the range {text!r} ends before it starts")
    return f"{first}-{last}"


class StudyDB:
    """The study index in ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.recovered_from: Path | None = None  # where a damaged file was set aside, if one was
        self.created = False
        self._lock = threading.RLock()
        self._writes = 0  # write transactions committed through this object (see :meth:`change_stamp`)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            self.recovered_from = self._set_aside(f"SQLite cannot read it ({exc})")
            self._conn = self._open()

    # ---- opening, migrations, damage ------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        self.created = not self.path.exists() or self.path.stat().st_size == 0
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            check = conn.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else 'no answer'}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise StudyDBError(
                    f"The study database {self.path} was written by a newer version (schema {version}, "
                    f"this one knows {SCHEMA_VERSION}); update the workstation.")
            if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                log.warning("study database: WAL journal not available; using the default journal")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: the index survives crashes;
            conn.execute("PRAGMA foreign_keys = ON")  # the DICOM files themselves are fsynced on write
            self._migrate(conn, version)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int) -> None:
        while version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated
                if current == version:
                    for stmt in MIGRATIONS[version]:
                        conn.execute(stmt)
                    conn.execute(f"PRAGMA user_version = {version + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            log.info("study database: schema now at version %d", version)

    def _set_aside(self, reason: str) -> Path:
        aside = set_aside(self.path, reason)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        return aside

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "StudyDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self._writes += 1

    def change_stamp(self) -> tuple[int, int]:
        """Changes whenever the database changed: a commit through this object, or one by another
        connection or process (``PRAGMA data_version``). Cheap; the study list polls it."""
        with self._lock:
            return self._writes, int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def rows(self, sql: str, params: Iterable[object] = ()) -> list[tuple]:
        """A read-only query (for the queue and the outbox, which keep their own tables here)."""
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    # ---- writing ----------------------------------------------------------------------------
    def add_instances(self, records: Iterable[InstanceRecord], *, origin: str, state: str | None = None,
                      location: str | None = None) -> tuple[int, set[str]]:
        """Index ``records`` (one transaction); an instance already indexed (same SOP Instance UID) is
        left as it is. Returns (how many were new, the study UIDs touched). Counts are refreshed."""
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        stamp = now()
        new = 0
        touched: set[str] = set()
        with self.transaction() as c:
            for r in records:
                if r.study_uid not in touched:
                    self._upsert_study(c, r, origin, stamp, state, location)
                    touched.add(r.study_uid)
                c.execute(
                    "INSERT INTO series (series_uid, study_uid, number, modality, description) VALUES (?,?,?,?,?) "
                    "ON CONFLICT (series_uid) DO NOTHING",
                    (r.series_uid, r.study_uid, r.series_number, r.modality, r.series_description))
                cur = c.execute(
                    "INSERT INTO instances (sop_instance_uid, series_uid, study_uid, sop_class_uid, path, size) "
                    "VALUES (?,?,?,?,?,?) ON CONFLICT (sop_instance_uid) DO NOTHING",
                    (r.sop_instance_uid, r.series_uid, r.study_uid, r.sop_class_uid, r.path, r.size))
                new += cur.rowcount
            self._refresh(c, touched)
        return new, touched

    @staticmethod
    def _upsert_study(c: sqlite3.Connection, r: InstanceRecord, origin: str, stamp: str, state: str | None,
                      location: str | None) -> None:
        keep = "CASE WHEN studies.{0} = '' THEN excluded.{0} ELSE studies.{0} END"
        fill = ", ".join(f"{col} = {keep.format(col)}" for col in (
            "patient_name", "patient_search", "patient_id", "birth_date", "sex", "accession", "study_date",
            "study_time", "description", "origin", "location"))
        c.execute(
            "INSERT INTO studies (study_uid, patient_name, patient_search, patient_id, birth_date, sex, accession, "
            "study_date, study_time, description, state, origin, location, added_at, updated_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            f"ON CONFLICT (study_uid) DO UPDATE SET {fill}, updated_at = excluded.updated_at"
            + (", state = excluded.state" if state is not None else ""),
            (r.study_uid, r.patient_name, search_key(r.patient_name), r.patient_id, r.birth_date, r.sex, r.accession,
             r.study_date, r.study_time, r.study_description, state or "complete", origin,
             location if location is not None else str(Path(r.path).parent), stamp, stamp))

    @staticmethod
    def _refresh(c: sqlite3.Connection, study_uids: Iterable[str]) -> None:
        for uid in study_uids:
            c.execute("UPDATE series SET instance_count = (SELECT COUNT(*) FROM instances i "
                      "WHERE i.series_uid = series.series_uid) WHERE study_uid = ?", (uid,))
            mods = sorted({m for (m,) in c.execute(
                "SELECT DISTINCT modality FROM series WHERE study_uid = ? AND modality != ''", (uid,))})
            c.execute("DELETE FROM study_modalities WHERE study_uid = ?", (uid,))
            c.executemany("INSERT INTO study_modalities (modality, study_uid) VALUES (?, ?)",
                          [(m, uid) for m in mods])
            c.execute(
                "UPDATE studies SET modalities = ?, "
                "series_count = (SELECT COUNT(*) FROM series s WHERE s.study_uid = studies.study_uid "
                "AND s.instance_count > 0), "
                "instance_count = (SELECT COUNT(*) FROM instances i WHERE i.study_uid = studies.study_uid), "
                "updated_at = ? WHERE study_uid = ?", ("\\".join(mods), now(), uid))

    def set_state(self, study_uid: str, state: str) -> None:
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        with self.transaction() as c:
            c.execute("UPDATE studies SET state = ?, updated_at = ? WHERE study_uid = ?", (state, now(), study_uid))

    def set_expected(self, study_uid: str, expected: int | None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE studies SET expected_instances = ?, updated_at = ? WHERE study_uid = ?",
                      (expected, now(), study_uid))

    def settle(self, study_uid: str) -> str:
        """After a clean transfer: ``complete``, unless the remote node said more instances exist than
        arrived (then ``incomplete``). Returns the new state."""
        with self.transaction() as c:
            row = c.execute("SELECT instance_count, expected_instances FROM studies WHERE study_uid = ?",
                            (study_uid,)).fetchone()
            if row is None:
                return ""
            count, expected = row
            state = "incomplete" if expected is not None and count < expected else "complete"
            c.execute("UPDATE studies SET state = ?, updated_at = ? WHERE study_uid = ?", (state, now(), study_uid))
            return state

    def set_ai(self, study_uid: str, state: str, worst_tier: str = "") -> None:
        if state not in AI_STATES:
            raise ValueError(f"unknown AI state {state!r}")
        with self.transaction() as c:
            c.execute("UPDATE studies SET ai_state = ?, ai_worst_tier = ?, updated_at = ? WHERE study_uid = ?",
                      (state, worst_tier, now(), study_uid))

    def set_report(self, study_uid: str, state: str) -> None:
        if state not in REPORT_STATES:
            raise ValueError(f"unknown report state {state!r}")
        with self.transaction() as c:
            c.execute("UPDATE studies SET report_state = ?, updated_at = ? WHERE study_uid = ?",
                      (state, now(), study_uid))

    def remove_study(self, study_uid: str) -> bool:
        """Forget a study (its files are left where they are)."""
        with self.transaction() as c:
            return c.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,)).rowcount > 0

    # ---- reading ----------------------------------------------------------------------------
    def get(self, study_uid: str) -> Study | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_STUDY_COLUMNS} FROM studies WHERE study_uid = ?",
                                     (study_uid,)).fetchone()
        return _study(row) if row else None

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?",
                                      (sop_instance_uid,)).fetchone() is not None

    def instance_paths(self, study_uid: str, series_uid: str | None = None) -> list[Path]:
        """The files of a study (or of one of its series)."""
        with self._lock:
            if series_uid is not None:
                return [Path(p) for (p,) in self._conn.execute(
                    "SELECT path FROM instances WHERE study_uid = ? AND series_uid = ? ORDER BY path",
                    (study_uid, series_uid))]
            return [Path(p) for (p,) in self._conn.execute(
                "SELECT path FROM instances WHERE study_uid = ? ORDER BY series_uid, path", (study_uid,))]

    def modalities(self) -> list[str]:
        """Every modality of an indexed study (for the study list's filter)."""
        with self._lock:
            return [m for (m,) in self._conn.execute("SELECT DISTINCT modality FROM study_modalities ORDER BY modality")]

    def series(self, study_uid: str) -> list[dict]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT series_uid, number, modality, description, instance_count FROM series "
                "WHERE study_uid = ? ORDER BY number IS NULL, number, series_uid", (study_uid,)).fetchall()
        return [dict(zip(("series_uid", "number", "modality", "description", "instances"), r)) for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0])

    def search(self, text: str = "", *, patient_id: str = "", accession: str = "", date_from: str = "",
               date_to: str = "", modality: str = "", state: str = "", limit: int | None = 1000) -> list[Study]:
        """Studies matching every criterion, newest first.

        ``text``: each word must occur in the patient name (any part, any case), or start the
        patient ID or accession number, or equal the study UID. ``patient_id``/``accession``: exact
        (case-insensitive). ``date_from``/``date_to``: inclusive, YYYYMMDD or YYYY-MM-DD.
        ``modality``: one modality in the study (CT, MR…).
        """
        where: list[str] = []
        params: list[object] = []
        for word in search_key(text).split():
            like = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("(patient_search LIKE ? ESCAPE '\\' OR patient_id LIKE ? ESCAPE '\\' "
                         "OR accession LIKE ? ESCAPE '\\' OR study_uid = ?)")
            params += [f"%{like}%", f"{like}%", f"{like}%", word]
        if patient_id:
            where.append("patient_id = ? COLLATE NOCASE")
            params.append(patient_id.strip())
        if accession:
            where.append("accession = ? COLLATE NOCASE")
            params.append(accession.strip())
        if date_from:
            where.append("study_date >= ?")
            params.append(normalise_date(date_from))
        if date_to:
            where.append("study_date <= ? AND study_date != ''")
            params.append(normalise_date(date_to))
        if modality:
            where.append("study_uid IN (SELECT study_uid FROM study_modalities WHERE modality = ?)")
            params.append(modality.strip().upper())
        if state:
            where.append("state = ?")
            params.append(state)
        sql = f"SELECT {_STUDY_COLUMNS} FROM studies"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY study_date DESC, study_time DESC, study_uid"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_study(r) for r in rows]

    def timed_search(self, *args: object, **kwargs: object) -> tuple[list[Study], float]:
        """:meth:`search` and how long it took (seconds)."""
        t0 = time.perf_counter()
        out = self.search(*args, **kwargs)  # type: ignore[arg-type]
        return out, time.perf_counter() - t0
