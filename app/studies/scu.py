"""Talking to remote DICOM nodes with pynetdicom: C-ECHO, C-FIND (study/series), C-GET,
C-MOVE (to our own listener) and C-STORE (:func:`send_files`, also what the report side calls
to send signed reports).

Every association, query, retrieve and send is recorded in the audit trail handed in (who, which
node, which study, how many instances). Network waits are bounded (:data:`app.studies.scp.TIMEOUT`).

A retrieve can be cancelled from another thread (:class:`RetrieveCancel`, the study list's Cancel): the
association in progress is aborted (A-ABORT, pynetdicom's ``Association.abort``), what arrived stays, and
the study is left ``incomplete`` in the database, which a later retrieve completes.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    StoragePresentationContexts,
    _config,
    build_role,
    evt,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from app.core.errors import XMedError
from app.dicom.sources import expand
from app.studies.db import StudyDB
from app.studies.importer import Audit
from app.studies.importer import record as _audit
from app.studies.nodes import LocalAE, Node, NodeStore
from app.studies.scp import TIMEOUT, Listener, Receiver, on_connection_open
from app.studies.tls import client_context, handshake_error

log = logging.getLogger(__name__)


class PacsError(XMedError):
    """A remote node could not be reached or refused what was asked."""


STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances")
SERIES_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances")


def _ae(local: LocalAE) -> AE:
    ae = AE(ae_title=local.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    ae.connection_timeout = 10
    ae.maximum_pdu_size = 0
    return ae


def _node_data(node: Node) -> dict[str, Any]:
    data: dict[str, Any] = {"node": node.name, "ae_title": node.ae_title, "host": node.host, "port": node.port}
    if node.tls:
        data["tls"] = True
    return data


def _associate(ae: AE, node: Node, audit: Audit | None, purpose: str, **kw: Any) -> Any:
    kw["evt_handlers"] = [(evt.EVT_CONN_OPEN, on_connection_open), *kw.get("evt_handlers", [])]
    context = client_context(node) if node.tls else None
    if context is not None:
        kw["tls_args"] = (context, node.host)
    assoc = ae.associate(node.host, node.port, ae_title=node.ae_title, **kw)
    if assoc.is_established:
        _audit(audit, "pacs.association", {"direction": "out", **_node_data(node), "purpose": purpose,
                                           "result": "accepted"})
        return assoc
    tls_problem = handshake_error(node, context) if context is not None and not assoc.is_rejected else ""
    if assoc.is_rejected:
        why = "the node rejected the association (is this workstation's AE title " \
              f"'{ae.ae_title}' configured on it?)"
    elif tls_problem:
        why = tls_problem
    elif assoc.is_aborted and _reachable(node):  # pynetdicom also says "aborted" when the connection failed
        why = "the association was aborted during negotiation"
    else:
        why = "no answer (connection refused or timed out)"
    _audit(audit, "pacs.association", {"direction": "out", **_node_data(node), "purpose": purpose,
                                       "result": "failed", "reason": why})
    raise PacsError(f"Cannot reach '{node.name}' ({node.ae_title} at {node.host}:{node.port}): {why}.")


def _reachable(node: Node, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the node can be opened at all (to word a failed association)."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout):
            return True
    except OSError:
        return False


def _refused(node: Node, local: LocalAE, what: str) -> str:
    """What to say when a node accepted the association and then ended it on our request without an
    answer: what archives do (Orthanc among them) with a query or retrieve from a caller they do not know."""
    return (f"'{node.name}' ({node.ae_title} at {node.host}:{node.port}) ended the {what} without an answer: it "
            f"most likely does not accept queries and retrieves from this workstation. Add AE "
            f"'{local.ae_title}' (this computer, port {local.port}) to its known DICOM nodes (in Orthanc: "
            "DicomModalities)")


def _no_answer(status: Dataset | None, assoc: Any, started: float, wait: float = 1.0) -> bool:
    """The request (sent at ``started``, monotonic) got no final status because the peer aborted the
    association at once -- not a DIMSE timeout, after which pynetdicom aborts it too. pynetdicom hands back
    the empty status before its reactor has processed the A-ABORT: wait (bounded) for that."""
    if (status is not None and "Status" in status) or assoc is None:
        return False
    if time.monotonic() - started > TIMEOUT / 2:
        return False
    deadline = time.monotonic() + wait
    while assoc.is_established and not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(assoc.is_aborted)


def _status_text(status: Dataset | None) -> str:
    if status is None or "Status" not in status:
        return "no response (timeout or connection lost)"
    code = int(status.Status)
    comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
    return f"status 0x{code:04X}{comment}"


# ---- C-ECHO ------------------------------------------------------------------------------------

def echo(node: Node, local: LocalAE, *, audit: Audit | None = None) -> float:
    """C-ECHO ``node``; returns the round-trip time in seconds (PacsError if it fails)."""
    ae = _ae(local)
    ae.add_requested_context(Verification)
    t0 = time.perf_counter()
    assoc = _associate(ae, node, audit, "echo")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    ok = status is not None and "Status" in status and int(status.Status) == 0
    seconds = time.perf_counter() - t0
    _audit(audit, "pacs.echo", {**_node_data(node), "ok": ok, "ms": round(seconds * 1000, 1)})
    if not ok:
        raise PacsError(f"C-ECHO to '{node.name}' failed: {_status_text(status)}.")
    return seconds


# ---- C-FIND ------------------------------------------------------------------------------------

@dataclass
class Query:
    level: str = "study"  # study | series
    patient_name: str = ""  # DICOM wildcards allowed: DOE*
    patient_id: str = ""
    accession: str = ""
    study_date: str = ""  # YYYYMMDD or a range YYYYMMDD-YYYYMMDD
    modality: str = ""
    study_uid: str = ""

    def identifier(self) -> Dataset:
        ds = Dataset()
        if self.level == "study":
            ds.QueryRetrieveLevel = "STUDY"
            for k in STUDY_KEYS:
                setattr(ds, k, "")
            ds.PatientName = self.patient_name
            ds.PatientID = self.patient_id
            ds.AccessionNumber = self.accession
            ds.StudyDate = self.study_date
            ds.ModalitiesInStudy = self.modality
            ds.StudyInstanceUID = self.study_uid
        elif self.level == "series":
            if not self.study_uid:
                raise PacsError("A series-level query needs --study UID.")
            ds.QueryRetrieveLevel = "SERIES"
            for k in SERIES_KEYS:
                setattr(ds, k, "")
            ds.StudyInstanceUID = self.study_uid
            ds.Modality = self.modality
        else:
            raise PacsError(f"Unknown query level {self.level!r}: study or series.")
        return ds

    def summary(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


def _plain(ds: Dataset, keys: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in keys:
        v = ds.get(k)
        if v is None or v == "":
            out[k] = "" if not k.startswith("NumberOf") else None
        elif k.startswith("NumberOf") or k == "SeriesNumber":
            try:
                out[k] = int(v)
            except (TypeError, ValueError):
                out[k] = None
        elif k == "ModalitiesInStudy":
            out[k] = list(v) if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [str(v)]
        else:
            out[k] = str(v)
    return out


def _find_on(assoc: Any, query: Query, node: Node, local: LocalAE) -> list[dict[str, Any]]:
    keys = STUDY_KEYS if query.level == "study" else SERIES_KEYS
    results: list[dict[str, Any]] = []
    final: Dataset | None = None
    started = time.monotonic()
    for status, identifier in assoc.send_c_find(query.identifier(), StudyRootQueryRetrieveInformationModelFind):
        final = status
        if status is None or "Status" not in status:
            break
        if int(status.Status) in (0xFF00, 0xFF01) and identifier is not None:
            results.append(_plain(identifier, keys))
    if _no_answer(final, assoc, started):
        raise PacsError(_refused(node, local, "query") + ".")
    if final is None or "Status" not in final or int(final.Status) != 0:
        raise PacsError(f"C-FIND failed: {_status_text(final)}.")
    return results


def find(node: Node, local: LocalAE, query: Query, *, audit: Audit | None = None) -> list[dict[str, Any]]:
    """C-FIND at study or series level; one plain dict per match (DICOM keywords as keys)."""
    ae = _ae(local)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, node, audit, "find")
    try:
        results = _find_on(assoc, query, node, local)
    finally:
        assoc.release()
    _audit(audit, "pacs.find", {**_node_data(node), "level": query.level, "query": query.summary(),
                                "matches": len(results)}, study_uid=query.study_uid)
    return results


# ---- retrieve ----------------------------------------------------------------------------------

class RetrieveCancel:
    """Cancels a retrieve running on another thread: :meth:`cancel` aborts the association the retrieve
    has open (from a short helper thread, so the caller, e.g. the window, never waits on the network) and
    every later step sees :attr:`cancelled`."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._assoc: Any = None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()
        with self._lock:
            assoc = self._assoc
        if assoc is not None:
            _abort_soon(assoc)

    def watch(self, assoc: Any) -> None:
        """The association a retrieve now waits on (aborted at once when already cancelled)."""
        with self._lock:
            self._assoc = assoc
        if self.cancelled:
            _abort_soon(assoc)

    def unwatch(self) -> None:
        with self._lock:
            self._assoc = None


