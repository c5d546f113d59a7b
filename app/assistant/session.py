"""What the viewer's assistant panel does, without Qt: choose and open the model,
describe it, turn an answer into link segments, check questions and report tiers.

Used by ``ui/assistant/controller.py`` (which runs these off the UI thread) and
testable without a window.

Model choice, first that applies:

1. ``--model DIR`` on the command line;
2. a remote OpenAI-compatible server (Settings ``remote_url``);
3. the model folder chosen in Settings (``model_dir``);
4. the default model registered with ``xmedgpt models default`` (or in Settings);
5. the embedded demo model in ``resources/models/demo``, when it is installed;
6. none: the panel says so and Ask is disabled.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.assistant.ask import AssistantAnswer, Finding
from app.assistant.evidence import (
    FramePixels,
    box_side,
    box_size_mm,
    evidence_checks,
    stated_density,
    stated_size_mm,
)
from app.assistant.guardrail import Anatomy
from app.core.errors import XMedError
from app.core.settings import Settings
from app.dicom.model import FrameRef, Volume, Window
from app.models.registry import ModelRegistry
from inference.parsing import Grounding
from inference.phrases import phrase_key, sentence_with, strip_grounding
from inference.prompts import Task, build_prompt
from inference.reliability.boxes import BoxResult, GroundingProbe
from inference.reliability.checks import GUARDRAIL, NEGATIVE, STEPS, Check, not_checked
from inference.reliability.decomposition import DraftFinding
from inference.reliability.scoring import Reliability, State, Tier, thresholds_for
from inference.reliability.tiers import finalize
from inference.resources import DEMO_MODEL_DIR
from inference.types import ChatRequest, Engine, ReasoningStep

log = logging.getLogger(__name__)

QUANTIZATION_CHOICES: dict[str, str] = {
    "auto": "Automatic (4-bit on a GPU, full precision on the CPU)",
    "nf4": "4-bit (NF4)",
    "int8": "8-bit",
    "bf16": "bf16 (no quantization, GPU)",
    "none": "Full precision",
}

NO_MODEL_TEXT = "No model configured — open Settings to choose a model folder"

#: (button label, question) offered under the query box.
PRESET_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("Describe findings", "Describe the findings on this slice."),
    ("Locate nodule", "Locate the nodule."),
    ("Locate mass", "Locate the mass."),
    ("Draft report", "Write a report for this image."),
)


class NoModelError(XMedError):
    """Ask was pressed while no model is configured."""


@dataclass(frozen=True)
class ModelChoice:
    """Which model the assistant will use and why."""

    kind: str  # "local", "remote" or "none"
    folder: Path | None = None
    url: str = ""
    remote_model: str = ""
    source: str = ""  # "--model", "Settings", "registered default 'x'", "embedded demo model"
    reason: str = ""  # for "none": what to do

    @property
    def available(self) -> bool:
        return self.kind != "none"

    def label(self) -> str:
        """Short words for the indicator before the model is loaded."""
        if self.kind == "none":
            return NO_MODEL_TEXT
        if self.kind == "remote":
            return f"{self.remote_model or 'model'} on {self.url}"
        if self.source == "embedded demo model":
            return "demo model"
        return self.folder.name if self.folder is not None else "model"


def choose_model(
    explicit: Path | None,
    settings: Settings,
    registry: ModelRegistry | None = None,
    demo_dir: Path = DEMO_MODEL_DIR,
) -> ModelChoice:
    """The model to use; see the module docstring for the order."""
    if explicit is not None:
        return ModelChoice("local", Path(explicit).expanduser(), source="--model")
    if settings.remote_url.strip():
        return ModelChoice("remote", url=settings.remote_url.strip(), remote_model=settings.remote_model.strip(),
                           source="Settings (remote server)")
    folder = settings.model_path()
    if folder is not None:
        return ModelChoice("local", folder, source="Settings")
    if registry is not None:
        info = registry.default_model()
        if info is not None and not info.needs_conversion:
            return ModelChoice("local", Path(info.path), source=f"registered default '{info.name}'")
    if (Path(demo_dir) / "config.json").is_file():
        return ModelChoice("local", Path(demo_dir), source="embedded demo model")
    return ModelChoice("none", reason=NO_MODEL_TEXT)


def device_for(settings: Settings) -> str:
    return "auto" if settings.use_gpu else "cpu"


def quantization_for(settings: Settings) -> str:
    value = settings.quantization
    return value if value in QUANTIZATION_CHOICES else "auto"


def set_quantization(settings: Settings, value: str) -> None:
    if value not in QUANTIZATION_CHOICES:
        raise ValueError(f"unknown quantization {value!r}")
    settings.quantization = value


Progress = Callable[[str, float], None]


def open_engine(choice: ModelChoice, device: str = "auto", quantization: str = "auto",
                progress: Progress | None = None, cancel: Callable[[], bool] | None = None) -> Engine:
    """Load the chosen model (blocks: call it off the UI thread)."""
    if choice.kind == "none":
        raise NoModelError(choice.reason or NO_MODEL_TEXT)
    if choice.kind == "remote":
        from inference.engine.remote import RemoteEngine

        if progress:
            progress(f"connecting to {choice.url}", 0.5)
        return RemoteEngine(choice.url, model=choice.remote_model or None)
    from inference.engine.local import (
        LocalEngine,  # torch loads only when a model is used
    )

    assert choice.folder is not None
    engine = LocalEngine.from_folder(choice.folder, device=device, quantization=quantization, progress=progress,
                                     cancel=cancel)
    read_system_prompt(engine)
    return engine


def read_system_prompt(engine: Engine) -> None:
    """Have a local engine read the assistant's system prompt now (every question begins with it: ~350
    tokens), so the reader's first question does not wait for it. Never fails a load."""
    try:
        system = build_prompt(Task.REASONING).system
        engine.read_ahead(ChatRequest(prompt="", image=np.zeros((28, 28, 3), np.uint8), system=system,
                                      max_new_tokens=1))
    except Exception:  # noqa: BLE001 - an optimisation; the first question reads it otherwise
        log.warning("the system prompt was not read ahead", exc_info=True)


