"""Draft findings → attribute-level questions, each with the draft's own answer.

Structured findings (attributes already known, e.g. from a parser or a template
report) get questions from fixed templates. Free-text findings are decomposed
by the model with ``resources/prompts/reliability_decompose.txt``; lines it
returns that do not follow the format are dropped, never guessed at.

Every question the reader asked for is asked: when the model's decomposition gives
fewer than ``max_questions``, template questions fill up from each finding's
``fill`` (what the draft states or draws about an attribute, e.g. its box's side
and size), attributes not yet asked first, spread across findings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inference.errors import XMedError
from inference.resources import PROMPTS_DIR
from inference.types import CancelFn, ChatRequest, Engine

log = logging.getLogger(__name__)

#: Attributes in the order they are asked when the number of questions is capped.
ATTRIBUTES: tuple[str, ...] = ("presence", "location", "size", "shape", "density", "count")

_TEMPLATES: dict[str, str] = {
    "presence": "Is there {article} {label} in this image? Answer yes or no.",
    "location": "Where is the {label}? Give the side and the anatomical location.",
    "size": "What is the size of the {label}? Give the measurement with units.",
    "shape": "What are the shape and margins of the {label}?",
    "density": "What is the density or signal intensity of the {label}?",
    "count": "How many {plural} are there? Answer with a number.",
}

#: a location that is only a side (a box's side, when the text names no place) is asked as laterality
SIDE_TEMPLATE = "On which side of the patient is the {label}: right or left? Answer with one word."
_SIDES = frozenset({"right", "left", "bilateral"})

PROMPT_FILE = PROMPTS_DIR / "reliability_decompose.txt"
#: new tokens allowed per decomposition line ("size | What is the size of the nodule? | 12 mm" is about 20)
TOKENS_PER_LINE = 32


@dataclass
class DraftFinding:
    """One finding of the draft. ``attributes`` maps attribute name → the draft's value."""

    id: str
    text: str
    label: str = ""  # short name, e.g. "nodule"; needed for templates
    attributes: Mapping[str, str] = field(default_factory=dict)
    #: the draft's answers for template questions that fill up when the model's decomposition
    #: gives fewer questions than asked (attribute → draft answer)
    fill: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AttributeQuestion:
    """A question about one attribute of one finding, and what the draft says."""

    finding_id: str
    attribute: str
    question: str
    draft_answer: str


def _plural(label: str) -> str:
    if label.endswith(("s", "x", "sh", "ch")):
        return label + "es"
    if label.endswith("y") and not label.endswith(("ay", "ey", "oy", "uy")):
        return label[:-1] + "ies"
    return label + "s"


def template_questions(finding: DraftFinding, attributes: Mapping[str, str] | None = None) -> list[AttributeQuestion]:
    """Questions for a structured finding: one per known attribute, in :data:`ATTRIBUTES` order
    (``attributes``: these instead of the finding's own, e.g. its ``fill``)."""
    attributes = finding.attributes if attributes is None else attributes
    if not finding.label.strip():
        raise ValueError(f"finding {finding.id!r} has attributes but no label to ask about")
    label = finding.label.strip()
    unknown = set(attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {ATTRIBUTES}")
    out = []
    for attr in ATTRIBUTES:
        value = attributes.get(attr)
        if value is None or not str(value).strip():
            continue
        article = "an" if label[0].casefold() in "aeiou" else "a"
        question = _TEMPLATES[attr].format(label=label, plural=_plural(label), article=article)
        out.append(AttributeQuestion(finding.id, attr, question, str(value).strip()))
    return out


def load_prompt(path: Path = PROMPT_FILE) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise XMedError(f"The reliability prompt {path.name} is missing from the installation.") from exc


def parse_decomposition(finding_id: str, text: str, max_questions: int) -> list[AttributeQuestion]:
    """``attribute | question | answer`` lines → questions (first of each attribute kept)."""
    out: list[AttributeQuestion] = []
    seen: set[str] = set()
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().lstrip("-*• ").split("|")]
        if len(parts) != 3 or not all(parts):
            continue
        attr = parts[0].casefold()
        if attr not in ATTRIBUTES or attr in seen or not parts[1].endswith("?"):
            continue
        seen.add(attr)
        out.append(AttributeQuestion(finding_id, attr, parts[1], parts[2]))
        if len(out) >= max_questions:
            break
    return out


