"""Draft report: decisions, edits, undo/redo, sign-off rules, templates, text export."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import pytest

from app.report.draft import (
    DraftReport,
    FindingReliability,
    FindingStatus,
    FrameRef,
    Origin,
    Provenance,
    ReportBox,
    ReportError,
    StudyContext,
    Tier,
    draft_from_answer,
    edit_from_dict,
    edit_to_dict,
    load_templates,
    template_for,
)
from app.report.export.text import render_text
from inference.types import Box, GroundedPhrase, ReasoningStep

STUDY = StudyContext(
    study_uid="1.2.826.0.1.3680043.8.498.1",
    patient_name="Doe^John",
    patient_id="PID-7",
    patient_birth_date="19600102",
    study_date="20260301",
    study_description="Chest",
    modality="CT",
    accession_number="ACC1",
)


def rbox(x0=10, y0=20, x1=40, y1=60, k=3) -> ReportBox:
    return ReportBox(Box(x0, y0, x1, y1), k, f"1.2.3.{k}", "1.2.3")


def make_report() -> tuple[DraftReport, str, str]:
    r = DraftReport(study=STUDY, provenance=Provenance("xmedgpt-demo", "0.1", "ab" * 32))
    a = r.add_finding("Nodule in the right upper lobe.", [rbox()], origin=Origin.AI, finding_type="nodule",
                      reliability=FindingReliability(0.8, Tier.GREEN), source_step=2)
    b = r.add_finding("Small left pleural effusion.", [rbox(5, 5, 9, 9, k=4)], origin=Origin.AI,
                      reliability=FindingReliability(0.3, "red"))
    return r, a.id, b.id


def test_ai_findings_start_proposed_reader_findings_accepted():
    r, a, _ = make_report()
    assert r.finding(a).status is FindingStatus.PROPOSED
    own = r.add_finding("Degenerative change in the thoracic spine.")
    assert own.status is FindingStatus.ACCEPTED and own.origin is Origin.READER
    assert len(r.undecided()) == 2


def test_sign_needs_every_ai_finding_decided_and_a_name():
    r, a, b = make_report()
    r.accept(a)
    with pytest.raises(ReportError, match="1 AI finding still"):
        r.sign("Smith^Jane")
    r.reject(b)
    with pytest.raises(ReportError, match="name"):
        r.sign("  ")
    sig = r.sign("Smith^Jane", datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc))
    assert sig.signed_at == "2026-03-02T09:30:00+00:00" and r.signed
    with pytest.raises(ReportError, match="signed"):
        r.set_impression("changed")
    assert not r.can_undo


def test_editing_an_ai_finding_marks_it_edited_and_keeps_ai_text():
    r, a, _ = make_report()
    r.edit_text(a, "Nodule in the right upper lobe, 8 mm.")
    f = r.finding(a)
    assert f.status is FindingStatus.EDITED and f.ai_text == "Nodule in the right upper lobe."
    uid = r.finding(a).boxes[0].tracking_uid
    r.move_box(a, 0, Box(12, 22, 44, 66))
    assert r.finding(a).boxes[0].box == Box(12, 22, 44, 66)
    assert r.finding(a).boxes[0].tracking_uid == uid and uid.startswith("2.25.")
    with pytest.raises(ReportError):
        r.move_box(a, 0, Box(5, 5, 5, 9))
    with pytest.raises(ReportError):
        r.delete_finding(a)
    r.reject(a)
    r.accept(a)  # changing one's mind keeps the record that the AI text was changed
    assert r.finding(a).status is FindingStatus.EDITED and r.finding(a).included


def test_undo_redo_walks_back_and_forth_and_new_edit_clears_redo():
    r, a, b = make_report()
    r.accept(a)
    r.edit_text(b, "Moderate left pleural effusion.")
    r.set_impression("Effusion.")
    r.undo()
    assert r.impression == ""
    r.undo()
    assert r.finding(b).text == "Small left pleural effusion." and r.finding(b).status is FindingStatus.PROPOSED
    r.redo()
    assert r.finding(b).text == "Moderate left pleural effusion."
    assert r.can_redo
    r.reject(a)
    assert not r.can_redo
    # undo all the way removes even the added findings, redo brings them back in order
    while r.can_undo:
        r.undo()
    assert r.findings == []
    while r.can_redo:
        r.redo()
    assert [f.id for f in r.findings] == [a, b]


def test_undo_delete_puts_finding_back_in_place():
    r, a, b = make_report()
    own = r.add_finding("Reader note.")
    r.delete_finding(own.id)
    assert own.id not in [f.id for f in r.findings]
    r.undo()
    assert [f.id for f in r.findings] == [a, b, own.id]


def test_listeners_see_every_edit_with_increasing_revisions():
    r, a, _ = make_report()
    seen = []
    r.subscribe(lambda rep, e: seen.append((e.action, e.revision, rep.can_undo, rep.can_redo)))
    r.accept(a)
    r.undo()
    r.redo()
    assert [s[0] for s in seen] == ["accept", "undo accept", "redo accept"]
    # listeners see the undo/redo stacks already updated (a UI enables its buttons from them)
    assert [s[3] for s in seen] == [False, True, False]
    revs = [s[1] for s in seen]
    assert revs == sorted(revs) and len(set(revs)) == 3


def test_dict_round_trip_and_edit_round_trip():
    r, a, _ = make_report()
    r.accept(a)
    r.set_impression("Nodule.")
    back = DraftReport.from_dict(r.to_dict())
    assert back == r
    edits = []
    r.subscribe(lambda rep, e: edits.append(e))
    r.move_box(a, 0, Box(1, 2, 3, 4))
    assert edit_from_dict(edit_to_dict(edits[0])) == edits[0]


def test_templates_load_and_match_modality():
    templates = load_templates()
    assert {"default", "ct", "mr", "xr"} <= set(templates)
    assert template_for("CT").title == "CT Report"
    assert template_for("DX").name == "xr"
    assert template_for("OT").name == "default"


@dataclass
class AssistantBox:  # the attributes app.assistant.ask.Finding has
    phrase: str
    frame: int
    box_px: Box
    step: int | None


def test_draft_from_answer_merges_phrases_and_names_frames():
    steps = [
        ReasoningStep(1, "Structure identification", "Chest CT, lungs visible."),
        ReasoningStep(2, "Region localization",
                      "There is a <ref>nodule</ref><box>[[100,200,300,400]]</box> in the right lung. Heart normal.",
                      [GroundedPhrase("nodule", (Box(100, 200, 300, 400),))]),
        ReasoningStep(3, "Detailed description", "The nodule is round."),
        ReasoningStep(5, "Report synthesis", "Solitary pulmonary <ref>nodule</ref>; follow-up advised."),
    ]
    found = [AssistantBox("nodule", 7, Box(51.2, 51.2, 153.6, 102.4), 2),
             AssistantBox("Nodule ", 8, Box(50, 50, 150, 100), 3),
             AssistantBox("empty", 7, Box(5, 5, 5, 9), 2)]
    ref = lambda k: FrameRef(k, f"1.2.3.{k}", "1.2.3")  # noqa: E731
    rel = {"nodule": FindingReliability(0.55, Tier.AMBER)}
    r = draft_from_answer(STUDY, steps, found, ref, Provenance("m"), rel)
    assert len(r.findings) == 1
    f = r.findings[0]
    assert f.text == "There is a nodule in the right lung." and f.ai_text == f.text
    assert f.finding_type == "nodule" and f.source_step == 2 and f.reliability.tier is Tier.AMBER
    assert [(b.box, b.slice_index, b.sop_instance_uid) for b in f.boxes] == [
        (Box(51.2, 51.2, 153.6, 102.4), 7, "1.2.3.7"), (Box(50, 50, 150, 100), 8, "1.2.3.8")]
    assert f.origin is Origin.AI and f.status is FindingStatus.PROPOSED
    assert r.impression == "Solitary pulmonary nodule; follow-up advised."
    assert r.template == "ct"


def test_text_export_keeps_only_kept_findings_and_marks_draft():
    r, a, b = make_report()
    r.accept(a)
    r.reject(b)
    r.add_finding("Reader finding about the spine.")
    r.set_impression("Right upper lobe nodule.")
    text = render_text(r)
    assert text.startswith("CT REPORT\n")
    assert "Patient:    John Doe" in text and "Study date: 2026-03-01" in text
    assert "1. Nodule in the right upper lobe." in text
    assert "2. Reader finding about the spine." in text
    assert "effusion" not in text
    assert "DRAFT - NOT SIGNED." in text and "xmedgpt-demo 0.1, weights abababababab" in text
    r.sign("Smith^Jane", datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc))
    signed = render_text(r, include_reliability=True, width=40)
    flat = " ".join(signed.split())
    assert "Signed by Jane Smith on 2026-03-02T09:30:00+00:00" in flat
    assert "[AI reliability: green, 0.80]" in flat
    assert max(len(line) for line in signed.splitlines()) <= 40


def test_text_export_with_nothing_kept_uses_template_wording():
    r, a, b = make_report()
    r.reject(a)
    r.reject(b)
    assert "No acute abnormality identified on the reviewed CT images." in render_text(r)


def test_impression_sentences_take_the_tier_of_the_findings_they_name():
    from app.report.draft import sentence_reliability

    r = DraftReport(study=StudyContext("1.2.3", modality="CT"), provenance=Provenance("m", "1"))
    r.add_finding("Spiculated mass right lower lobe.", [], origin=Origin.AI, finding_type="mass",
                  reliability=FindingReliability(0.2, Tier.RED))
    r.add_finding("Small nodule right middle lobe.", [], origin=Origin.AI, finding_type="nodule",
                  reliability=FindingReliability(0.9, Tier.GREEN))
    text = "Right lower lobe mass, suspicious. Two small nodules. No effusion. Mass and nodule both seen."
    spans = sentence_reliability(text, r.findings)
    got = [(text[a:b], tier) for a, b, tier in spans]
    assert got == [
        ("Right lower lobe mass, suspicious.", Tier.RED),
        ("Two small nodules.", Tier.GREEN),
        ("Mass and nodule both seen.", Tier.RED),  # the least reliable finding named wins
    ]
    # a rejected finding no longer colours the impression
    r.reject(r.findings[0].id)
    assert [tier for *_, tier in sentence_reliability(text, r.findings)] == [Tier.GREEN, Tier.GREEN]