def engine_label(engine: Engine, choice: ModelChoice) -> str:
    """The indicator text: the engine's own description, "demo model" for the embedded one."""
    text = engine.describe()
    if choice.source == "embedded demo model":
        rest = text.split(" · ", 1)[1] if " · " in text else ""
        return "demo model" + (f" · {rest}" if rest else "")
    return text


# ---------------------------------------------------------------------- the question's context

@dataclass
class AskContext:
    """Exactly what was asked about: the volume and slice, as the reader saw it."""

    volume: Volume
    frame: int
    window: Window | None
    question: str
    invert: bool = False
    study_description: str = ""

    @property
    def series_uid(self) -> str:
        return self.volume.series.uid

    def frame_ref(self, k: int | None = None) -> FrameRef:
        return frame_ref(self.volume, self.frame if k is None else k)


def frame_ref(volume: Volume, k: int) -> FrameRef:
    """The instance (and frame within it) that slice ``k`` of ``volume`` comes from."""
    series = volume.series
    rest = k
    for inst in series.instances:
        n = max(1, inst.number_of_frames)
        if rest < n:
            return FrameRef(k, inst.sop_instance_uid, series.uid, rest + 1)
        rest -= n
    return FrameRef(k, "", series.uid, 1)


@dataclass
class AnswerResult:
    """``answer_ready``'s payload: the answer and the context it refers to."""

    answer: AssistantAnswer
    context: AskContext

    @property
    def series_uid(self) -> str:
        return self.context.series_uid

    @property
    def frame(self) -> int:
        return self.answer.frame


@dataclass
class ReliabilityResult:
    """``reliability_ready``'s payload: the reliability of one answer, with per-phrase tiers."""

    answer: AssistantAnswer
    context: AskContext
    reliability: Reliability
    by_phrase: dict[str, tuple[float | None, Tier]] = field(default_factory=dict)  # phrase key → (score, tier)


