"""The outbox: a signed report's SR and PDF (as Encapsulated PDF) go to a PACS with retries and back-off,
the state persisted in the study database. Against our own Storage SCP on loopback (a node that is down,
then up) and against the real Orthanc (C-STORE and STOW-RS; the SR and the PDF are found there)."""

from __future__ import annotations

import io
import json
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from app.cli import main
from app.report.audit import AuditLog, verify
from app.report.session import source_paths, study_context
from app.studies.db import StudyDB
from app.studies.locations import StudyPaths
from app.studies.nodes import LocalAE, Node, NodeStore
from app.studies.outbox import Outbox, OutboxSender
from app.studies.pdf import ENCAPSULATED_PDF, encapsulate_pdf
from app.studies.scp import Listener, Receiver
from tests.app.report.test_session import (
    ask_sample,
    fake_pdf,
    load_sample,
    make_session,
)
from tests.app.studies.conftest import OUR_AE, free_port


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def signed_export(sample, tmp_path: Path):
    """Sign a report on the bundled sample through the real report session; its exported files."""
    result, series, volume = sample
    session = make_session(tmp_path)
    report = session.on_answer(ask_sample(volume), volume, study_context(result, series))
    mass, effusion, nodule = (f.id for f in report.findings)
    report.reject(effusion)
    report.accept(mass)
    report.accept(nodule)
    report.accept_sentence(report.ai_sentences[0].id)
    session.sign()
    return session.export(source_paths(volume), pdf_writer=fake_pdf), report.study.study_uid


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def _store(home: Path, nodes: list[Node]) -> NodeStore:
    store = NodeStore.load(StudyPaths.detect().ensure().nodes_file)
    store.set_local(LocalAE(OUR_AE))
    for n in nodes:
        store.add(n, replace=True)
    return store


def test_the_pdf_becomes_an_encapsulated_pdf_of_the_same_study(sample, tmp_path):
    done, study_uid = signed_export(sample, tmp_path)
    out = tmp_path / "report-pdf.dcm"
    encapsulate_pdf(done.pdf, done.sr.narrative, out)
    ds = pydicom.dcmread(out)
    sr = pydicom.dcmread(done.sr.narrative)
    assert ds.SOPClassUID == ENCAPSULATED_PDF and ds.file_meta.MediaStorageSOPClassUID == ENCAPSULATED_PDF
    assert ds.StudyInstanceUID == study_uid == sr.StudyInstanceUID
    assert ds.PatientID == sr.PatientID and ds.PatientName == sr.PatientName
    assert ds.AccessionNumber == sr.AccessionNumber
    assert ds.SeriesInstanceUID not in (sr.SeriesInstanceUID,) and ds.Modality == "DOC"
    pdf = done.pdf.read_bytes()
    assert ds.EncapsulatedDocument[: len(pdf)] == pdf and ds.EncapsulatedDocumentLength == len(pdf)
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    with pytest.raises(Exception, match="not a PDF"):
        encapsulate_pdf(done.sr.narrative, done.sr.narrative, tmp_path / "x.dcm")