def _abort_soon(assoc: Any) -> None:
    def run() -> None:
        try:
            if assoc.is_established:
                assoc.abort()
        except Exception:  # noqa: BLE001 - the connection may be gone already: nothing left to abort
            log.debug("abort of a cancelled retrieve", exc_info=True)
        try:  # wake a retrieve waiting for the node's next response (else it waits out the DIMSE timeout)
            assoc.dimse.msg_queue.put((None, None))
        except Exception:  # noqa: BLE001
            log.debug("could not wake the cancelled retrieve", exc_info=True)

    threading.Thread(target=run, name="retrieve-cancel", daemon=True).start()


def _cancelled(cancel: RetrieveCancel | None) -> bool:
    return cancel is not None and cancel.cancelled


@dataclass
class RetrieveResult:
    study_uid: str
    method: str
    status: str = ""
    completed: int = 0
    failed: int = 0
    warning: int = 0
    received: int = 0  # new instances stored here
    duplicates: int = 0
    expected: int | None = None
    state: str = ""
    problems: list[str] = field(default_factory=list)
    cancelled: bool = False  # stopped by the reader (RetrieveCancel): what arrived stays, the study incomplete

    @property
    def ok(self) -> bool:
        return self.state == "complete"


def _study_facts(assoc: Any, study_uid: str, node: Node, local: LocalAE) -> tuple[int | None, list[str]]:
    """(NumberOfStudyRelatedInstances, SOPClassesInStudy) from a study-level C-FIND; (None, []) when the
    node does not answer the query (the retrieve goes on without them); PacsError when it has no such study
    or ends the association on the query (it refuses this workstation: the retrieve would be refused too)."""
    ds = _retrieve_identifier(study_uid)
    ds.NumberOfStudyRelatedInstances = ""
    ds.SOPClassesInStudy = ""
    found: list[Dataset] = []
    final: Dataset | None = None
    started = time.monotonic()
    try:
        for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
            final = status
            if status is None or "Status" not in status:
                break
            if int(status.Status) in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
    except (ValueError, RuntimeError) as exc:  # no accepted context, association gone
        log.info("could not count the study's instances before retrieving: %s", exc)
        return None, []
    if _no_answer(final, assoc, started):
        raise PacsError(_refused(node, local, "retrieve") + ".")
    if final is None or "Status" not in final or int(final.Status) != 0:
        log.info("could not count the study's instances before retrieving: C-FIND %s", _status_text(final))
        return None, []
    if not found:
        raise PacsError(f"The node does not have study {study_uid}.")
    facts = _plain(found[0], ("NumberOfStudyRelatedInstances",))
    classes = found[0].get("SOPClassesInStudy")
    if classes is None or classes == "":
        sop_classes: list[str] = []
    elif isinstance(classes, (list, tuple, pydicom.multival.MultiValue)):
        sop_classes = [str(c).strip() for c in classes if str(c).strip()]
    else:
        sop_classes = [str(classes).strip()]
    return facts["NumberOfStudyRelatedInstances"], sop_classes


