"""Prompts for XMedGPT, built from the template files in ``resources/prompts``.

Tasks:

* ``reasoning`` – the five-step grounded workflow (headings from
  :data:`inference.types.STEP_NAMES`, so the parser finds what the prompt asks for);
* ``locate`` – region grounding, InternVL's referring-expression prompt
  ("Please provide the bounding box coordinate of the region this sentence
  describes: <ref>X</ref>");
* ``vqa`` – a short answer to a question;
* ``report`` – Findings and Impression with grounded abnormalities.

Every system prompt carries the guardrail: a structure that is not in the image is
called absent and gets no box. Templates use ``$name`` placeholders
(:class:`string.Template`) so box notation with brackets needs no escaping.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from string import Template

from inference.errors import XMedError
from inference.resources import PROMPTS_DIR
from inference.types import STEP_NAMES

log = logging.getLogger(__name__)


_DEFAULT_QUESTION = "Analyse this image."

#: Questions the workstation sends for the five-step analysis: the default, the viewer's "Describe findings"
#: preset (app.assistant.session.PRESET_QUESTIONS, which the trust evaluation asks too) and what a reader types.
#: Trained under "Analyse this image." only, the demo model answered "Describe the findings." with broken steps
#: (every one of 40 answers), so the demo recipe's app-prompt set can cycle through all of them
#: (training.demo_model.write_app_prompt_sets, ``app_questions: all``).
REASONING_QUESTIONS: tuple[str, ...] = (
    "",
    "Describe the findings on this slice.",
    "Describe the findings.",
    "What do you see on this image?",
    "Is there a focal lesion?",
    "Analyse this slice step by step.",
)

_LOCATE = re.compile(
    r"^\s*(?:please\s+|can\s+you\s+|could\s+you\s+)?"
    r"(?:locate|find|show(?:\s+me)?|mark|outline|point\s+(?:to|at)|box|where\s+(?:is|are))\b[\s:]*"
    r"(?P<target>.+?)[\s?.!]*$",
    re.I | re.S,
)
_REPORT = re.compile(r"^\s*(?:please\s+)?(?:write|draft|give|make|generate)\b.*\breport\b", re.I | re.S)


class Task(str, Enum):
    REASONING = "reasoning"
    LOCATE = "locate"
    VQA = "vqa"
    REPORT = "report"


@dataclass(frozen=True)
class ImageContext:
    """What the DICOM header says about the image (filled in by the app)."""

    modality: str = ""
    body_part: str = ""
    description: str = ""

    def line(self) -> str:
        parts = [p.strip() for p in (self.modality, self.body_part) if p and p.strip()]
        text = " ".join(parts)
        if self.description.strip():
            text = f"{text}, series \"{self.description.strip()}\"" if text else f"Series \"{self.description.strip()}\""
        return f"Image: {text}." if text else ""


@dataclass(frozen=True)
class Prompt:
    task: Task
    system: str
    user: str
    target: str = ""  # the structure asked about in a locate prompt


class PromptFileMissing(XMedError):
    pass


@lru_cache(maxsize=32)
def _read(directory: Path, name: str) -> Template:
    path = directory / f"{name}.txt"
    try:
        return Template(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise PromptFileMissing(
            f"The prompt file {path.name} is missing from the installation; reinstall XMedGPT Workstation.",
            detail=str(exc),
        ) from exc


def load_template(name: str, directory: Path | None = None) -> Template:
    return _read(Path(directory or PROMPTS_DIR), name)


def grounding_question() -> str:
    """The plain grounding question (``resources/prompts/preread.txt``, asked without a system prompt): the phantom
    corpus's first grounding prompt, which the series pre-read's sweep asks of every slice and ``xmedgpt eval``
    scores grounding with, so the evaluation measures what the pre-read finds."""
    return load_template("preread").safe_substitute().strip()


def step_outline() -> str:
    """The five headings as the reasoning prompt lists them (and the parser reads them)."""
    return "\n".join(f"Step {i}: {name}" for i, name in enumerate(STEP_NAMES, 1))


def infer_task(question: str) -> Task:
    """The task a typed question asks for: "locate X" → locate, "write a report" → report,
    anything else (or nothing) → the five-step reasoning."""
    q = question.strip()
    if q and _LOCATE.match(q) and locate_target(q):
        return Task.LOCATE
    if q and _REPORT.match(q):
        return Task.REPORT
    return Task.REASONING


def locate_target(question: str) -> str:
    """"Locate the right kidney." → "the right kidney" ("" when it is not a locate question)."""
    m = _LOCATE.match(question.strip())
    if not m:
        return ""
    target = re.sub(r"^(?:the\s+)?(?:bounding\s+box\s+(?:of|for)\s+)", "", m.group("target").strip(), flags=re.I)
    target = re.sub(r"\s+(?:in|on)\s+(?:this|the)\s+(?:image|slice|scan|series)$", "", target, flags=re.I)
    return " ".join(target.split())


def build_prompt(
    task: Task | str,
    question: str = "",
    context: ImageContext | None = None,
    directory: Path | None = None,
) -> Prompt:
    """The system and user prompt for a task. Raises :class:`PromptFileMissing`."""
    task = Task(task)
    ctx = (context or ImageContext()).line()
    guardrail = load_template("guardrail", directory).safe_substitute()
    system = load_template("system", directory).safe_substitute(guardrail=guardrail)
    target = ""
    if task is Task.LOCATE:
        target = locate_target(question) or question.strip()
        if not target:
            raise ValueError("a locate prompt needs a structure to find")
        user = load_template("locate", directory).safe_substitute(context=ctx, target=target, guardrail=guardrail)
    else:
        q = question.strip() or (_DEFAULT_QUESTION if task is not Task.REPORT else "")
        user = load_template(task.value, directory).safe_substitute(
            context=ctx, question=q, steps=step_outline(), guardrail=guardrail
        )
    user = re.sub(r"\n{3,}", "\n\n", user.strip())
    return Prompt(task=task, system=system, user=user, target=target)