def test_a_node_that_is_down_is_retried_with_backoff_until_it_is_up(home, sample, tmp_path):
    done, study_uid = signed_export(sample, tmp_path)
    port = free_port()
    store = _store(home, [Node("archive", "ARCHIVE", "127.0.0.1", port)])
    db = StudyDB(StudyPaths.detect().database)
    audit = AuditLog(home / "audit.jsonl")
    clock = Clock()
    outbox = Outbox(db, store, audit=audit, clock=clock, backoff=(10.0, 30.0), max_attempts=4)
    items = outbox.enqueue_report(done.paths, "archive")
    assert sorted(i.kind for i in items) == ["pdf", "sr", "sr"]  # the text file stays local
    assert {i.study_uid for i in items} == {study_uid} and all(i.state == "pending" for i in items)

    assert outbox.send_due() == {"sent": 0, "retry": 3, "failed": 0}  # nobody listens yet
    first = outbox.items()
    assert all(i.state == "pending" and i.attempts == 1 and i.next_attempt == clock.t + 10 for i in first)
    assert "no answer" in first[0].last_error
    assert outbox.send_due() == {"sent": 0, "retry": 0, "failed": 0}  # not due yet: nothing is tried
    clock.t += 10
    assert outbox.send_due()["retry"] == 3
    assert {i.next_attempt for i in outbox.items()} == {clock.t + 30}  # the back-off grows

    # the archive comes up (our own Storage SCP); when the next attempt is due, everything goes
    archive_db = StudyDB(tmp_path / "archive" / "db.sqlite")
    receiver = Receiver(archive_db, tmp_path / "archive" / "storage")
    listener = Listener(receiver, LocalAE("ARCHIVE", "127.0.0.1", port), allowed_ae_titles=[OUR_AE]).start()
    try:
        clock.t += 30
        assert outbox.send_due() == {"sent": 3, "retry": 0, "failed": 0}
        listener.wait_idle(10)
    finally:
        listener.stop()
    assert all(i.state == "sent" and i.sent_at and i.attempts == 3 for i in outbox.items())
    got = archive_db.get(study_uid)
    assert got is not None and got.instances == 3
    by_modality: dict[str, int] = {}
    for s in archive_db.series(study_uid):
        by_modality[s["modality"]] = by_modality.get(s["modality"], 0) + s["instances"]
    assert by_modality == {"DOC": 1, "SR": 2}
    archive_db.close()

    records = [json.loads(line) for line in audit.path.read_text().splitlines()]
    actions = [r["action"] for r in records]
    assert actions.count("pacs.outbox.queued") == 1 and actions.count("pacs.outbox.retry") == 6
    assert "pacs.outbox.sent" in actions and "pacs.send" in actions
    assert all(r["study_uid"] == study_uid for r in records if r["action"].startswith("pacs.outbox"))
    assert verify(audit.path).ok
    db.close()