def _facts_unless_cancelled(assoc: Any, study_uid: str, cancel: RetrieveCancel | None, node: Node,
                            local: LocalAE) -> tuple[int | None, list[str]]:
    try:
        return _study_facts(assoc, study_uid, node, local)
    except PacsError:
        if _cancelled(cancel):  # the count was asked on the association the reader's cancel aborted
            return None, []
        raise


def _expected_unless_cancelled(assoc: Any, study_uid: str, cancel: RetrieveCancel | None, node: Node,
                               local: LocalAE) -> int | None:
    return _facts_unless_cancelled(assoc, study_uid, cancel, node, local)[0]


def _retrieve_identifier(study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def _consume(responses: Iterable, result: RetrieveResult, assoc: Any, refused: str) -> None:
    final: Dataset | None = None
    started = time.monotonic()
    for status, _identifier in responses:
        final = status
        if status is None or "Status" not in status:
            break
        for attr, key in (("completed", "NumberOfCompletedSuboperations"), ("failed", "NumberOfFailedSuboperations"),
                          ("warning", "NumberOfWarningSuboperations")):
            if key in status and status[key].value is not None:
                setattr(result, attr, int(status[key].value))
    result.status = _status_text(final)
    if result.completed == 0 and _no_answer(final, assoc, started):
        result.status = "refused"
        result.problems.append(f"the retrieve ended with no answer: {refused}")
    elif final is None or "Status" not in final or int(final.Status) not in (0x0000, 0xB000):
        result.problems.append(f"the retrieve ended with {result.status}")


def _settle(db: StudyDB, result: RetrieveResult, transfer_ok: bool) -> None:
    if db.get(result.study_uid) is None:
        result.state = ""
        return
    if result.expected is not None:
        db.set_expected(result.study_uid, result.expected)
    if transfer_ok and not result.failed and not result.problems:
        result.state = db.settle(result.study_uid)
    else:
        db.set_state(result.study_uid, "incomplete")
        result.state = "incomplete"


#: The storage SOP classes a C-GET proposes when the node does not say which the study holds.
_ALL_STORAGE_CLASSES = [str(cx.abstract_syntax) for cx in StoragePresentationContexts[: 128 - 1]]


def _storage_classes(sop_classes: list[str]) -> list[str]:
    """The study's own SOP classes (each with every transfer syntax, so nothing is transcoded); all the
    common storage classes when the node did not list them. Proposing 1 context instead of 127 × 45
    transfer syntaxes makes the association ~20× cheaper to build and negotiate."""
    wanted = [c for c in dict.fromkeys(sop_classes) if c and len(c) <= 64
              and all(part.isdigit() for part in c.split("."))]
    return wanted[: 128 - 1] if wanted else _ALL_STORAGE_CLASSES


def get_study(node: Node, local: LocalAE, study_uid: str, db: StudyDB, storage: Path, *,
              audit: Audit | None = None, nodes: NodeStore | None = None,
              cancel: RetrieveCancel | None = None) -> RetrieveResult:
    """C-GET a whole study into storage and the index. A short association asks the node how many
    instances and which SOP classes the study has; the C-GET association then proposes just those (the
    instances come back on it, made durable in groups: :mod:`app.studies.scp`). ``cancel``: aborts
    the association in progress when the reader cancels."""
    result = RetrieveResult(study_uid, "get")
    ae = _ae(local)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, node, audit, "find")
    if cancel is not None:
        cancel.watch(assoc)
    try:
        result.expected, sop_classes = _facts_unless_cancelled(assoc, study_uid, cancel, node, local)
    finally:
        if cancel is not None:
            cancel.unwatch()
        if assoc.is_established:
            assoc.release()
    receiver = Receiver(db, storage, audit=audit, nodes=nodes, origin="retrieved", retrieve=True)
    clean = False
    transfer = None
    classes = _storage_classes(sop_classes)
    if not _cancelled(cancel):
        clean, transfer = _get_on_new_association(node, local, study_uid, classes, receiver, result, audit, cancel)
    node_failed = result.failed or any(p.startswith("the retrieve ended with") for p in result.problems)
    if clean and node_failed and (transfer is None or not transfer.failed) and classes is not _ALL_STORAGE_CLASSES:
        # the node failed sub-operations on an association that proposed only the SOP classes it listed: the
        # list may be short. Once more with every common class (what arrived is kept and not fetched again).
        log.info("C-GET of %s: %d sub-operation(s) failed with the study's own SOP classes; again with all",
                 study_uid, result.failed)
        first = transfer
        result.completed = result.failed = result.warning = 0
        result.problems = [p for p in result.problems if not p.startswith("the retrieve ended with")]
        receiver = Receiver(db, storage, audit=audit, nodes=nodes, origin="retrieved", retrieve=True)
        clean, transfer = _get_on_new_association(node, local, study_uid, _ALL_STORAGE_CLASSES, receiver, result,
                                                  audit, cancel)
        if transfer is not None and first is not None:  # new: either pass's; duplicates: what was here before
            for uid, n in first.studies.items():
                transfer.studies[uid] = transfer.studies.get(uid, 0) + n
            transfer.duplicates = dict(first.duplicates)
    result.cancelled = _cancelled(cancel)
    if transfer is not None:
        result.received = transfer.received
        result.duplicates = sum(transfer.duplicates.values())
        if transfer.disk_full:
            result.problems.append("disk full: some instances could not be stored")
        elif transfer.failed:
            result.problems.append(f"{transfer.failed} instance(s) could not be stored")
    _note_cancel(result)
    _settle(db, result, clean)
    _audit(audit, "pacs.get", {**_node_data(node), "instances": result.received, "duplicates": result.duplicates,
                               "completed": result.completed, "failed": result.failed, "expected": result.expected,
                               "state": result.state, "status": result.status, "cancelled": result.cancelled},
           study_uid=study_uid)
    return result


