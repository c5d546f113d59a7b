"""Audit trail: every action chained; any altered or removed record is found; research export has no identifiers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from app.report.audit import (
    AuditError,
    AuditLog,
    export_deidentified,
    head_path,
    verify,
)
from app.report.draft import (
    DraftReport,
    FindingReliability,
    Origin,
    Provenance,
    ReportBox,
    StudyContext,
)
from inference.reliability.scoring import Tier
from inference.types import Box

STUDY_UID = "1.2.826.0.1.3680043.8.498.77"
SOP_UID = "1.2.826.0.1.3680043.8.498.77.1.5"
REPO = Path(__file__).resolve().parents[3]


def filled_log(path: Path) -> tuple[AuditLog, DraftReport]:
    audit = AuditLog(path, user="jsmith")
    study = StudyContext(STUDY_UID, patient_name="Doe^John", patient_id="PID-991", accession_number="ACC-55",
                         study_date="20260301", modality="CT")
    report = DraftReport(study=study, provenance=Provenance("xmedgpt-demo", "0.1", "cd" * 32))
    audit.ai_request(STUDY_UID, model_id="xmedgpt-demo", weights_sha256="cd" * 32,
                     prompt="Describe the findings. Patient Doe^John.", image={"sop_instance_uid": SOP_UID, "frame": 1})
    audit.ai_output(STUDY_UID, model_id="xmedgpt-demo", weights_sha256="cd" * 32,
                    text="<ref>nodule</ref><box>[[1,2,3,4]]</box>",
                    reasoning=[{"index": 2, "title": "Region localization", "text": "nodule in RUL"}],
                    boxes=[{"xyxy": [10, 20, 30, 40], "sop_instance_uid": SOP_UID}],
                    reliability={"score": 0.7, "tier": "amber"})
    audit.watch(report)
    f = report.add_finding("Nodule right upper lobe.", [ReportBox(Box(10, 20, 30, 40), 4, SOP_UID, "1.2.3")],
                           origin=Origin.AI, reliability=FindingReliability(0.7, Tier.AMBER))
    report.accept(f.id)
    report.edit_text(f.id, "Nodule right upper lobe, 6 mm.")
    report.move_box(f.id, 0, Box(12, 20, 30, 44))
    report.sign("Smith^Jane")
    return audit, report


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_every_action_is_recorded_with_user_and_diff(tmp_path):
    path = tmp_path / "audit.jsonl"
    filled_log(path)
    recs = lines(path)
    assert [r["action"] for r in recs] == [
        "ai.request", "ai.output", "report.open", "report.add", "report.accept", "report.edit_text", "report.move_box", "report.sign"]
    assert all(r["user"] == "jsmith" for r in recs)
    assert [r["seq"] for r in recs] == list(range(1, 9))
    assert recs[2]["data"]["study"]["patient_id"] == "PID-991"
    assert recs[4]["data"]["status"] == ["proposed", "accepted"]
    edit = recs[5]["data"]
    assert "-Nodule right upper lobe." in edit["diff"] and "+Nodule right upper lobe, 6 mm." in edit["diff"]
    assert edit["status"] == ["accepted", "edited"]
    move = recs[6]["data"]
    assert move["boxes_before"][0]["xyxy"] == [10, 20, 30, 40] and move["boxes_after"][0]["xyxy"] == [12, 20, 30, 44]
    assert recs[7]["data"]["reader_name"] == "Smith^Jane"
    assert recs[1]["data"]["weights_sha256"] == "cd" * 32
    result = verify(path)
    assert result.ok and result.records == 8 and result.head == recs[-1]["hash"]


def test_altered_record_is_found(tmp_path):
    path = tmp_path / "audit.jsonl"
    filled_log(path)
    raw = path.read_text().splitlines()
    rec = json.loads(raw[4])
    rec["data"]["diff"] = ["+nothing to see"]
    raw[4] = json.dumps(rec)
    path.write_text("\n".join(raw) + "\n")
    result = verify(path)
    assert not result.ok and result.broken_seq == 5 and result.broken_line == 5
    assert "altered" in result.reason


def test_altered_record_with_recomputed_hash_breaks_the_next_link(tmp_path):
    from app.report.audit import AuditRecord

    path = tmp_path / "audit.jsonl"
    filled_log(path)
    raw = path.read_text().splitlines()
    rec = AuditRecord(**json.loads(raw[2]))
    forged = AuditRecord(**{**rec.__dict__, "user": "someone-else", "hash": ""})
    forged = AuditRecord(**{**forged.__dict__, "hash": forged.compute_hash()})
    raw[2] = forged.to_line().rstrip("\n")
    path.write_text("\n".join(raw) + "\n")
    result = verify(path)
    assert not result.ok and result.broken_seq == 4 and "previous record" in result.reason


@pytest.mark.parametrize("index, expect_seq", [(0, 2), (3, 5)])
def test_removed_record_is_found(tmp_path, index, expect_seq):
    path = tmp_path / "audit.jsonl"
    filled_log(path)
    raw = path.read_text().splitlines()
    del raw[index]
    path.write_text("\n".join(raw) + "\n")
    result = verify(path)
    assert not result.ok and result.broken_seq == expect_seq


def test_removed_last_records_are_found_through_the_head(tmp_path):
    path = tmp_path / "audit.jsonl"
    filled_log(path)
    raw = path.read_text().splitlines()
    path.write_text("\n".join(raw[:-2]) + "\n")
    result = verify(path)
    assert not result.ok and "last 2 records were removed" in result.reason
    head_path(path).unlink()  # without the head, removal from the end cannot be ruled out: a failure
    result = verify(path)
    assert not result.ok and "head file is missing" in result.reason


def test_appending_continues_the_chain_across_instances(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(path, "a").append("x")
    AuditLog(path, "b").append("y", {"k": [1, 2.5, None]})
    assert verify(path).records == 2
    assert lines(path)[1]["prev"] == lines(path)[0]["hash"]


def test_unfinished_last_line_stops_appends_and_is_reported(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(path).append("x")
    with path.open("a") as fh:
        fh.write('{"seq": 2, "ti')
    with pytest.raises(AuditError, match="unfinished"):
        AuditLog(path).append("y")
    assert verify(path).broken_seq == 2


def test_deidentified_export_drops_identifiers_and_is_a_valid_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    filled_log(path)
    out = tmp_path / "research.jsonl"
    assert export_deidentified(path, out, salt="s1") == 8
    text = out.read_text()
    for ident in ("Doe", "John", "PID-991", "ACC-55", "jsmith", "Smith", STUDY_UID, SOP_UID, "20260301"):
        assert ident not in text, ident
    recs = lines(out)
    assert {r["user"] for r in recs} == {"reader-1"}
    assert recs[7]["data"]["reader_name"] == "reader-2"
    assert set(recs[2]["data"]["study"]) == {"study_uid", "modality"}
    assert recs[0]["data"]["prompt"] == "Describe the findings. Patient [removed]."
    assert recs[0]["study_uid"].startswith("2.25.") and len({r["study_uid"] for r in recs}) == 1
    assert recs[0]["data"]["t_seconds"] == 0.0
    assert recs[5]["data"]["diff"][3] == "-Nodule right upper lobe."
    assert verify(out).ok
    # same salt → same pseudonyms; another salt → unlinkable
    export_deidentified(path, tmp_path / "again.jsonl", salt="s1")
    export_deidentified(path, tmp_path / "other.jsonl", salt="s2")
    assert lines(tmp_path / "again.jsonl")[0]["study_uid"] == recs[0]["study_uid"]
    assert lines(tmp_path / "other.jsonl")[0]["study_uid"] != recs[0]["study_uid"]


def test_export_refuses_a_broken_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    filled_log(path)
    raw = path.read_text().splitlines()
    path.write_text("\n".join(raw[1:]) + "\n")
    with pytest.raises(AuditError, match="failed verification"):
        export_deidentified(path, tmp_path / "out.jsonl")


def test_cli_verify_and_export(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    filled_log(path)
    assert main(["audit", "verify", "--log", str(path)]) == 0
    assert "intact: 8 records" in capsys.readouterr().out
    out = tmp_path / "r.jsonl"
    assert main(["audit", "export", "--deidentify", str(out), "--log", str(path)]) == 0
    assert verify(out).records == 8
    raw = path.read_text().splitlines()
    assert '"accepted"' in raw[4]
    raw[4] = raw[4].replace('"accepted"', '"rejected"')
    path.write_text("\n".join(raw) + "\n")
    assert main(["audit", "verify", "--log", str(path)]) == 1
    assert "BROKEN at record 5 (line 5)" in capsys.readouterr().out


def test_cli_verify_uses_settings_location(tmp_path):
    env = {"XMEDGPT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    log_path = tmp_path / "data" / "audit" / "audit.jsonl"
    AuditLog(log_path, "u").append("x")
    proc = subprocess.run([sys.executable, "-m", "app.cli", "audit", "verify"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert str(log_path) in proc.stdout and "intact: 1 records" in proc.stdout


WRITER = """
import sys
from app.report.audit import AuditLog
log = AuditLog(sys.argv[1], user=sys.argv[2])
for i in range(40):
    log.append("test.concurrent", {"i": i})
"""


@pytest.mark.skipif(sys.platform.startswith("win"), reason="flock is POSIX")
def test_two_processes_appending_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), who], cwd=REPO) for who in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    result = verify(path)
    assert result.ok, result.summary()
    recs = lines(path)
    assert len(recs) == 80 and sorted(r["user"] for r in recs).count("a") == 40


def test_export_action_is_recorded(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit, report = filled_log(path)
    rec = audit.export(report, "sr", tmp_path / "x.dcm", "2.25.1")
    assert rec.action == "report.export" and rec.data["signed"] is True and rec.data["kind"] == "sr"
    assert verify(path).records == 9


def test_default_user_is_the_login(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "radiologist7")
    monkeypatch.setenv("LOGNAME", "radiologist7")
    assert AuditLog(tmp_path / "a.jsonl").append("x").user == "radiologist7"
    assert AuditLog(tmp_path / "a.jsonl", user="").append("y").user == ""
