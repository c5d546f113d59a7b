"""The audit trail against forgery, truncation and crashes (issue #19, "audit trail").

Each test replays one finding: ``analyze --json`` leaving no record and no weights hash, a
missing or garbage head passing ``audit verify``, records with valid hashes appended behind the
workstation's back passing as "an interrupted write", and a half-written last line blocking all
work with no way out. Real crashes (SIGKILL, a process dying between the steps of an append) must
still verify; ``xmedgpt audit repair`` seals a torn tail as a recorded event.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.models.registry import file_sha256, weights_digest, weights_sha256
from app.report.audit import (
    REPAIR_ACTION,
    AuditError,
    AuditLog,
    AuditRecord,
    head_path,
    read_records,
    repair,
    verify,
)
from inference.resources import DEMO_MODEL_DIR, SAMPLE_STUDY
from tests.hostile.test_state_files import (
    DEEP,
    REPO,
    cli,
    home_paths,
    no_traceback,
    one_line_error,
)


def filled(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path, user="reader")
    for i in range(n):
        log.append("test.action", {"i": i}, study_uid="1.2.3")
    return log


def forge(path: Path, count: int) -> None:
    """Append ``count`` records with valid hashes and links, as someone with write access (not the workstation) would."""
    last = [r for _, r, _ in read_records(path)][-1]
    with path.open("a") as fh:
        for _ in range(count):
            rec = AuditRecord(seq=last.seq + 1, time=last.time, user="mallory", action="report.sign",
                              study_uid=last.study_uid, data={"forged": True}, prev=last.hash)
            last = AuditRecord(**{**rec.__dict__, "hash": rec.compute_hash()})
            fh.write(last.to_line())


def verify_cli(home: Path, log: Path) -> subprocess.CompletedProcess:
    return cli(home, "audit", "verify", "--log", str(log))


def failed_in_one_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout
    broken = [x for x in proc.stdout.splitlines() if "BROKEN" in x]
    assert len(broken) == 1, proc.stdout
    for w in words:
        assert w in broken[0], broken[0]


# --------------------------------------------------------------------- analyze --json is audited
def test_analyze_json_records_the_request_and_answer_with_the_weights_hash(tmp_path):
    home = tmp_path / "home"
    out = tmp_path / "answer.json"
    proc = cli(home, "analyze", str(SAMPLE_STUDY), "--slice", "18", "--device", "cpu", "--quantization", "none",
               "--max-new-tokens", "32", "--question", "Any lung lesion?", "--json", str(out))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    log = home_paths(home).audit_log
    assert verify(log).ok
    recs = [r for _, r, _ in read_records(log)]
    assert [r.action for r in recs] == ["ai.request", "ai.output"]
    expected = weights_digest({"model.safetensors": file_sha256(DEMO_MODEL_DIR / "model.safetensors")})
    for r in recs:
        assert r.data["weights_sha256"] == expected and r.data["model_id"]
    assert recs[0].data["question"] == "Any lung lesion?" and recs[0].data["image"]["sop_instance_uid"]
    assert recs[1].data["text"] == json.loads(out.read_text())["raw_text"]
    # the hash is cached by path, size and time
    cache = json.loads((home_paths(home).models / "weights-sha256.json").read_text())["files"]
    assert [e["sha256"] for e in cache.values()] == [file_sha256(DEMO_MODEL_DIR / "model.safetensors")]


def test_weights_hash_is_computed_once_per_file_version(tmp_path, monkeypatch):
    from app.models import registry

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "internvl"}')
    (folder / "model.safetensors").write_bytes((DEMO_MODEL_DIR / "model.safetensors").read_bytes())
    calls = []
    real = registry.file_sha256
    monkeypatch.setattr(registry, "file_sha256", lambda p: calls.append(p) or real(p))
    cache = tmp_path / "cache.json"
    first = weights_sha256(folder, cache)
    assert weights_sha256(folder, cache) == first and len(calls) == 1
    os.utime(folder / "model.safetensors", ns=(1, 1))  # a new version of the file (same bytes here)
    assert weights_sha256(folder, cache) == first and len(calls) == 2
    cache.write_text('{"files": ' + DEEP + "}")  # a damaged cache is set aside, not trusted
    assert weights_sha256(folder, cache) == first and len(calls) == 3
    assert (tmp_path / "cache.json.corrupt-1").exists()


# --------------------------------------------------------------------- verify: the head
@pytest.mark.parametrize("head", [None, b"", b"garbage", b"[]", b'{"seq": NaN, "hash": "x"}',
                                  b'{"seq": "5", "hash": "00"}', DEEP.encode(), "fifo"])
def test_missing_or_garbage_head_with_records_fails(tmp_path, head):
    log = tmp_path / "audit.jsonl"
    filled(log)
    hp = head_path(log)
    hp.unlink()
    if head == "fifo":
        os.mkfifo(hp)
    elif head is not None:
        hp.write_bytes(head)
    result = verify(log)
    assert not result.ok and "head file is" in result.reason
    failed_in_one_line(verify_cli(tmp_path / "home", log), "head file is")


def test_missing_head_with_an_empty_log_is_fine(tmp_path):
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"")
    assert verify(log).ok
    assert verify_cli(tmp_path / "home", log).returncode == 0


def test_deleted_log_with_its_head_left_fails(tmp_path):
    log = tmp_path / "audit.jsonl"
    filled(log)
    log.unlink()
    result = verify(log)
    assert not result.ok and "missing" in result.reason


@pytest.mark.parametrize("count", [1, 2, 5])
def test_records_appended_behind_the_workstations_back_fail(tmp_path, count):
    log = tmp_path / "audit.jsonl"
    filled(log)
    forge(log, count)
    result = verify(log)
    assert not result.ok and "not written by the workstation" in result.reason
    failed_in_one_line(verify_cli(tmp_path / "home", log), "not written by the workstation")
    # and the next append does not paper over them by moving the head
    with pytest.raises(AuditError, match="does not match its head"):
        AuditLog(log).append("report.open")
    assert not verify(log).ok


@pytest.mark.parametrize("removed", [1, 2])
def test_records_removed_from_the_end_fail(tmp_path, removed):
    log = tmp_path / "audit.jsonl"
    filled(log)
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-removed]))
    failed_in_one_line(verify_cli(tmp_path / "home", log), "removed")


def test_verify_of_a_folder_or_fifo_fails_in_one_line(tmp_path):
    failed_in_one_line(verify_cli(tmp_path / "home", tmp_path), "cannot be read")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    failed_in_one_line(verify_cli(tmp_path / "home", fifo), "cannot be read")


@pytest.mark.parametrize("line", [b"[]\n", b"null\n", b'{"seq": 1}\n', DEEP.encode() + b"\n", b"\xff\xfe\n"])
def test_garbage_lines_in_the_log_fail_without_a_traceback(tmp_path, line):
    log = tmp_path / "audit.jsonl"
    filled(log, 2)
    log.write_bytes(log.read_bytes() + line)
    result = verify(log)
    assert not result.ok and result.broken_line == 3
    failed_in_one_line(verify_cli(tmp_path / "home", log), "line 3")


# --------------------------------------------------------------------- real crashes still verify
CRASH_IN_APPEND = textwrap.dedent("""
    import os, sys
    import app.report.audit as audit
    log = audit.AuditLog(sys.argv[1], user="reader")
    for i in range(3):
        log.append("test.action", {"i": i})
    step = int(sys.argv[2])  # die after the pending head (1) or after the line, before the committed head (2)
    real, calls = audit.write_atomic, []
    def dying(path, data, **kw):
        calls.append(path)
        if len(calls) == step:
            if step == 1:
                real(path, data, **kw)
            os._exit(9)
        real(path, data, **kw)
    audit.write_atomic = dying
    log.append("test.action", {"i": 3})
