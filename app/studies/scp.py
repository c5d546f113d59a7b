"""Receiving instances: the C-STORE handler shared by the Storage SCP (``xmedgpt listen``, the
C-MOVE destination) and by C-GET, and the listener itself (pynetdicom).

Per instance: already indexed or already on disk (same SOP Instance UID) → answered *success*
and not written again; else written into managed storage (:mod:`app.studies.storage`) and indexed
(study ``receiving``). When success is answered depends on who sends:

- **Pushed instances** (a modality or another workstation sending on its own; the sender may delete
  its copy once we answer): written, fsynced (file and folder) and indexed *before* success is
  returned, one instance at a time. A power cut after the answer loses nothing.
- **Retrieved instances** (the C-STORE sub-operations of our C-GET, and any C-STORE that carries a
  *Move Originator AE Title*, i.e. a C-MOVE sub-operation: the sender is an archive that keeps the
  study): written to a temp file and answered at once; every :data:`GROUP_INSTANCES` instances (the
  first group: :data:`FIRST_GROUP_INSTANCES`, so the study is viewable at once), after :data:`GROUP_SECONDS`, and always before the association's studies are settled, the group
  is fsynced (each file, then each folder once), moved under its final name and indexed in one
  transaction. What remains guaranteed: a file under its final name and every indexed instance is
  whole and durable; a study is ``complete`` only when all its instances are; a power cut (or a
  disk that fills up while the group is flushed) loses at most the group not yet flushed, which is
  neither indexed nor under its name, and leaves the study ``receiving``/``incomplete`` so that a
  second retrieve fetches what is missing from the archive, which still holds it.

A full disk is answered ``0xA700`` (out of resources) with a clear log line; what was acknowledged
before stays (for retrieves: what was flushed; the rest is counted failed and the study is left
``incomplete``).

Per association: released → each study it touched is settled (``complete``, or ``incomplete``
when the remote said more exist); aborted or connection lost → ``incomplete``. One audit record
per association and study (who called, which node, how many new/duplicate/failed instances) and
one per rejected caller.

Only the AE titles of configured nodes may connect unless the listener is ``open``; it binds to
the configured interface (default 127.0.0.1).

Speed: the index header is read from the received bytes up to (0020,0011) (pixels are neither
decoded nor copied), the file meta is encoded here (byte for byte what pynetdicom writes), and
pynetdicom's per-PDU/per-message debug logging handlers are unbound unless its logger is at DEBUG.
"""

from __future__ import annotations

import logging
import queue
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    evt,
)
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from app.core.errors import XMedError
from app.studies.db import InstanceRecord, StudyDB
from app.studies.importer import Audit, record
from app.studies.nodes import LocalAE, NodeStore
from app.studies.storage import (
    Staged,
    StorageError,
    StorageFull,
    commit_staged,
    instance_path,
    stage_instance,
    write_instance,
)
from app.studies.tls import server_context

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

#: Bounded network waits (seconds) for every association we open or accept.
TIMEOUT = 30.0

#: Retrieved instances are made durable and indexed in groups of at most this many…
GROUP_INSTANCES = 64
#: …or as soon as an arrival finds the oldest instance of the group waiting this long (seconds).
GROUP_SECONDS = 1.0
#: The first group of an association is this small, so that its first images are viewable at once
#: (the study list opens a study as soon as it has an image indexed).
FIRST_GROUP_INSTANCES = 4

#: The index reads nothing past (0020,0011) Series Number: parsing stops before the first later tag.
_HEADER_END = 0x00200012


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


def _past_header(tag: Any, _vr: Any, _length: int) -> bool:
    return tag >= _HEADER_END