def test_gives_up_after_the_last_attempt_keeps_the_error_and_retry_sends_again(home, sample, tmp_path, capsys):
    done, study_uid = signed_export(sample, tmp_path)
    port = free_port()
    store = _store(home, [Node("archive", "ARCHIVE", "127.0.0.1", port)])
    paths = StudyPaths.detect()
    db = StudyDB(paths.database)
    clock = Clock()
    outbox = Outbox(db, store, clock=clock, backoff=(1.0,), max_attempts=2)
    outbox.enqueue_report(done.paths, "archive")
    outbox.send_due()
    clock.t += 1
    assert outbox.send_due() == {"sent": 0, "retry": 0, "failed": 3}
    assert all(i.state == "failed" and i.attempts == 2 and i.last_error for i in outbox.items())
    clock.t += 10_000
    assert outbox.send_due() == {"sent": 0, "retry": 0, "failed": 0}  # failed items wait for the reader
    # a crash in the middle of a send: the row is left 'sending'; the next start puts it back
    with db.transaction() as c:
        c.execute("UPDATE outbox SET state = 'sending' WHERE id = (SELECT MIN(id) FROM outbox)")
    db.close()

    capsys.readouterr()
    assert main(["pacs", "outbox", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["counts"]["failed"] == 2 and listed["counts"]["sending"] == 1
    assert all("no answer" in i["last_error"] for i in listed["items"])

    archive = StudyDB(tmp_path / "archive.sqlite")
    listener = Listener(Receiver(archive, tmp_path / "archive"), LocalAE("ARCHIVE", "127.0.0.1", port),
                        allowed_ae_titles=[OUR_AE]).start()
    try:
        assert main(["pacs", "outbox", "--retry"]) == 0
        out = capsys.readouterr().out
        assert "Sent 3; 0 will be tried again; 0 failed." in out and "3 sent" in out
        listener.wait_idle(10)
    finally:
        listener.stop()
    assert archive.get(study_uid).instances == 3
    archive.close()


def test_a_file_that_is_gone_fails_at_once_and_bad_input_is_refused(home, sample, tmp_path):
    done, _ = signed_export(sample, tmp_path)
    store = _store(home, [Node("archive", "ARCHIVE", "127.0.0.1", free_port())])
    db = StudyDB(StudyPaths.detect().database)
    outbox = Outbox(db, store)
    with pytest.raises(Exception, match="No node named 'nowhere'"):
        outbox.enqueue_report(done.paths, "nowhere")
    with pytest.raises(Exception, match="no DICOMweb URL"):
        outbox.enqueue_report(done.paths, "archive", via="dicomweb")
    with pytest.raises(Exception, match="not a readable DICOM file"):
        outbox.enqueue([done.text_path], "archive")
    assert outbox.items() == []
    (item,) = outbox.enqueue([done.sr.narrative], "archive")
    done.sr.narrative.unlink()
    assert outbox.send_due() == {"sent": 0, "retry": 0, "failed": 1}
    assert outbox.item(item.id).state == "failed" and outbox.item(item.id).last_error == "the file is gone"
    db.close()


def test_signed_report_reaches_orthanc_by_c_store_and_by_stow_rs(orthanc, home, sample, tmp_path):
    """sign → outbox → the SR pair and the PDF are in Orthanc (its REST API on loopback)."""
    orthanc.clear()
    done, study_uid = signed_export(sample, tmp_path)
    store = _store(home, [Node("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port,
                               dicomweb=orthanc.dicomweb)])
    db = StudyDB(StudyPaths.detect().database)
    audit = AuditLog(home / "audit.jsonl")
    outbox = Outbox(db, store, audit=audit)
    sender = OutboxSender(outbox).start()  # in the background, as the viewer runs it
    try:
        items = outbox.enqueue_report(done.paths, "orthanc")
        deadline = time.monotonic() + 30
        while any(i.state != "sent" for i in outbox.items()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(i.state == "sent" for i in outbox.items()), outbox.items()
    finally:
        sender.stop()
    expected = {i.sop_instance_uid for i in items}

    def in_orthanc() -> dict[str, str]:
        """SOP Instance UID -> SOP Class UID of every instance of the study in Orthanc."""
        found = orthanc.rest("/tools/find", "POST", json.dumps(
            {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).encode())
        out = {}
        for inst in found:
            tags = orthanc.rest(f"/instances/{inst['ID']}/simplified-tags")
            out[tags["SOPInstanceUID"]] = tags["SOPClassUID"]
        return out

    held = in_orthanc()
    assert set(held) == expected
    assert sorted(held.values()).count(ENCAPSULATED_PDF) == 1
    assert sum(v.startswith("1.2.840.10008.5.1.4.1.1.88.") for v in held.values()) == 2
    (hit,) = orthanc.rest("/tools/lookup", "POST", next(u for u, c in held.items() if c == ENCAPSULATED_PDF).encode())
    with urllib.request.urlopen(f"{orthanc.url}/instances/{hit['ID']}/file", timeout=10) as r:
        stored = pydicom.dcmread(io.BytesIO(r.read()))
    assert stored.EncapsulatedDocument.startswith(done.pdf.read_bytes()) and stored.PatientID == sample[0].patients[0].id

    # the same through DICOMweb (STOW-RS)
    orthanc.clear()
    assert in_orthanc() == {}
    items = outbox.enqueue_report(done.paths, "orthanc", via="dicomweb")
    assert outbox.send_due()["sent"] == 3
    assert set(in_orthanc()) == {i.sop_instance_uid for i in items}
    actions = [json.loads(line)["action"] for line in audit.path.read_text().splitlines()]
    assert actions.count("pacs.outbox.sent") == 2 and "pacs.association" in actions
    db.close()