def _get_on_new_association(node: Node, local: LocalAE, study_uid: str, classes: list[str], receiver: Receiver,
                            result: RetrieveResult, audit: Audit | None,
                            cancel: RetrieveCancel | None) -> tuple[bool, Any]:
    """One C-GET association proposing ``classes`` (every transfer syntax each); (released cleanly, transfer)."""
    ae = _ae(local)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in classes:
        ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
    roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
    assoc = _associate(ae, node, audit, "get", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, receiver.handle_store)])
    if cancel is not None:
        cancel.watch(assoc)
    try:
        if not _cancelled(cancel):
            _consume(assoc.send_c_get(_retrieve_identifier(study_uid), StudyRootQueryRetrieveInformationModelGet),
                     result, assoc, _refused(node, local, "retrieve"))
    finally:
        clean = _end_retrieve(assoc, cancel, result)
        transfer = receiver.finish(assoc, "released" if clean else "aborted")
    return clean, transfer


def _end_retrieve(assoc: Any, cancel: RetrieveCancel | None, result: RetrieveResult) -> bool:
    """Close a C-GET / C-MOVE association: released when it ran to the end, aborted when the reader cancelled
    or it broke; records the cancel in ``result``. True when released cleanly."""
    if cancel is not None:
        cancel.unwatch()
    result.cancelled = _cancelled(cancel)
    clean = assoc.is_established and not result.cancelled
    if clean:
        assoc.release()
    elif assoc.is_established:
        assoc.abort()
    return clean


