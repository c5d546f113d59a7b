"""The assistant's answer as a draft report."""

from __future__ import annotations

from dataclasses import dataclass

from app.dicom.model import FrameRef
from app.report.draft import (
    FindingReliability,
    FindingStatus,
    Origin,
    Provenance,
    SentenceStatus,
)
from app.report.from_answer import draft_from_answer
from inference.reliability.scoring import Tier
from inference.types import Box, GroundedPhrase, ReasoningStep
from tests.app.report.test_draft import STUDY


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
    # Issue #13.7: the AI's impression is a proposal, sentence by sentence, not the reader's text
    assert r.impression == "" and r.impression_text() == ""
    (sentence,) = r.ai_sentences
    assert sentence.text == "Solitary pulmonary nodule; follow-up advised."
    assert sentence.status is SentenceStatus.PROPOSED and sentence.finding_ids == (f.id,)
    assert r.sentence_tier(sentence) is Tier.AMBER
    r.accept_sentence(sentence.id)  # the reader takes it explicitly
    assert r.impression_text() == "Solitary pulmonary nodule; follow-up advised."
    assert r.template == "ct"


def test_the_proposed_impression_holds_the_models_statements_not_its_step_headings_or_section_labels():
    """The real-window reading's answer (tests/ui/shell/reading_session.py, demo model): the synthesis
    repeated its own headings and a sentence; the reader was asked to accept "Step 5: Report synthesis"."""
    synthesis = ("No focal liver parenchyma is localized.\n\nStep 5: No focal liver parenchyma is localized.\n\n"
                 "Step 5: Report synthesis\nFINDINGS: A 52 mm hypodense lesion with lobulated margins in the right "
                 "hepatic lobe. The liver parenchyma is otherwise homogeneous.\nIMPRESSION: Two lesions on the right "
                 "side; the largest is a hyperdense lesion in the right hepatic lobe (53 mm).")
    steps = [ReasoningStep(3, "Detailed description", "Step 2: Region localization\nNo focal lesion."),
             ReasoningStep(5, "Report synthesis", synthesis)]
    def ref(k):
        return FrameRef(k, f"1.2.3.{k}", "1.2.3")

    r = draft_from_answer(STUDY, steps, [], ref, Provenance("m"))
    assert [s.text for s in r.ai_sentences] == [
        "No focal liver parenchyma is localized.",
        "A 52 mm hypodense lesion with lobulated margins in the right hepatic lobe.",
        "The liver parenchyma is otherwise homogeneous.",
        "Two lesions on the right side; the largest is a hyperdense lesion in the right hepatic lobe (53 mm).",
    ]
    # a sentence that only mentions a step, or a label inside it, is the model's text and stays
    r = draft_from_answer(STUDY, [ReasoningStep(5, "Report synthesis",
                                                "Reassess at step 2 of the protocol. Findings: none acute.")],
                          [], ref, Provenance("m"))
    assert [s.text for s in r.ai_sentences] == ["Reassess at step 2 of the protocol.", "none acute."]
