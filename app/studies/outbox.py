"""The outbox: DICOM files waiting to go to a node (the signed report's SR and PDF), sent with retries.

Each file is one row in the study database (table ``outbox``, schema version 2): ``pending`` →
``sending`` → ``sent``, or back to ``pending`` with the next attempt after a back-off
(:data:`BACKOFF`: 10 s, 30 s, 2 min, 10 min, 30 min, then hourly) and the last error kept, until
:data:`MAX_ATTEMPTS` attempts have failed: then ``failed``, visible in the viewer's outbox and in
``xmedgpt pacs outbox``, and sent again by :meth:`Outbox.retry`. A file that is gone or is not DICOM
fails at once (retrying cannot help). Rows left ``sending`` by a crash go back to ``pending``.

Sending is C-STORE (:func:`app.studies.scu.send_files`) or, for an item queued ``via="dicomweb"``,
STOW-RS (:func:`app.studies.dicomweb.stow`); both write the association and send records of the audit
trail. The outbox adds ``pacs.outbox.queued``, ``pacs.outbox.sent``, ``pacs.outbox.retry`` and
``pacs.outbox.failed``.

:meth:`Outbox.enqueue_report` takes what signing exported (SR files, the PDF, the text) and queues
the SRs and the PDF wrapped as an Encapsulated PDF instance of the same study
(:func:`app.studies.pdf.encapsulate_pdf`); the text file stays local.
:class:`OutboxSender` sends in the background (its own thread), never blocking the caller.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from app.core.errors import XMedError
from app.studies.db import StudyDB, now
from app.studies.dicomweb import stow
from app.studies.importer import Audit, notify, record
from app.studies.nodes import LocalAE, Node, NodeError, NodeStore
from app.studies.pdf import ENCAPSULATED_PDF, encapsulate_pdf
from app.studies.scu import send_files

log = logging.getLogger(__name__)

OUTBOX_STATES = ("pending", "sending", "sent", "failed")
VIAS = ("dimse", "dicomweb")
#: Seconds to wait before attempt 2, 3, …; the last value repeats.
BACKOFF: tuple[float, ...] = (10.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
MAX_ATTEMPTS = 10
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass
class OutboxItem:
    id: int
    node: str
    via: str
    path: str
    kind: str
    study_uid: str
    sop_instance_uid: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str
    created_at: str
    updated_at: str
    sent_at: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


_COLUMNS = ("id, node, via, path, kind, study_uid, sop_instance_uid, state, attempts, next_attempt, last_error, "
            "created_at, updated_at, sent_at")


def _header(path: Path) -> tuple[str, str, str]:
    """(SOP class, SOP instance, study UID) of a DICOM file; XMedError when it is not one."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
        sop_class = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
        sop = str(ds.get("SOPInstanceUID") or "")
    except (InvalidDicomError, OSError, AttributeError, ValueError) as exc:
        raise XMedError(f"{path} cannot be sent: not a readable DICOM file ({exc}).") from exc
    if not sop_class or not sop:
        raise XMedError(f"{path} cannot be sent: it has no SOP Class/Instance UID.")
    return sop_class, sop, str(ds.get("StudyInstanceUID") or "")


def _kind(sop_class: str) -> str:
    if sop_class.startswith(SR_PREFIX):
        return "sr"
    return "pdf" if sop_class == ENCAPSULATED_PDF else "file"


def _same(a: str | Path) -> str:
    return os.path.realpath(str(a))


