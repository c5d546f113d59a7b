"""The zoom pass: grounding over overlapping crops at the image's own scale (slicing-aided inference).

A 512-px CT slice shown to a 224-px vision tower is shrunk 2.3×: a 10 mm lesion (13 px at 0.74 mm/px)
becomes 6 px, under one vision patch. The zoom pass asks the same grounding question of square crops
of the image at 1:1 instead, laid out so that neighbours overlap by ``overlap`` pixels, and maps every
box back onto the whole image:

- a box touching a side of its crop that is not a side of the image is dropped: what it boxes goes on
  past that side, and with ``overlap`` at least the largest lesion (50 mm = 68 px at 0.74 mm/px; the
  default 80 px) another crop holds it whole;
- boxes from different crops that overlap (IoU ≥ ``merge_iou``, or one inside the other) are one
  finding: their coordinate-wise median is its box, its phrase the one most crops gave.

It is model-agnostic: each crop goes through the engine as any image does (the processor's own
resizing and tiling), so a real InternVL checkpoint takes the same path as the demo model. A model
is only as good on crops as its training made it at that scale (``training.study_corpus --crop``).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from inference.parsing import BOX_SCALE, format_grounding, parse_answer
from inference.types import Box, ChatRequest, Engine, Generation

#: What the zoom pass answers when no crop boxed anything (the phantom corpus's wording).
NOTHING_FOUND = "No lesion is seen."


@dataclass(frozen=True)
class ZoomFinding:
    phrase: str
    box: Box  # 0-1000 of the whole image
    votes: int  # crops that boxed it


@dataclass
class ZoomResult:
    findings: list[ZoomFinding]
    crops: int  # crops asked
    dropped_at_edges: int  # boxes dropped because they ran past an inner side of their crop
    token_logprobs: list[float]

    @property
    def text(self) -> str:
        """The findings as a grounding answer (what :func:`inference.parsing.parse_answer` reads back)."""
        if not self.findings:
            return NOTHING_FOUND
        return "\n".join(format_grounding(f.phrase, [f.box]) for f in self.findings)

    def generation(self) -> Generation:
        return Generation(self.text, list(self.token_logprobs))


def positions(length: int, crop: int, overlap: int) -> list[int]:
    """Crop starts along one side of ``length`` pixels: from 0, ``crop - overlap`` apart, the last one
    flush with the far side (so every pixel is in a crop and neighbours overlap by at least ``overlap``)."""
    if crop >= length:
        return [0]
    stride = max(1, crop - overlap)
    n = -(-(length - crop) // stride) + 1  # ceil
    if n == 1:
        return [0]
    # spread evenly: the overlap is at least the asked one
    return [round(i * (length - crop) / (n - 1)) for i in range(n)]


def crop_origins(width: int, height: int, crop: int, overlap: int) -> list[tuple[int, int]]:
    """(x, y) of every crop, row by row."""
    return [(x, y) for y in positions(height, crop, overlap) for x in positions(width, crop, overlap)]


def _to_pixels(box: Box, w: int, h: int) -> tuple[float, float, float, float]:
    return (box.x0 * w / BOX_SCALE, box.y0 * h / BOX_SCALE, box.x1 * w / BOX_SCALE, box.y1 * h / BOX_SCALE)


def merge(boxes: list[tuple[str, Box]], merge_iou: float = 0.3) -> list[ZoomFinding]:
    """One finding per group of overlapping boxes (IoU ≥ ``merge_iou`` or one inside the other), grouped
    transitively, in order of first appearance."""
    groups: list[list[int]] = []
    for i, (_p, box) in enumerate(boxes):
        joined = [g for g in groups if any(box.iou(boxes[j][1]) >= merge_iou or boxes[j][1].contains(box)
                                           or box.contains(boxes[j][1]) for j in g)]
        for g in joined:
            groups.remove(g)
        groups.append(sorted([i] + [j for g in joined for j in g]))
    groups.sort(key=lambda g: g[0])
    out = []
    for g in groups:
        members = [boxes[j][1] for j in g]
        box = Box(*(statistics.median(getattr(b, k) for b in members) for k in ("x0", "y0", "x1", "y1")))
        phrase = Counter(boxes[j][0] for j in g).most_common(1)[0][0]
        out.append(ZoomFinding(phrase, box, len(g)))
    return out


def zoom_ground(engine: Engine, request: ChatRequest, crop: int = 224, overlap: int = 80, edge_px: float = 2.0,
                merge_iou: float = 0.3) -> ZoomResult:
    """Ask ``request`` (a grounding question about ``request.image``) of every crop and merge the boxes
    (see the module docstring). An image no larger than ``crop`` is asked whole."""
    if request.image is None:
        raise ValueError("The zoom pass needs an image.")
    image = np.asarray(request.image)
    h, w = image.shape[:2]
    origins = crop_origins(w, h, crop, overlap)
    sizes = [(min(crop, w - x), min(crop, h - y)) for x, y in origins]
    requests = [replace(request, image=np.ascontiguousarray(image[y:y + ch, x:x + cw]))
                for (x, y), (cw, ch) in zip(origins, sizes)]
    batch = getattr(engine, "generate_batch", None)
    gens = list(batch(requests)) if callable(batch) and len(requests) > 1 else [engine.generate(r) for r in requests]
    found: list[tuple[str, Box]] = []
    dropped = 0
    logprobs: list[float] = []
    for (x, y), (cw, ch), gen in zip(origins, sizes, gens):
        logprobs += list(gen.token_logprobs)
        for phrase in parse_answer(gen.text).phrases:
            for box in phrase.boxes:
                x0, y0, x1, y1 = _to_pixels(box, cw, ch)
                cut = ((x > 0 and x0 <= edge_px) or (y > 0 and y0 <= edge_px)
                       or (x + cw < w and x1 >= cw - edge_px) or (y + ch < h and y1 >= ch - edge_px))
                if cut:
                    dropped += 1
                    continue
                found.append((phrase.phrase, Box((x + x0) * BOX_SCALE / w, (y + y0) * BOX_SCALE / h,
                                                 (x + x1) * BOX_SCALE / w, (y + y1) * BOX_SCALE / h)))
    return ZoomResult(merge(found, merge_iou), len(origins), dropped, logprobs)
