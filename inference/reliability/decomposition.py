"""Draft findings → attribute-level questions, each with the draft's own answer.

Structured findings (attributes already known, e.g. from a parser or a template
report) get questions from fixed templates. Free-text findings are decomposed
by the model with ``resources/prompts/reliability_decompose.txt``; lines it
returns that do not follow the format are dropped, never guessed at.
"""

from __future__ import annotations

import logging
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

PROMPT_FILE = PROMPTS_DIR / "reliability_decompose.txt"


@dataclass
class DraftFinding:
    """One finding of the draft. ``attributes`` maps attribute name → the draft's value."""

    id: str
    text: str
    label: str = ""  # short name, e.g. "nodule"; needed for templates
    attributes: Mapping[str, str] = field(default_factory=dict)


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


def template_questions(finding: DraftFinding) -> list[AttributeQuestion]:
    """Questions for a structured finding: one per known attribute, in :data:`ATTRIBUTES` order."""
    if not finding.label.strip():
        raise ValueError(f"finding {finding.id!r} has attributes but no label to ask about")
    label = finding.label.strip()
    unknown = set(finding.attributes) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; expected some of {ATTRIBUTES}")
    out = []
    for attr in ATTRIBUTES:
        value = finding.attributes.get(attr)
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
        max_new_tokens=48 * max_questions,
    )
    generation = engine.generate(request, cancel=cancel)
    questions = parse_decomposition(finding.id, generation.text, max_questions)
    if not questions:
        log.warning("decomposition of finding %s gave no usable question: %r", finding.id, generation.text[:200])
    return questions


def decompose(
    findings: Sequence[DraftFinding],
    engine: Engine | None = None,
    max_questions: int = 5,
    cancel: CancelFn | None = None,
) -> list[AttributeQuestion]:
    """All findings → at most ``max_questions`` questions, spread across findings.

    Structured findings use templates; free-text ones need ``engine``. Questions
    are picked round-robin by attribute priority (every finding's presence
    first, then every location, …) so that a cap never silences a finding.
    """
    per_finding: list[list[AttributeQuestion]] = []
    for finding in findings:
        if finding.attributes:
            per_finding.append(template_questions(finding))
        elif engine is not None:
            per_finding.append(model_questions(engine, finding, cancel=cancel))
        else:
            raise ValueError(f"finding {finding.id!r} is free text; an engine is needed to decompose it")
    ranked: list[tuple[int, int, AttributeQuestion]] = []
    for fi, qs in enumerate(per_finding):
        for q in qs:
            ranked.append((ATTRIBUTES.index(q.attribute), fi, q))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [q for _, _, q in ranked[:max_questions]]
