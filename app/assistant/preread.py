"""Series pre-read (issue #15): the model reads every slice of a series and hands the reader a lesion list.

Qt-free, so the viewer, ``xmedgpt preread`` and ``xmedgpt eval-volume`` drive the same code.

**Stage 1 — sweep** (:func:`sweep`). Every slice is rendered with the window a reader would use for
it and asked the short "locate every lesion" prompt (``resources/prompts/preread.txt``, without a
system prompt: the grounding question the model learnt and ``xmedgpt eval`` asks; not the five-step
chain). Windows come from the slice's Hounsfield units (:func:`choose_windows`): the share
of the body (pixels above −500 HU, each row filled between its first and last body pixel) that is
air-filled lung (−950…−500 HU). A slice with at least ``lung_min`` lung is read in the lung window
(W 1500 / L −600), one with less in the soft-tissue window (W 400 / L 40); slices in between
(``both_band``: the lung bases over the liver dome) are read in both. Requests go to the engine in
batches: :meth:`LocalEngine.generate_batch <inference.engine.local.LocalEngine.generate_batch>` runs a
batch in one left-padded ``generate`` (one forward pass per token for all of them), the remote
engine's ``generate_batch`` sends them concurrently so a vLLM server batches them; an engine without
``generate_batch`` is asked one request at a time. While the engine answers one batch, a background thread
prepares the next (renders, model images and, for the local engine, the processor's encoding, kept on the
CPU until it is answered: :meth:`LocalEngine.encode <inference.engine.local.LocalEngine.encode>` +
``generate_encoded``); it works at most one batch ahead, the caller helps it with a batch it has to wait
for (the first), and the answers are the same as one thread's, in the same order. ``cancel()`` is checked
between batches and between images (and passed to the engine); ``progress(done, total)`` counts requests
answered.

**Stage 2 — 3-D candidates** (:func:`link`). Boxes of one slice that overlap (IoU ≥ 0.5) are one
(the larger kept). Boxes on neighbouring slices are linked into a track when they overlap in plane
(IoU ≥ 0.2, or centre distance < half the smaller box's longer side), allowing one slice without a box
between them; pairs are matched greedily, best first. Each track becomes a :class:`Candidate`: slice
range, key slice (the largest box), centre in patient mm (box centres through the volume geometry,
weighted by box area), longest axial diameter (the longest box side in mm), approximate volume (the
ellipse inscribed in each box, πab, summed over the slice range — a missing slice takes the mean of
its neighbours — times the slice spacing) and a score: the mean detection confidence (exp of the
answer's mean token log-prob; 1 when the engine gives none) × n / (n + 1) for n slices with a box, so
a lesion seen on more slices ranks higher. Duplicates are suppressed by 3-D non-maximum suppression:
a candidate whose patient-space bounding cuboid overlaps a better one's at IoU ≥ 0.3, or whose centre
lies within half the smaller diameter of it, is dropped. On CT the score is then scaled by how much the
boxes stand out from what surrounds them (:func:`rank_by_contrast`: median HU of a box's centre against
a ring around it, where it stands out most with the box moved by up to a quarter of its size; full score from
10 HU), and the list is ranked again.

**Stage 3 — reasoning** (:func:`reason`). At each kept candidate's key slice, with its window, the
existing :class:`~app.assistant.ask.Assistant` runs the five-step grounded reasoning and
:func:`app.assistant.session.check_answer` the reliability pass, so every lesion carries its own tier,
score and checks (of the reasoning's finding whose box matches the candidate, else of the answer).

**The list** holds the candidates with boxes on at least ``min_slices`` slices whose score reaches the model's
**operating point** (:class:`OperatingPoint`, the model folder's ``preread_operating_point.json``, fitted by
``xmedgpt eval-volume --fit-operating-point FP`` at FP false positives per volume; every candidate when the
folder has none), best first, at most ``max_lesions``; stage 3 reads those. The result says how many candidates
fell below the point and keeps the best of them (``weaker``: located, not reasoned) for a reader who asks to see
them; the FROC of ``xmedgpt eval-volume`` still ranks every candidate.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.assistant.ask import Assistant, AssistantAnswer
from app.core.errors import XMedError
from app.core.paths import write_atomic
from app.dicom.display import render
from app.dicom.model import Volume, Window
from inference.imaging import ImageSpec, ModelImage, prepare_model_image
from inference.parsing import parse_answer
from inference.phrases import sentence_with, strip_grounding
from inference.prompts import Task, grounding_question
from inference.types import Box, ChatRequest, Engine, Generation

log = logging.getLogger(__name__)

CancelFn = Callable[[], bool]
ProgressFn = Callable[[int, int], None]

SOFT_TISSUE = Window(400, 40, "soft tissue")
LUNG = Window(1500, -600, "lung")
LUNG_HU = (-950.0, -500.0)
BODY_HU = -500.0

SWEEP_TOKENS = 96  # a few boxes: "<ref>…</ref><box>[[…]]</box>" is about 25 tokens each
#: a sweep box this many times longer than wide is no lesion's (nodules, masses and cysts are roundish): the demo
#: model now and then writes a strip from the body's edge down the lung (20 × 190 mm), listed as a 190 mm "mass"
MAX_BOX_ASPECT = 4.0
#: what every pre-read result says (panel, PDF): a short list, or none, is the AI's, not an all-clear (the demo
#: model finds about a third of the lesions, README's FROC table)
MISSES_LESIONS = "The AI can miss lesions: read every slice."
NOT_A_NEGATIVE_READ = f"This is not a negative read. {MISSES_LESIONS}"


def misses_caveat(found: int) -> str:
    """The sentence after a pre-read's count: an empty list is not a negative read, a list may be short."""
    return MISSES_LESIONS if found else NOT_A_NEGATIVE_READ


def below_point_note(below: int, min_score: float | None) -> str:
    """What a result says when its operating point left candidates out ("" when none was)."""
    if not below or min_score is None:
        return ""
    return (f"{below} weaker candidate{'s' if below != 1 else ''} (score under {min_score:.2f}, the model's operating "
            f"point) {'are' if below != 1 else 'is'} not listed.")


class PrereadError(XMedError):
    pass


# ----------------------------------------------------------------------------- windows


def _in_hu(volume: Volume) -> bool:
    """A greyscale CT series: its values are Hounsfield units (the window rule, the contrast ranking and the
    region need them)."""
    return (volume.series.modality or "").upper() == "CT" and not volume.is_color