""")


@pytest.mark.parametrize("step, records", [(1, 3), (2, 4)])
def test_a_crash_between_the_steps_of_an_append_still_verifies_and_appends_go_on(tmp_path, step, records):
    log = tmp_path / "audit.jsonl"
    proc = subprocess.run([sys.executable, "-c", CRASH_IN_APPEND, str(log), str(step)], cwd=REPO, timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert json.loads(head_path(log).read_text())["pending"] is True
    result = verify(log)
    assert result.ok and result.records == records and "crash" in result.notes[-1], result
    AuditLog(log).append("after.crash")
    assert verify(log).ok and verify(log).records == records + 1


APPENDER = textwrap.dedent("""
    import sys
    from app.report.audit import AuditLog
    log = AuditLog(sys.argv[1], user="reader")
    i = 0
    while True:
        i += 1
        log.append("test.loop", {"i": i, "text": "x" * 200})
        print(i, flush=True)
""")


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_kill_dash_nine_while_appending_leaves_a_log_that_verifies(tmp_path):
    log = tmp_path / "audit.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(log)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 60:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    result = verify(log)
    assert result.ok and result.records >= 60, result.summary()
    AuditLog(log).append("after.kill")


# --------------------------------------------------------------------- a torn last line, and `audit repair`
def torn(path: Path) -> bytes:
    filled(path, 3)
    fragment = b'{"action":"ai.output","data":{"text":"The nod'
    with path.open("ab") as fh:
        fh.write(fragment)
    return fragment


def test_torn_last_line_blocks_work_until_audit_repair_seals_it(tmp_path):
    home = tmp_path / "home"
    log = home_paths(home).audit_log
    fragment = torn(log)
    # verify says what happened and what to do, in one line
    failed_in_one_line(cli(home, "audit", "verify"), "unfinished", "xmedgpt audit repair")
    # appends are refused with the way out (before a model is loaded)
    with pytest.raises(AuditError, match="audit repair"):
        AuditLog(log).append("report.open")
    line = one_line_error(cli(home, "analyze", str(SAMPLE_STUDY), "--json", str(tmp_path / "a.json")))
    assert "audit repair" in line and not (tmp_path / "a.json").exists()
    # the repair: a recorded event, the damaged bytes kept beside the log
    proc = cli(home, "audit", "repair")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "repaired as record 4" in proc.stdout and "intact: 4 records" in proc.stdout
    (side,) = log.parent.glob("audit.jsonl.damaged-*")
    assert side.read_bytes() == fragment
    recs = [r for _, r, _ in read_records(log)]
    rep = recs[-1]
    assert rep.action == REPAIR_ACTION and rep.seq == 4 and rep.prev == recs[2].hash
    assert rep.data["sealed"] == {"bytes": len(fragment), "sha256": hashlib.sha256(fragment).hexdigest(),
                                  "side_file": side.name, "offset": len(log.read_bytes()) - len(rep.to_line().encode())}
    assert json.loads(head_path(log).read_text()) == {"seq": 4, "hash": rep.hash}
    # verify passes and names the repair; work goes on
    proc = cli(home, "audit", "verify")
    assert proc.returncode == 0 and "record 4 is a repair" in proc.stdout, proc.stdout
    AuditLog(log).append("report.open")
    assert verify(log).ok and verify(log).records == 5


def test_repair_of_an_intact_log_changes_nothing(tmp_path):
    log = tmp_path / "audit.jsonl"
    filled(log)
    before = log.read_bytes(), head_path(log).read_bytes()
    result = repair(log)
    assert result.record is None and "nothing to repair" in result.summary
    assert (log.read_bytes(), head_path(log).read_bytes()) == before


def test_repair_refuses_damage_that_is_not_a_crash(tmp_path):
    log = tmp_path / "audit.jsonl"
    filled(log)
    lines = log.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"i":2', b'"i":7')  # an altered record in the middle
    log.write_bytes(b"".join(lines) + b'{"torn')
    before = log.read_bytes()
    home = tmp_path / "home"
    line = one_line_error(cli(home, "audit", "repair", "--log", str(log)))
    assert "broken at record 3" in line and "not repaired" in line
    assert log.read_bytes() == before and not list(tmp_path.glob("*.damaged-*"))


def test_repair_after_forged_records_records_the_finding_and_is_listed_by_verify(tmp_path):
    log = tmp_path / "audit.jsonl"
    filled(log)
    forge(log, 2)
    result = repair(log, user="admin")
    assert result.record is not None and "not written by the workstation" in result.summary
    check = verify(log)
    assert check.ok and any("is a repair" in n and "not written by the workstation" in n for n in check.notes)
    assert [r.user for _, r, _ in read_records(log)][-3:] == ["mallory", "mallory", "admin"]


def test_nan_in_an_ai_answer_is_recorded_and_verifies(tmp_path):
    log = tmp_path / "audit.jsonl"
    AuditLog(log).append("ai.output", {"reliability": {"score": float("nan")}, "t": float("inf")})
    assert verify(log).ok
    (rec,) = [r for _, r, _ in read_records(log)]
    assert rec.data == {"reliability": {"score": "nan"}, "t": "inf"}