class Outbox:
    def __init__(self, db: StudyDB, nodes: NodeStore, *, local: LocalAE | None = None, audit: Audit | None = None,
                 clock: Callable[[], float] = time.time, backoff: tuple[float, ...] = BACKOFF,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self.db = db
        self.nodes = nodes
        self.local = local
        self.audit = audit
        self.clock = clock
        self.backoff = backoff
        self.max_attempts = max_attempts
        self.listeners: list[Callable[[], None]] = []  # called when items were added or changed state
        self._send_lock = threading.Lock()

    # ---- nodes -------------------------------------------------------------------------------
    def _store(self) -> NodeStore:
        """The node list as it is now (another process — ``xmedgpt pacs nodes`` — may have changed it)."""
        if self.nodes.path.exists():
            fresh = NodeStore.load(self.nodes.path)
            if not fresh.problems:
                self.nodes = fresh
        return self.nodes

    def _node(self, name: str, via: str) -> Node:
        node = self._store().get(name)
        if via == "dicomweb" and not node.dicomweb:
            raise NodeError(f"Node '{name}' has no DICOMweb URL, so nothing can be sent to it by STOW-RS.")
        return node

    # ---- adding ------------------------------------------------------------------------------
    def enqueue(self, paths: Iterable[Path], node: str, *, via: str = "dimse") -> list[OutboxItem]:
        """Queue DICOM files for ``node``; each must be a readable DICOM file (XMedError otherwise:
        nothing is queued)."""
        if via not in VIAS:
            raise XMedError(f"Unknown way to send {via!r}: dimse or dicomweb.")
        self._node(node, via)
        rows = []
        for p in paths:
            p = Path(p).expanduser().resolve()
            sop_class, sop, study = _header(p)
            rows.append((p, _kind(sop_class), sop, study))
        if not rows:
            return []
        stamp = now()
        ids: list[int] = []
        with self.db.transaction() as c:
            for p, kind, sop, study in rows:
                cur = c.execute(
                    "INSERT INTO outbox (node, via, path, kind, study_uid, sop_instance_uid, state, next_attempt, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?)",
                    (node, via, str(p), kind, study, sop, stamp, stamp))
                ids.append(int(cur.lastrowid))
        for study in sorted({r[3] for r in rows}):
            self._audit("pacs.outbox.queued", {"node": node, "via": via, "items": [
                {"id": i, "kind": r[1], "file": r[0].name, "sop_instance_uid": r[2]}
                for i, r in zip(ids, rows, strict=True) if r[3] == study]}, study)
        self._notify()
        return [item for i in ids if (item := self.item(i)) is not None]

    def enqueue_report(self, exported: Iterable[Path], node: str, *, via: str = "dimse") -> list[OutboxItem]:
        """What signing exported → the SR files and the PDF (as Encapsulated PDF, written beside it as
        ``<name>-pdf.dcm``) queued for ``node``. Text files stay local."""
        self._node(node, via)
        files = [Path(p) for p in exported]
        dicoms = [p for p in files if p.suffix.lower() == ".dcm" and not p.name.endswith("-pdf.dcm")]
        pdfs = [p for p in files if p.suffix.lower() == ".pdf"]
        if not dicoms:
            raise XMedError("The signed report has no DICOM SR to send (and the PDF needs one for its patient "
                            "and study).")
        narrative = next((p for p in dicoms if "-report-" in p.name), dicoms[-1])
        wrapped = []
        for pdf in pdfs:
            out = pdf.with_name(f"{pdf.stem}-pdf.dcm")
            encapsulate_pdf(pdf, narrative, out)
            wrapped.append(out)
        return self.enqueue([*dicoms, *wrapped], node, via=via)

    # ---- reading -----------------------------------------------------------------------------
    def items(self, state: str | None = None, limit: int | None = None) -> list[OutboxItem]:
        sql = f"SELECT {_COLUMNS} FROM outbox"
        params: list[Any] = []
        if state is not None:
            sql += " WHERE state = ?"
            params.append(state)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [OutboxItem(*r) for r in self.db.rows(sql, params)]

    def item(self, item_id: int) -> OutboxItem | None:
        rows = self.db.rows(f"SELECT {_COLUMNS} FROM outbox WHERE id = ?", (item_id,))
        return OutboxItem(*rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in OUTBOX_STATES}
        for state, n in self.db.rows("SELECT state, COUNT(*) FROM outbox GROUP BY state"):
            out[state] = int(n)
        return out

    def next_due(self) -> float | None:
        """When the next pending item is due (clock time), None when nothing is pending."""
        row = self.db.rows("SELECT MIN(next_attempt) FROM outbox WHERE state = 'pending'")
        return None if not row or row[0][0] is None else float(row[0][0])

    # ---- state changes -----------------------------------------------------------------------
    def retry(self, ids: Iterable[int] | None = None) -> int:
        """Failed (and waiting) items, all or those named, to be sent at once, with a fresh back-off."""
        ids = list(ids) if ids is not None else None
        sql = ("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt = 0, updated_at = ? "
               "WHERE state IN ('failed', 'pending')")
        params: list[Any] = [now()]
        if ids is not None:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            params += ids
        with self.db.transaction() as c:
            n = c.execute(sql, params).rowcount
        if n:
            self._audit("pacs.outbox.retry", {"items": ids if ids is not None else "all", "count": n,
                                              "by": "reader"})
            self._notify()
        return n

    def recover(self) -> int:
        """Items left ``sending`` by a process that stopped mid-send go back to ``pending``."""
        with self.db.transaction() as c:
            n = c.execute("UPDATE outbox SET state = 'pending', updated_at = ? WHERE state = 'sending'",
                          (now(),)).rowcount
        if n:
            log.warning("outbox: %d item(s) interrupted while sending are pending again", n)
        return n

    # ---- sending -----------------------------------------------------------------------------
    def send_due(self) -> dict[str, int]:
        """Send every pending item that is due (grouped per node and way); returns counts
        ``{"sent", "retry", "failed"}``. One call at a time per outbox."""
        with self._send_lock:
            t = self.clock()
            with self.db.transaction() as c:
                rows = c.execute(f"SELECT {_COLUMNS} FROM outbox WHERE state = 'pending' AND next_attempt <= ? "
                                 "ORDER BY id", (t,)).fetchall()
                c.executemany("UPDATE outbox SET state = 'sending', updated_at = ? WHERE id = ?",
                              [(now(), r[0]) for r in rows])
            items = [OutboxItem(*r) for r in rows]
            summary = {"sent": 0, "retry": 0, "failed": 0}
            groups: dict[tuple[str, str], list[OutboxItem]] = {}
            for it in items:
                groups.setdefault((it.node, it.via), []).append(it)
            for (name, via), group in groups.items():
                for state, n in self._send_group(name, via, group).items():
                    summary[state] += n
            if items:
                self._notify()
            return summary

    def _send_group(self, name: str, via: str, group: list[OutboxItem]) -> dict[str, int]:
        counts = {"sent": 0, "retry": 0, "failed": 0}
        present = [it for it in group if Path(it.path).is_file()]
        for it in group:
            if it not in present:
                self._failed(it, "the file is gone", permanent=True)
                counts["failed"] += 1
        if not present:
            return counts
        try:
            node = self._node(name, via)
            store = self._store()
            if via == "dicomweb":
                result = stow(node, [Path(it.path) for it in present], audit=self.audit)
            else:
                result = send_files(node, [Path(it.path) for it in present], local=self.local or store.local,
                                    audit=self.audit)
        except XMedError as exc:
            for it in present:
                counts["failed" if self._failed(it, str(exc)) else "retry"] += 1
            return counts
        except Exception as exc:  # noqa: BLE001 - e.g. an HTTP library error: kept as the item's error
            for it in present:
                counts["failed" if self._failed(it, f"{exc.__class__.__name__}: {exc}") else "retry"] += 1
            return counts
        failed = {_same(p): why for p, why in result.failed}
        skipped = {_same(p): why for p, why in result.skipped}
        sent: list[OutboxItem] = []
        for it in present:
            key = _same(it.path)
            if key in skipped:
                self._failed(it, skipped[key], permanent=True)
                counts["failed"] += 1
            elif key in failed:
                counts["failed" if self._failed(it, failed[key]) else "retry"] += 1
            else:
                sent.append(it)
        if sent:
            stamp = now()
            with self.db.transaction() as c:
                c.executemany("UPDATE outbox SET state = 'sent', attempts = attempts + 1, last_error = '', "
                              "sent_at = ?, updated_at = ? WHERE id = ?", [(stamp, stamp, it.id) for it in sent])
            for study in sorted({it.study_uid for it in sent}):
                self._audit("pacs.outbox.sent", {"node": name, "via": via, "items": [
                    {"id": it.id, "kind": it.kind, "sop_instance_uid": it.sop_instance_uid}
                    for it in sent if it.study_uid == study]}, study)
            counts["sent"] += len(sent)
            log.info("outbox: %d item(s) sent to %s", len(sent), name)
        return counts

    def _failed(self, it: OutboxItem, error: str, *, permanent: bool = False) -> bool:
        """Record a failed attempt; returns True when the item is now ``failed`` (no more retries)."""
        attempts = it.attempts + 1
        final = permanent or attempts >= self.max_attempts
        delay = self.backoff[min(attempts - 1, len(self.backoff) - 1)] if self.backoff else 0.0
        with self.db.transaction() as c:
            c.execute("UPDATE outbox SET state = ?, attempts = ?, next_attempt = ?, last_error = ?, updated_at = ? "
                      "WHERE id = ?", ("failed" if final else "pending", attempts,
                                       0.0 if final else self.clock() + delay, error[:2000], now(), it.id))
        self._audit("pacs.outbox.failed" if final else "pacs.outbox.retry", {
            "id": it.id, "node": it.node, "via": it.via, "kind": it.kind, "sop_instance_uid": it.sop_instance_uid,
            "attempts": attempts, "error": error[:500], **({} if final else {"retry_in_s": delay})}, it.study_uid)
        (log.error if final else log.warning)("outbox: %s to %s failed (attempt %d%s): %s", Path(it.path).name,
                                              it.node, attempts, ", giving up" if final else f", again in {delay:g} s",
                                              error)
        return final

    # ---- helpers -----------------------------------------------------------------------------
    def _notify(self) -> None:
        notify(self.listeners, what="outbox listener")

    def _audit(self, action: str, data: dict[str, Any], study_uid: str = "") -> None:
        record(self.audit, action, data, study_uid, keep_going=True)


class OutboxSender:
    """Sends the outbox's due items on a background thread; :meth:`wake` after queuing something."""

    def __init__(self, outbox: Outbox, *, max_wait: float = 30.0) -> None:
        self.outbox = outbox
        self.max_wait = max_wait
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        outbox.listeners.append(self._on_change)

    def _on_change(self) -> None:
        if threading.current_thread() is not self._thread:
            self._wake.set()

    def start(self) -> "OutboxSender":
        if self._thread is not None and self._thread.is_alive():
            return self
        self.outbox.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.outbox.send_due()
                due = self.outbox.next_due()
            except Exception:  # noqa: BLE001 - the database was busy; try again shortly
                log.exception("outbox: send pass failed")
                due = None
            wait = self.max_wait if due is None else min(self.max_wait, max(0.05, due - self.outbox.clock()))
            self._wake.wait(wait)
            self._wake.clear()

    def stop(self, timeout: float = 60.0) -> bool:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                return False
        self._thread = None
        return True