def received_header(event: Any) -> Dataset:
    """The received dataset's elements up to (0020,0011), read from the encoded bytes (no pixels);
    pynetdicom's full decode where the stream cannot be read directly (deflated, private syntax)."""
    stream = getattr(event.request, "DataSet", None)
    ts = event.context.transfer_syntax
    if isinstance(stream, BytesIO) and ts.is_transfer_syntax and not ts.is_deflated:
        stream.seek(0)
        return read_dataset(stream, ts.is_implicit_VR, ts.is_little_endian, stop_when=_past_header)
    return event.dataset


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = str(uid).encode("ascii")
    if not raw or len(raw) > 64:
        raise ValueError(f"not a UID: {uid!r}")
    return raw + b"\0" * (len(raw) % 2)


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """The encoded File Meta Information group, byte for byte what pynetdicom's
    ``Event.encoded_dataset`` writes (same implementation UID and name), in microseconds instead of
    a pydicom encode; ValueError for a UID that cannot be written as one."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join((
        struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2), b"\x00\x01",
        _meta_element(0x0002, b"UI", _uid_value(sop_class_uid)),
        _meta_element(0x0003, b"UI", _uid_value(sop_instance_uid)),
        _meta_element(0x0010, b"UI", _uid_value(transfer_syntax)),
        _meta_element(0x0012, b"UI", _uid_value(PYNETDICOM_IMPLEMENTATION_UID)),
        _meta_element(0x0013, b"SH", version + b" " * (len(version) % 2)),
    ))
    return struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def received_file(event: Any) -> list[bytes]:
    """The received instance as a DICOM file, in parts (preamble + meta, then the dataset as sent)."""
    req = event.request
    try:
        meta = file_meta_bytes(req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, event.context.transfer_syntax)
    except (ValueError, UnicodeError, TypeError):
        return [event.encoded_dataset()]  # pynetdicom's encoder (it says what is wrong, if anything)
    return [b"\x00" * 128 + b"DICM" + meta, req.DataSet.getvalue()]


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
    release_answered: bool = False  # this end sent the A-RELEASE response (the peer asked to release)
    grouped: int = 0  # retrieved instances acknowledged before their group was durable
    receiving: set[str] = field(default_factory=set)  # studies this association has indexed new instances of
    staged: list[tuple[Staged, InstanceRecord]] = field(default_factory=list, repr=False)
    staged_since: float = 0.0
    commits: list[threading.Event] = field(default_factory=list, repr=False)  # groups handed to the committer
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def received(self) -> int:
        return sum(self.studies.values())


class _Committer:
    """One background thread that makes staged groups durable and indexes them, in the order handed in, so
    that the association's thread goes on receiving while the disk syncs. At most one group waits while
    another is being committed (:meth:`submit` blocks beyond that): a transfer never has more than
    two groups acknowledged and not yet durable, plus the one it is filling. The thread ends after a few
    idle seconds and starts again on the next group."""

    IDLE_SECONDS = 5.0

    def __init__(self, commit: Callable[[Transfer, list], None]) -> None:
        self._commit = commit
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, t: Transfer, items: list) -> threading.Event:
        done = threading.Event()
        with self._lock:  # the thread only ends under this lock, with the queue empty: it cannot miss this group
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="store-commit", daemon=True)
                self._thread.start()
            self._queue.put((t, items, done))  # blocks while one group waits already (back-pressure)
        return done

    def _run(self) -> None:
        while True:
            try:
                t, items, done = self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():  # else a group arrived just now: take it
                        self._thread = None
                        return
                continue
            try:
                self._commit(t, items)
            except Exception:  # noqa: BLE001 - never leave a waiter hanging
                log.exception("committing %d received instance(s) failed", len(items))
            finally:
                done.set()


class Receiver:
    """Stores and indexes incoming instances; settles studies when an association ends."""

    def __init__(self, db: StudyDB, storage: Path, *, audit: Audit | None = None, nodes: NodeStore | None = None,
                 origin: str = "received", retrieve: bool = False) -> None:
        """``retrieve``: every instance is the sub-operation of a retrieve of ours (C-GET), so it is made
        durable in groups (see the module); else only C-MOVE sub-operations are."""
        self.db = db
        self.storage = Path(storage)
        self.audit = audit
        self.nodes = nodes
        self.origin = origin
        self.retrieve = retrieve
        self._lock = threading.Lock()
        self._audit_lock = threading.Lock()
        self._transfers: dict[int, Transfer] = {}
        self._staged_uids: set[str] = set()  # staged by any association, not yet committed
        self._committer = _Committer(self._commit_group)
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
        self._drain(t)  # every group of retrieved instances: durable and indexed before settling
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
            ds = received_header(event)
            sop_uid, study_uid, series_uid = (_text(ds, "SOPInstanceUID"), _text(ds, "StudyInstanceUID"),
                                              _text(ds, "SeriesInstanceUID"))
        except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot parse
            log.error("C-STORE from %s: cannot decode the dataset (%s)", t.calling_ae, exc)
            with t.lock:
                t.failed += 1
            return STATUS_CANNOT_UNDERSTAND
        sop_uid = sop_uid or _text(event.request, "AffectedSOPInstanceUID")
        if not (sop_uid and study_uid and series_uid):
            log.error("C-STORE from %s: instance lacks SOP Instance/Study/Series UID; refused", t.calling_ae)
            with t.lock:
                t.failed += 1
            return STATUS_CANNOT_UNDERSTAND
        # C-MOVE sub-operations are grouped once this association has made the study ``receiving`` with a
        # first instance stored the strict way: a mover in another process (``xmedgpt pacs move`` beside
        # ``xmedgpt listen``) then waits for the study to leave ``receiving`` before reading the result.
        grouped = self.retrieve or (bool(getattr(event.request, "MoveOriginatorApplicationEntityTitle", None))
                                    and study_uid in t.receiving)
        with self._lock:  # indexed, or staged (by any association) and about to be
            duplicate = sop_uid in self._staged_uids or self.db.has_instance(sop_uid)
            if grouped and not duplicate:
                self._staged_uids.add(sop_uid)
        if duplicate:
            with t.lock:
                t.duplicates[study_uid] = t.duplicates.get(study_uid, 0) + 1
            log.info("C-STORE from %s: %s already stored; duplicate ignored", t.calling_ae, sop_uid)
            return STATUS_SUCCESS
        target = instance_path(self.storage, study_uid, series_uid, sop_uid)
        staged: Staged | None = None
        try:
            parts = received_file(event)
            if grouped:
                staged = stage_instance(target, parts)
                written = staged is not None
            else:
                written = write_instance(target, parts)
            # not written: already on disk under its name (stored, then not indexed): that file is whole
            size = sum(len(p) for p in parts) if written else target.stat().st_size
        except (StorageError, OSError) as exc:
            with t.lock:
                t.failed += 1
                t.disk_full = t.disk_full or isinstance(exc, StorageFull)
            log.error("C-STORE from %s refused: %s", t.calling_ae, exc)
            self._submit(t)  # what was acknowledged before becomes durable now
            return STATUS_OUT_OF_RESOURCES
        finally:
            if grouped and staged is None:
                with self._lock:
                    self._staged_uids.discard(sop_uid)
        try:
            rec = record_from_dataset(ds, target, size)
        except Exception as exc:  # noqa: BLE001 - a header value pydicom cannot convert: index the UIDs
            log.warning("C-STORE from %s: %s indexed without its header details (%s)", t.calling_ae, sop_uid, exc)
            rec = InstanceRecord(sop_uid, study_uid, series_uid, str(target), size=size)
        if staged is None:
            self._index(t, [rec])
            return STATUS_SUCCESS
        with t.lock:
            if not t.staged:
                t.staged_since = time.monotonic()
            t.staged.append((staged, rec))
            t.grouped += 1
            limit = GROUP_INSTANCES if t.commits else min(FIRST_GROUP_INSTANCES, GROUP_INSTANCES)
            due = len(t.staged) >= limit or time.monotonic() - t.staged_since >= GROUP_SECONDS
        if due:
            self._submit(t)
        return STATUS_SUCCESS

    def _index(self, t: Transfer, records: Iterable[InstanceRecord]) -> None:
        """Index stored instances (one transaction per study) and count them new or duplicate."""
        by_study: dict[str, list[InstanceRecord]] = {}
        for r in records:
            by_study.setdefault(r.study_uid, []).append(r)
        for study_uid, batch in by_study.items():
            try:
                new, _ = self.db.add_instances(batch, origin=self.origin, state="receiving",
                                               location=str(Path(batch[0].path).parent.parent))
            except Exception as exc:  # noqa: BLE001 - the files are safe on disk; a rebuild will index them
                log.error("C-STORE from %s: %d instance(s) of %s stored but not indexed (%s)", t.calling_ae,
                          len(batch), study_uid, exc)
                new = len(batch)
            with t.lock:
                if new:
                    t.studies[study_uid] = t.studies.get(study_uid, 0) + new
                    t.receiving.add(study_uid)
                if len(batch) - new:
                    t.duplicates[study_uid] = t.duplicates.get(study_uid, 0) + len(batch) - new
            for _ in range(new):
                for callback in list(self.on_stored):
                    try:
                        callback(study_uid)
                    except Exception:  # noqa: BLE001
                        log.exception("instance-stored callback failed")

    def _submit(self, t: Transfer) -> None:
        """Hand ``t``'s staged group to the committer (blocks while it is two groups behind)."""
        with t.lock:
            items, t.staged = t.staged, []
        if items:
            t.commits.append(self._committer.submit(t, items))

    def _drain(self, t: Transfer) -> None:
        """Commit what ``t`` has staged and wait until all its groups are durable and indexed."""
        self._submit(t)
        while t.commits:
            t.commits.pop(0).wait()

    def _commit_group(self, t: Transfer, items: list[tuple[Staged, InstanceRecord]]) -> None:
        """Make a staged group durable (:func:`commit_staged`) and index it (the committer's thread). A group
        that cannot be made durable is counted failed: its studies stay incomplete, the archive still has
        them."""
        try:
            try:
                commit_staged([st for st, _ in items])
            except StorageError as exc:
                with t.lock:
                    t.failed += len(items)
                    t.disk_full = t.disk_full or isinstance(exc, StorageFull)
                log.error("C-STORE from %s: %d retrieved instance(s) acknowledged but not stored (%s); "
                          "the study stays incomplete, retrieve it again", t.calling_ae, len(items), exc)
                return
            self._index(t, [rec for _, rec in items])
        finally:
            with self._lock:
                self._staged_uids.difference_update(rec.sop_instance_uid for _, rec in items)

    def flush(self) -> None:
        """Commit the staged groups of every association still open (before the listener stops)."""
        with self._lock:
            transfers = list(self._transfers.values())
        for t in transfers:
            self._drain(t)

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

    def on_acse_sent(self, event: Any) -> None:
        """EVT_ACSE_SENT (a handful per association, on the association's thread): note the A-RELEASE
        response. pynetdicom's association thread marks itself released only *after* handing that response to
        the DUL thread, which sends it; the peer then closes the connection, and EVT_CONN_CLOSE (on the DUL
        thread) can arrive before the association says it is released -- a clean release read as a lost
        connection, the study marked incomplete (seen in CI). The note is made before the response leaves."""
        primitive = event.primitive
        if isinstance(primitive, A_RELEASE) and primitive.result is not None:
            self.transfer(event.assoc).release_answered = True

    def on_conn_close(self, event: Any) -> None:
        assoc = event.assoc
        with self._lock:
            t = self._transfers.get(id(assoc))
        answered = t is not None and t.release_answered
        self.finish(assoc, "released" if answered or getattr(assoc, "is_released", False) else "lost")