# ---------------------------------------------------------------------- step text with links

@dataclass(frozen=True)
class Segment:
    text: str
    grounding: int | None = None  # index into ParsedAnswer.groundings when this is a linked phrase


def step_segments(step: ReasoningStep, groundings: Sequence[Grounding]) -> list[Segment]:
    """The step's text cut into plain text and grounded phrases (for clickable links)."""
    return text_segments(step.text, groundings, step.index)


def text_segments(text: str, groundings: Sequence[Grounding], step: int | None) -> list[Segment]:
    """``text`` (a step's, or the preamble's when ``step`` is None) cut into plain text and
    the grounded phrases that lie in it."""
    spans = sorted(
        ((g.start, g.end, i) for i, g in enumerate(groundings) if g.step == step and g.end > g.start),
        key=lambda t: t[0],
    )
    out: list[Segment] = []
    pos = 0
    for start, end, i in spans:
        if start < pos or end > len(text):
            continue
        if start > pos:
            out.append(Segment(text[pos:start]))
        out.append(Segment(text[start:end], i))
        pos = end
    if pos < len(text):
        out.append(Segment(text[pos:]))
    return out


# ---------------------------------------------------------------------- reliability inputs and outputs

#: "no focal lesion", "without evidence of a mass", "normal", "unremarkable": a negative answer; a negation
#: runs on over nouns joined to it ("no pulmonary nodule or mass", "no nodule, mass or effusion")
_NEG_QUALS = (r"(?:(?:definite|discrete|obvious|suspicious|significant|acute|focal|visible|measurable|pulmonary|lung|"
              r"liver|hepatic|renal|solid|cystic|space-occupying|pleural)\s+)*")
_NEG_NOUN = (r"(?:lesions?|mass(?:es)?|nodules?|tumou?rs?|abnormalit(?:y|ies)|findings?|metastas[ie]s|cysts?|"
             r"opacit(?:y|ies)|consolidations?|effusions?)")
_NEGATION = re.compile(
    r"\b(?:no|without|negative\s+for|free\s+of|absence\s+of)\s+"
    r"(?:(?:evidence|signs?|suspicion)\s+of\s+)?(?:(?:an?|any)\s+)?"
    rf"(?P<quals>{_NEG_QUALS})(?P<noun>{_NEG_NOUN})"
    rf"(?:(?:\s*,\s*|\s+(?:or|nor|and)\s+)(?:(?:no|any)\s+)?{_NEG_QUALS}{_NEG_NOUN})*\b"
    r"|\b(?P<normal>normal(?:\s+(?:study|scan|image|appearance|findings))?|unremarkable|within\s+normal\s+limits|"
    r"nothing\s+abnormal)\b",
    re.IGNORECASE,
)
#: a lesion word that, outside a negation, makes an answer without boxes a positive one
_LESION = re.compile(r"\b(?:lesions?|mass(?:es)?|nodules?|tumou?rs?|metastas[ie]s|cysts?|opacit(?:y|ies)|"
                     r"consolidations?|effusions?|fractures?|abscess(?:es)?|haemorrhage|hemorrhage)\b", re.IGNORECASE)
_SINGULAR = {"lesions": "lesion", "masses": "mass", "nodules": "nodule", "tumours": "tumour", "tumors": "tumor",
             "abnormalities": "abnormality", "findings": "finding", "metastases": "metastasis", "cysts": "cyst",
             "opacities": "opacity", "consolidations": "consolidation"}
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
#: a locate answer that says what was asked for is not there
_ABSENT = re.compile(r"\b(?:absent|not\s+(?:seen|visible|present|shown|identified|included|in\s+(?:this|the)\s+image)|"
                     r"no\s+(?:such|box))\b", re.IGNORECASE)
_LOCATION = re.compile(r"\b(?:right|left)(?:\s+(?:upper|middle|lower|hepatic|renal|lobe|lung|kidney|breast|"
                       r"adrenal|ovary|hemithorax|base|apex|zone|liver|hilum|hilar|lobar|of|the)){0,4}",
                       re.IGNORECASE)
