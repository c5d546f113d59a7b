"""Series pre-read: linking hand-made boxes into 3-D lesions, windows per slice, the batched sweep with a
scripted engine on a generated study (finds its lesions; cancel; progress; batches), and stage 3."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import pytest

from app.assistant.preread import (
    LUNG,
    SOFT_TISSUE,
    PrereadOptions,
    choose_windows,
    link,
    lung_fraction,
    make_detection,
    preread,
    sweep,
)
from app.dicom.display import render
from app.dicom.loader import load_series
from app.dicom.model import Geometry, Series, Volume, Window
from app.dicom.scan import scan
from app.synthetic.sample import load_ground_truth, write_ct_study
from inference.evaluation.froc import Prediction, TrueLesion, VolumeCase, froc
from inference.imaging import ImageSpec, prepare_model_image
from inference.parsing import format_grounding
from inference.types import Box, ChatRequest, Generation

SPEC = ImageSpec(tile_size=64, max_tiles=1, use_thumbnail=False)

# ----------------------------------------------------------------------------- a hand-made volume

N, ROWS, COLS = 20, 128, 128
PIX = 0.7  # mm
DZ = 2.0  # mm between slices
ORIGIN = np.array([-44.8, -30.0, 100.0])


def hand_volume() -> Volume:
    frames = np.zeros((N, ROWS, COLS), dtype=np.int16)
    origins = np.array([ORIGIN + [0, 0, -DZ * k] for k in range(N)])  # head to feet, z decreasing
    series = Series(uid="1.2.3.9", number=1, description="Axial", modality="CT", body_part="CHEST")
    return Volume(series=series, frames=frames, slopes=np.ones(N), intercepts=np.zeros(N),
                  geometry=Geometry(origins, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (PIX, PIX)),
                  default_window=Window(400, 40), loaded=N)


def det(vol, k, x0, y0, x1, y1, conf=1.0):
    return make_detection(vol, k, Box(x0, y0, x1, y1), "lung", "nodule", conf)


def test_one_lesion_over_five_slices_with_a_gap_is_one_candidate():
    vol = hand_volume()
    boxes = {5: (40, 40, 56, 56), 6: (39, 41, 57, 57), 8: (40, 40, 60, 58), 9: (41, 41, 57, 57), 10: (42, 42, 55, 55)}
    cands = link(vol, [det(vol, k, *b) for k, b in boxes.items()])
    assert len(cands) == 1
    c = cands[0]
    assert c.slices == (5, 10) and sorted(c.detections) == [5, 6, 8, 9, 10]
    assert c.key_slice == 8  # the largest box
    assert c.id == "P1"


def test_a_gap_of_two_slices_starts_a_new_track():
    vol = hand_volume()
    dets = [det(vol, k, 40, 40, 50, 50) for k in (2, 3, 6, 7)]
    cands = link(vol, dets)
    assert sorted(c.slices for c in cands) == [(2, 3), (6, 7)]


def test_two_lesions_on_the_same_slices_far_apart_are_two_candidates():
    vol = hand_volume()
    dets = [det(vol, k, 10, 10, 26, 26) for k in range(3, 8)] + [det(vol, k, 90, 90, 110, 112) for k in range(3, 8)]
    cands = link(vol, dets)
    assert len(cands) == 2
    assert {c.slices for c in cands} == {(3, 7)}
    xs = sorted(float(c.center_mm[0]) for c in cands)
    assert xs[1] - xs[0] > 50


def test_duplicates_are_suppressed():
    vol = hand_volume()
    # the same lesion boxed twice on every slice: an outer box and a concentric inner one (IoU 0.25, so both
    # survive the per-slice merge and form parallel tracks), plus an exact repeat (merged on the slice)
    dets = []
    for k in range(4, 9):
        dets += [det(vol, k, 40, 40, 80, 80, 0.9), det(vol, k, 50, 50, 70, 70, 0.6), det(vol, k, 40, 40, 80, 80, 0.8)]
    cands = link(vol, dets)
    assert len(cands) == 1
    assert cands[0].key_box == Box(40, 40, 80, 80) and cands[0].slices == (4, 8)


def test_geometry_gives_centre_diameter_and_volume_in_mm():
    vol = hand_volume()
    dets = [det(vol, k, 40, 30, 60, 40) for k in (4, 5, 6)]  # 20 × 10 px = 14 × 7 mm on three slices
    (c,) = link(vol, dets)
    cx = ORIGIN[0] + (50 - 0.5) * PIX  # box centre at pixel 50 (edges 40..60), pixel centres at edge + 0.5
    cy = ORIGIN[1] + (35 - 0.5) * PIX
    cz = ORIGIN[2] - DZ * 5
    np.testing.assert_allclose(c.center_mm, [cx, cy, cz], atol=1e-6)
    assert c.diameter_mm == pytest.approx(14.0)
    assert c.volume_ml == pytest.approx(3 * math.pi / 4 * 14.0 * 7.0 * DZ / 1000.0)
    data = c.to_json()
    assert data["slices"] == [4, 6] and data["key_slice"] == 5 and set(data["boxes"]) == {"4", "5", "6"}
    assert data["box_pixels"] == {"x0": 40, "y0": 30, "x1": 60, "y1": 40}


def test_missing_slice_inside_the_range_counts_in_the_volume():
    vol = hand_volume()
    (c,) = link(vol, [det(vol, k, 40, 40, 60, 60) for k in (3, 5)])
    one = math.pi / 4 * 14.0 * 14.0
    assert c.volume_ml == pytest.approx(3 * one * DZ / 1000.0)


# ----------------------------------------------------------------------------- a generated study

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = write_ct_study(tmp_path_factory.mktemp("preread") / "ct", n_slices=48, size=128, seed=4242)
    volume = load_series(scan([folder]).all_series()[0])
    return folder, volume, load_ground_truth(folder)


def test_windows_follow_the_lung_fraction(study):
    _, vol, _ = study
    top = vol.values(int(len(vol) * 0.4))  # mid chest
    bottom = vol.values(len(vol) - 2)  # upper abdomen
    assert lung_fraction(top) > 0.2 and choose_windows(top)[0] == [LUNG]
    assert lung_fraction(bottom) < 0.03 and choose_windows(bottom)[0] == [SOFT_TISSUE]
    air = np.full((64, 64), -1000.0)
    assert lung_fraction(air) == 0.0


def _image_key(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


FIVE_STEPS = ("Step 1: Structure identification\nAxial CT of the chest.\n"
              "Step 2: Region localization\n{boxes}\n"
              "Step 3: Detailed description\nA round solid nodule with smooth margins.\n"
              "Step 4: Holistic analysis\nA solitary finding.\n"
              "Step 5: Report synthesis\nA solid nodule.\n")


class TruthEngine:
    """Answers the sweep with the ground-truth boxes of the slice it is shown (found by the image's hash),
    records the batches it receives; ``extra`` adds a false box on one slice."""

    def __init__(self, volume: Volume, truth: dict, extra_slice: int | None = None) -> None:
        self.answers: dict[str, str] = {}
        self.reasoning: dict[str, str] = {}
        self.batches: list[int] = []
        self.reasoning_batches: list[int] = []
        self.generate_calls = 0
        for row in truth["slices"]:
            k = row["index"]
            for window in choose_windows(volume.values(k))[0]:
                image = prepare_model_image(render(volume, k, window), SPEC, pixel_spacing=volume.geometry.spacing)
                t = image.transform
                parts = []
                for b in row["boxes"]:
                    parts.append(format_grounding("nodule", [t.source_to_norm(Box(b["x0"], b["y0"], b["x1"], b["y1"]))]))
                if k == extra_slice:
                    parts.append(format_grounding("nodule", [Box(100, 100, 160, 160)]))
                self.answers[_image_key(image.rgb)] = "\n".join(parts) or "No lesion is seen."
                self.reasoning[_image_key(image.rgb)] = FIVE_STEPS.format(boxes=" ".join(parts) or "No lesion.")

    @property
    def model_id(self) -> str:
        return "truth-engine"

    def describe(self) -> str:
        return "truth-engine · test"

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        self.generate_calls += 1
        return Generation(text=self.answers.get(_image_key(request.image), "No lesion is seen."))

    def generate_batch(self, requests: Sequence[ChatRequest], cancel=None) -> list[Generation]:
        if all("five steps" in r.prompt for r in requests):  # the five-step prompt (stage 3), batched
            self.reasoning_batches.append(len(requests))
            return [Generation(text=self.reasoning.get(_image_key(r.image), FIVE_STEPS.format(boxes="No lesion.")))
                    for r in requests]
        self.batches.append(len(requests))
        return [Generation(text=self.answers.get(_image_key(r.image), "No lesion is seen.")) for r in requests]

    def stream(self, request, cancel=None):
        yield self.reasoning.get(_image_key(request.image), FIVE_STEPS.format(boxes="No lesion."))

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        return [[Generation(text="yes")] * n for _ in requests]


def test_sweep_finds_the_studys_lesions_in_batches_with_progress(study):
    _, vol, truth = study
    engine = TruthEngine(vol, truth, extra_slice=10)
    seen: list[tuple[int, int]] = []
    sw = sweep(engine, vol, batch_size=6, image_spec=SPEC, progress=lambda d, t: seen.append((d, t)))
    # batching really batches: several images per call, never one by one
    assert engine.generate_calls == 0 and max(engine.batches) == 6 and sum(engine.batches) == sw.requests
    assert sw.batches == math.ceil(sw.requests / 6) and sw.requests >= len(vol)
    # progress: from 0 to all, never backwards
    assert seen[0] == (0, sw.requests) and seen[-1] == (sw.requests, sw.requests)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    # the window of every slice is recorded, lung above, soft tissue below
    assert set(sw.windows) == set(range(len(vol)))
    assert sw.windows[int(len(vol) * 0.4)] == ["lung"] and sw.windows[len(vol) - 2] == ["soft tissue"]
    cands = link(vol, sw.detections)
    case = VolumeCase("study", [TrueLesion(tuple(les["center_patient_mm"]), les["size_mm"], les["id"])
                                for les in truth["lesions"]],
                      [Prediction(tuple(c.center_mm), c.score) for c in cands])
    result = froc([case])
    assert result.lesions == len(truth["lesions"]) >= 5
    assert result.sensitivity[2.0] == 1.0 and result.sensitivity[1.0] == 1.0
    assert result.false_positives == 1  # the one made-up box


def test_cancel_stops_the_sweep_between_batches(study):
    _, vol, truth = study
    engine = TruthEngine(vol, truth)
    calls = {"n": 0}

    def cancel() -> bool:
        return len(engine.batches) >= 2

    sw = sweep(engine, vol, batch_size=4, image_spec=SPEC, cancel=cancel,
               progress=lambda d, t: calls.__setitem__("n", calls["n"] + 1))
    assert sw.cancelled and len(engine.batches) == 2 and sw.batches == 2
    assert calls["n"] == 3  # 0, after batch 1, after batch 2


def test_preread_reasons_at_each_key_slice_and_carries_reliability(study):
    _, vol, truth = study
    engine = TruthEngine(vol, truth)
    out = preread(engine, vol, PrereadOptions(batch_size=8, max_lesions=2, n_samples=2, n_questions=1),
                  image_spec=SPEC)
    assert len(out.lesions) == 2 and len(out.candidates) >= len(truth["lesions"])
    assert engine.reasoning_batches == [2]  # stage 3: both lesions reasoned in one batched generation
    for c in out.lesions:
        assert c.answer is not None and c.answer.frame == c.key_slice
        rel = c.reliability
        assert set(rel) >= {"tier", "score", "checks"}
        assert rel["finding"] == "nodule"  # the reasoning boxed this lesion: its own tier and checks
        assert c.description == "A round solid nodule with smooth margins."
        assert c.location.split()[0] in ("left", "right")
    doc = out.to_json()
    assert doc["series_uid"] == vol.series.uid and doc["model"]["id"] == "truth-engine"
    assert doc["windows"]["counts"]["lung"] > 0 and len(doc["windows"]["slices"]) == len(vol)
    assert {"sweep_s", "link_s", "reasoning_s", "total_s"} <= set(doc["timing"])
    les = doc["lesions"][0]
    assert set(les) >= {"id", "slices", "key_slice", "box_pixels", "boxes", "center_patient_mm", "diameter_mm",
                        "volume_ml", "location", "description", "reliability"}


def test_engine_without_generate_batch_is_asked_one_by_one(study):
    _, vol, truth = study
    engine = TruthEngine(vol, truth)
    engine.generate_batch = None  # an engine that cannot batch
    sw = sweep(engine, vol, slices=range(10, 16), batch_size=4, image_spec=SPEC)
    assert engine.generate_calls == sw.requests and engine.batches == []


def test_ask_batch_answers_each_frame_as_ask_does(study):
    from app.assistant.ask import Assistant
    from app.assistant.preread import LUNG, SOFT_TISSUE

    _, vol, truth = study
    engine = TruthEngine(vol, truth)
    assistant = Assistant(engine, image_spec=SPEC)
    frames = [(row["index"], LUNG if choose_windows(vol.values(row["index"]))[0][0] == LUNG else SOFT_TISSUE)
              for row in truth["slices"] if row["boxes"]][:4]
    batched = assistant.ask_batch(vol, frames, "", task="reasoning")
    assert engine.reasoning_batches == [len(frames)]
    for (k, w), b in zip(frames, batched):
        one = assistant.ask(vol, k, w, "", task="reasoning")
        assert b.frame == k and b.raw_text == one.raw_text and b.finish_reason == "stop"
        assert [(f.phrase, f.box_px, f.step) for f in b.findings] == [(f.phrase, f.box_px, f.step) for f in one.findings]
        assert b.findings, "the truth engine boxes every lesion slice"
        assert [s.text for s in b.steps] == [s.text for s in one.steps]