def lung_fraction(hu: np.ndarray) -> float:
    """Share of the body section that is air-filled lung (−950…−500 HU); 0 for a slice without body.

    The body is every pixel above −500 HU with each row filled between its first and last body pixel
    (so the lungs, air inside the body, count as body). Worked on at most 128 px a side."""
    img = np.asarray(hu, dtype=np.float32)
    step = max(1, int(math.ceil(max(img.shape[:2]) / 128)))
    img = img[::step, ::step]
    solid = img > BODY_HU
    if not solid.any():
        return 0.0
    left = np.maximum.accumulate(solid, axis=1)
    right = np.maximum.accumulate(solid[:, ::-1], axis=1)[:, ::-1]
    body = left & right
    lung = body & (img >= LUNG_HU[0]) & (img < LUNG_HU[1])
    return float(lung.sum()) / float(body.sum())


def choose_windows(hu: np.ndarray, lung_min: float = 0.15, both_band: tuple[float, float] = (0.03, 0.15)
                   ) -> tuple[list[Window], float]:
    """The windows a reader would read this CT slice in, and its lung fraction (see the module doc)."""
    f = lung_fraction(hu)
    if f >= lung_min:
        return [LUNG], f
    if both_band[0] <= f < both_band[1]:
        return [LUNG, SOFT_TISSUE], f
    return [SOFT_TISSUE], f


# ----------------------------------------------------------------------------- stage 1


@dataclass
class Detection:
    """One box of the sweep, on one slice, in frame pixels and patient mm."""

    slice: int
    box: Box  # frame pixels, edge coordinates
    window: str
    phrase: str
    confidence: float
    center_mm: np.ndarray  # (3,) patient LPS
    width_mm: float
    height_mm: float

    @property
    def size_mm(self) -> float:
        return max(self.width_mm, self.height_mm)


@dataclass
class SweepResult:
    detections: list[Detection]
    windows: dict[int, list[str]]  # slice → window names read
    lung_fractions: dict[int, float]
    requests: int
    batches: int
    seconds: float
    cancelled: bool = False
    answers: dict[tuple[int, str], str] = field(default_factory=dict)  # (slice, window) → raw text


def _spacing(volume: Volume) -> tuple[float, float]:
    geo = volume.geometry
    if geo is None:
        raise PrereadError("This series has no slice geometry (positions and orientation), so lesions cannot "
                           "be followed from slice to slice.")
    return geo.spacing


def slice_spacing(volume: Volume) -> float:
    """Distance between neighbouring slices along the slice normal (median), mm."""
    geo = volume.geometry
    if geo is None or len(geo.origins) < 2:
        thick = next((i.slice_thickness for i in volume.series.instances if i.slice_thickness), None)
        return float(thick or 1.0)
    normal = np.cross(geo.row_direction, geo.col_direction)
    d = np.abs(np.diff(geo.origins @ normal))
    d = d[d > 1e-6]
    return float(np.median(d)) if d.size else 1.0


def box_center_mm(volume: Volume, k: int, box: Box) -> np.ndarray:
    """Centre of a pixel box (edge coordinates) in patient mm (pixel centres sit at edge + 0.5)."""
    geo = volume.geometry
    return geo.pixel_to_patient(k, (box.x0 + box.x1) / 2.0 - 0.5, (box.y0 + box.y1) / 2.0 - 0.5)


def make_detection(volume: Volume, k: int, box: Box, window: str = "", phrase: str = "lesion",
                   confidence: float = 1.0) -> Detection:
    rs, cs = _spacing(volume)
    return Detection(k, box, window, phrase, confidence, box_center_mm(volume, k, box),
                     box.width * cs, box.height * rs)


def plausible_box(box: Box) -> bool:
    """A box a lesion could have: its long side at most :data:`MAX_BOX_ASPECT` times its short side."""
    short, long = sorted((box.width, box.height))
    return short > 0 and long <= MAX_BOX_ASPECT * short


def _confidence(gen: Generation) -> float:
    lps = getattr(gen, "token_logprobs", None) or []
    return float(min(1.0, math.exp(float(np.mean(lps))))) if lps else 1.0


def _answer_batch(engine: Engine, requests: list[ChatRequest], cancel: CancelFn | None) -> list[Generation]:
    batch = getattr(engine, "generate_batch", None)
    if callable(batch):
        return list(batch(requests, cancel=cancel))
    out = []
    for r in requests:
        if cancel is not None and cancel():
            out.append(Generation(text="", finish_reason="cancelled"))
        else:
            out.append(engine.generate(r, cancel=cancel))
    return out


@dataclass
class _Chunk:
    """One batch of the sweep, ready to be answered: its (slice, window)s, model images and requests, and,
    for an engine that can encode ahead (``encode`` + ``generate_encoded``), its encoded inputs."""

    plan: list[tuple[int, Window | None]]
    images: list[ModelImage]
    requests: list[ChatRequest]
    inputs: object | None = None