_SHAPE = re.compile(r"\b(?:well[- ]defined|ill[- ]defined|well[- ]circumscribed|circumscribed|spiculated|"
                    r"lobulated|smooth|irregular|round(?:ed)?|oval|ovoid)\b", re.IGNORECASE)


def _label(phrase: str) -> str:
    return _ARTICLE.sub("", " ".join(phrase.split()))


def _stated_location(text: str, phrase: str) -> str:
    m = _LOCATION.search(text)
    if not m:
        return ""
    words = m.group().split()
    while words and words[-1].casefold() in ("of", "the"):
        words.pop()
    return " ".join(words)


def draft_findings(answer: AssistantAnswer, pixels: FramePixels | None = None) -> list[DraftFinding]:
    """What the reliability pass checks: each boxed phrase once (free text: its sentence,
    decomposed by the model; ``fill``: the draft's answers for template questions that fill
    up to the number of questions asked), else the answer's conclusion as one free-text finding.

    The sentence is :func:`inference.phrases.sentence_with`'s, the same the report takes
    as the finding's text (:func:`app.report.from_answer.draft_from_answer`)."""
    pixels = pixels if pixels is not None else answer.pixels
    out: list[DraftFinding] = []
    seen: set[str] = set()
    counts: dict[str, int] = {}
    for f in answer.findings:
        counts[phrase_key(f.phrase)] = counts.get(phrase_key(f.phrase), 0) + 1
    for f in answer.findings:
        key = phrase_key(f.phrase)
        if not key or key in seen:
            continue
        seen.add(key)
        sentence = finding_sentence(answer, f)
        label = _label(f.phrase) or f.phrase
        out.append(DraftFinding(id=key, text=sentence or f"There is {f.phrase}.", label=label,
                                fill=_fill(sentence or f.phrase, f, pixels, counts[key])))
    if out:
        return out
    conclusion = _conclusion(answer)
    if conclusion.strip():
        target = negative_target(answer)
        if target:
            out.append(DraftFinding(id="answer", text=conclusion.strip()[:600], label=target,
                                    attributes={"presence": "no", "count": "0"}))
        else:
            out.append(DraftFinding(id="answer", text=conclusion.strip()[:600]))
    return out


def finding_sentence(answer: AssistantAnswer, f: Finding) -> str:
    """The sentence that states the finding (its own step first)."""
    texts = [s.text for s in answer.steps if s.index == f.step] + [s.text for s in answer.steps]
    texts.append(answer.parsed.text)
    return next((t for t in (sentence_with(t, f.phrase) for t in texts) if t), "")


def _fill(sentence: str, f: Finding, pixels: FramePixels | None, count: int) -> dict[str, str]:
    """The draft's answer to each template question: what its sentence states, else what its box shows."""
    fill = {"presence": "yes", "count": str(count)}
    location = _stated_location(sentence, f.phrase) or (box_side(f.box_px, pixels) or "")
    if location:
        fill["location"] = location
    size = stated_size_mm(sentence)
    if size is not None:
        fill["size"] = " x ".join(f"{v:g}" for v in size) + " mm"
    else:
        measured = box_size_mm(f.box_px, pixels)
        if measured is not None:
            fill["size"] = f"{measured:.0f} mm"
    shape = _SHAPE.search(sentence)
    if shape:
        fill["shape"] = shape.group().lower()
    density = stated_density(sentence)
    if density:
        fill["density"] = density
    return fill


def _conclusion(answer: AssistantAnswer) -> str:
    return next((s.text for s in answer.steps if s.index == 5 and s.text.strip()), "") or answer.parsed.text


