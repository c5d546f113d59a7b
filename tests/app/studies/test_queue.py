"""Pre-read on arrival: studies sent to our real Storage SCP on loopback (pynetdicom, storescu-style) are
queued when complete and read one job at a time in the background; the queue lives in the study
database and survives restarts. A scripted engine that answers with the study's ground truth gives
known lesions; `xmedgpt listen --preread` runs the bundled demo model for real."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.presentation import build_context

from app.assistant.preread import PrereadOptions
from app.assistant.study_preread import StudyPrereader
from app.cli import main
from app.core.errors import XMedError
from app.core.settings import Settings
from app.dicom.loader import load_series
from app.dicom.scan import scan
from app.report.audit import AuditLog
from app.studies import db as dbmod
from app.studies.db import StudyDB
from app.studies.importer import import_paths
from app.studies.locations import StudyPaths
from app.studies.nodes import LocalAE, Node
from app.studies.queue import ArrivalWatcher, JobOutcome, JobQueue, owner_id, worst_tier
from app.studies.scp import Listener, Receiver
from app.studies.scu import send_files
from app.synthetic.sample import load_ground_truth, write_ct_study
from inference.resources import DEMO_MODEL_DIR
from tests.app.assistant.test_preread import SPEC, TruthEngine
from tests.app.studies.conftest import free_port

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = write_ct_study(tmp_path_factory.mktemp("arrive") / "ct", n_slices=24, size=128, seed=777)
    files = sorted(folder.glob("*.dcm"))
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    return folder, files, uid


def _wait(cond, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _scp(home: Path, *, runner=None, quiet: float = 30.0):
    paths = StudyPaths.detect().ensure()
    db = StudyDB(paths.database)
    audit = AuditLog(home / "audit.jsonl")
    receiver = Receiver(db, paths.storage, audit=audit)
    queue = JobQueue(db, runner, audit=audit, poll_seconds=0.05)
    ArrivalWatcher(queue, quiet_seconds=quiet).attach(receiver)
    listener = Listener(receiver, LocalAE("XMEDTEST", "127.0.0.1", free_port()), allowed_ae_titles=["SENDER"]).start()
    return paths, db, audit, queue, listener


def _actions(audit: AuditLog) -> list[str]:
    return [json.loads(line)["action"] for line in audit.path.read_text().splitlines()]


def test_schema_2_migrates_a_version_1_database_keeping_its_studies(tmp_path):
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    for stmt in dbmod.MIGRATIONS[0]:
        conn.execute(stmt)
    conn.execute("INSERT INTO studies (study_uid, patient_name, added_at, updated_at) VALUES ('1.2.3', 'DOE^J', 'x', 'x')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    db = StudyDB(path)
    assert db.schema_version == 2 and db.get("1.2.3").patient_name == "DOE^J"
    assert db.rows("SELECT COUNT(*) FROM jobs") == [(0,)] and db.rows("SELECT COUNT(*) FROM outbox") == [(0,)]
    db.close()


def test_a_study_sent_to_the_scp_is_preread_when_the_association_is_released(home, ct):
    folder, files, uid = ct
    volume = load_series(scan([folder]).all_series()[0])
    engine = TruthEngine(volume, load_ground_truth(folder))
    paths, db, audit, queue, listener = _scp(home, runner=None)
    runner = StudyPrereader(db, lambda: (engine, SPEC), paths.preread_results, audit=audit,
                            options=PrereadOptions(batch_size=8, max_lesions=3, n_samples=2, n_questions=1))
    queue.runner = runner
    seen_states: list[str] = []
    queue.listeners.append(lambda job: seen_states.append(job.state))
    queue.start()
    try:
        result = send_files(Node("ws", "XMEDTEST", "127.0.0.1", listener.port), [folder], local=LocalAE("SENDER"))
        assert result.ok and result.sent == len(files)
        _wait(lambda: db.get(uid) is not None and db.get(uid).ai_state in ("done", "failed"), 120, "the pre-read")
    finally:
        queue.stop()
        listener.stop()
    study = db.get(uid)
    (job,) = queue.jobs(uid)
    assert job.state == "done", job.error
    assert study.state == "complete" and study.ai_state == "done"
    assert seen_states[:2] == ["running", "done"]
    doc = json.loads(Path(job.result_path).read_text())
    assert Path(job.result_path) == paths.preread_results / uid / f"{job.series_uid}.json"
    assert doc["study_uid"] == uid and doc["series"]["slices"] == len(files) and doc["lesions"]
    tiers = [les["reliability"]["tier"] for les in doc["lesions"]]
    assert study.ai_worst_tier == worst_tier(tiers) and study.ai_worst_tier in ("red", "amber", "green")
    assert job.lesions == len(doc["lesions"]) and job.tier == study.ai_worst_tier
    assert job.reason == "association released, study complete"
    actions = _actions(audit)
    assert actions.index("pacs.receive") < actions.index("preread.queued") < actions.index("ai.request") \
        < actions.index("ai.output") < actions.index("preread.done")
    # sending the same study again (all duplicates) does not read it again
    listener = Listener(listener.receiver, listener.local, allowed_ae_titles=["SENDER"]).start()
    try:
        send_files(Node("ws", "XMEDTEST", "127.0.0.1", listener.port), files[:3], local=LocalAE("SENDER"))
        listener.wait_idle(10)
    finally:
        listener.stop()
    assert len(queue.jobs(uid)) == 1
    # what the viewer reads back when the study is opened: the newest done job's file; a damaged file is an
    # error to say (and stays where it is), not a silent nothing
    from app.assistant.study_preread import saved_preread

    saved = saved_preread(db, job.series_uid)
    assert saved.document == doc and saved.finished_at == job.finished_at and saved_preread(db, "1.2.3") is None
    Path(job.result_path).write_text("{ damaged")
    with pytest.raises(XMedError, match="cannot be read"):
        saved_preread(db, job.series_uid)
    assert Path(job.result_path).read_text() == "{ damaged"
    db.close()


def test_a_study_whose_association_stays_open_is_queued_after_the_quiet_time(home, ct):
    _folder, files, uid = ct
    _paths, db, _audit, queue, listener = _scp(home, quiet=0.6)
    queue.start()  # no runner: jobs wait; the watcher still runs
    ae = AE(ae_title="SENDER")
    ae.requested_contexts = [build_context(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID)]
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="XMEDTEST")
    try:
        assert assoc.is_established
        for f in files[:5]:
            assert assoc.send_c_store(f).Status == 0
        assert db.get(uid).state == "receiving" and db.get(uid).ai_state == "none"
        _wait(lambda: db.get(uid).ai_state == "queued", 10, "the quiet-time rule")
        assert db.get(uid).state == "receiving"  # the association is still open
        (job,) = queue.jobs(uid)
        assert job.instances == 5 and job.reason == "no new instance for 0.6 s"
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        queue.stop()
        listener.stop()
    db.close()


def test_an_aborted_association_leaves_the_study_unqueued(home, ct):
    _folder, files, uid = ct
    _paths, db, _audit, queue, listener = _scp(home, quiet=0.3)
    queue.start()
    ae = AE(ae_title="SENDER")
    ae.requested_contexts = [build_context(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID)]
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="XMEDTEST")
    try:
        for f in files[:3]:
            assert assoc.send_c_store(f).Status == 0
        assoc.abort()
        listener.wait_idle(10)
        _wait(lambda: db.get(uid).state == "incomplete", 10, "the abort to be noticed")
        time.sleep(1.0)  # well past the quiet time
        assert db.get(uid).ai_state == "none" and queue.jobs(uid) == []
    finally:
        queue.stop()
        listener.stop()
    db.close()


def test_jobs_left_running_by_a_dead_process_run_again_after_a_restart(home, ct):
    folder, _files, uid = ct
    paths = StudyPaths.detect().ensure()
    db = StudyDB(paths.database)
    import_paths(db, [folder])
    first = JobQueue(db)
    (job_id,) = first.enqueue_study(uid, reason="test")
    assert db.get(uid).ai_state == "queued"
    # a crash while running: the row says running, owned by a process that is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with db.transaction() as c:
        c.execute("UPDATE jobs SET state = 'running', owner = ? WHERE id = ?",
                  (f"{owner_id().rsplit(':', 1)[0]}:{dead.pid}", job_id))
    db.close()

    db = StudyDB(paths.database)  # the restart
    ran: list[int] = []

    def runner(job, cancel):
        ran.append(job.id)
        return JobOutcome(tier="amber", lesions=2, result_path="")

    queue = JobQueue(db, runner, poll_seconds=0.05).start()
    try:
        _wait(lambda: db.get(uid).ai_state == "done", 10, "the recovered job")
    finally:
        queue.stop()
    assert ran == [job_id]
    assert db.get(uid).ai_worst_tier == "amber"
    (job,) = queue.jobs(uid)
    assert job.attempts == 1 and job.state == "done"

    # a job running in a live process is left alone
    with db.transaction() as c:
        c.execute("UPDATE jobs SET state = 'running', owner = ? WHERE id = ?",
                  (f"{owner_id().rsplit(':', 1)[0]}:{os.getppid()}", job_id))
    assert JobQueue(db).recover() == 0
    db.close()


def test_a_failed_series_fails_the_study_and_can_be_retried(home, ct):
    folder, _files, uid = ct
    paths = StudyPaths.detect().ensure()
    db = StudyDB(paths.database)
    import_paths(db, [folder])
    calls = {"n": 0}

    def runner(job, cancel):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of GPU memory")
        return JobOutcome(tier="green", lesions=1)

    queue = JobQueue(db, runner)
    queue.enqueue_study(uid)
    job = queue.run_once()
    assert job.state == "failed" and "out of GPU memory" in job.error
    assert db.get(uid).ai_state == "failed"
    assert queue.enqueue_study(uid) == []  # the same images: not queued again by themselves
    assert queue.retry() == 1 and db.get(uid).ai_state == "queued"
    assert queue.run_once().state == "done" and db.get(uid).ai_state == "done" and db.get(uid).ai_worst_tier == "green"
    db.close()


def test_stopping_the_queue_puts_the_running_job_back(home, ct):
    folder, _files, uid = ct
    db = StudyDB(StudyPaths.detect().ensure().database)
    import_paths(db, [folder])
    started = threading.Event()

    def runner(job, cancel):
        started.set()
        while not cancel():
            time.sleep(0.01)
        return JobOutcome()

    queue = JobQueue(db, runner, poll_seconds=0.05)
    queue.enqueue_study(uid)
    queue.start()
    assert started.wait(10)
    assert db.get(uid).ai_state == "running"
    assert queue.stop(10)
    (job,) = queue.jobs(uid)
    assert job.state == "queued" and db.get(uid).ai_state == "queued"
    db.close()


def test_listen_preread_reads_an_arriving_study_with_the_demo_model(home, tmp_path, capsys):
    """The whole thing as a server runs it: `xmedgpt listen --preread` in its own process with the bundled
    demo model on the CPU, a small study pushed by our SCU, the study list showing the AI state."""
    small = write_ct_study(tmp_path / "small", n_slices=4, size=64, seed=5, noise_hu=0)
    uid = str(pydicom.dcmread(next(small.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    port = free_port()
    assert main(["pacs", "nodes", "local", "--ae", "XMEDTEST", "--port", str(port)]) == 0
    assert main(["pacs", "nodes", "add", "modality", "--ae", "SENDER", "--host", "127.0.0.1", "--port", "104"]) == 0
    Settings(reliability_samples=1, reliability_questions=1).save()
    env = {**os.environ, "XMEDGPT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "listen", "--preread", "--model", str(DEMO_MODEL_DIR),
                             "--device", "cpu", "--quantization", "none"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        _wait(lambda: any("Listening as" in line for line in lines) or proc.poll() is not None, 60, "the listener")
        assert any("pre-reading arrivals" in line for line in lines), "".join(lines)
        result = send_files(Node("ws", "XMEDTEST", "127.0.0.1", port), [small], local=LocalAE("SENDER"))
        assert result.sent == 4

        def state() -> str:
            capsys.readouterr()
            main(["studies", "--json"])
            found = {s["study_instance_uid"]: s for s in json.loads(capsys.readouterr().out)["studies"]}
            return found[uid]["ai_state"] if uid in found else ""

        _wait(lambda: state() in ("done", "failed") or proc.poll() is not None, 300, "the demo model's pre-read",
              step=1.0)
        assert state() == "done", "".join(lines)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(5)
    db = StudyDB(StudyPaths.detect().database)
    study = db.get(uid)
    (job,) = JobQueue(db).jobs(uid)
    doc = json.loads(Path(job.result_path).read_text())
    assert doc["model"]["id"] and doc["series"]["slices"] == 4
    assert study.ai_worst_tier == worst_tier(les["reliability"].get("tier", "none") for les in doc["lesions"])
    db.close()
    text = "".join(lines)
    assert "Stopped." in text
    # the console tells the administrator what arrived and what the pre-read found, a line each
    order = [next(i for i, line in enumerate(lines) if what in line) for what in
             ("received from SENDER", "pre-read started", "pre-read done")]
    assert order == sorted(order), text
    assert "4 new; study complete; pre-read queued" in lines[order[0]], text
    n = doc["lesions"] and len(doc["lesions"])
    assert (f"{n} lesion(s)" if n else "no lesion listed (not a negative read)") in lines[order[2]], text
    records = [json.loads(line) for line in (home / "data" / "audit" / "audit.jsonl").read_text().splitlines()]
    outputs = [r for r in records if r["action"] == "ai.output"]
    assert outputs and outputs[0]["study_uid"] == uid and outputs[0]["data"]["source"] == "pre-read on arrival"
