"""Issue #13.7: AI text is a proposal until the reader takes it (Qt-free).

The impression the AI drafts is held sentence by sentence, each accepted or rejected by the reader;
only accepted sentences and the reader's own text are signed. The impression follows the findings:
rejecting a finding rejects the sentences naming it (undoably), a negative sentence beside an
accepted finding goes back to undecided. A finding the reader edited carries no AI certainty.
"""

from __future__ import annotations

import pytest

from app.report.audit import describe_edit
from app.report.draft import (
    AiSentence,
    DraftReport,
    FindingReliability,
    FindingStatus,
    Origin,
    ReportError,
    SentenceStatus,
)
from app.report.export.text import render_text
from app.report.serialize import (
    edit_from_dict,
    edit_to_dict,
    report_from_dict,
    report_to_dict,
)
from inference.reliability.scoring import Tier
from inference.types import Box
from tests.app.report.test_draft import STUDY, rbox


def liver_report() -> tuple[DraftReport, str]:
    """The real-window reading: one AI finding (red, box on the wrong side) and its AI impression."""
    r = DraftReport(STUDY)
    f = r.add_finding("A 35 mm hypodense lesion in the right hepatic lobe.", [rbox()], origin=Origin.AI,
                      finding_type="lesion", reliability=FindingReliability(0.38, Tier.RED))
    r.ai_sentences = [
        AiSentence("s1", "FINDINGS: A 35 mm hypodense lesion in the right hepatic lobe.", finding_ids=(f.id,)),
        AiSentence("s2", "IMPRESSION: Hypodense lesion in the right hepatic lobe (31 mm).", finding_ids=(f.id,)),
    ]
    return r, f.id


def test_ai_sentences_are_proposals_and_only_accepted_ones_are_signed():
    r, fid = liver_report()
    r.set_impression("My own words.")
    assert r.impression_text() == "My own words."
    r.accept(fid)
    with pytest.raises(ReportError, match="2 AI impression sentences still to accept or reject"):
        r.sign("Smith^Jane")
    assert r.sentence_tier(r.ai_sentences[0]) is Tier.RED
    r.accept_sentence("s2")
    r.reject_sentence("s1")
    assert r.impression_text() == "IMPRESSION: Hypodense lesion in the right hepatic lobe (31 mm).\nMy own words."
    r.sign("Smith^Jane")
    assert "Hypodense lesion in the right hepatic lobe (31 mm)" in render_text(r)
    assert "FINDINGS: A 35 mm" not in render_text(r)


def test_rejecting_the_finding_rejects_the_sentences_naming_it_undoably():
    r, fid = liver_report()
    r.reject(fid)
    assert [s.status for s in r.ai_sentences] == [SentenceStatus.REJECTED] * 2
    assert r.sign_blockers("Smith^Jane") == [] and r.impression_text() == ""
    r.undo()
    assert r.finding(fid).status is FindingStatus.PROPOSED
    assert [s.status for s in r.ai_sentences] == [SentenceStatus.PROPOSED] * 2
    r.redo()
    assert [s.status for s in r.ai_sentences] == [SentenceStatus.REJECTED] * 2
    r.sign("Smith^Jane")
    text = render_text(r)
    assert "hypodense" not in text.lower() and "35 mm" not in text


def test_a_negative_ai_sentence_does_not_survive_beside_an_accepted_finding():
    r = DraftReport(STUDY)
    mass = r.add_finding("A mass in the right lower lobe.", [rbox()], origin=Origin.AI, finding_type="mass")
    r.ai_sentences = [AiSentence("n1", "No focal lesion."), AiSentence("n2", "No pleural effusion.")]
    r.accept_sentence("n1")
    r.accept_sentence("n2")
    assert r.contradicts(r.ai_sentence("n1")) == []  # nothing accepted yet
    r.accept(mass.id)
    # the general negative sentence is contradicted: back to undecided, marked, and it blocks signing
    assert r.ai_sentence("n1").status is SentenceStatus.PROPOSED
    assert [f.id for f in r.contradicts(r.ai_sentence("n1"))] == [mass.id]
    assert "1 AI impression sentence still to accept or reject (1 contradicting an accepted finding)" in \
        " ".join(r.sign_blockers("Smith^Jane"))
    # a negative sentence about another kind of finding stands
    assert r.ai_sentence("n2").status is SentenceStatus.ACCEPTED and r.contradicts(r.ai_sentence("n2")) == []
    assert "No focal lesion" not in r.impression_text()
    r.undo()  # the accept and the sentence going back are one step
    assert r.ai_sentence("n1").status is SentenceStatus.ACCEPTED
    r.redo()
    r.reject_sentence("n1")
    r.sign("Smith^Jane")
    assert r.impression_text() == "No pleural effusion."