def negative_target(answer: AssistantAnswer) -> str | None:
    """What a negative answer says is not there ("focal lesion", "mass"; "lesion" for "normal"; the
    structure asked about when a locate answer calls it absent), or None when the answer has boxes,
    names no absence, or names a lesion outside a negation."""
    if answer.findings:
        return None
    text = strip_grounding(_conclusion(answer))
    target = _label(answer.prompt.target) if answer.task is Task.LOCATE else ""
    if target and _ABSENT.search(text):
        return target
    matches = list(_NEGATION.finditer(text))
    if not matches:
        return None
    if _LESION.search(_NEGATION.sub(" ", text)):
        return None  # a lesion named outside the negation: a positive answer without a box
    for m in matches:
        if m.group("noun"):
            noun = m.group("noun").lower()
            noun = _SINGULAR.get(noun, noun)
            if noun in ("abnormality", "finding"):
                return "lesion"
            focal = "focal " if "focal" in (m.group("quals") or "").lower() else ""
            return focal + noun
    return "lesion"


def presence_findings(findings: Sequence[DraftFinding]) -> list[DraftFinding]:
    """Fallback when the model gives no usable check question: ask whether each labelled finding is there."""
    return [DraftFinding(f.id, f.text, f.label, {"presence": "yes"}) for f in findings if f.label.strip()]


def tiers_by_phrase(reliability: Reliability) -> dict[str, tuple[float | None, Tier]]:
    """Phrase key → (worst reliability, tier) of the finding it was checked as; a finding that was not
    (fully) checked shows no score."""
    return {fr.finding_id: (None if fr.tier is Tier.NONE else fr.reliability, fr.tier) for fr in reliability.findings}


def not_assessed(state: State, message: str) -> Reliability:
    """A reliability that says why there is none (cancelled answer, failed answer, no model)."""
    return Reliability(state=state, message=message)


def _consistency():
    """The cross-step checker (:mod:`inference.reliability.consistency`), None when it is not installed."""
    try:
        return importlib.import_module("inference.reliability.consistency")
    except ImportError:
        return None


def step_checks(answer: AssistantAnswer) -> tuple[list[Check], list]:
    """The reasoning checked against itself: a five-step answer for missing steps, leaked headers and
    contradictions between steps; a free answer for contradictions in its text."""
    module = _consistency()
    if module is None:
        return [not_checked("steps", "the cross-step check is not installed", STEPS)], []
    if answer.task is Task.REASONING:
        result = module.check_steps(answer.steps, 5, answer.parsed.text)
        contradictions = list(result.contradictions)
        if result.ok:
            return [Check("steps", True, "all five steps are there and do not contradict each other", STEPS)], []
        return [Check("steps", False, "; ".join(result.messages()), STEPS,
                      {"missing_steps": tuple(result.missing_steps),
                       "leaked_headers": tuple(result.leaked_headers)})], contradictions
    contradictions = list(module.check_answer_text(answer.parsed.text))
    if not contradictions:
        return [Check("contradictions", True, "the answer does not contradict itself", STEPS)], []
    return [Check("contradictions", False, "; ".join(c.message for c in contradictions), STEPS)], contradictions


def region_checks(answer: AssistantAnswer, finding: Finding) -> list[Check]:
    """The finding's structure against the body region of the series (guardrail): a box for a structure
    the series cannot show fails; one that could not be checked is recorded as not checked."""
    if finding.warning:
        return [Check("region", False, finding.warning, GUARDRAIL)]
    guard = answer.guardrail
    try:
        mentions = Anatomy.load().mentions(finding.phrase)
    except XMedError as exc:
        return [not_checked("region", f"the anatomy vocabulary could not be read ({exc})", GUARDRAIL)]
    if not mentions:
        return []  # the phrase names no structure ("nodule"): nothing to hold against the region
    named = mentions[0].label
    regions = frozenset(guard.image_regions)
    checked = getattr(guard, "region_checked", None)
    checked = bool(regions) if checked is None else bool(checked) and bool(regions)
    source = {"header": " (from the header)", "image": " (judged from the image)"}.get(
        str(getattr(guard, "region_source", "") or ""), "")
    if not checked:
        note = re.sub(r"^could not check the body region:\s*", "",
                      str(getattr(guard, "region_note", "") or "").strip().rstrip("."), flags=re.IGNORECASE)
        why = f"the body region is not known ({note})" if note else "the body region of this series could not be told"
        return [not_checked("region", f"{why}, so {named} was not checked against it", GUARDRAIL)]
    bad = [m for m in mentions if not (m.structure.regions & regions)]
    if bad:
        return [Check("region", False, f"{bad[0].label} is not in {guard.image_label}{source}", GUARDRAIL)]
    return [Check("region", True, f"{named} can be in {guard.image_label}{source}", GUARDRAIL)]