class _ChunkFeed:
    """The sweep's chunks, prepared ahead on one background thread (a bounded producer).

    A chunk is made in two steps: ``image(i, j)`` makes image ``j`` of chunk ``i`` (render + model image) and,
    once all its images are made, ``finish(i, images)`` turns them into the chunk (requests, encoded inputs).
    With ``prefetch`` a producer thread makes chunk i + 1 while the caller answers chunk i, never more than one
    chunk ahead (so at most two chunks' images and inputs are held at a time). While the caller waits for a
    chunk (the first one, or when the producer falls behind) it helps: it makes that chunk's images not yet
    taken by the producer, so both cores render the first batch. Images are stored by position, so who made
    one never changes the chunk. Without ``prefetch`` the caller makes every chunk itself, in :meth:`get`.

    :meth:`get` returns chunk ``i`` (chunks are asked for in order), ``None`` when ``cancel()`` said to stop,
    and raises what making it raised (the same exception object). :meth:`close` (also on leaving ``with``)
    stops the producer and waits for its thread; it stops at the next image."""

    def __init__(self, sizes: Sequence[int], image: Callable[[int, int], object],
                 finish: Callable[[int, list], _Chunk], cancel: CancelFn | None, prefetch: bool = True) -> None:
        self.sizes = list(sizes)
        self.count = len(self.sizes)
        self.image, self.finish, self.cancel = image, finish, cancel
        self.prefetch = prefetch and self.count > 1
        self._cond = threading.Condition()
        self._cursor = (0, 0)  # the next image to take: (chunk, position); images are taken in order
        self._made: dict[int, list] = {}  # chunk → its images so far (None where not made yet)
        self._left: dict[int, int] = {}  # chunk → images taken but not made yet, or not taken
        self._ready: dict[int, tuple[str, object]] = {}  # chunk → ("chunk", _Chunk) | ("error", exc)
        self._wanted = 0  # the chunk the caller asked for last; the producer works at most one beyond it
        self._stop = False  # close() was called
        self._cancelled = False  # cancel() said so (seen by either thread)
        self._thread: threading.Thread | None = None
        self._died: BaseException | None = None  # what ended the producer outside making an image

    def __enter__(self) -> _ChunkFeed:  # noqa: PYI034 - private, never subclassed
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _cancel_seen(self) -> bool:
        if self.cancel is not None and self.cancel():
            with self._cond:
                self._cancelled = True
                self._cond.notify_all()
        return self._cancelled

    def _take(self, only: int | None) -> tuple[int, int] | None:
        """Under the lock: the next image to make (of chunk ``only`` if given), or None."""
        c, j = self._cursor
        if c >= self.count or (only is not None and c != only) or c in self._ready:
            return None
        if c not in self._made:
            self._made[c] = [None] * self.sizes[c]
            self._left[c] = self.sizes[c]
        self._cursor = (c, j + 1) if j + 1 < self.sizes[c] else (c + 1, 0)
        return c, j

    def _make(self, c: int, j: int) -> None:
        """Make image j of chunk c (outside the lock); whoever makes a chunk's last image finishes the chunk."""
        try:
            im = self.image(c, j)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised where it asks for chunk c
            with self._cond:
                self._ready.setdefault(c, ("error", exc))
                self._cond.notify_all()
            return
        with self._cond:
            if c in self._ready:  # another image of this chunk failed
                return
            self._made[c][j] = im
            self._left[c] -= 1
            if self._left[c] > 0:
                return
            images = self._made.pop(c)
            del self._left[c]
        if self._stop or self._cancelled:
            return
        try:
            item: tuple[str, object] = ("chunk", self.finish(c, images))
        except BaseException as exc:  # noqa: BLE001 - as above
            item = ("error", exc)
        with self._cond:
            self._ready[c] = item
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # noqa: BLE001 - never a silent death the caller would wait for forever
            with self._cond:
                self._died = exc
                self._cond.notify_all()

    def _produce(self) -> None:
        while True:
            with self._cond:
                while True:  # one ahead: chunk c only once the caller has asked for chunk c - 1
                    if self._stop or self._cancelled or any(kind == "error" for kind, _ in self._ready.values()):
                        return
                    if self._cursor[0] >= self.count:
                        return
                    if self._cursor[0] <= self._wanted + 1:
                        break
                    self._cond.wait()
            if self._cancel_seen():
                return
            with self._cond:
                task = self._take(None)
            if task is not None:
                self._make(*task)

    def get(self, i: int) -> _Chunk | None:
        with self._cond:
            self._wanted = i
            self._cond.notify_all()
            if self.prefetch and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="xmedgpt-preread-prepare", daemon=True)
                self._thread.start()
        while True:
            with self._cond:
                if i in self._ready:
                    kind, value = self._ready.pop(i)
                    break
                if self._cancelled:
                    return None
                if self._died is not None:
                    raise self._died
                task = self._take(i)  # help with the chunk this thread waits for
                if task is None:
                    self._cond.wait()
                    continue
            if self._cancel_seen():
                return None
            self._make(*task)
        if kind == "error":
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _answer_chunk(engine: Engine, chunk: _Chunk, cancel: CancelFn | None) -> list[Generation]:
    if chunk.inputs is not None:
        return list(engine.generate_encoded(chunk.requests, chunk.inputs, cancel=cancel))  # type: ignore[attr-defined]
    return _answer_batch(engine, chunk.requests, cancel)


def _encodes_ahead(engine: Engine) -> bool:
    """Whether the engine can encode a batch on another thread and answer it later (the local engine)."""
    return callable(getattr(engine, "encode", None)) and callable(getattr(engine, "generate_encoded", None))


def sweep_prompt() -> tuple[str | None, str]:
    """(system, user) of the sweep: no system prompt, and the grounding question as the model learnt it
    (:func:`inference.prompts.grounding_question`, which ``xmedgpt eval`` scores grounding with), so the pre-read
    finds what the grounding evaluation measures. The sweep's text is never shown -- only its boxes are kept,
    and each lesion is then read with the product's system prompt and guardrail (stage 3). Asked under the
    system prompt with the series' context line, the committed demo model drew 87 false candidates on nine
    studies instead of 24 at about the same CPM (0.29 against 0.30), and run 13's model (docs/demo-512-run-12.md)
    reached a CPM of 0.12 instead of 0.35: there it answers "No pulmonary nodule or mass.", a line of its
    five-step reasoning."""
    return None, grounding_question()