def model_questions(
    engine: Engine,
    finding: DraftFinding,
    max_questions: int = 6,
    prompt: str | None = None,
    cancel: CancelFn | None = None,
) -> list[AttributeQuestion]:
    """Ask the model to decompose a free-text finding (greedy, text only)."""
    template = prompt if prompt is not None else load_prompt()
    request = ChatRequest(
        prompt=template.format(finding=finding.text.strip(), max_questions=max_questions),
        image=None,
        max_new_tokens=TOKENS_PER_LINE * max_questions,
    )
    generation = engine.generate(request, cancel=cancel)
    questions = parse_decomposition(finding.id, generation.text, max_questions)
    if not questions:
        log.info("decomposition of finding %s gave no usable question (template questions stand in): %r",
                 finding.id, generation.text[:200])
    return questions


def decompose(
    findings: Sequence[DraftFinding],
    engine: Engine | None = None,
    max_questions: int = 5,
    cancel: CancelFn | None = None,
) -> list[AttributeQuestion]:
    """All findings → at most ``max_questions`` questions, spread across findings.

    Structured findings use templates; free-text ones need ``engine``, which is asked
    for ``ceil(max_questions / free-text findings)`` questions each. Questions
    are picked round-robin by attribute priority (every finding's presence
    first, then every location, …) so that a cap never silences a finding.
    When fewer than ``max_questions`` come out, template questions from the
    findings' ``fill`` make up the rest (same priority, attributes not yet asked).
    """
    per_finding: list[list[AttributeQuestion]] = []
    # each free-text finding is asked for its share of the questions (the cap takes no more from the
    # round-robin), so decomposing many findings costs about as much as decomposing one
    free = sum(1 for f in findings if not f.attributes)
    share = max(1, math.ceil(max_questions / max(1, free)))
    for finding in findings:
        if finding.attributes:
            per_finding.append(template_questions(finding))
        elif engine is not None:
            if stopped(cancel):
                per_finding.append([])
                continue
            per_finding.append(model_questions(engine, finding, share, cancel=cancel))
        elif finding.fill:
            per_finding.append([])
        else:
            raise ValueError(f"finding {finding.id!r} is free text; an engine is needed to decompose it")
    chosen = _rank(per_finding)[:max_questions]
    if len(chosen) < max_questions:
        extra: list[list[AttributeQuestion]] = []
        for finding, qs in zip(findings, per_finding):
            asked = {q.attribute for q in qs}
            todo = {a: v for a, v in finding.fill.items() if a not in asked and a in ATTRIBUTES and str(v).strip()}
            qs_fill = template_questions(finding, todo) if todo and finding.label.strip() else []
            extra.append([AttributeQuestion(q.finding_id, q.attribute,
                                            SIDE_TEMPLATE.format(label=finding.label.strip()), q.draft_answer)
                          if q.attribute == "location" and q.draft_answer.casefold() in _SIDES else q
                          for q in qs_fill])
        filled = _rank(extra)[: max_questions - len(chosen)]
        if filled:
            log.info("decomposition gave %d of %d questions; %d template questions fill up",
                     len(chosen), max_questions, len(filled))
        chosen = sorted([*chosen, *filled],
                        key=lambda q: (ATTRIBUTES.index(q.attribute), _finding_index(findings, q.finding_id)))
    return chosen


def stopped(cancel: CancelFn | None) -> bool:
    return cancel is not None and cancel()


def _rank(per_finding: Sequence[Sequence[AttributeQuestion]]) -> list[AttributeQuestion]:
    ranked: list[tuple[int, int, AttributeQuestion]] = []
    for fi, qs in enumerate(per_finding):
        for q in qs:
            ranked.append((ATTRIBUTES.index(q.attribute), fi, q))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [q for _, _, q in ranked]


def _finding_index(findings: Sequence[DraftFinding], finding_id: str) -> int:
    return next((i for i, f in enumerate(findings) if f.id == finding_id), len(findings))