def question_region_checks(answer: AssistantAnswer) -> list[Check]:
    """The question names a structure, but the series' body region is not known: what it asked about was
    not checked against the image (the guardrail's ``structures_unchecked``)."""
    guard = answer.guardrail
    if not getattr(guard, "structures_unchecked", False):
        return []
    named = guard.mentions[0].label if guard.mentions else "the structure asked about"
    note = re.sub(r"^could not check the body region:\s*", "",
                  str(getattr(guard, "region_note", "") or "").strip().rstrip("."), flags=re.IGNORECASE)
    why = f" ({note})" if note else ""
    return [not_checked("region", f"the question asks about {named}, but the body region of this series is not "
                        f"known{why}", GUARDRAIL)]


def finding_checks(answer: AssistantAnswer, pixels: FramePixels | None = None) -> dict[str, list[Check]]:
    """Phrase key → the checks of its first box: region (guardrail) and the evidence in the pixels."""
    pixels = pixels if pixels is not None else answer.pixels
    out: dict[str, list[Check]] = {}
    for f in answer.findings:
        key = phrase_key(f.phrase)
        if not key or key in out:
            continue
        sentence = finding_sentence(answer, f) or f.phrase
        out[key] = [*region_checks(answer, f), *evidence_checks(sentence, f.phrase, f.box_px, pixels)]
    return out


def negative_check(result: Reliability, answer: AssistantAnswer, pixels: FramePixels | None) -> Check | None:
    """A negative answer's re-readings in words: what they boxed, where (the patient's side) and how often."""
    box = next((b for b in result.boxes if b.probe.negative), None)
    if box is None:
        return None
    check = box.check()
    if check.passed is not False or box.consensus is None:
        return check
    where = "a region"
    px = answer.image.transform.norm_to_source(box.consensus)
    if px is not None:
        side = box_side(px, pixels)
        if side:
            where += f" on the patient's {side}"
        where += f" (pixels {px.x0:.0f}–{px.x1:.0f} × {px.y0:.0f}–{px.y1:.0f})"
    named = _sampled_phrase(box)
    said = f", called \"{named}\"" if named else ""
    detail = (f"the answer says no {box.probe.target}, but {box.consensus_count} of {box.n} re-readings boxed "
              f"{where}{said}")
    return Check("negative_grounding", False, detail, NEGATIVE, dict(check.inputs))


def _window_class(width: float, center: float) -> str | None:
    """Which of lung (wide, low level), bone (wide, high level) or soft tissue (narrow, level near water; the
    liver and mediastinal windows too) a CT window (W, L) shows; None for one between them."""
    if width >= 1000 and center <= -300:
        return "lung"
    if width >= 1000 and center >= 200:
        return "bone"
    if width <= 600 and -50 <= center <= 200:
        return "soft tissue"
    return None


def _window_label(window) -> str:
    """``the lung window (W 1500 / L -600)``: a window in the words of a check's detail."""
    return f"the {(window.name or 'header').lower()} window (W {window.width:.0f} / L {window.center:.0f})"


def _clears(window) -> set[str]:
    """What a CT window shows as a reader clears it: lung or soft tissue. A bone or brain-subdural window clears
    neither."""
    shown = _window_class(float(window.width), float(window.center))
    return {shown} if shown in ("lung", "soft tissue") else set()