#: seconds pynetdicom's connection thread pauses when a poll found nothing to do (its default: 0.001)
DUL_POLL_S = 0.0002

_PER_MESSAGE_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT)


def on_connection_open(event: Any) -> None:
    """EVT_CONN_OPEN: switch Nagle's algorithm off. DIMSE is request/response; with Nagle and delayed
    ACKs each small PDU can wait ~40 ms, which dominates a study of many small instances.

    Also shortens the pause of pynetdicom's connection thread between polls of an idle socket and of its
    outgoing queue (:data:`DUL_POLL_S`, pynetdicom's own 1 ms otherwise): each stored instance waits for
    about two of those pauses (its C-STORE response leaves on the next poll), which was half of a
    300-instance C-GET's wall time on loopback. An open but idle association costs ~8 % of a core
    instead of ~4 % (measured).

    Also unbinds pynetdicom's standard logging handlers of every PDU and DIMSE message (they format
    each message, UID names included, even when nothing is logged: ~10 % of a retrieve's CPU) unless
    the ``pynetdicom`` logger is at DEBUG, where they are wanted."""
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:
        log.debug("TCP_NODELAY not set: %s", exc)
    dul = getattr(event.assoc, "dul", None)
    if dul is not None and hasattr(dul, "_run_loop_delay"):
        dul._run_loop_delay = DUL_POLL_S
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    assoc = event.assoc
    for event_type in _PER_MESSAGE_EVENTS:
        for handler, _args in list(assoc.get_handlers(event_type) or []):
            if getattr(handler, "__module__", "") == "pynetdicom._handlers":
                assoc.unbind(event_type, handler)