def sweep(
    engine: Engine,
    volume: Volume,
    *,
    slices: Sequence[int] | None = None,
    batch_size: int = 8,
    image_spec: ImageSpec | None = None,
    windows: Callable[[Volume, int], list[Window]] | None = None,
    cancel: CancelFn | None = None,
    progress: ProgressFn | None = None,
    max_new_tokens: int = SWEEP_TOKENS,
    prefetch: bool = True,
) -> SweepResult:
    """Stage 1: every slice (or ``slices``), in its reader's windows, asked to locate every lesion.

    With ``prefetch`` (the default) one background thread prepares the next batch (render, model image
    and, for the local engine, the processor's encoding) while the engine answers this one; the answers
    are the same as without it, in the same order. ``cancel`` is then also called from that thread."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    _spacing(volume)
    t0 = time.perf_counter()
    spec = image_spec or Assistant(engine).image_spec
    ks = list(range(len(volume))) if slices is None else list(slices)
    ks = [k for k in ks if k not in volume.frame_problems and (volume.loaded == 0 or k < volume.loaded)]
    system, user = sweep_prompt()
    plan: list[tuple[int, Window]] = []
    chosen: dict[int, list[str]] = {}
    fractions: dict[int, float] = {}
    ct = _in_hu(volume)
    for k in ks:
        if windows is not None:
            ws = windows(volume, k)
        elif ct:
            ws, fractions[k] = choose_windows(volume.values(k))
        else:
            ws = [volume.default_window] if volume.default_window is not None else [None]
        chosen[k] = [w.name if w is not None else "default" for w in ws]
        plan.extend((k, w) for w in ws)
    spacing = volume.geometry.spacing
    result = SweepResult([], chosen, fractions, len(plan), 0, 0.0)
    total = len(plan)
    if progress is not None:
        progress(0, total)
    done = 0
    encode = engine.encode if _encodes_ahead(engine) else None  # type: ignore[attr-defined]

    def image(i: int, j: int) -> ModelImage:
        k, w = plan[i * batch_size + j]
        return prepare_model_image(render(volume, k, w), spec, pixel_spacing=spacing)

    def finish(i: int, images: list[ModelImage]) -> _Chunk:
        requests = [ChatRequest(prompt=user, image=im.rgb, system=system, max_new_tokens=max_new_tokens)
                    for im in images]
        inputs = encode(requests, on_device=False) if encode is not None else None
        return _Chunk(plan[i * batch_size:(i + 1) * batch_size], images, requests, inputs)

    sizes = [min(batch_size, total - start) for start in range(0, total, batch_size)]
    with _ChunkFeed(sizes, image, finish, cancel, prefetch) as feed:
        for i in range(feed.count):
            if cancel is not None and cancel():
                result.cancelled = True
                break
            prepared = feed.get(i)
            if prepared is None:  # cancel() said so while the chunk was being made
                result.cancelled = True
                break
            done = _read_chunk(engine, volume, prepared, cancel, result, done)
            if progress is not None:
                progress(done, total)
            if result.cancelled:
                break
    result.seconds = time.perf_counter() - t0
    log.info("pre-read sweep: %d requests in %d batches, %d boxes, %.1f s%s", done, result.batches,
             len(result.detections), result.seconds, " (cancelled)" if result.cancelled else "")
    return result


def _read_chunk(engine: Engine, volume: Volume, prepared: _Chunk, cancel: CancelFn | None, result: SweepResult,
                done: int) -> int:
    """Answer one prepared batch and add its boxes to ``result``; the requests done after it."""
    chunk, images = prepared.plan, prepared.images
    answers = _answer_chunk(engine, prepared, cancel)
    result.batches += 1
    if any(a.finish_reason == "cancelled" for a in answers):
        result.cancelled = True
    for (k, w), im, gen in zip(chunk, images, answers):
        name = w.name if w is not None else "default"
        result.answers[(k, name)] = gen.text
        conf = _confidence(gen)
        for g in parse_answer(gen.text).groundings:
            for b in g.phrase.boxes:
                px = im.transform.norm_to_source(b)
                if px is None or px.area <= 0 or not plausible_box(px):
                    continue
                result.detections.append(make_detection(volume, k, px, name, g.phrase.phrase or "lesion", conf))
    return done + len(chunk)


# ----------------------------------------------------------------------------- stage 2


@dataclass
class Candidate:
    """A lesion candidate in 3-D: boxes on consecutive slices (one may be missing between two)."""

    id: str
    detections: dict[int, Detection]  # slice → its box
    center_mm: np.ndarray  # (3,)
    diameter_mm: float
    volume_ml: float
    score: float
    key_slice: int
    answer: AssistantAnswer | None = None  # stage 3
    reliability: dict | None = None
    location: str = ""
    description: str = ""
    contrast_hu: float | None = None  # how much its boxes stand out from around them (median over its slices)

    @property
    def slices(self) -> tuple[int, int]:
        return min(self.detections), max(self.detections)

    @property
    def key_box(self) -> Box:
        return self.detections[self.key_slice].box

    @property
    def window(self) -> str:
        return self.detections[self.key_slice].window

    @property
    def phrase(self) -> str:
        return self.detections[self.key_slice].phrase

    def to_json(self) -> dict:
        first, last = self.slices
        return {
            "id": self.id,
            "slices": [first, last],
            "key_slice": self.key_slice,
            "box_pixels": _box_json(self.key_box),
            "boxes": {str(k): _box_json(d.box) for k, d in sorted(self.detections.items())},
            "center_patient_mm": [round(float(v), 2) for v in self.center_mm],
            "diameter_mm": round(self.diameter_mm, 1),
            "volume_ml": round(self.volume_ml, 3),
            "score": round(self.score, 4),
            "contrast_hu": None if self.contrast_hu is None else round(self.contrast_hu, 1),
            "window": self.window,
            "phrase": self.phrase,
            "location": self.location,
            "description": self.description,
            "reliability": self.reliability,
        }


def _box_json(b: Box) -> dict:
    return {k: round(float(getattr(b, k)), 2) for k in ("x0", "y0", "x1", "y1")}


def _in_plane_distance(volume: Volume, a: Detection, b: Detection) -> float:
    geo = volume.geometry
    normal = np.cross(geo.row_direction, geo.col_direction)
    d = a.center_mm - b.center_mm
    return float(np.linalg.norm(d - (d @ normal) * normal))


def _same_lesion(volume: Volume, a: Detection, b: Detection, min_iou: float) -> tuple[bool, float, float]:
    iou = a.box.iou(b.box)
    dist = _in_plane_distance(volume, a, b)
    return (iou >= min_iou or dist < 0.5 * min(a.size_mm, b.size_mm)), iou, dist


def _dedupe_slice(dets: list[Detection], iou: float = 0.5) -> list[Detection]:
    """One box where several on the same slice overlap (two windows, a repeated box): the larger."""
    kept: list[Detection] = []
    for d in sorted(dets, key=lambda d: (-d.box.area, -d.confidence)):
        if all(d.box.iou(k.box) < iou for k in kept):
            kept.append(d)
    return kept


def _tracks(volume: Volume, detections: Sequence[Detection], min_iou: float, max_gap: int) -> list[dict[int, Detection]]:
    by_slice: dict[int, list[Detection]] = {}
    for d in detections:
        by_slice.setdefault(d.slice, []).append(d)
    tracks: list[dict[int, Detection]] = []
    for k in sorted(by_slice):
        dets = _dedupe_slice(by_slice[k])
        active = [t for t in tracks if k - max(t) <= max_gap + 1]
        pairs = []
        for ti, t in enumerate(active):
            last = t[max(t)]
            for di, d in enumerate(dets):
                ok, iou, dist = _same_lesion(volume, last, d, min_iou)
                if ok:
                    pairs.append((-iou, dist, ti, di))
        used_t: set[int] = set()
        used_d: set[int] = set()
        for _, _, ti, di in sorted(pairs):
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            active[ti][k] = dets[di]
        tracks.extend({k: d} for di, d in enumerate(dets) if di not in used_d)
    return tracks


def _candidate(volume: Volume, track: dict[int, Detection], spacing: float) -> Candidate:
    dets = [track[k] for k in sorted(track)]
    areas = np.array([d.width_mm * d.height_mm for d in dets])
    weights = areas if areas.sum() > 0 else np.ones(len(dets))
    center = (np.stack([d.center_mm for d in dets]) * weights[:, None]).sum(0) / weights.sum()
    diameter = max(d.size_mm for d in dets)
    ellipse = {k: math.pi / 4.0 * d.width_mm * d.height_mm for k, d in track.items()}
    first, last = min(track), max(track)
    total = 0.0
    for k in range(first, last + 1):
        if k in ellipse:
            total += ellipse[k]
        else:  # a slice without a box inside the range: the mean of its nearest neighbours
            below = max(j for j in ellipse if j < k)
            above = min(j for j in ellipse if j > k)
            total += (ellipse[below] + ellipse[above]) / 2.0
    key = max(track, key=lambda k: (track[k].box.area, -abs(k - (first + last) / 2)))
    n = len(dets)
    confidence = float(np.mean([d.confidence for d in dets]))
    return Candidate("", dict(sorted(track.items())), center, float(diameter), total * spacing / 1000.0,
                     confidence * n / (n + 1.0), key)


def _cuboid(volume: Volume, c: Candidate, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    geo = volume.geometry
    normal = np.cross(geo.row_direction, geo.col_direction)
    pts = []
    for k, d in c.detections.items():
        b = d.box
        for x, y in ((b.x0, b.y0), (b.x1, b.y0), (b.x0, b.y1), (b.x1, b.y1)):
            p = geo.pixel_to_patient(k, x - 0.5, y - 0.5)
            pts.extend((p + normal * spacing / 2.0, p - normal * spacing / 2.0))
    pts = np.stack(pts)
    return pts.min(0), pts.max(0)


def _cuboid_iou(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    inter = np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0, None).prod()
    va, vb = (a[1] - a[0]).prod(), (b[1] - b[0]).prod()
    union = va + vb - inter
    return float(inter / union) if union > 0 else 0.0


def nms_3d(volume: Volume, candidates: list[Candidate], iou: float = 0.3) -> list[Candidate]:
    """Best score first; drop a candidate that overlaps a kept one (cuboid IoU ≥ ``iou``) or whose
    centre lies within half the smaller diameter of a kept one's."""
    spacing = slice_spacing(volume)
    kept: list[tuple[Candidate, tuple[np.ndarray, np.ndarray]]] = []
    for c in sorted(candidates, key=lambda c: -c.score):
        box = _cuboid(volume, c, spacing)
        duplicate = any(
            _cuboid_iou(box, kb) >= iou
            or float(np.linalg.norm(c.center_mm - k.center_mm)) < 0.5 * min(c.diameter_mm, k.diameter_mm)
            for k, kb in kept
        )
        if not duplicate:
            kept.append((c, box))
    return [c for c, _ in kept]