def negative_window_check(answer: AssistantAnswer, pixels: FramePixels | None, target: str) -> Check | None:
    """A negative answer clears only what its window shows. "No lesion" read on a CT slice in the bone window
    says nothing about the lung or the liver (a consistently wrong model is then green on a missed lesion:
    seen in the trust evaluation): it is not checked there -- never green -- and the detail names the
    window(s) a reader clears this slice in (the pre-read's choice, from the slice's lung share). None off CT."""
    window = answer.window
    if pixels is None or pixels.values is None or not pixels.is_ct or window is None:
        return None
    from app.assistant.preread import choose_windows  # the pre-read imports this module

    needed, _ = choose_windows(pixels.values)
    shown = _clears(window)
    label = _window_label(window)
    missing = [w.name for w in needed if w.name not in shown]
    if not missing:
        return Check("negative_window", True, f"\"no {target}\" was read in {label}, which shows this slice's "
                     f"{' and '.join(w.name for w in needed)}", NEGATIVE)
    return not_checked("negative_window", f"\"no {target}\" was read in {label}, which does not clear this "
                       f"slice's {' and '.join(missing)}: read it in the {' and the '.join(missing)} window",
                       NEGATIVE)


#: a window the reasoning names ("Axial CT slice of the chest in lung window")
_STATED_WINDOW = re.compile(r"\b(lung|bone|soft[- ]tissue|liver|mediastinal|abdominal|brain)\s+window\b", re.I)


def stated_window_check(answer: AssistantAnswer) -> Check | None:
    """The reasoning names the window the slice is shown in ("… in bone window"), and the workstation knows
    which it is: a wrong one means the model misread the image it was shown (seen in a real-window reading:
    "in bone window" beside the soft tissue window), checked against the pixels like a wrong side. A liver or
    mediastinal window counts as soft tissue. None when the answer names no window or the slice's window is
    none of the three (or the image is not CT)."""
    window, pixels = answer.window, answer.pixels
    m = _STATED_WINDOW.search(strip_grounding(answer.parsed.text or answer.raw_text))
    if m is None or window is None or (pixels is not None and not pixels.is_ct):
        return None
    said = m.group(1).lower().replace("-", " ")
    said_class = said if said in ("lung", "bone") else "soft tissue"
    shown = _window_class(float(window.width), float(window.center))
    if shown is None:
        return None
    label = _window_label(window)
    inputs = {"stated": said, "width": float(window.width), "center": float(window.center)}
    if said_class == shown:
        return Check("stated_window", True, f"the reasoning's {said} window is {label}, as shown", inputs=inputs)
    return Check("stated_window", False, f"the reasoning says the image is in the {said} window; it was shown in "
                 f"{label}: the model misread the image", inputs=inputs)


def _sampled_phrase(box: BoxResult) -> str:
    from collections import Counter

    from inference.parsing import parse_answer

    names: Counter[str] = Counter()
    for text, b in zip(box.answers, box.boxes):
        if b is None or box.consensus is None or b.iou(box.consensus) < 0.5:
            continue
        g = next((g for g in parse_answer(text).groundings if g.phrase.boxes), None)
        if g is not None and g.phrase.phrase.strip():
            names[" ".join(g.phrase.phrase.split())] += 1
    return names.most_common(1)[0][0] if names else ""