def _note_cancel(result: RetrieveResult) -> None:
    if result.cancelled:
        result.problems = [p for p in result.problems if not p.startswith("the retrieve ended with")]
        result.problems.append("cancelled by the reader")


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def move_study(node: Node, local: LocalAE, study_uid: str, db: StudyDB, storage: Path, *,
               audit: Audit | None = None, nodes: NodeStore | None = None,
               listener: Listener | None = None, cancel: RetrieveCancel | None = None) -> RetrieveResult:
    """C-MOVE a study to our own AE title; the node sends it to our listener.

    ``listener``: one already running in this process. None: if something listens on the local
    port already (``xmedgpt listen``) it receives the study; else a listener is started here for
    the duration of the move (accepting only ``node``'s AE title). ``cancel``: aborts the move association
    when the reader cancels (the node stops sending; what arrived stays).
    """
    result = RetrieveResult(study_uid, "move")
    own: Listener | None = None
    if listener is None and not _port_in_use(local.host, local.port):
        receiver = Receiver(db, storage, audit=audit, nodes=nodes, origin="retrieved")
        allowed = sorted({n.ae_title for n in nodes.nodes.values()} | {node.ae_title}) if nodes else [node.ae_title]
        own = listener = Listener(receiver, local, allowed_ae_titles=allowed).start()
    try:
        ae = _ae(local)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = _associate(ae, node, audit, "move")
        if cancel is not None:
            cancel.watch(assoc)
        try:
            result.expected = _expected_unless_cancelled(assoc, study_uid, cancel, node, local)
            if not _cancelled(cancel):
                _consume(assoc.send_c_move(_retrieve_identifier(study_uid), local.ae_title,
                                           StudyRootQueryRetrieveInformationModelMove), result, assoc,
                         _refused(node, local, "retrieve"))
        finally:
            clean = _end_retrieve(assoc, cancel, result)
        if listener is not None:
            listener.wait_idle()  # the node's store association may still be closing
            mine = [t for t in listener.receiver.finished if study_uid in t.studies or study_uid in t.duplicates]
            result.received = sum(t.studies.get(study_uid, 0) for t in mine)
            result.duplicates = sum(t.duplicates.get(study_uid, 0) for t in mine)
            if any(t.disk_full for t in mine):
                result.problems.append("disk full: some instances could not be stored")
    finally:
        if own is not None:
            own.stop()
    if listener is None and result.completed:
        _wait_settled(db, study_uid)
    if listener is None and result.completed and db.get(study_uid) is None:
        result.problems.append("the node reports the study sent, but it is not in the local database "
                               f"(is the listener on {local.host}:{local.port} this workstation's?)")
    _note_cancel(result)
    _settle(db, result, clean)
    _audit(audit, "pacs.move", {**_node_data(node), "destination": local.ae_title, "instances": result.received,
                                "duplicates": result.duplicates, "completed": result.completed,
                                "failed": result.failed, "expected": result.expected, "state": result.state,
                                "status": result.status, "cancelled": result.cancelled}, study_uid=study_uid)
    return result


