"""The assistant's answer as a draft report: one AI finding per grounded phrase.

The adapter between the assistant (``app.assistant``) and the report: it only needs
the answer's reasoning steps and, per box, the attributes of :class:`PixelFinding`,
so the report does not depend on the assistant's classes. Phrases and sentences
are matched by the rules of :mod:`inference.phrases`, the ones the assistant uses
for its links and reliability checks.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Protocol

from app.dicom.model import FrameRef, Window
from app.report.draft import (
    AiSentence,
    DraftReport,
    Finding,
    FindingReliability,
    Origin,
    Provenance,
    ReportBox,
    StudyContext,
)
from app.report.templates import ReportTemplate, template_for
from inference.parsing import strip_step_headings
from inference.phrases import (
    names,
    phrase_key,
    sentence_with,
    split_sentences,
    strip_grounding,
)
from inference.types import STEP_NAMES, Box, ReasoningStep


class PixelFinding(Protocol):
    """What the assistant reports per box (``app.assistant.ask.Finding`` has these attributes)."""

    phrase: str
    frame: int  # slice index in the loaded series
    box_px: Box  # frame pixels, edge coordinates
    step: int | None


def draft_from_answer(
    study: StudyContext,
    steps: Iterable[ReasoningStep],
    findings: Iterable[PixelFinding],
    frame_ref: Callable[[int], FrameRef],
    provenance: Provenance,
    reliability: Mapping[str, FindingReliability] | None = None,
    window: Window | None = None,
    caution: str = "",
) -> DraftReport:
    """A draft from an answer: one AI finding per phrase (its boxes merged), the synthesis step as impression.

    A finding's text is the sentence of its reasoning step that mentions the phrase
    (tags removed; :func:`inference.phrases.sentence_with`, the sentence the assistant
    links and checks), else the phrase. ``frame_ref(k)`` names the image of slice k (:class:`FrameRef`);
    ``reliability`` maps a phrase (:func:`inference.phrases.phrase_key`) to its reliability;
    ``window``: the display window the model was shown (each finding keeps it for its key image).

    The synthesis step becomes the impression the AI proposes, sentence by sentence
    (:class:`AiSentence`, status proposed, with the findings each names by phrase or finding type);
    the reader's own impression starts empty. ``caution`` (the answer's guardrail warnings) is kept
    on each sentence.
    """
    steps = sorted(steps, key=lambda s: s.index)
    text_of_step = {s.index: s.text for s in steps}
    template = template_for(study.modality)
    report = DraftReport(study=study, provenance=provenance, template=template.name)
    by_phrase: dict[str, Finding] = {}
    for pf in findings:
        key = phrase_key(pf.phrase)
        if not key or pf.box_px.area <= 0:
            continue
        ref = frame_ref(pf.frame)
        box = ReportBox(pf.box_px, ref.slice_index, ref.sop_instance_uid, ref.series_uid, ref.frame_number)
        if key in by_phrase:
            old = by_phrase[key]
            by_phrase[key] = replace(old, boxes=(*old.boxes, box))
            continue
        candidates = [text_of_step.get(pf.step or 0, "")] + [s.text for s in steps]
        text = next((t for t in (sentence_with(c, pf.phrase) for c in candidates) if t), pf.phrase.strip())
        by_phrase[key] = Finding(
            id=uuid.uuid4().hex[:12],
            text=text,
            boxes=(box,),
            origin=Origin.AI,
            finding_type=_guess_type(key, template),
            reliability=(reliability or {}).get(key),
            source_step=pf.step,
            ai_text=text,
            window=window,
        )
    report.findings = list(by_phrase.values())
    synthesis = [s for s in steps if s.index == len(STEP_NAMES)]
    text = strip_grounding(synthesis[-1].text).strip() if synthesis else ""
    report.ai_sentences = ai_sentences(text, by_phrase, caution)
    return report


#: A report section's label at the start of a sentence of the synthesis ("FINDINGS: A 52 mm …").
_SECTION_LABEL = re.compile(r"^\s*(?:findings|impression|conclusions?|summary)\s*[:：]\s*", re.IGNORECASE)


def ai_sentences(text: str, by_phrase: Mapping[str, Finding], caution: str = "") -> list[AiSentence]:
    """The sentences of an AI impression (:func:`inference.phrases.split_sentences`), each naming the
    findings whose phrase (:func:`phrase_key`) or finding type (as a word) it contains.

    What the reader is asked to accept is the model's statements, not its scaffolding: step headings the
    model repeated inside the synthesis (:func:`inference.parsing.strip_step_headings`) and report section
    labels ("FINDINGS:", "IMPRESSION:") are left out, and a sentence said twice is proposed once. The
    reliability pass judges the raw steps, headings and repeats included."""
    out = []
    seen: set[str] = set()
    for sentence in split_sentences(strip_step_headings(text)):
        sentence = _SECTION_LABEL.sub("", sentence).strip()
        key = phrase_key(sentence)
        if not re.search(r"[A-Za-z0-9]", sentence) or key in seen:
            continue
        seen.add(key)
        ids = tuple(f.id for phrase, f in by_phrase.items()
                    if phrase in key or (f.finding_type and names(f.finding_type, key)))
        out.append(AiSentence(uuid.uuid4().hex[:12], sentence, finding_ids=ids, caution=caution))
    return out


def _guess_type(phrase: str, template: ReportTemplate) -> str:
    for t in sorted(template.finding_types, key=len, reverse=True):
        if t != "other" and t in phrase:
            return t
    return ""
