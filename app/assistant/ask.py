"""Ask XMedGPT about the frame in the viewport: render → prompt → stream → steps and boxes.

:class:`Assistant` is the whole round trip, Qt-free, so the viewer's assistant
panel, ``xmedgpt analyze`` and tests drive the same code:

1. the frame is rendered as the reader sees it (current window, invert) and turned
   into the model's RGB input (:func:`inference.imaging.prepare_model_image`);
2. the guardrail checks the question against the series header (or, when the header
   names no body part, against the frame itself: its HU and pixel spacing);
3. the prompt is built from ``resources/prompts`` for the task the question asks for;
4. the engine streams the answer; each piece is parsed incrementally and
   ``on_update`` gets the steps so far and the boxes that just became complete;
5. every box becomes a :class:`Finding` in three coordinate systems: the model's
   0–1000 scale, frame pixels and patient mm, stamped with the model that made it.

``cancel()`` returning True stops the answer; what arrived so far is kept and the
answer is marked ``cancelled``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from app.assistant.evidence import FramePixels
from app.assistant.guardrail import GuardrailResult, check_series
from app.core.errors import XMedError
from app.dicom.display import render
from app.dicom.model import Volume, Window
from inference.imaging import (
    ImageSpec,
    ModelImage,
    PatientBox,
    pixel_box_to_patient,
    prepare_model_image,
)
from inference.parsing import Grounding, ParsedAnswer, StreamParser
from inference.prompts import ImageContext, Prompt, Task, build_prompt, infer_task
from inference.types import Box, ChatRequest, Engine, ReasoningStep

log = logging.getLogger(__name__)

CancelFn = Callable[[], bool]


class AssistantError(XMedError):
    pass


@dataclass
class Finding:
    """One box the model drew, in the three coordinate systems, with its provenance."""

    phrase: str
    frame: int
    box_norm: Box  # model's 0–1000 scale of the image it was given
    box_px: Box  # frame pixels, edge coordinates (x = column)
    box_mm: PatientBox | None  # None when the series has no geometry
    step: int | None  # reasoning step it was given in (None outside the steps)
    model_id: str
    warning: str | None = None  # the guardrail's warning when the box is for a structure not in this series

    @property
    def label(self) -> str:
        return self.phrase or "unlabelled region"

    def to_json(self) -> dict:
        return {
            "phrase": self.phrase,
            "frame": self.frame,
            "step": self.step,
            "box_pixels": _box_json(self.box_px, 3),
            "box_normalized": _box_json(self.box_norm, 3),
            "box_patient_mm": self.box_mm.to_json() if self.box_mm is not None else None,
            "model_id": self.model_id,
            "warning": self.warning,
        }


def _box_json(box: Box, digits: int) -> dict:
    return {k: round(float(getattr(box, k)), digits) for k in ("x0", "y0", "x1", "y1")}


@dataclass
class Timing:
    started: str  # ISO 8601 UTC
    prepare_s: float = 0.0  # render, model image, prompt
    first_token_s: float | None = None  # from the request to the first piece of text
    total_s: float = 0.0
    pieces: int = 0

    def to_json(self) -> dict:
        return {
            "started": self.started,
            "prepare_s": round(self.prepare_s, 4),
            "first_token_s": None if self.first_token_s is None else round(self.first_token_s, 4),
            "total_s": round(self.total_s, 4),
            "pieces": self.pieces,
        }


@dataclass
class AssistantUpdate:
    """What changed while the answer streams: the answer so far and boxes that just completed."""

    parsed: ParsedAnswer
    new_findings: list[Finding]
    raw_text: str


@dataclass
class AssistantAnswer:
    question: str
    task: Task
    frame: int
    window: Window | None
    prompt: Prompt
    model_id: str
    engine: str  # the engine's own description, e.g. "XMedGPT-8B · 4-bit · RTX A4000"
    raw_text: str
    parsed: ParsedAnswer
    findings: list[Finding]
    guardrail: GuardrailResult
    image: ModelImage
    timing: Timing
    finish_reason: str = "stop"  # "stop", "cancelled"
    series_uid: str = ""
    pixels: FramePixels | None = None  # the frame's values and geometry, for the checks against the image
    context: ImageContext | None = None  # what the header said about the image (the prompt's context line)

    @property
    def steps(self) -> list[ReasoningStep]:
        return self.parsed.steps

    @property
    def warnings(self) -> list[str]:
        return list(self.guardrail.warnings)

    def to_json(self) -> dict:
        t = self.image.transform
        return {
            "model": {"id": self.model_id, "engine": self.engine},
            "question": self.question,
            "task": self.task.value,
            "series_uid": self.series_uid,
            "frame": self.frame,
            "window": None if self.window is None else {
                "width": self.window.width, "center": self.window.center, "name": self.window.name},
            "image": {
                "columns": t.source_size[0],
                "rows": t.source_size[1],
                "model_width": t.model_size[0],
                "model_height": t.model_size[1],
                "tiles": {"columns": self.image.plan.cols, "rows": self.image.plan.rows,
                          "thumbnail": self.image.plan.thumbnail},
            },
            "guardrail_warnings": self.warnings,
            "steps": [
                {"index": s.index, "title": s.title, "text": s.text,
                 "phrases": [p.phrase for p in s.phrases]}
                for s in self.steps
            ],
            "missing_steps": self.parsed.missing_steps,
            "answer": self.parsed.text,
            "raw_text": self.raw_text,  # exactly what the model wrote, tags included
            "findings": [f.to_json() for f in self.findings],
            "problems": self.parsed.problems,
            "finish_reason": self.finish_reason,
            "timing": self.timing.to_json(),
        }


@dataclass
class _Prepared:
    prompt: Prompt
    image: ModelImage
    guardrail: GuardrailResult
    request: ChatRequest
    context: ImageContext | None = None


class Assistant:
    """Runs questions about one frame through an :class:`~inference.types.Engine`."""

    def __init__(
        self,
        engine: Engine,
        image_spec: ImageSpec | None = None,
        max_new_tokens: int = 768,
    ) -> None:
        self.engine = engine
        self.image_spec = image_spec or _engine_image_spec(engine)
        self.max_new_tokens = max_new_tokens

    # ----------------------------------------------------------------- steps
    def prepare(
        self,
        volume: Volume,
        frame: int,
        window: Window | None,
        question: str = "",
        task: Task | str | None = None,
        invert: bool = False,
        study_description: str = "",
    ) -> _Prepared:
        if not 0 <= frame < len(volume):
            raise AssistantError(f"Slice {frame + 1} does not exist; this series has {len(volume)} slices.")
        if frame >= volume.loaded > 0 or frame in volume.frame_problems:
            raise AssistantError(f"Slice {frame + 1} is not available yet (still loading or unreadable).")
        task = Task(task) if task is not None else infer_task(question)
        series = volume.series
        spacing = volume.geometry.spacing if volume.geometry is not None else _instance_spacing(volume)
        shown = render(volume, frame, window, invert=invert)
        image = prepare_model_image(shown, self.image_spec, pixel_spacing=spacing)
        guard = check_series(question, series, study_description=study_description,
                             pixels=None if volume.is_color else volume.values(frame), spacing_mm=spacing)
        context = ImageContext(modality=series.modality, body_part=series.body_part, description=series.description)
        prompt = build_prompt(task, question, context)
        request = ChatRequest(prompt=prompt.user, image=image.rgb, system=prompt.system,
                              max_new_tokens=self.max_new_tokens)
        return _Prepared(prompt, image, guard, request, context)

    def ask(
        self,
        volume: Volume,
        frame: int,
        window: Window | None = None,
        question: str = "",
        *,
        task: Task | str | None = None,
        invert: bool = False,
        study_description: str = "",
        cancel: CancelFn | None = None,
        on_update: Callable[[AssistantUpdate], None] | None = None,
    ) -> AssistantAnswer:
        """Ask about frame ``frame`` as shown with ``window``; blocks until the answer is
        complete or cancelled (run it off the UI thread)."""
        timing = Timing(started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        t0 = time.perf_counter()
        prep = self.prepare(volume, frame, window, question, task, invert, study_description)
        timing.prepare_s = time.perf_counter() - t0
        model_id = self.engine.model_id
        parser = StreamParser(prompt=prep.prompt.user)
        collector = _FindingCollector(prep, frame, volume, model_id)
        stopped = False

        def should_stop() -> bool:
            nonlocal stopped
            if cancel is not None and cancel():
                stopped = True
            return stopped

        t1 = time.perf_counter()
        try:
            for piece in self.engine.stream(prep.request, cancel=should_stop):
                if not piece:
                    continue
                if timing.first_token_s is None:
                    timing.first_token_s = time.perf_counter() - t1
                timing.pieces += 1
                snapshot = parser.feed(piece)
                if on_update is not None:
                    new = collector.add(parser.new_groundings)
                    on_update(AssistantUpdate(snapshot, new, parser.text))
                else:
                    collector.add(parser.new_groundings)
                if should_stop():
                    break
        except XMedError:
            raise
        except Exception as exc:  # noqa: BLE001 - an engine failure must reach the reader as a message
            log.exception("engine failed")
            raise AssistantError(f"The model stopped with an error: {exc}", detail=repr(exc)) from exc
        parsed = parser.finish()
        new = collector.add(parser.new_groundings)
        if on_update is not None:
            on_update(AssistantUpdate(parsed, new, parser.text))
        timing.total_s = time.perf_counter() - t0
        answer = self._answer(volume, frame, window, question, prep, parser.text, parsed, collector, timing,
                              "cancelled" if stopped else "stop")
        log.info("%s answered in %.2f s: %d steps, %d findings%s", model_id, timing.total_s,
                 len(parsed.steps), len(answer.findings), " (cancelled)" if stopped else "")
        return answer


    def ask_batch(
        self,
        volume: Volume,
        frames: Sequence[tuple[int, Window | None]],
        question: str = "",
        *,
        task: Task | str | None = None,
        study_description: str = "",
        cancel: CancelFn | None = None,
    ) -> list[AssistantAnswer]:
        """The same question about several frames of one volume (each with its window) in one batched
        generation when the engine has ``generate_batch`` (the local engine: one forward pass per token for
        all of them; the remote engine: concurrent requests), else one after the other. Each answer is what
        :meth:`ask` gives for that frame, without the streaming (used by the series pre-read's stage 3)."""
        if not frames:
            return []
        t0 = time.perf_counter()
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        preps = [self.prepare(volume, k, w, question, task, False, study_description) for k, w in frames]
        t_prep = time.perf_counter() - t0
        batch = getattr(self.engine, "generate_batch", None)
        if not callable(batch):
            return [self.ask(volume, k, w, question, task=task, study_description=study_description, cancel=cancel)
                    for k, w in frames]
        try:
            gens = list(batch([p.request for p in preps], cancel=cancel))
        except XMedError:
            raise
        except Exception as exc:  # noqa: BLE001 - an engine failure must reach the reader as a message
            log.exception("engine failed")
            raise AssistantError(f"The model stopped with an error: {exc}", detail=repr(exc)) from exc
        total = time.perf_counter() - t0
        out = []
        for (k, w), prep, gen in zip(frames, preps, gens):
            parser = StreamParser(prompt=prep.prompt.user)
            collector = _FindingCollector(prep, k, volume, self.engine.model_id)
            parser.feed(gen.text)
            collector.add(parser.new_groundings)  # what the text completed (read after each feed, as ask does)
            parsed = parser.finish()
            collector.add(parser.new_groundings)
            timing = Timing(started=started, prepare_s=t_prep, first_token_s=None, total_s=total, pieces=1)
            reason = "cancelled" if getattr(gen, "finish_reason", "stop") == "cancelled" else "stop"
            out.append(self._answer(volume, k, w, question, prep, parser.text, parsed, collector, timing, reason))
        log.info("%s answered %d frames in one batch in %.2f s", self.engine.model_id, len(out), total)
        return out

    def _answer(self, volume: Volume, frame: int, window: Window | None, question: str, prep: _Prepared,
                raw_text: str, parsed: ParsedAnswer, collector: _FindingCollector, timing: Timing,
                finish_reason: str) -> AssistantAnswer:
        return AssistantAnswer(
            question=question,
            task=prep.prompt.task,
            frame=frame,
            window=window if window is not None else volume.default_window,
            prompt=prep.prompt,
            model_id=self.engine.model_id,
            engine=self.engine.describe(),
            raw_text=raw_text,
            parsed=parsed,
            findings=collector.findings,
            guardrail=prep.guardrail,
            image=prep.image,
            timing=timing,
            finish_reason=finish_reason,
            series_uid=volume.series.uid,
            pixels=FramePixels.from_volume(volume, frame),
            context=prep.context,
        )

def _engine_image_spec(engine: Engine) -> ImageSpec:
    """The engine's own image layout: its ``image_spec``, else its processor's settings
    (a local transformers engine), else InternVL-2's defaults (a remote server)."""
    spec = getattr(engine, "image_spec", None)
    if isinstance(spec, ImageSpec):
        return spec
    image_processor = getattr(getattr(engine, "processor", None), "image_processor", None)
    if image_processor is not None:
        return ImageSpec.from_image_processor(image_processor)
    return ImageSpec()


def _instance_spacing(volume: Volume) -> tuple[float, float] | None:
    for inst in volume.series.instances:
        if inst.pixel_spacing:
            return inst.pixel_spacing
    return None


class _FindingCollector:
    """Turns groundings into findings once each, in the order they arrive."""

    def __init__(self, prep: _Prepared, frame: int, volume: Volume, model_id: str) -> None:
        self.prep = prep
        self.frame = frame
        self.geometry = volume.geometry
        self.model_id = model_id
        self.findings: list[Finding] = []
        self._seen: set[tuple[str, Box]] = set()

    def add(self, groundings: list[Grounding]) -> list[Finding]:
        new: list[Finding] = []
        for g in groundings:
            for box in g.phrase.boxes:
                key = (g.phrase.phrase.casefold(), box)
                if key in self._seen:
                    continue  # the same box repeated in a later step
                self._seen.add(key)
                finding = self._finding(g, box)
                if finding is not None:
                    new.append(finding)
        self.findings.extend(new)
        return new

    def _finding(self, g: Grounding, box: Box) -> Finding | None:
        px = self.prep.image.transform.norm_to_source(box)
        if px is None:
            log.info("dropped a box for %r that lies outside the image", g.phrase.phrase)
            return None
        mm = None
        if self.geometry is not None:
            geo = self.geometry
            mm = pixel_box_to_patient(px, geo.origins[self.frame], geo.row_direction, geo.col_direction, geo.spacing)
        phrase = g.phrase.phrase
        warning = self.prep.guardrail.flag(phrase or self.prep.prompt.target)
        return Finding(phrase, self.frame, box, px, mm, g.step, self.model_id, warning)
