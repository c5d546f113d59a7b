"""Draft report: decisions, edits, undo/redo, sign-off rules."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from app.report.draft import (
    DraftReport,
    FindingReliability,
    FindingStatus,
    Origin,
    Provenance,
    ReportBox,
    ReportError,
    StudyContext,
)
from inference.reliability.scoring import Tier
from inference.types import Box

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


def test_a_finding_reliability_is_assessed_never_tier_none():
    assert FindingReliability(0.3, "red").tier is Tier.RED
    with pytest.raises(ValueError):
        FindingReliability(0.5, Tier.NONE)
    with pytest.raises(ValueError):
        FindingReliability(1.5, Tier.GREEN)


def test_indication_technique_comparison_are_sections_with_undo():
    """Issue #20.12: the sections a report has besides findings and impression."""
    r, a, b = make_report()
    assert (r.indication, r.technique, r.comparison) == ("", "", "")
    seen = []
    r.subscribe(lambda _r, e: seen.append((e.action, e.section)))
    r.set_section("indication", "Chronic cough.")
    r.set_section("technique", "CT chest, 1 mm, no contrast.")
    r.set_section("comparison", "CT of 2025-01-04.")
    assert r.section("technique") == "CT chest, 1 mm, no contrast." and seen[-1] == ("section", "comparison")
    r.undo()
    assert r.comparison == "" and r.technique == "CT chest, 1 mm, no contrast."
    r.redo()
    assert r.comparison == "CT of 2025-01-04."
    with pytest.raises(ReportError, match="no section"):
        r.set_section("history", "x")
    r.accept(a)
    r.reject(b)
    r.sign("Smith^Jane")
    with pytest.raises(ReportError, match="signed"):
        r.set_section("indication", "Changed after signing.")


def test_a_signed_report_takes_addenda_signed_on_their_own():
    """Issue #20.6: the signed report never changes; an addendum (text, reader, time) is appended and signed."""
    r, a, b = make_report()
    with pytest.raises(ReportError, match="signed report"):
        r.add_addendum("Too early.")
    r.accept(a)
    r.reject(b)
    r.set_impression("Right upper lobe nodule.")
    r.sign("Smith^Jane", datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc))
    before = (list(r.findings), r.impression, r.signature)
    pending = r.add_addendum("", "Doe^John", datetime(2026, 3, 3, 8, 0, tzinfo=timezone.utc))
    assert r.pending_addendum() == pending and pending.created_at == "2026-03-03T08:00:00+00:00"
    with pytest.raises(ReportError, match="already being written"):
        r.add_addendum("A second one.")
    with pytest.raises(ReportError, match="Write the addendum first"):
        r.sign_addendum(pending.id, "Doe^John")
    r.edit_addendum(pending.id, "Nodule is 9 mm on the bone window.")
    sig = r.sign_addendum(pending.id, "Doe^John", datetime(2026, 3, 3, 8, 5, tzinfo=timezone.utc))
    (done,) = r.signed_addenda()
    assert done.signature == sig and sig.reader_name == "Doe^John" and done.author == "Doe^John"
    assert done.text == "Nodule is 9 mm on the bone window." and r.pending_addendum() is None
    assert (list(r.findings), r.impression, r.signature) == before  # the signed report itself is untouched
    with pytest.raises(ReportError, match="signed"):
        r.edit_addendum(done.id, "Rewritten.")
    with pytest.raises(ReportError, match="signed"):
        r.set_impression("Changed.")
    assert r.undo() is None  # nothing after signing can be undone
    second = r.add_addendum("Called the referring physician.", "Smith^Jane")
    r.sign_addendum(second.id, "Smith^Jane")
    assert [x.text for x in r.signed_addenda()] == ["Nodule is 9 mm on the bone window.",
                                                    "Called the referring physician."]


def test_a_finding_keeps_the_window_it_was_drawn_in():
    from app.dicom.model import Window

    r, _, _ = make_report()
    liver = Window(150, 90, "liver")
    f = r.add_finding("Hypodense liver lesion.", [rbox(k=26)], window=liver)
    assert r.finding(f.id).window == liver
    r.edit_text(f.id, "Hypodense lesion, segment 6.")
    assert r.finding(f.id).window == liver  # edits keep it
