"""DICOMweb for nodes that have a URL (``--dicomweb``): QIDO-RS search, WADO-RS retrieve, STOW-RS
store, with dicomweb-client. Same results, storage, index and audit records as the DIMSE side
(:mod:`app.studies.scu`), with ``"via": "dicomweb"`` in the audit data.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from app.studies.db import StudyDB
from app.studies.importer import Audit
from app.studies.importer import record as _audit
from app.studies.nodes import Node
from app.studies.scp import record_from_dataset
from app.studies.scu import (
    SERIES_KEYS,
    STUDY_KEYS,
    PacsError,
    Query,
    RetrieveResult,
    SendResult,
    _headers,
    _plain,
)
from app.studies.storage import StorageError, instance_path, write_instance

log = logging.getLogger(__name__)

TIMEOUT = 30.0


def _client(node: Node) -> Any:
    if not node.dicomweb:
        raise PacsError(f"Node '{node.name}' has no DICOMweb URL (add it with --dicomweb URL).")
    from dicomweb_client.api import DICOMwebClient
    session = None
    if node.tls and node.dicomweb.startswith("https://"):  # the node's TLS files apply to its HTTPS too
        import requests
        session = requests.Session()
        session.verify = node.tls_ca or True
        if node.tls_cert:
            session.cert = (node.tls_cert, node.tls_key) if node.tls_key else node.tls_cert
    return DICOMwebClient(url=node.dicomweb, session=session, timeout=TIMEOUT)


def _node_data(node: Node) -> dict[str, Any]:
    return {"node": node.name, "url": node.dicomweb, "via": "dicomweb"}


def _http_error(node: Node, what: str, exc: Exception) -> PacsError:
    return PacsError(f"DICOMweb {what} at '{node.name}' ({node.dicomweb}) failed: {exc}")


def qido(node: Node, query: Query, *, audit: Audit | None = None) -> list[dict[str, Any]]:
    """QIDO-RS studies (or the series of ``query.study_uid``): dicts shaped like :func:`scu.find`'s."""
    import requests
    client = _client(node)
    filters = {k: v for k, v in {"PatientName": query.patient_name, "PatientID": query.patient_id,
                                 "AccessionNumber": query.accession, "StudyDate": query.study_date,
                                 "ModalitiesInStudy": query.modality}.items() if v}
    try:
        if query.level == "study":
            if query.study_uid:
                filters["StudyInstanceUID"] = query.study_uid
            raw = client.search_for_studies(search_filters=filters, fields=list(STUDY_KEYS), get_remaining=True)
            keys = STUDY_KEYS
        else:
            if not query.study_uid:
                raise PacsError("A series-level query needs --study UID.")
            raw = client.search_for_series(study_instance_uid=query.study_uid, fields=list(SERIES_KEYS),
                                           get_remaining=True)
            keys = SERIES_KEYS
    except requests.RequestException as exc:
        raise _http_error(node, "search", exc) from exc
    results = [_plain(Dataset.from_json(item), keys) for item in raw]
    _audit(audit, "pacs.find", {**_node_data(node), "level": query.level, "query": query.summary(),
                                "matches": len(results)}, study_uid=query.study_uid)
    return results


def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def wado_study(node: Node, study_uid: str, db: StudyDB, storage: Path, *,
               audit: Audit | None = None, cancel: Any = None) -> RetrieveResult:
    """WADO-RS a whole study into managed storage and the index (fsynced, duplicates ignored); ``cancel``
    (:class:`app.studies.scu.RetrieveCancel`): stop storing when the reader cancels (the study stays
    incomplete)."""
    import requests
    client = _client(node)
    result = RetrieveResult(study_uid, "wado")
    try:
        found = client.search_for_studies(search_filters={"StudyInstanceUID": study_uid},
                                          fields=["NumberOfStudyRelatedInstances"])
        if found:
            result.expected = _plain(Dataset.from_json(found[0]), ["NumberOfStudyRelatedInstances"])[
                "NumberOfStudyRelatedInstances"]
        datasets = client.retrieve_study(study_uid)
    except requests.RequestException as exc:
        raise _http_error(node, "retrieve", exc) from exc
    for ds in datasets:
        if cancel is not None and cancel.cancelled:
            result.cancelled = True
            result.problems.append("cancelled by the reader")
            break
        sop = str(ds.get("SOPInstanceUID", ""))
        if not sop or db.has_instance(sop):
            result.duplicates += bool(sop)
            continue
        target = instance_path(storage, study_uid, str(ds.get("SeriesInstanceUID", "")), sop)
        try:
            write_instance(target, _to_bytes(ds))
        except StorageError as exc:
            result.failed += 1
            result.problems.append(str(exc))
            break
        db.add_instances([record_from_dataset(ds, target, target.stat().st_size)], origin="retrieved",
                         state="receiving", location=str(target.parent.parent))
        result.received += 1
    result.completed = result.received + result.duplicates
    result.status = f"{len(datasets)} instances returned"
    if db.get(study_uid) is not None:
        if result.expected is not None:
            db.set_expected(study_uid, result.expected)
        if result.failed or result.cancelled:
            db.set_state(study_uid, "incomplete")
            result.state = "incomplete"
        else:
            result.state = db.settle(study_uid)
    _audit(audit, "pacs.get", {**_node_data(node), "instances": result.received, "duplicates": result.duplicates,
                               "failed": result.failed, "expected": result.expected, "state": result.state},
           study_uid=study_uid)
    return result


def stow(node: Node, paths: Iterable[Path], *, audit: Audit | None = None) -> SendResult:
    """STOW-RS files (or folders) to ``node``, one request per study."""
    import requests
    client = _client(node)
    files, bad = _headers(paths)
    result = SendResult(skipped=list(bad))
    if not files:
        raise PacsError("Nothing to send: no DICOM files.")
    by_study: dict[str, list[Path]] = {}
    for path, _sop, _ts, study in files:
        by_study.setdefault(study, []).append(path)
    for study, group in by_study.items():
        try:
            response = client.store_instances([pydicom.dcmread(p) for p in group])
        except requests.RequestException as exc:
            result.failed.extend((str(p), f"STOW-RS failed: {exc}") for p in group)
            continue
        failed = response.get("FailedSOPSequence") or []
        failed_uids = {str(item.get("ReferencedSOPInstanceUID", "")) for item in failed}
        for p in group:
            sop = str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            if sop in failed_uids:
                result.failed.append((str(p), "refused by the node (FailedSOPSequence)"))
            else:
                result.sent += 1
                result.studies[study] = result.studies.get(study, 0) + 1
    for uid, n in result.studies.items():
        _audit(audit, "pacs.send", {**_node_data(node), "instances": n}, study_uid=uid)
    if result.failed:
        _audit(audit, "pacs.send", {**_node_data(node), "instances": 0, "failed": len(result.failed)})
    return result