def check_answer(
    engine: Engine,
    answer: AssistantAnswer,
    n_samples: int,
    max_questions: int,
    cancel: Callable[[], bool] | None = None,
    progress: Progress | None = None,
    pixels: FramePixels | None = None,
) -> Reliability:
    """The reliability pass for one answer (blocks: run it off the UI thread).

    A cancelled answer is not assessed. Every finding's attributes are asked about
    (the model's decomposition, filled up with template questions to ``max_questions``),
    its box is grounded again (``n_samples`` times, in the same batched call) and its
    sentence is checked against the pixels (:mod:`app.assistant.evidence`) and the body
    region; the reasoning is checked against itself; a negative answer is asked whether
    something is there and grounded again. The tier: :mod:`inference.reliability.tiers`.
    """
    from inference.reliability.pipeline import ReliabilitySettings, assess

    if answer.finish_reason == "cancelled":
        return not_assessed(State.CANCELLED, "The answer was stopped before it finished; reliability was not assessed.")
    pixels = pixels if pixels is not None else answer.pixels
    steps, contradictions = step_checks(answer)
    findings = draft_findings(answer, pixels)
    thresholds = thresholds_for(getattr(engine, "folder", None))
    stated = [c for c in (stated_window_check(answer),) if c is not None]
    if not findings:
        empty = not_assessed(State.DONE, "Nothing to check: the answer states no finding.")
        return finalize(empty, {}, [*steps, *question_region_checks(answer), *stated], contradictions)
    negative = negative_target(answer)
    probes: list[GroundingProbe] = []
    firsts: dict[str, Finding] = {}
    for f in answer.findings:
        firsts.setdefault(phrase_key(f.phrase), f)
    for fid, f in firsts.items():
        if fid:
            probes.append(GroundingProbe(fid, _label(f.phrase) or f.phrase, f.box_norm))
    if negative:
        probes.append(GroundingProbe("answer", negative, None))
    rs = ReliabilitySettings(n_samples=n_samples, max_questions=max_questions)
    result = assess(engine, findings, answer.image.rgb, thresholds=thresholds, settings=rs, cancel=cancel,
                    progress=progress, probes=probes, context=answer.context)
    answer_level = [*steps, *question_region_checks(answer), *stated]
    if not answer.findings and not negative:
        answer_level.append(not_checked("box", "the answer gives no box, so it could not be checked against the image"))
    unnamed = sum(1 for f in answer.findings if not phrase_key(f.phrase))
    if unnamed:
        answer_level.append(not_checked("box", f"{unnamed} box{'es' if unnamed > 1 else ''} without a phrase could "
                                        "not be asked about again"))
    neg = negative_check(result, answer, pixels) if negative else None
    if neg is not None:
        answer_level.append(neg)
    seen = negative_window_check(answer, pixels, negative) if negative else None
    if seen is not None:
        answer_level.append(seen)
    labels = {fid: f.phrase for fid, f in firsts.items()}
    return finalize(result, finding_checks(answer, pixels), answer_level, contradictions, labels)


def apply_guardrail(reliability: Reliability, answer: AssistantAnswer) -> Reliability:
    """A box drawn for a structure the series cannot show is never green, however consistently
    the model repeats it: such a finding is red, and so is the answer, with the reason said."""
    flagged = {phrase_key(f.phrase): f.warning for f in answer.findings if f.warning}
    if not flagged:
        return reliability
    checks = {fid: [Check("region", False, warning, GUARDRAIL)] for fid, warning in flagged.items()}
    return finalize(reliability, checks, reliability.checks, reliability.contradictions)


# ---------------------------------------------------------------------- JSON

def reliability_json(reliability: Reliability) -> dict:
    """``{tier, score, state, message, checks: [{name, passed, detail}]}`` of the answer (its own checks:
    steps, contradictions, a negative answer's re-readings)."""
    return {
        "tier": reliability.tier.value,
        "score": _round(reliability.worst),
        "state": reliability.state.value,
        "message": reliability.message,
        "checks": [c.to_json() for c in reliability.checks],
    }


def finding_reliability_json(reliability: Reliability) -> dict[str, dict]:
    """Phrase key → ``{tier, score, checks, questions}`` of each finding."""
    out = {}
    for fr in reliability.findings:
        out[fr.finding_id] = {
            "tier": fr.tier.value,
            "score": _round(fr.reliability),
            "checks": [c.to_json() for c in fr.checks],
            "questions": [{"attribute": q.question.attribute, "question": q.question.question,
                           "draft": q.question.draft_answer, "answers": list(q.answers),
                           "reliability": _round(q.reliability), "tier": q.tier.value, "state": q.state.value}
                          for q in fr.questions],
        }
    return out


def contradictions_json(reliability: Reliability) -> list[dict]:
    return [{"kind": getattr(c, "kind", ""), "steps": list(getattr(c, "steps", ())),
             "message": getattr(c, "message", str(c))} for c in reliability.contradictions]


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)
