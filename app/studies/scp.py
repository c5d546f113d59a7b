"""Receiving instances: the C-STORE handler shared by the Storage SCP (``xmedgpt listen``, the
C-MOVE destination) and by C-GET, and the listener itself (pynetdicom).

Per instance: already indexed or already on disk (same SOP Instance UID) → answered *success*
and not written again; else written and fsynced into managed storage (:mod:`app.studies.storage`)
and indexed (study ``receiving``) *before* success is returned. A full disk is answered
``0xA700`` (out of resources) with a clear log line; what was acknowledged before stays.

Per association: released → each study it touched is settled (``complete``, or ``incomplete``
when the remote said more exist); aborted or connection lost → ``incomplete``. One audit record
per association and study (who called, which node, how many new/duplicate/failed instances) and
one per rejected caller.

Only the AE titles of configured nodes may connect unless the listener is ``open``; it binds to
the configured interface (default 127.0.0.1).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from app.core.errors import XMedError
from app.studies.db import InstanceRecord, StudyDB
from app.studies.importer import Audit, record
from app.studies.nodes import LocalAE, NodeStore
from app.studies.storage import StorageError, StorageFull, instance_path, write_instance
from app.studies.tls import server_context

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

#: Bounded network waits (seconds) for every association we open or accept.
TIMEOUT = 30.0


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def record_from_dataset(ds: Dataset, path: Path, size: int) -> InstanceRecord:
    number = ds.get("SeriesNumber")
    try:
        series_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    return InstanceRecord(
        sop_instance_uid=_text(ds, "SOPInstanceUID"), study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"), path=str(path), sop_class_uid=_text(ds, "SOPClassUID"),
        size=size, patient_name=_text(ds, "PatientName"), patient_id=_text(ds, "PatientID"),
        birth_date=_text(ds, "PatientBirthDate"), sex=_text(ds, "PatientSex"),
        accession=_text(ds, "AccessionNumber"), study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"), study_description=_text(ds, "StudyDescription"),
        series_number=series_number, series_description=_text(ds, "SeriesDescription"),
        modality=_text(ds, "Modality"))


@dataclass
class Transfer:
    """What one association delivered."""

    calling_ae: str = ""
    address: str = ""
    node: str = ""
    studies: dict[str, int] = field(default_factory=dict)  # study UID -> new instances
    duplicates: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    disk_full: bool = False
    finished: bool = False

    @property
    def received(self) -> int:
        return sum(self.studies.values())


class Receiver:
    """Stores and indexes incoming instances; settles studies when an association ends."""

    def __init__(self, db: StudyDB, storage: Path, *, audit: Audit | None = None, nodes: NodeStore | None = None,
                 origin: str = "received") -> None:
        self.db = db
        self.storage = Path(storage)
        self.audit = audit
        self.nodes = nodes
        self.origin = origin
        self._lock = threading.Lock()
        self._audit_lock = threading.Lock()
        self._transfers: dict[int, Transfer] = {}
        self.finished: list[Transfer] = []
        #: Called (in the association's thread) with the study UID of each newly stored instance, and
        #: with (transfer, outcome) when an association ends: the pre-read queue's arrival watcher.
        self.on_stored: list[Callable[[str], None]] = []
        self.on_finished: list[Callable[[Transfer, str], None]] = []

    # ---- per association -------------------------------------------------------------------
    def transfer(self, assoc: Any) -> Transfer:
        with self._lock:
            t = self._transfers.get(id(assoc))
            if t is None:
                peer = assoc.requestor if assoc.is_acceptor else assoc.acceptor
                node = self.nodes.by_ae_title(peer.ae_title) if self.nodes else None
                t = self._transfers[id(assoc)] = Transfer(
                    calling_ae=peer.ae_title, address=f"{peer.address}:{peer.port}", node=node.name if node else "")
            return t

    def finish(self, assoc: Any, outcome: str) -> Transfer | None:
        """Settle the studies ``assoc`` touched: ``released`` → complete (if nothing is missing);
        ``aborted``/``lost`` → incomplete. Idempotent."""
        with self._lock:
            t = self._transfers.pop(id(assoc), None)
            if t is None or t.finished:
                return t
            t.finished = True
        for uid in t.studies.keys() | t.duplicates.keys():
            if self.db.get(uid) is None:
                continue
            if outcome == "released" and not t.failed:
                state = self.db.settle(uid)
            else:
                state = "incomplete"
                self.db.set_state(uid, state)
            if outcome != "released":
                log.warning("association from %s aborted (%s): study %s marked incomplete (%d instances received)",
                            t.calling_ae, outcome, uid, t.studies.get(uid, 0))
            self._audit("pacs.receive", {
                "calling_ae": t.calling_ae, "node": t.node, "address": t.address, "outcome": outcome,
                "instances": t.studies.get(uid, 0), "duplicates": t.duplicates.get(uid, 0), "failed": t.failed,
                "disk_full": t.disk_full, "state": state}, study_uid=uid)
        if t.failed and not (t.studies or t.duplicates):
            self._audit("pacs.receive", {"calling_ae": t.calling_ae, "node": t.node, "address": t.address,
                                         "outcome": outcome, "instances": 0, "failed": t.failed,
                                         "disk_full": t.disk_full})
        self.finished.append(t)
        for callback in list(self.on_finished):
            try:
                callback(t, outcome)
            except Exception:  # noqa: BLE001 - a listener's bug must not break receiving
                log.exception("association-finished callback failed")
        return t

    def _audit(self, action: str, data: dict[str, Any], study_uid: str = "") -> None:
        with self._audit_lock:  # the trail must not silently stop; shout, but keep the instance
            record(self.audit, action, data, study_uid, keep_going=True)

    # ---- C-STORE ------------------------------------------------------------------------------
    def handle_store(self, event: Any) -> int:
        t = self.transfer(event.assoc)
        try:
            ds = event.dataset
            sop_uid, study_uid, series_uid = (_text(ds, "SOPInstanceUID"), _text(ds, "StudyInstanceUID"),
                                              _text(ds, "SeriesInstanceUID"))
        except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot parse
            log.error("C-STORE from %s: cannot decode the dataset (%s)", t.calling_ae, exc)
            t.failed += 1
            return STATUS_CANNOT_UNDERSTAND
        sop_uid = sop_uid or _text(event.request, "AffectedSOPInstanceUID")
        if not (sop_uid and study_uid and series_uid):
            log.error("C-STORE from %s: instance lacks SOP Instance/Study/Series UID; refused", t.calling_ae)
            t.failed += 1
            return STATUS_CANNOT_UNDERSTAND
        if self.db.has_instance(sop_uid):
            t.duplicates[study_uid] = t.duplicates.get(study_uid, 0) + 1
            log.info("C-STORE from %s: %s already stored; duplicate ignored", t.calling_ae, sop_uid)
            return STATUS_SUCCESS
        target = instance_path(self.storage, study_uid, series_uid, sop_uid)
        try:
            data = event.encoded_dataset()
            write_instance(target, data)
        except StorageFull as exc:
            t.failed += 1
            t.disk_full = True
            log.error("C-STORE from %s refused: %s", t.calling_ae, exc)
            return STATUS_OUT_OF_RESOURCES
        except StorageError as exc:
            t.failed += 1
            log.error("C-STORE from %s refused: %s", t.calling_ae, exc)
            return STATUS_OUT_OF_RESOURCES
        try:
            size = target.stat().st_size
            new, _ = self.db.add_instances([record_from_dataset(ds, target, size)], origin=self.origin,
                                           state="receiving", location=str(target.parent.parent))
        except Exception as exc:  # noqa: BLE001 - the file is safe on disk; a rebuild will index it
            log.error("C-STORE from %s: %s stored but not indexed (%s)", t.calling_ae, target, exc)
            new = 1
        if new:
            t.studies[study_uid] = t.studies.get(study_uid, 0) + 1
            for callback in list(self.on_stored):
                try:
                    callback(study_uid)
                except Exception:  # noqa: BLE001
                    log.exception("instance-stored callback failed")
        else:
            t.duplicates[study_uid] = t.duplicates.get(study_uid, 0) + 1
        return STATUS_SUCCESS

    # ---- acceptor notifications ------------------------------------------------------------
    def on_accepted(self, event: Any) -> None:
        t = self.transfer(event.assoc)
        log.info("association accepted from %s (%s)", t.calling_ae, t.address)
        self._audit("pacs.association", {"direction": "in", "calling_ae": t.calling_ae, "node": t.node,
                                         "address": t.address, "result": "accepted"})

    def on_rejected(self, event: Any) -> None:
        rq = event.assoc.requestor
        log.warning("REJECTED association from AE '%s' at %s:%s: not a configured node "
                    "(add it with 'xmedgpt pacs nodes add', or run 'xmedgpt listen --open')",
                    rq.ae_title, rq.address, rq.port)
        self._audit("pacs.association", {"direction": "in", "calling_ae": rq.ae_title,
                                         "address": f"{rq.address}:{rq.port}", "result": "rejected",
                                         "reason": "calling AE title is not a configured node"})

    def on_released(self, event: Any) -> None:
        self.finish(event.assoc, "released")

    def on_aborted(self, event: Any) -> None:
        self.finish(event.assoc, "aborted")

    def on_conn_close(self, event: Any) -> None:
        assoc = event.assoc
        self.finish(assoc, "released" if getattr(assoc, "is_released", False) else "lost")


def no_delay(event: Any) -> None:
    """EVT_CONN_OPEN: switch Nagle's algorithm off. DIMSE is request/response; with Nagle and delayed
    ACKs each small PDU can wait ~40 ms, which dominates a study of many small instances."""
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:
        log.debug("TCP_NODELAY not set: %s", exc)


def storage_contexts() -> list:
    """Every storage SOP class, any transfer syntax (instances are stored as they come)."""
    from pynetdicom.presentation import build_context
    return [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]


class Listener:
    """A Storage SCP (and Verification SCP) running in background threads."""

    def __init__(self, receiver: Receiver, local: LocalAE, *, allowed_ae_titles: list[str] | None) -> None:
        """``allowed_ae_titles``: callers accepted; None: anyone (``--open``)."""
        if allowed_ae_titles is not None and not allowed_ae_titles:
            raise XMedError("No PACS nodes are configured, so no caller would be accepted. Add one with "
                            "'xmedgpt pacs nodes add', or run 'xmedgpt listen --open'.")
        self.receiver = receiver
        self.local = local
        self.ae = AE(ae_title=local.ae_title)
        self.ae.supported_contexts = storage_contexts()
        self.ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        self.ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = TIMEOUT
        self.ae.maximum_associations = 16
        if allowed_ae_titles is not None:
            self.ae.require_calling_aet = allowed_ae_titles
        self.server: Any = None

    def start(self) -> "Listener":
        handlers = [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_C_STORE, self.receiver.handle_store),
            (evt.EVT_ACCEPTED, self.receiver.on_accepted),
            (evt.EVT_REJECTED, self.receiver.on_rejected),
            (evt.EVT_RELEASED, self.receiver.on_released),
            (evt.EVT_ABORTED, self.receiver.on_aborted),
            (evt.EVT_CONN_CLOSE, self.receiver.on_conn_close),
        ]
        try:
            self.server = self.ae.start_server((self.local.host, self.local.port), block=False,
                                               evt_handlers=handlers, ssl_context=server_context(self.local))
        except OSError as exc:
            raise XMedError(f"Cannot listen on {self.local.host}:{self.local.port}: {exc.strerror or exc}.") from exc
        log.info("listening as %s on %s:%d%s", self.local.ae_title, self.local.host, self.port,
                 " (TLS)" if self.local.tls else "")
        return self

    @property
    def port(self) -> int:
        return int(self.server.server_address[1]) if self.server else self.local.port

    def idle(self) -> bool:
        return not self.server or not self.server.active_associations

    def wait_idle(self, timeout: float = TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(0.05)
        return self.idle()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        self.ae.shutdown()

    def __enter__(self) -> "Listener":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