_CONTEXTS: list = []
_CONTEXTS_LOCK = threading.Lock()


def storage_contexts() -> list:
    """Every storage SOP class, any transfer syntax (instances are stored as they come)."""
    from pynetdicom.presentation import build_context
    return [build_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]


def listener_contexts() -> list:
    """What a listener supports (storage and Verification), built once per process: ~7,700 validated UIDs,
    a quarter of a second of CPU that a C-MOVE's own listener used to pay on every move. pynetdicom's
    acceptor negotiation reads these contexts and does not change them."""
    with _CONTEXTS_LOCK:
        if not _CONTEXTS:
            from pynetdicom.presentation import build_context
            _CONTEXTS.extend([*storage_contexts(), build_context(Verification, ALL_TRANSFER_SYNTAXES)])
        return list(_CONTEXTS)


#: How often (seconds) the listener's accept loop checks whether it should stop: stopping the C-MOVE's own
#: listener waits for this (pynetdicom's default, 0.5 s, was ~15 % of a 300-instance move).
POLL_INTERVAL = 0.05


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
        self.ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = TIMEOUT
        self.ae.maximum_associations = 16
        if allowed_ae_titles is not None:
            self.ae.require_calling_aet = allowed_ae_titles
        self.server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> "Listener":
        handlers = [
            (evt.EVT_CONN_OPEN, on_connection_open),
            (evt.EVT_C_STORE, self.receiver.handle_store),
            (evt.EVT_ACCEPTED, self.receiver.on_accepted),
            (evt.EVT_REJECTED, self.receiver.on_rejected),
            (evt.EVT_RELEASED, self.receiver.on_released),
            (evt.EVT_ABORTED, self.receiver.on_aborted),
            (evt.EVT_ACSE_SENT, self.receiver.on_acse_sent),
            (evt.EVT_CONN_CLOSE, self.receiver.on_conn_close),
        ]
        try:  # AE.start_server(block=False), with our own accept loop (its poll interval, no forced gc.collect)
            server = self.ae.make_server((self.local.host, self.local.port), contexts=listener_contexts(),
                                         evt_handlers=handlers, ssl_context=server_context(self.local),
                                         server_class=ThreadedAssociationServer)
        except OSError as exc:
            raise XMedError(f"Cannot listen on {self.local.host}:{self.local.port}: {exc.strerror or exc}.") from exc
        # pynetdicom's accept loop calls gc.collect() every 60 polls "because dead association threads are
        # not collected": that would be every 3 s here, and a full collection on this thread can finalize
        # objects (Qt wrappers among them) that belong to another. Python's own collector frees those cycles.
        server.service_actions = lambda: None
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                                        name=f"listener@{self.port}", daemon=True)
        self._thread.start()
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
            server, self.server = self.server, None
            socketserver.BaseServer.shutdown(server)  # ends serve_forever (not registered with the AE)
            server.server_close()
            if self._thread is not None:
                self._thread.join(5)
        self.ae.shutdown()  # aborts the associations still open (their studies are left incomplete)
        self.receiver.flush()

    def __enter__(self) -> "Listener":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
