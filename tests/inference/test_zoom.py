"""The zoom pass (issue #14, item 2): crops at the image's own scale, boxes mapped back and merged.

The engine here is a pixel detector, not a model: it boxes the bright blobs of the crop it is shown
(as a perfect grounding model would, cut-off blobs included), so what is tested is the pass itself —
the crop layout, the mapping back to the whole image, dropping boxes cut by an inner side, merging.
"""

from __future__ import annotations

import numpy as np
import pytest

from app.synthetic.truth import to_1000
from inference.parsing import format_grounding, parse_answer
from inference.types import Box, ChatRequest, Generation
from inference.zoom import NOTHING_FOUND, crop_origins, merge, positions, zoom_ground


class BlobDetector:
    """Boxes every 4-connected bright region of the image it is given, on the 0-1000 scale of that image."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.batches = 0

    def model_id(self) -> str:
        return "blobs"

    def describe(self) -> str:
        return "blob detector"

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        img = np.asarray(request.image)[..., 0] > 128
        self.seen.append(img.shape)
        h, w = img.shape
        label = np.zeros(img.shape, dtype=np.int32)
        lines = []
        for sy, sx in zip(*np.nonzero(img)):
            if label[sy, sx]:
                continue
            label[sy, sx] = len(lines) + 1
            stack, ys, xs = [(sy, sx)], [], []
            while stack:  # bounded by the pixels: each is pushed once
                y, x = stack.pop()
                ys.append(y)
                xs.append(x)
                for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if 0 <= ny < h and 0 <= nx < w and img[ny, nx] and not label[ny, nx]:
                        label[ny, nx] = len(lines) + 1
                        stack.append((ny, nx))
            box = to_1000((min(xs), min(ys), max(xs) + 1, max(ys) + 1), w, h)
            lines.append(format_grounding("nodule", [Box(*map(float, box))]))
        return Generation("\n".join(lines) or "No lesion is seen.", [-0.1])

    def generate_batch(self, requests, cancel=None):
        self.batches += 1
        return [self.generate(r) for r in requests]


def _image(blobs, size=512) -> np.ndarray:
    img = np.zeros((size, size, 3), dtype=np.uint8)
    for x0, y0, x1, y1 in blobs:
        img[y0:y1, x0:x1] = 255
    return img


def _px(box: Box, size=512) -> tuple[float, float, float, float]:
    return tuple(v * size / 1000 for v in (box.x0, box.y0, box.x1, box.y1))


def test_crops_cover_the_image_and_overlap_by_at_least_the_asked_pixels():
    assert positions(512, 224, 80) == [0, 144, 288]
    assert positions(224, 224, 80) == [0] and positions(100, 224, 80) == [0]
    for length, crop, overlap in ((512, 224, 80), (600, 224, 100), (1000, 300, 64), (225, 224, 80)):
        starts = positions(length, crop, overlap)
        assert starts[0] == 0 and starts[-1] + crop == length
        assert all(b - a <= crop - overlap for a, b in zip(starts, starts[1:]))
    assert len(crop_origins(512, 512, 224, 80)) == 9


@pytest.mark.parametrize("blob", [(300, 180, 330, 210),  # in the middle, across the crops' seams
                                  (140, 140, 150, 150),  # a 10-px nodule where four crops overlap
                                  (0, 250, 40, 290),  # on the image's left side
                                  (440, 470, 512, 512)])  # in the bottom right corner, touching two sides
def test_one_blob_anywhere_is_one_box_on_the_whole_image(blob):
    engine = BlobDetector()
    result = zoom_ground(engine, ChatRequest("Locate every lesion.", _image([blob])))
    assert result.crops == 9 and engine.batches == 1 and set(engine.seen) == {(224, 224)}
    assert len(result.findings) == 1, result.findings
    got = _px(result.findings[0].box)
    assert got == pytest.approx(blob, abs=1.0)
    assert [p.phrase for p in parse_answer(result.text).phrases] == ["nodule"]


def test_cut_boxes_are_dropped_and_separate_lesions_stay_separate():
    blobs = [(200, 60, 260, 120), (20, 400, 34, 414), (380, 300, 430, 350)]
    result = zoom_ground(BlobDetector(), ChatRequest("Locate every lesion.", _image(blobs)))
    assert result.dropped_at_edges > 0  # the first blob crosses a seam: its cut halves are dropped
    got = sorted(_px(f.box) for f in result.findings)
    assert len(got) == 3
    for g, b in zip(got, sorted(blobs)):
        assert g == pytest.approx(b, abs=1.0)


def test_nothing_found_says_so_and_a_small_image_is_asked_whole():
    engine = BlobDetector()
    assert zoom_ground(engine, ChatRequest("Locate.", _image([]))).text == NOTHING_FOUND
    engine = BlobDetector()
    result = zoom_ground(engine, ChatRequest("Locate.", _image([(10, 10, 30, 30)], size=200)))
    assert result.crops == 1 and engine.seen == [(200, 200)] and engine.batches == 0
    assert _px(result.findings[0].box, 200) == pytest.approx((10, 10, 30, 30), abs=1.0)


def test_merge_takes_the_median_box_and_the_phrase_most_crops_gave():
    boxes = [("mass", Box(100, 100, 200, 200)), ("nodule", Box(104, 98, 204, 196)), ("mass", Box(98, 102, 198, 204)),
             ("cyst", Box(600, 600, 650, 650)), ("cyst", Box(610, 610, 640, 640))]  # the last inside the one before
    merged = merge(boxes)
    assert [(f.phrase, f.votes) for f in merged] == [("mass", 3), ("cyst", 2)]
    assert (merged[0].box.x0, merged[0].box.y0, merged[0].box.x1, merged[0].box.y1) == (100, 100, 200, 200)
