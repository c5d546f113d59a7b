"""Autosave: snapshots plus a journal bring a draft back after a crash; damage is reported, never dropped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.report.draft import DraftReport, Origin, Provenance, StudyContext
from app.report.workspace import Autosave, Workspace, restore_or_new

UID = "1.2.826.0.1.3680043.8.498.42"
REPO = Path(__file__).resolve().parents[3]


def new_report(uid: str = UID) -> DraftReport:
    return DraftReport(study=StudyContext(study_uid=uid, modality="CT"), provenance=Provenance("demo"))


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_snapshot_and_journal_restore_every_edit(tmp_path):
    ws = Workspace(tmp_path)
    clock = FakeClock()
    r = new_report()
    auto = Autosave(ws, r, snapshot_seconds=10, clock=clock)
    f = r.add_finding("Nodule.", origin=Origin.AI)
    r.accept(f.id)
    r.set_impression("Nodule, likely benign.")
    # no snapshot yet: everything is in the journal
    assert len(ws.journal_path(UID).read_text().splitlines()) == 3
    restored = ws.load(UID)
    assert restored.problems == [] and restored.replayed == 3
    assert restored.report == r
    clock.t = 11
    assert auto.tick() is True  # the UI's timer: edits waiting and the interval passed
    assert ws.journal_path(UID).read_text() == ""  # snapshot written, journal restarted
    assert auto.tick() is False  # nothing new
    r.set_impression("Nodule.")
    assert len(ws.journal_path(UID).read_text().splitlines()) == 1
    auto.close()
    assert ws.load(UID).report == r
    assert ws.studies() == [UID]


def test_restore_or_new_and_discard(tmp_path):
    ws = Workspace(tmp_path)
    r, problems = restore_or_new(ws, UID, new_report)
    assert problems == [] and r.findings == []
    auto = Autosave(ws, r)
    r.add_finding("Reader note.")
    auto.close()
    again, _ = restore_or_new(ws, UID, new_report)
    assert again.report_id == r.report_id and again.findings[0].text == "Reader note."
    ws.discard(UID)
    assert ws.load(UID).report is None


def test_torn_last_line_is_skipped_quietly_and_cleaned(tmp_path):
    ws = Workspace(tmp_path)
    r = new_report()
    Autosave(ws, r, snapshot_seconds=1e9)
    r.set_impression("one")
    r.set_impression("two")
    journal = ws.journal_path(UID)
    with journal.open("ab") as fh:
        fh.write(b'{"sha256": "abc", "edit": {"action": "impr')
    restored = ws.load(UID)
    assert restored.problems == [] and restored.report.impression == "two"
    assert journal.read_bytes().endswith(b"\n")  # the fragment is gone, later appends stay clean
    assert ws.load(UID).report.impression == "two"


def test_damaged_journal_line_is_reported_and_original_kept(tmp_path):
    ws = Workspace(tmp_path)
    r = new_report()
    Autosave(ws, r, snapshot_seconds=1e9)
    for text in ("one", "two", "three"):
        r.set_impression(text)
    journal = ws.journal_path(UID)
    lines = journal.read_text().splitlines()
    lines[1] = lines[1].replace('"two"', '"TWO"')  # checksum no longer matches
    journal.write_text("\n".join(lines) + "\n")
    restored = ws.load(UID)
    assert len(restored.problems) == 1 and "damaged" in restored.problems[0]
    assert restored.report.impression == "three"
    kept = tmp_path / f"{UID}.journal.corrupt-1"
    assert '"TWO"' in kept.read_text()


def test_corrupt_snapshot_is_set_aside_and_reported(tmp_path):
    ws = Workspace(tmp_path)
    r = new_report()
    auto = Autosave(ws, r, snapshot_seconds=1e9)
    r.set_impression("kept safe")
    ws.snapshot_path(UID).write_text('{"report_id": ')
    restored = ws.load(UID)
    assert restored.report is None
    assert any("could not be read" in p for p in restored.problems)
    assert any("without a readable draft" in p for p in restored.problems)
    assert (tmp_path / f"{UID}.json.corrupt-1").read_text() == '{"report_id": '
    assert "kept safe" in (tmp_path / f"{UID}.journal.corrupt-1").read_text()
    auto.close()


def test_non_uid_keys_get_safe_file_names(tmp_path):
    ws = Workspace(tmp_path)
    odd = "../../etc/passwd"
    r = new_report(odd)
    Autosave(ws, r).close()
    assert ws.snapshot_path(odd).parent == tmp_path and ws.snapshot_path(odd).name.startswith("x-")
    assert ws.load(odd).report.study.study_uid == odd


CHILD = textwrap.dedent(
    """
    import sys
    from app.report.draft import DraftReport, Origin, StudyContext
    from app.report.workspace import Autosave, Workspace

    ws = Workspace(sys.argv[1])
    r = DraftReport(study=StudyContext(study_uid=sys.argv[2], modality="CT"))
    Autosave(ws, r, snapshot_seconds=0.2)
    i = 0
    while True:
        i += 1
        if i % 10 == 0:
            r.add_finding(f"finding {i}", origin=Origin.AI)
        r.set_impression(f"typed {i}")
        print(i, flush=True)   # the edit is durable once this line is out
    """
)


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_kill_dash_nine_mid_edit_loses_nothing_acknowledged(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), UID],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    last = 0
    try:
        for line in proc.stdout:
            last = int(line)
            if last >= 120:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert last >= 120
    restored = Workspace(tmp_path).load(UID)
    assert restored.problems == []
    got = int(restored.report.impression.split()[1])
    assert got >= last  # nothing the child had finished is lost
    assert [f.text for f in restored.report.findings] == [f"finding {k}" for k in range(10, got + 1, 10)]
    assert len(list(tmp_path.glob("*.tmp"))) <= 1  # at most one unfinished snapshot temp


def test_latest_draft_srs_picks_newest_of_each_kind(tmp_path):
    ws = Workspace(tmp_path)
    d = ws.exports_dir(UID)
    assert ws.latest_draft_srs(UID) == []
    d.mkdir(parents=True)
    old_m, new_m, rep = d / "SR-draft-measurements-1.dcm", d / "SR-draft-measurements-2.dcm", d / "SR-draft-report-3.dcm"
    for i, p in enumerate((old_m, new_m, rep, d / "SR-signed-report-4.dcm")):
        p.write_bytes(b"x")
        os.utime(p, ns=(10**18 + i * 10**9, 10**18 + i * 10**9))
    assert ws.latest_draft_srs(UID) == [new_m, rep]


def test_damaged_journal_and_damaged_snapshot_together(tmp_path):
    ws = Workspace(tmp_path)
    r = new_report()
    Autosave(ws, r, snapshot_seconds=1e9)
    r.set_impression("one")
    r.set_impression("two")
    journal = ws.journal_path(UID)
    journal.write_text(journal.read_text().replace('"two"', '"TWO"'))  # the second edit only
    ws.snapshot_path(UID).write_text("garbage")
    restored = ws.load(UID)
    assert restored.report is None and len(restored.problems) == 3, restored.problems
    assert "without a readable draft" in restored.problems[2] and "corrupt-1" in restored.problems[2]
    assert (tmp_path / f"{UID}.journal.corrupt-1").exists() and (tmp_path / f"{UID}.json.corrupt-1").exists()


def test_whole_reporting_flow_keeps_workspace_audit_and_exports_consistent(tmp_path):
    """Open → AI draft → edits → draft SR → sign → signed SR referencing the draft; then reopen and verify."""
    import pydicom

    from app.report.audit import AuditLog, verify
    from app.report.draft import FindingReliability, ReportBox
    from app.report.export.sr import export_sr, read_sources
    from app.synthetic.sample import write_ct_study
    from inference.reliability.scoring import Tier
    from inference.types import Box

    sources = read_sources(sorted(write_ct_study(tmp_path / "ct", n_slices=3, size=64, noise_hu=0).glob("*.dcm")))
    first = next(iter(sources.values()))
    uid = str(first.StudyInstanceUID)
    ws = Workspace(tmp_path / "ws")
    audit = AuditLog(tmp_path / "audit.jsonl", user="jsmith")
    report, problems = restore_or_new(ws, uid, lambda: DraftReport(StudyContext(uid, modality="CT"),
                                                                   provenance=Provenance("demo", "1", "ef" * 32)))
    assert problems == []
    auto = Autosave(ws, report)
    audit.watch(report)
    f = report.add_finding("Nodule.", [ReportBox(Box(5, 5, 20, 20), 1, list(sources)[1], str(first.SeriesInstanceUID))],
                           origin=Origin.AI, finding_type="nodule", reliability=FindingReliability(0.7, Tier.AMBER))
    report.edit_text(f.id, "Nodule, 5 mm.")
    draft = export_sr(report, sources, ws.exports_dir(uid))
    audit.export(report, "sr", draft.measurement, draft.measurement_uid)
    report.accept(f.id)
    report.sign("Smith^Jane")
    signed = export_sr(report, sources, ws.exports_dir(uid), previous=ws.latest_draft_srs(uid))
    audit.export(report, "sr", signed.measurement, signed.measurement_uid)
    auto.close()

    pred = pydicom.dcmread(signed.measurement).PredecessorDocumentsSequence[0]
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == draft.measurement_uid
    reopened = ws.load(uid)
    assert reopened.problems == [] and reopened.report.signed and reopened.report.findings[0].text == "Nodule, 5 mm."
    check = verify(audit.path)
    # open, add, edit, export, sign, export (accepting an already edited finding changes nothing)
    assert check.ok and check.records == 6