def link(volume: Volume, detections: Sequence[Detection], *, min_iou: float = 0.2, max_gap: int = 1,
         nms_iou: float = 0.3) -> list[Candidate]:
    """Stage 2: per-slice boxes → 3-D candidates, duplicates suppressed, best score first, ids P1, P2, …"""
    _spacing(volume)
    spacing = slice_spacing(volume)
    candidates = [_candidate(volume, t, spacing) for t in _tracks(volume, detections, min_iou, max_gap)]
    kept = nms_3d(volume, candidates, nms_iou)
    for i, c in enumerate(kept, 1):
        c.id = f"P{i}"
    return kept


#: a CT candidate whose boxes stand out from their surroundings by at least this (median HU of the box's centre
#: against its ring -- the density check's margin for hypo/hyperdense) keeps its score; less, and its score
#: falls in proportion, to VISIBILITY_FLOOR times it for a box on tissue that looks the same inside and out
VISIBLE_HU = 10.0
VISIBILITY_FLOOR = 0.1
#: the contrast is looked for with the box moved by up to this fraction of its width and height (3 × 3 places, the
#: best kept): a model's box often sits off the lesion's centre (the demo model's on the bundled sample by 5-12 px),
#: and a box half on the lesion measures the lesion's own edge, not how it stands out
CONTRAST_SEARCH = 0.25


def located_contrast(values: np.ndarray, box: Box, search: float = CONTRAST_SEARCH) -> float | None:
    """:func:`app.assistant.evidence.box_contrast` of ``box`` moved by −search, 0 or +search of its width and height
    (nine places), the highest; None when no place has enough pixels. For ranking only: the density check of the
    reliability pass measures the box as the model drew it."""
    from app.assistant.evidence import box_contrast

    w, h = box.width, box.height
    found = [v for dx in (-search, 0.0, search) for dy in (-search, 0.0, search)
             if (v := box_contrast(values, Box(box.x0 + dx * w, box.y0 + dy * h, box.x1 + dx * w, box.y1 + dy * h)))
             is not None]
    return max(found) if found else None


def rank_by_contrast(volume: Volume, candidates: Sequence[Candidate]) -> list[Candidate]:
    """Stage 2's last step on CT: each candidate's contrast -- |median HU of its box's centre − median HU of the
    ring around it| (:func:`app.assistant.evidence.box_contrast`) where the box stands out most within a quarter
    of its size of where the model drew it (:func:`located_contrast`), the median over its slices -- scales its
    score (× min(1, contrast / VISIBLE_HU), at least VISIBILITY_FLOOR), then the list is sorted again and
    renumbered P1, P2, …. A lesion is seen because it differs from what surrounds it; most false boxes of the
    sweep sit on homogeneous liver or lung. Other modalities (no HU) keep the model's order."""
    if not _in_hu(volume):
        return list(candidates)
    for c in candidates:
        values = [v for k, d in c.detections.items()
                  if (v := located_contrast(volume.values(k), d.box)) is not None]
        c.contrast_hu = float(np.median(values)) if values else None
        if c.contrast_hu is not None:
            c.score *= min(1.0, max(VISIBILITY_FLOOR, c.contrast_hu / VISIBLE_HU))
    ranked = sorted(candidates, key=lambda c: -c.score)
    for i, c in enumerate(ranked, 1):
        c.id = f"P{i}"
    return ranked