def _wait_settled(db: StudyDB, study_uid: str, timeout: float = TIMEOUT) -> None:
    """A listener in another process indexes a C-MOVE's last group when the node's store association ends
    (:mod:`app.studies.scp`); wait (bounded) until it has settled the study (state no longer ``receiving``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = db.get(study_uid)
        if study is None or study.state != "receiving":
            return
        time.sleep(0.05)
    log.warning("study %s still receiving %.0f s after the move: the listener has not settled it", study_uid, timeout)


def retrieve(node: Node, local: LocalAE, study_uid: str, db: StudyDB, storage: Path, **kw: Any) -> RetrieveResult:
    """The node's configured method (get or move)."""
    if node.retrieve == "get":
        kw.pop("listener", None)
        return get_study(node, local, study_uid, db, storage, **kw)
    return move_study(node, local, study_uid, db, storage, **kw)


# ---- C-STORE -----------------------------------------------------------------------------------

@dataclass
class SendResult:
    sent: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): refused or not sent
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not DICOM, unreadable
    studies: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def _headers(paths: Iterable[Path]) -> tuple[list[tuple[Path, str, str, str]], list[tuple[str, str]]]:
    cands = expand([Path(p) for p in paths])
    good: list[tuple[Path, str, str, str]] = []
    bad = [(str(p.path), p.reason) for p in cands.problems]
    for path in cands.files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"])
            sop_class = str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID") or "")
            syntax = str(ds.file_meta.get("TransferSyntaxUID") or "")
            if not sop_class or not syntax:
                raise InvalidDicomError("no SOP class or transfer syntax in the file")
            good.append((Path(path), sop_class, syntax, str(ds.get("StudyInstanceUID", ""))))
        except (InvalidDicomError, OSError, AttributeError, ValueError) as exc:
            bad.append((str(path), f"not a DICOM file ({exc})"))
    return good, bad


