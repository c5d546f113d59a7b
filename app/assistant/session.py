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

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.assistant.ask import AssistantAnswer
from app.core.errors import XMedError
from app.core.settings import Settings
from app.dicom.model import FrameRef, Volume, Window
from app.models.registry import ModelRegistry
from inference.parsing import Grounding
from inference.phrases import phrase_key, sentence_with
from inference.reliability.decomposition import DraftFinding
from inference.reliability.scoring import Reliability, State, Tier, thresholds_for
from inference.resources import DEMO_MODEL_DIR
from inference.types import Engine, ReasoningStep

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
    return LocalEngine.from_folder(choice.folder, device=device, quantization=quantization, progress=progress,
                                   cancel=cancel)


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

def draft_findings(answer: AssistantAnswer) -> list[DraftFinding]:
    """What the reliability pass checks: each boxed phrase once (free text: its sentence,
    decomposed by the model), else the answer's conclusion as one free-text finding.

    The sentence is :func:`inference.phrases.sentence_with`'s, the same the report takes
    as the finding's text (:func:`app.report.from_answer.draft_from_answer`)."""
    out: list[DraftFinding] = []
    seen: set[str] = set()
    for f in answer.findings:
        key = phrase_key(f.phrase)
        if not key or key in seen:
            continue
        seen.add(key)
        texts = [s.text for s in answer.steps if s.index == f.step] + [s.text for s in answer.steps]
        sentence = next((t for t in (sentence_with(t, f.phrase) for t in texts) if t), "")
        out.append(DraftFinding(id=key, text=sentence or f"There is {f.phrase}.", label=f.phrase))
    if out:
        return out
    conclusion = next((s.text for s in answer.steps if s.index == 5 and s.text.strip()), "") or answer.parsed.text
    if conclusion.strip():
        out.append(DraftFinding(id="answer", text=conclusion.strip()[:600]))
    return out


def presence_findings(findings: Sequence[DraftFinding]) -> list[DraftFinding]:
    """Fallback when the model gives no usable check question: ask whether each labelled finding is there."""
    return [DraftFinding(f.id, f.text, f.label, {"presence": "yes"}) for f in findings if f.label.strip()]


def tiers_by_phrase(reliability: Reliability) -> dict[str, tuple[float | None, Tier]]:
    """Phrase key → (worst reliability, tier) of the finding it was checked as."""
    return {fr.finding_id: (fr.reliability, fr.tier) for fr in reliability.findings}


def not_assessed(state: State, message: str) -> Reliability:
    """A reliability that says why there is none (cancelled answer, failed answer, no model)."""
    return Reliability(state=state, message=message)


def check_answer(
    engine: Engine,
    answer: AssistantAnswer,
    n_samples: int,
    max_questions: int,
    cancel: Callable[[], bool] | None = None,
    progress: Progress | None = None,
) -> Reliability:
    """The reliability pass for one answer (blocks: run it off the UI thread).

    A cancelled answer is not assessed. Free-text findings are decomposed by the
    model; when it gives no usable question, each boxed finding is asked about
    by its presence, so a finding is never left unchecked for lack of questions.
    """
    from inference.reliability.pipeline import ReliabilitySettings, assess

    if answer.finish_reason == "cancelled":
        return not_assessed(State.CANCELLED, "The answer was stopped before it finished; reliability was not assessed.")
    findings = draft_findings(answer)
    if not findings:
        return not_assessed(State.DONE, "Nothing to check: the answer states no finding.")
    rs = ReliabilitySettings(n_samples=n_samples, max_questions=max_questions)
    image = answer.image.rgb
    thresholds = thresholds_for(getattr(engine, "folder", None))
    result = assess(engine, findings, image, thresholds=thresholds, settings=rs, cancel=cancel, progress=progress)
    if result.state is State.DONE and not result.questions:
        fallback = presence_findings(findings)
        if fallback:
            log.info("no check question from the model; asking about presence of %d findings", len(fallback))
            result = assess(engine, fallback, image, thresholds=thresholds, settings=rs, cancel=cancel,
                            progress=progress)
    return apply_guardrail(result, answer)


def apply_guardrail(reliability: Reliability, answer: AssistantAnswer) -> Reliability:
    """A box drawn for a structure the series cannot show is never green, however
    consistently the model repeats it: such findings, and the whole answer, are at most amber,
    and the reason is said."""
    flagged = {phrase_key(f.phrase) for f in answer.findings if f.warning}
    if not flagged:
        return reliability
    findings = [dataclasses.replace(fr, tier=Tier.AMBER) if fr.finding_id in flagged and fr.tier is Tier.GREEN
                else fr for fr in reliability.findings]
    out = dataclasses.replace(reliability, findings=findings)
    if out.tier is Tier.GREEN:
        warning = next(f.warning for f in answer.findings if f.warning)
        out.tier = Tier.AMBER
        out.message = f"{warning} The model repeats its answer consistently, but check its box against the image."
    return out
