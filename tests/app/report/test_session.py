"""The reporting session without a window: a scripted model answers about the bundled sample
study through the real Assistant; the draft, the audit trail, the workspace and the exports
must agree with what the reader did."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from app.assistant.ask import Assistant
from app.dicom.loader import load_series
from app.dicom.model import Window
from app.dicom.scan import scan
from app.report.audit import AuditLog, read_records, verify
from app.report.draft import FindingStatus, Origin, ReportError
from app.report.session import ReportSession, frame_refs, source_paths, study_context
from app.report.workspace import Workspace
from inference.imaging import ImageSpec
from inference.reliability.scoring import FindingResult, Reliability, State, Tier
from inference.types import Box
from tests.app.assistant.test_ask import ScriptedEngine

SAMPLE = Path(__file__).resolve().parents[3] / "resources" / "sample" / "ct-demo"
SLICE = 17  # the right lower lobe mass (ground truth L3: x 149–191, y 319–357 on this slice)
SPEC = ImageSpec(tile_size=56, max_tiles=6)

#: a grounded five-step answer with three findings on SLICE (0–1000 scale of the 512² image)
ANSWER = (
    "Step 1: Structure identification\nAxial CT of the lower chest in lung window: heart, both lungs, spine.\n"
    "Step 2: Region localization\nA <ref>mass</ref><box>[[291, 623, 373, 697]]</box> in the right lower lobe. "
    "A <ref>pleural effusion</ref><box>[[640, 600, 830, 700]]</box> on the left. "
    "A small <ref>nodule</ref><box>[[290, 480, 340, 540]]</box> in the right middle lobe.\n"
    "Step 3: Detailed description\nThe mass is spiculated, 32 mm, of soft-tissue attenuation.\n"
    "Step 4: Holistic analysis\nA spiculated mass is suspicious for a primary lung malignancy.\n"
    "Step 5: Report synthesis\nSpiculated right lower lobe mass, 32 mm, suspicious for malignancy.\n"
)
MASS_PX = (291 * 512 / 1000, 623 * 512 / 1000, 373 * 512 / 1000, 697 * 512 / 1000)


def load_sample():
    """(scan result, series, volume) of the bundled sample study."""
    result = scan([SAMPLE])
    series = result.all_series()[0]
    return result, series, load_series(series)


def ask_sample(volume, engine: ScriptedEngine | None = None):
    engine = engine or ScriptedEngine(ANSWER, model_id="scripted-xmedgpt")
    return Assistant(engine, image_spec=SPEC).ask(volume, SLICE, Window(1500, -600, "lung"), "Any lung lesion?")


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def make_session(tmp_path: Path, reader: str = "Smith^Jane") -> ReportSession:
    return ReportSession(Workspace(tmp_path / "ws"), AuditLog(tmp_path / "audit.jsonl", user=reader),
                         reader_name=reader, snapshot_seconds=0.0)


def test_answer_becomes_a_draft_on_the_sample_images_with_the_ai_output_audited(sample, tmp_path):
    result, series, volume = sample
    session = make_session(tmp_path)
    answer = ask_sample(volume)
    report = session.on_answer(answer, volume, study_context(result, series))
    assert [f.finding_type for f in report.findings] == ["mass", "pleural effusion", "nodule"]
    assert all(f.origin is Origin.AI and f.status is FindingStatus.PROPOSED for f in report.findings)
    mass = report.findings[0]
    assert mass.text == "A mass in the right lower lobe."
    (b,) = mass.boxes
    assert (b.box.x0, b.box.y0, b.box.x1, b.box.y1) == pytest.approx(MASS_PX, abs=0.01)
    truth = json.loads((SAMPLE.parent / "ct-demo.ground_truth.json").read_text())
    assert b.sop_instance_uid == truth["slices"][SLICE]["sop_instance_uid"] and b.slice_index == SLICE
    # Issue #13.7: the AI's impression is proposed sentence by sentence, not the reader's text
    assert report.impression == "" and report.ai_sentences[0].text.startswith("Spiculated right lower lobe mass")
    assert all(not s.decided for s in report.ai_sentences) and report.impression_text() == ""
    assert report.study.patient_id == "XMED-PHANTOM-0000" and report.study.modality == "CT"
    actions = [r.action for _, r, _ in read_records(session.audit.path)]
    assert actions == ["ai.request", "ai.output", "report.open"]
    out = [r for _, r, _ in read_records(session.audit.path)][1].data
    assert out["model_id"] == "scripted-xmedgpt" and "<ref>mass</ref>" in out["text"]
    assert len(out["boxes"]) == 3 and len(out["reasoning"]) == 5
    # the draft is on disk before the reader does anything
    assert session.workspace.load(report.study.study_uid).report.findings == report.findings


def test_asking_again_merges_only_new_findings_and_a_reopened_study_keeps_the_readers_work(sample, tmp_path):
    result, series, volume = sample
    study = study_context(result, series)
    session = make_session(tmp_path)
    report = session.on_answer(ask_sample(volume), volume, study)
    report.reject(report.findings[1].id)
    session.close()

    again = make_session(tmp_path)
    restored = again.open_study(study)
    assert restored is not None and restored.findings[1].status is FindingStatus.REJECTED
    other = ANSWER.replace("Step 3: Detailed", "A <ref>consolidation</ref><box>[[100, 100, 200, 200]]</box> "
                           "at the left base.\nStep 3: Detailed")
    merged = again.on_answer(ask_sample(volume, ScriptedEngine(other)), volume, study)
    assert merged is restored  # the same draft, extended
    assert [f.finding_type for f in merged.findings] == ["mass", "pleural effusion", "nodule", "consolidation"]
    assert merged.findings[1].status is FindingStatus.REJECTED  # the reader's decision survived


def test_reliability_from_the_assistants_phrases_tints_the_matching_findings(sample, tmp_path):
    result, series, volume = sample
    session = make_session(tmp_path)
    report = session.on_answer(ask_sample(volume), volume, study_context(result, series))
    # the reliability pass names findings by their phrase (app.assistant.session.draft_findings)
    rel = Reliability(findings=[FindingResult("mass", [], 0.91, 0.93, Tier.GREEN, State.DONE),
                                FindingResult("Pleural  Effusion", [], 0.2, 0.3, Tier.RED, State.DONE)],
                      worst=0.2, tier=Tier.RED, state=State.DONE, estimator="test")
    assert session.apply_reliability(rel) == 2
    assert report.findings[0].reliability.tier.value == "green" and report.findings[0].reliability.score == 0.91
    assert report.findings[1].reliability.tier.value == "red" and report.findings[2].reliability is None
    assert any(r.action == "ai.reliability" for _, r, _ in read_records(session.audit.path))
    assert not report.can_undo  # the AI's measurement is not a reader edit to undo
    session.close()
    assert Workspace(tmp_path / "ws").load(report.study.study_uid).report.findings[0].reliability.score == 0.91


def test_sign_needs_every_ai_finding_decided_then_exports_valid_signed_sr_referencing_the_draft(sample, tmp_path):
    result, series, volume = sample
    session = make_session(tmp_path)
    report = session.on_answer(ask_sample(volume), volume, study_context(result, series))
    mass, effusion, nodule = (f.id for f in report.findings)
    report.move_box(mass, 0, Box(150, 320, 192, 358))
    draft = session.export(source_paths(volume))
    with pytest.raises(ReportError, match="2 AI findings still to accept or reject"):
        session.sign()
    report.reject(effusion)
    report.accept(mass)
    report.accept(nodule)
    # Issue #13.7: the AI's impression sentence is a proposal too; the reader accepts it explicitly
    with pytest.raises(ReportError, match="1 AI impression sentence still to accept or reject"):
        session.sign()
    report.accept_sentence(report.ai_sentences[0].id)
    added = session.add_reader_finding("Small hiatal hernia.", Box(240, 330, 280, 360), SLICE, volume)
    session.sign()
    signed = session.export(source_paths(volume))
    assert "signed" in signed.sr.measurement.name and "draft" in draft.sr.measurement.name
    ds = pydicom.dcmread(signed.sr.measurement)
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "VERIFIED"
    pred = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == draft.sr.measurement_uid
    sr = hd.sr.srread(signed.sr.measurement)
    groups = sr.content.get_planar_roi_measurement_groups()
    coords = [g.roi.value.tolist() for g in groups]
    assert len(groups) == 3  # mass, nodule, the reader's own; the rejected effusion is left out
    assert coords[0][0] == [150, 320] and coords[0][2] == [192, 358]
    assert "Small hiatal hernia." in signed.text and "pleural effusion" not in signed.text
    assert "Spiculated right lower lobe mass, 32 mm" in signed.text  # the accepted AI sentence
    assert report.finding(added).origin is Origin.READER
    if shutil.which("dciodvfy") or Path(".venv/bin/dciodvfy").exists():
        for p in signed.sr.paths:
            assert dciodvfy_errors(p) == [], p
    check = verify(session.audit.path)
    assert check.ok, check.summary()
    actions = [r.action for _, r, _ in read_records(session.audit.path)]
    assert {"report.move_box", "report.reject", "report.accept", "report.add", "report.sign",
            "report.accept_sentence"} <= set(actions)
    assert actions.count("report.export") == 6  # draft and signed: two SRs and the text each


def dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy") or str(Path(".venv/bin/dciodvfy").resolve())
    out = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_frame_refs_name_each_slices_instance(sample):
    _, series, volume = sample
    ref = frame_refs(volume)
    assert [ref(k).sop_instance_uid for k in range(3)] == [i.sop_instance_uid for i in series.instances[:3]]
    with pytest.raises(ReportError):
        ref(len(volume))


def fake_pdf(report, path: Path) -> Path:
    """Writes as Qt's PDF writer does: a plain open(), so the file gets the process umask's mode."""
    with open(path, "wb") as fh:
        fh.write(b"%PDF-1.4 " + report.report_id.encode())
    return path


def test_every_export_is_owner_only_and_readably_named(sample, tmp_path):
    """Issue #20.9 and #20.8: SR, PDF and text 0600, new folders 0700 (the umask says 0644/0755);
    files named <PatientID>_<StudyDate>_report_<kind>_<YYYYMMDD-HHMMSS> in safe characters."""
    import os
    import re
    import stat
    from datetime import datetime, timezone

    result, series, volume = sample
    old_umask = os.umask(0o022)
    try:
        session = make_session(tmp_path)
        report = session.on_answer(ask_sample(volume), volume, study_context(result, series))
        draft = session.export(source_paths(volume), pdf_writer=fake_pdf)
        for f in report.findings:
            report.accept(f.id)
        for x in report.ai_sentences:  # Issue #13.7: the AI's impression sentences are accepted explicitly
            report.accept_sentence(x.id)
        report.sign("Smith^Jane", datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
        signed = session.export(source_paths(volume), pdf_writer=fake_pdf)
        out = tmp_path / "elsewhere" / "deeper"
        named = session.export(source_paths(volume), out, pdf_writer=fake_pdf, pdf_path=out / "mine.pdf")
    finally:
        os.umask(old_umask)
    folder = session.workspace.exports_dir(report.study.study_uid)
    files = sorted(folder.iterdir())
    assert len(files) == 8 and set(draft.paths + signed.paths) == set(files)
    for p in [*files, *named.paths]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p.name, oct(p.stat().st_mode))
    for d in (folder, out, out.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, (d, oct(d.stat().st_mode))
    assert signed.pdf.name == "XMED-PHANTOM-0000_20250101_report_signed_20250102-030405.pdf"
    assert signed.text_path.name == "XMED-PHANTOM-0000_20250101_report_signed_20250102-030405.txt"
    assert re.fullmatch(r"XMED-PHANTOM-0000_20250101_report_draft_\d{8}-\d{6}\.pdf", draft.pdf.name)
    assert named.pdf == out / "mine.pdf"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # no temp files left behind


def test_file_names_use_safe_characters_only():
    from app.report.draft import DraftReport, StudyContext
    from app.report.session import export_stem

    r = DraftReport(StudyContext("1.2.3", patient_id="../Doe John/ß;rm -rf", study_date="2025-01-01"))
    stem = export_stem(r, "signed", "2025-01-02T03:04:05+01:00")
    assert stem == "Doe-John-rm-rf_2025-01-01_report_signed_20250102-020405"
    assert export_stem(DraftReport(StudyContext("1.2.3")), "draft", "2025-01-02T03:04:05+00:00") == \
        "no-patient-id_no-study-date_report_draft_20250102-030405"


def test_a_signed_addendum_is_exported_as_a_new_sr_pdf_and_text_and_audited(sample, tmp_path):
    """Issue #20.6: the addendum's own SR references the signed one; every step is in the audit trail."""
    result, series, volume = sample
    session = make_session(tmp_path)
    report = session.on_answer(ask_sample(volume), volume, study_context(result, series))
    for f in report.findings:
        report.accept(f.id)
    for x in report.ai_sentences:  # Issue #13.7: the AI's impression sentences are accepted explicitly
        report.accept_sentence(x.id)
    with pytest.raises(ReportError, match="Sign the addendum first"):
        session.export_addendum(source_paths(volume))
    session.sign()
    signed = session.export(source_paths(volume), pdf_writer=fake_pdf)
    signed_bytes = {p: p.read_bytes() for p in signed.paths}
    pending = report.add_addendum("Mass abuts the pleura; thoracic surgery informed.", "Smith^Jane")
    report.sign_addendum(pending.id, "Smith^Jane")
    done = session.export_addendum(source_paths(volume), pdf_writer=fake_pdf)
    assert done.addendum_sr.name.startswith("SR-addendum-report-") and "_report_addendum-1_signed_" in done.pdf.name
    assert "ADDENDUM 1" in done.text and "Mass abuts the pleura" in done.text
    ds = pydicom.dcmread(done.addendum_sr)
    pred = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == signed.sr.narrative_uid
    assert {p: p.read_bytes() for p in signed.paths} == signed_bytes  # the signed documents are not rewritten
    if shutil.which("dciodvfy") or Path(".venv/bin/dciodvfy").exists():
        assert dciodvfy_errors(done.addendum_sr) == []
    records = [r for _, r, _ in read_records(session.audit.path)]
    started = next(r for r in records if r.action == "report.addendum")
    signed_rec = next(r for r in records if r.action == "report.sign_addendum")
    assert started.data["addendum_id"] == pending.id
    assert signed_rec.data["reader_name"] == "Smith^Jane" and "Mass abuts the pleura" in signed_rec.data["text"]
    kinds = [r.data["kind"] for r in records if r.action == "report.export"]
    assert kinds[-3:] == ["sr-addendum", "pdf", "text"]
    assert verify(session.audit.path).ok
    again = Workspace(tmp_path / "ws").load(report.study.study_uid).report  # the addendum was saved
    assert again.signed_addenda()[0].text == "Mass abuts the pleura; thoracic surgery informed."