def _store(assoc: Any, path: Path) -> Any:
    """C-STORE one file as it is on disk, read in chunks: an archive gets the file's own bytes, not pydicom's decode
    and re-encode of them, for a quarter less CPU (0.82 -> 0.61 s for 300 CT slices). A file whose meta cannot say
    what it is (no SOP class or instance in it, or a class the association did not accept under the meta's name)
    is decoded and sent as pydicom encodes it. pynetdicom's switch for this is process-wide: it is on only for
    the call."""
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return assoc.send_c_store(path)
    except (AttributeError, ValueError) as exc:
        log.info("C-STORE of %s: sent decoded (%s)", path.name, exc)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    return assoc.send_c_store(pydicom.dcmread(path))


def send_files(node: Node, paths: Iterable[Path], *, local: LocalAE | None = None,
               audit: Audit | None = None) -> SendResult:
    """C-STORE files (or folders, DICOMDIR, zip) to ``node``, each in its own transfer syntax.

    The one entry point for sending: ``xmedgpt pacs send`` and, later, signed reports.
    """
    local = local or LocalAE()
    files, bad = _headers(paths)
    result = SendResult(skipped=list(bad))
    if not files:
        raise PacsError("Nothing to send: no DICOM files" + (f" ({len(bad)} skipped: {bad[0][1]})." if bad else "."))
    pairs = sorted({(sop, ts) for _, sop, ts, _ in files})
    for start in range(0, len(pairs), 128):  # one association per 128 presentation contexts
        chunk = pairs[start:start + 128]
        wanted = set(chunk)
        ae = _ae(local)
        ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in chunk]
        assoc = _associate(ae, node, audit, "send")
        try:
            for path, sop, ts, study in files:
                if (sop, ts) not in wanted:
                    continue
                if not assoc.is_established:
                    result.failed.append((str(path), "association lost"))
                    continue
                try:
                    status = _store(assoc, path)
                except (ValueError, RuntimeError, OSError, InvalidDicomError) as exc:  # no accepted context; gone
                    result.failed.append((str(path), str(exc)))
                    continue
                code = int(status.Status) if status is not None and "Status" in status else None
                if code is not None and (code == 0 or 0xB000 <= code <= 0xBFFF):
                    result.sent += 1
                    result.studies[study] = result.studies.get(study, 0) + 1
                else:
                    result.failed.append((str(path), _status_text(status)))
        finally:
            if assoc.is_established:
                assoc.release()
    for uid, n in result.studies.items():
        _audit(audit, "pacs.send", {**_node_data(node), "instances": n}, study_uid=uid)
    if result.failed:
        _audit(audit, "pacs.send", {**_node_data(node), "instances": 0, "failed": len(result.failed),
                                    "reasons": sorted({r for _, r in result.failed})[:5]})
    return result