# ----------------------------------------------------------------------------- stage 3


def location_of(volume: Volume, c: Candidate, lung_fractions: dict[int, float] | None = None) -> str:
    """Side (DICOM LPS: +x is the patient's left) and region, read from the CT's own pixels (see
    :func:`region_of`), not from the window the box was found in."""
    side = "left" if float(c.center_mm[0]) > 0 else "right"
    return f"{side} {region_of(volume, c, lung_fractions)}"


#: a box whose neighbourhood (the box and half its size around it) is at least this share lung is "lung"
LUNG_AROUND_MIN = 0.25
#: a slice with at least this share of lung in its body section is a chest slice
CHEST_SLICE_MIN = 0.03


def region_of(volume: Volume, c: Candidate, lung_fractions: dict[int, float] | None = None) -> str:
    """Where a CT candidate lies, from Hounsfield units alone: "lung" when its key-slice neighbourhood
    is largely aerated lung (−950…−500 HU), else "chest" on a slice with lung in it (mediastinum, chest
    wall, a lung apex or base), "upper abdomen" below the last slice with lung, and "body" where it cannot
    tell (above the lungs, a series without lung, not CT). ``lung_fractions`` (slice → share of lung, as
    the sweep measured it) is a cache: slices measured here are added to it."""
    geo = volume.geometry
    if not _in_hu(volume) or geo is None:
        return "lung" if c.window == "lung" else "body"
    fractions = lung_fractions if lung_fractions is not None else {}

    def fraction(k: int) -> float:
        if k not in fractions:
            fractions[k] = lung_fraction(volume.values(k))
        return fractions[k]

    hu = np.asarray(volume.values(c.key_slice), dtype=np.float32)
    b = c.key_box
    grow_x, grow_y = (b.x1 - b.x0) / 2.0, (b.y1 - b.y0) / 2.0
    y0, y1 = max(0, int(b.y0 - grow_y)), min(hu.shape[0], int(math.ceil(b.y1 + grow_y)))
    x0, x1 = max(0, int(b.x0 - grow_x)), min(hu.shape[1], int(math.ceil(b.x1 + grow_x)))
    around = hu[y0:y1, x0:x1]
    if around.size and float(((around >= LUNG_HU[0]) & (around < LUNG_HU[1])).mean()) >= LUNG_AROUND_MIN:
        return "lung"
    if fraction(c.key_slice) >= CHEST_SLICE_MIN:
        return "chest"
    normal = np.cross(geo.row_direction, geo.col_direction)
    height = geo.origins @ normal * float(np.sign(normal[2]) or 1.0)  # along the patient's feet-to-head axis
    step = max(1, len(volume) // 64)  # enough slices to find where the lungs end
    lung = [k for k in range(0, len(volume), step) if fraction(k) >= CHEST_SLICE_MIN]
    if not lung:
        return "body"
    return "upper abdomen" if height[c.key_slice] < min(height[k] for k in lung) else "body"


_LESION_LINE = re.compile(r"^[ \t]*L(?P<n>\d+)[ \t]*:[ \t]*(?P<text>.+?)[ \t]*$", re.MULTILINE)


def _description(answer: AssistantAnswer, c: Candidate | None = None) -> str:
    """What the answer at the key slice says of this lesion: its line of the detailed description
    when that step describes lesions one per line ("L2: A 39 mm mass …", in the order step 2 boxed
    them; the only line when there is one), else the step's sentence naming the phrase of the finding
    whose box matches the candidate, else the whole step. When no box of the answer is this candidate,
    the text says so first: what the reasoning describes may be another lesion (or none)."""
    finding = _matching_finding(answer, c) if c is not None else None
    text = _described(answer, finding)
    if c is not None and finding is None and text:
        return f"{UNBOXED_PREFIX} {text}"
    return text


#: How a description begins when the reasoning at the key slice boxed something else (or nothing).
UNBOXED_PREFIX = "At its key slice the reasoning drew no box on this lesion; it says:"


def _described(answer: AssistantAnswer, finding) -> str:
    for step in answer.steps:
        if step.index == 3 and step.text.strip():
            text = step.text.strip()
            lines = {int(m.group("n")): strip_grounding(m.group("text")).strip() for m in _LESION_LINE.finditer(text)}
            if len(lines) == 1:
                return next(iter(lines.values()))
            if lines:  # the labels (L1:, L2:) mean nothing to a reader: the lines' texts only
                text = " ".join(lines[n] for n in sorted(lines))
            if finding is None:
                return text  # which of the lesions it describes is not known: all of them
            boxed = [f for f in answer.findings if f.step == 2]
            n = boxed.index(finding) + 1 if finding in boxed else None
            if n in lines:
                return lines[n]
            return sentence_with(text, finding.phrase) or text
    for step in answer.steps:
        if step.index == 5 and step.text.strip():
            return step.text.strip()
    return answer.parsed.text.strip()[:400]


def _matching_finding(answer: AssistantAnswer, c: Candidate):
    best, best_score = None, 0.0
    key = c.key_box
    cx, cy = (key.x0 + key.x1) / 2, (key.y0 + key.y1) / 2
    for f in answer.findings:
        b = f.box_px
        iou = b.iou(key)
        inside = b.x0 <= cx <= b.x1 and b.y0 <= cy <= b.y1
        score = iou + (0.05 if inside else 0.0)
        if (iou >= 0.1 or inside) and score > best_score:
            best, best_score = f, score
    return best


def lesion_reliability(answer: AssistantAnswer, reliability, c: Candidate) -> dict:
    """``{tier, score, checks}`` of the candidate: its matching finding's, else the answer's, with the
    answer-level checks after the finding's own."""
    from app.assistant.session import finding_reliability_json, reliability_json
    from inference.phrases import phrase_key

    whole = reliability_json(reliability)
    finding = _matching_finding(answer, c)
    per = finding_reliability_json(reliability).get(phrase_key(finding.phrase)) if finding is not None else None
    if per is not None:
        return {"tier": per["tier"], "score": per["score"], "checks": list(per["checks"]) + whole["checks"],
                "finding": finding.phrase, "state": whole["state"], "message": whole["message"]}
    checks = list(whole["checks"])
    if finding is None:
        checks.append({"name": "box", "passed": False,
                       "detail": "the reasoning at the key slice drew no box on this candidate"})
    return {"tier": whole["tier"], "score": whole["score"], "checks": checks, "finding": None,
            "state": whole["state"], "message": whole["message"]}


def reason(
    engine: Engine,
    volume: Volume,
    candidates: Sequence[Candidate],
    *,
    assistant: Assistant | None = None,
    n_samples: int = 5,
    n_questions: int = 3,
    question: str = "",
    study_description: str = "",
    cancel: CancelFn | None = None,
    progress: ProgressFn | None = None,
    reliability: bool = True,
    batch_size: int = 8,
    lung_fractions: dict[int, float] | None = None,
) -> None:
    """Stage 3, in place: five-step reasoning and the reliability pass at each candidate's key slice.

    The reasoning of ``batch_size`` candidates at a time is one batched generation (:meth:`Assistant.ask_batch`);
    each answer then gets its own reliability pass (itself one batched sampling call). ``lung_fractions``:
    the sweep's, for :func:`region_of` (a cache it adds to)."""
    from app.assistant.session import check_answer

    assistant = assistant or Assistant(engine)
    fractions = lung_fractions if lung_fractions is not None else {}
    total = len(candidates)
    done = 0
    for start in range(0, total, max(1, batch_size)):
        if cancel is not None and cancel():
            break
        chunk = candidates[start:start + max(1, batch_size)]
        frames = [(c.key_slice, LUNG if c.window == "lung" else SOFT_TISSUE if c.window == "soft tissue" else None)
                  for c in chunk]
        answers = assistant.ask_batch(volume, frames, question, task=Task.REASONING,
                                      study_description=study_description, cancel=cancel)
        for c, answer in zip(chunk, answers):
            c.answer = answer
            c.location = location_of(volume, c, fractions)
            c.description = _description(answer, c)
            if reliability and not (cancel is not None and cancel()):
                rel = check_answer(engine, answer, n_samples, n_questions, cancel=cancel)
                c.reliability = lesion_reliability(answer, rel, c)
            done += 1
            if progress is not None:
                progress(done, total)


# ----------------------------------------------------------------------------- the whole pre-read


#: a model folder's pre-read operating point, written by ``xmedgpt eval-volume --fit-operating-point``
OPERATING_POINT_FILE = "preread_operating_point.json"


@dataclass(frozen=True)
class OperatingPoint:
    """The candidate score from which the pre-read lists a lesion (a CAD system's operating point): fitted per model
    on sample studies at a chosen number of false positives per volume, so a model that draws many weak boxes lists
    the few it is surest of. Candidates below it are not listed, reasoned or reported (the FROC still counts them)."""

    min_score: float
    source: str  # the file it was read from, or "options"
    fp_per_volume: float | None = None  # the false positives per volume it was fitted for

    def to_json(self) -> dict:
        return {"min_score": round(self.min_score, 6), "source": self.source, "fp_per_volume": self.fp_per_volume}


def operating_point_for(model_folder: str | Path | None) -> OperatingPoint | None:
    """The model folder's :data:`OPERATING_POINT_FILE`, None when it has none (every candidate is then listed).
    PrereadError with one line when the file is there but damaged."""
    if not model_folder:
        return None
    path = Path(model_folder) / OPERATING_POINT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        score = float(data["min_score"])
        rate = data.get("fp_per_volume")
        rate = None if rate is None else float(rate)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PrereadError(f"The model's pre-read operating point ({path.name}) is damaged: fit it again with "
                           f"'xmedgpt eval-volume --fit-operating-point' ({type(exc).__name__}).") from None
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise PrereadError(f"The model's pre-read operating point ({path.name}) is damaged: min_score {score!r} is "
                           "not a score from 0 to 1.")
    return OperatingPoint(score, str(path), rate)


def write_operating_point(path: Path, fitted: dict, fp_per_volume: float, data: str, model: str) -> dict:
    """Write an operating point file: the threshold, the rate it was fitted for and what it measured there; returns
    what it wrote."""
    doc = {"min_score": fitted["min_score"], "fp_per_volume": fp_per_volume, "model": model, "fitted_on": data,
           "measured": {k: v for k, v in fitted.items() if k != "min_score"},
           "rule": "the pre-read lists a candidate when its score is at least min_score (xmedgpt eval-volume "
                   "--fit-operating-point: the lowest threshold with at most fp_per_volume false positives per "
                   "volume on the studies it was fitted on)"}
    write_atomic(Path(path), json.dumps(doc, indent=2) + "\n", mode=0o644)
    return doc


@dataclass
class PrereadOptions:
    batch_size: int = 16
    max_lesions: int = 10  # reasoned and reported, best score first
    min_slices: int = 1  # a candidate needs boxes on at least this many slices to be reported
    #: a candidate needs at least this score to be listed; None: the model folder's operating point
    #: (:data:`OPERATING_POINT_FILE`), none when it has no such file
    min_score: float | None = None
    reasoning: bool = True  # stage 3
    reliability: bool = True
    n_samples: int = 5
    n_questions: int = 3
    max_new_tokens: int = 768  # stage 3 answers
    reasoning_batch: int = 8  # stage 3 candidates reasoned in one batched generation


@dataclass
class Preread:
    series_uid: str
    model: str
    engine: str
    sweep: SweepResult
    candidates: list[Candidate]  # every candidate after NMS, best first (for FROC)
    lesions: list[Candidate]  # reported: min_slices, operating point, max_lesions; reasoned in stage 3
    timing: dict[str, float]
    cancelled: bool = False
    operating_point: OperatingPoint | None = None
    below_operating_point: int = 0  # candidates with enough slices not listed because they score below it
    #: the best of those (at most ``max_lesions``, best first, located but not reasoned): what the reader can ask to
    #: see ("Show weaker candidates" in the viewer)
    weaker: list[Candidate] = field(default_factory=list)

    def to_json(self) -> dict:
        per_slice = [{"slice": k, "windows": ws, "lung_fraction": None if k not in self.sweep.lung_fractions
                      else round(self.sweep.lung_fractions[k], 4)} for k, ws in sorted(self.sweep.windows.items())]
        counts: dict[str, int] = {}
        for ws in self.sweep.windows.values():
            for w in ws:
                counts[w] = counts.get(w, 0) + 1
        return {
            "series_uid": self.series_uid,
            "model": {"id": self.model, "engine": self.engine},
            "lesions": [c.to_json() for c in self.lesions],
            "candidates": len(self.candidates),
            "operating_point": None if self.operating_point is None else self.operating_point.to_json(),
            "below_operating_point": self.below_operating_point,
            "weaker": [c.to_json() for c in self.weaker],
            "windows": {"rule": "lung window where lung (-950..-500 HU) is >= 15% of the body section, both "
                                "from 3% to 15%, soft tissue below", "counts": counts, "slices": per_slice},
            "timing": {k: round(v, 3) for k, v in self.timing.items()},
            "cancelled": self.cancelled,
        }


def from_json(document: dict, volume: Volume) -> Preread:
    """A pre-read saved by :meth:`Preread.to_json` (the pre-read on arrival writes one per series) back onto
    the loaded ``volume``: its lesions with their boxes, sizes, reliability and descriptions (the five-step
    answers themselves are not kept). PrereadError when it is not this series as loaded now."""
    series = document.get("series") or {}
    if document.get("series_uid") != volume.series.uid:
        raise PrereadError("The saved pre-read is of another series.")
    if series.get("slices") not in (None, len(volume)):
        raise PrereadError(f"The saved pre-read read {series.get('slices')} slices; this series has {len(volume)} "
                           "now (pre-read it again).")
    lesions: list[Candidate] = []
    weaker: list[Candidate] = []
    try:
        for les, into in [(x, lesions) for x in document.get("lesions") or []] + \
                [(x, weaker) for x in document.get("weaker") or []]:
            window, phrase, score = str(les.get("window") or ""), str(les.get("phrase") or "lesion"), float(les["score"])
            detections = {}
            for k, b in (les.get("boxes") or {}).items():
                if not 0 <= int(k) < len(volume):
                    raise PrereadError(f"Lesion {les.get('id')}: slice {int(k) + 1} is not in this series.")
                box = Box(*(float(b[c]) for c in ("x0", "y0", "x1", "y1")))
                detections[int(k)] = make_detection(volume, int(k), box, window, phrase, score)
            key = int(les["key_slice"])
            if key not in detections:
                raise PrereadError(f"Lesion {les.get('id')}: no box on its key slice.")
            into.append(Candidate(
                str(les["id"]), detections, np.asarray(les["center_patient_mm"], dtype=float),
                float(les["diameter_mm"]), float(les["volume_ml"]), score, key, None, les.get("reliability"),
                str(les.get("location") or ""), str(les.get("description") or ""),
                None if les.get("contrast_hu") is None else float(les["contrast_hu"])))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # e.g. a lesion that is not an object
        raise PrereadError(f"The saved pre-read is damaged ({type(exc).__name__}: {exc}).") from None
    model = document.get("model") or {}
    timing = {str(k): float(v) for k, v in (document.get("timing") or {}).items() if isinstance(v, (int, float))}
    sweep_result = SweepResult([d for c in lesions for d in c.detections.values()], {}, {}, 0, 0,
                               timing.get("sweep_s", 0.0))
    point = document.get("operating_point")
    try:
        point = None if not isinstance(point, dict) else OperatingPoint(
            float(point["min_score"]), str(point.get("source") or ""),
            None if point.get("fp_per_volume") is None else float(point["fp_per_volume"]))
        below = int(document.get("below_operating_point") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise PrereadError(f"The saved pre-read is damaged ({type(exc).__name__}: {exc}).") from None
    return Preread(volume.series.uid, str(model.get("id") or ""), str(model.get("engine") or ""), sweep_result,
                   lesions + weaker, lesions, timing, bool(document.get("cancelled")), point, below, weaker)


def preread(
    engine: Engine,
    volume: Volume,
    options: PrereadOptions = PrereadOptions(),
    *,
    image_spec: ImageSpec | None = None,
    study_description: str = "",
    cancel: CancelFn | None = None,
    progress: ProgressFn | None = None,
    stage: Callable[[str], None] | None = None,
) -> Preread:
    """All three stages. ``progress(done, total)`` counts sweep requests, then stage-3 lesions;
    ``stage(name)`` says which stage starts ("sweep", "link", "reasoning")."""
    t0 = time.perf_counter()
    say = stage or (lambda name: None)
    say("sweep")
    sw = sweep(engine, volume, batch_size=options.batch_size, image_spec=image_spec, cancel=cancel,
               progress=progress)
    t1 = time.perf_counter()
    say("link")
    candidates = rank_by_contrast(volume, link(volume, sw.detections))
    point = (OperatingPoint(options.min_score, "options") if options.min_score is not None
             else operating_point_for(getattr(engine, "folder", None)))
    enough = [c for c in candidates if len(c.detections) >= options.min_slices]
    above = [c for c in enough if point is None or c.score >= point.min_score]
    lesions = above[: options.max_lesions]
    weaker = [c for c in enough if point is not None and c.score < point.min_score][: options.max_lesions]
    t2 = time.perf_counter()
    cancelled = sw.cancelled
    fractions = dict(sw.lung_fractions)  # the regions' cache (the sweep's own stays as measured, for its JSON)
    if options.reasoning and not cancelled and lesions:
        say("reasoning")
        assistant = Assistant(engine, image_spec=image_spec, max_new_tokens=options.max_new_tokens)
        reason(engine, volume, lesions, assistant=assistant, n_samples=options.n_samples,
               n_questions=options.n_questions, study_description=study_description, cancel=cancel,
               progress=progress, reliability=options.reliability, batch_size=options.reasoning_batch,
               lung_fractions=fractions)
        cancelled = bool(cancel and cancel())
    for c in lesions + weaker:
        if not c.location:
            c.location = location_of(volume, c, fractions)
    t3 = time.perf_counter()
    timing = {"sweep_s": t1 - t0, "link_s": t2 - t1, "reasoning_s": t3 - t2, "total_s": t3 - t0,
              "slices": float(len(sw.windows)), "requests": float(sw.requests), "batches": float(sw.batches)}
    return Preread(volume.series.uid, engine.model_id, engine.describe(), sw, candidates, lesions, timing, cancelled,
                   point, len(enough) - len(above), weaker)