def test_edits_are_described_for_the_audit_and_survive_the_journal():
    r, fid = liver_report()
    edits = []
    r.subscribe(lambda _r, e: edits.append(e))
    r.reject(fid)
    r.undo()
    r.accept_sentence("s1")
    d = describe_edit(r, edits[0])
    assert d["status"] == ["proposed", "rejected"]
    assert [x["status"] for x in d["ai_sentences"]] == [["proposed", "rejected"]] * 2
    assert describe_edit(r, edits[2])["ai_sentences"] == [
        {"id": "s1", "text": r.ai_sentence("s1").text, "status": ["proposed", "accepted"]}]
    for e in edits:
        assert edit_from_dict(edit_to_dict(e)) == e
    back = report_from_dict(report_to_dict(r))
    assert back.ai_sentences == r.ai_sentences and back.impression_text() == r.impression_text()


def test_an_old_draft_without_ai_sentences_opens_with_its_impression_as_reader_text():
    r, _ = liver_report()
    old = report_to_dict(r)
    del old["ai_sentences"]  # a draft saved before issue #13.7
    old["impression"] = "Hypodense lesion in the right hepatic lobe."
    back = report_from_dict(old)
    assert back.ai_sentences == [] and back.impression_text() == "Hypodense lesion in the right hepatic lobe."
    assert not any("impression sentence" in b for b in back.sign_blockers("Smith^Jane"))


def test_an_edited_ai_finding_carries_no_ai_certainty():
    r = DraftReport(STUDY)
    moved = r.add_finding("A mass.", [rbox()], origin=Origin.AI, finding_type="mass",
                          reliability=FindingReliability(0.3802, Tier.GREEN))
    kept = r.add_finding("A nodule.", [rbox(k=4)], origin=Origin.AI, finding_type="nodule",
                         reliability=FindingReliability(0.9, Tier.GREEN))
    r.move_box(moved.id, 0, Box(20, 30, 50, 70))
    r.accept(moved.id)
    r.accept(kept.id)
    assert r.finding(moved.id).edited_by_reader and r.finding(moved.id).ai_certainty is None
    assert r.finding(kept.id).ai_certainty == FindingReliability(0.9, Tier.GREEN)
    text = render_text(r, include_reliability=True)
    assert "A mass. [AI proposal edited by the reader, no AI certainty]" in text
    assert "0.38" not in text and "A nodule. [AI reliability: green, 0.90]" in text


def test_session_a_red_answer_marks_its_sentences_and_a_second_answer_adds_only_new_ones(tmp_path):
    from app.report.session import study_context
    from inference.reliability.scoring import Reliability
    from tests.app.report.test_session import ask_sample, load_sample, make_session

    result, series, volume = load_sample()
    session = make_session(tmp_path)
    study = study_context(result, series)
    report = session.on_answer(ask_sample(volume), volume, study)
    (sentence,) = report.ai_sentences
    assert sentence.caution == "" and not sentence.decided
    session.apply_reliability(Reliability(tier=Tier.RED))
    assert report.ai_sentences[0].caution.startswith("Red answer reliability")
    assert not report.can_undo  # the AI's measurement, not a reader's edit: nothing to undo
    session.on_answer(ask_sample(volume), volume, study)  # the same answer again: nothing new
    assert [x.id for x in report.ai_sentences] == [sentence.id] and report.impression == ""
