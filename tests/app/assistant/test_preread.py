"""Series pre-read: linking hand-made boxes into 3-D lesions, windows per slice, the batched sweep with a
scripted engine on a generated study (finds its lesions; cancel; progress; batches), and stage 3."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from app.assistant.preread import (
    LUNG,
    SOFT_TISSUE,
    PrereadOptions,
    choose_windows,
    link,
    location_of,
    lung_fraction,
    rank_by_contrast,
    make_detection,
    preread,
    sweep,
)
from app.core.errors import XMedError
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

    def __init__(self, volume: Volume, truth: dict, extra_slice: int | None = None,
                 extra_box: Box = Box(100, 100, 160, 160)) -> None:
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
                    parts.append(format_grounding("nodule", [extra_box]))
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


def test_a_strip_no_lesion_could_have_is_not_a_detection(study):
    """The demo model now and then writes a strip down the lung (20 × 190 mm) that the list showed as a 190 mm
    "mass": a box more than four times longer than wide is dropped from the sweep; a square one is kept."""
    from app.assistant.preread import MAX_BOX_ASPECT, plausible_box

    _, vol, truth = study
    assert plausible_box(Box(0, 0, 40, 160)) and not plausible_box(Box(0, 0, 40, 161)) and MAX_BOX_ASPECT == 4.0
    assert not plausible_box(Box(5, 5, 5, 30))  # no width at all
    on = [d for d in sweep(TruthEngine(vol, truth, extra_slice=10), vol, batch_size=8, image_spec=SPEC).detections
          if d.slice == 10]
    strip = TruthEngine(vol, truth, extra_slice=10, extra_box=Box(700, 80, 740, 600))
    off = [d for d in sweep(strip, vol, batch_size=8, image_spec=SPEC).detections if d.slice == 10]
    assert len(off) == len(on) - 1 and all(plausible_box(d.box) for d in off)


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


def test_a_lesions_region_comes_from_the_pixels_not_from_the_window_it_was_found_in(study):
    """A box found in the soft-tissue window on a lung slice is still in the lung; a box on the first slice (the
    lung apex, swept in both windows) was once called "upper abdomen": the region is now read from the HU."""
    _, vol, truth = study

    def where(k: int, box: tuple[int, int, int, int], window: str = "soft tissue") -> str:
        (c,) = link(vol, [make_detection(vol, k, Box(*box), window, "lesion")])
        return location_of(vol, c)

    boxes = {b["lesion_id"]: (s["index"], (b["x0"], b["y0"], b["x1"], b["y1"])) for s in truth["slices"] for b in s["boxes"]}
    side = {les["id"]: les["location"].split()[0] for les in truth["lesions"]}
    for lid in ("L1", "L3"):  # a 6 mm nodule and a 32 mm mass in the lung
        assert where(*boxes[lid]) == f"{side[lid]} lung"
    assert where(*boxes["L5"], window="lung") == f"{side['L5']} upper abdomen"  # the liver, whatever the window
    mid = len(vol) * 20 // 48
    assert where(mid, (58, 50, 70, 62)).endswith(" chest")  # the mediastinum of a lung slice
    assert where(0, (40, 50, 50, 60)).endswith(" body")  # above the lungs: not claimed to be abdomen
    assert where(len(vol) - 1, (60, 60, 70, 70)).endswith(" upper abdomen")


def test_candidates_on_tissue_that_looks_the_same_inside_and_out_rank_below_those_that_stand_out(study):
    """Most false boxes of the sweep sit on homogeneous liver or lung: on CT a candidate's score is scaled by how
    much its boxes stand out from a ring around them, and the list is ranked and numbered again."""
    _, vol, truth = study
    (row,) = [r for r in truth["slices"] if r["index"] == 39]  # the 24 mm liver lesion (L5)
    b = row["boxes"][0]
    lesion = [make_detection(vol, k, Box(b["x0"], b["y0"], b["x1"], b["y1"]), "soft tissue", "lesion", 0.6)
              for k in (38, 39, 40)]
    liver = [make_detection(vol, k, Box(26, 52, 36, 62), "soft tissue", "lesion", 0.9)  # plain liver, below L5
             for k in (42, 43, 44)]
    linked = link(vol, lesion + liver)
    assert [c.key_slice for c in linked] == [43, 39]  # the model's confidence put the plain liver first
    ranked = rank_by_contrast(vol, linked)
    assert [c.key_slice for c in ranked] == [39, 43] and [c.id for c in ranked] == ["P1", "P2"]
    first, second = ranked
    assert first.contrast_hu >= 10.0 and second.contrast_hu < 10.0  # the best of nine places on plain liver: noise
    assert second.score < 0.75 * 0.9 * 3 / 4  # scaled down from confidence × n / (n + 1)
    assert first.to_json()["contrast_hu"] == round(first.contrast_hu, 1)
    mr = Volume(series=Series(uid="1.2.3.8", number=1, description="MR", modality="MR"), frames=vol.frames,
                slopes=vol.slopes, intercepts=vol.intercepts, geometry=vol.geometry, default_window=Window(400, 40),
                loaded=len(vol))
    kept = link(mr, [make_detection(mr, k, d.box, d.window, d.phrase, d.confidence) for k, d in
                     [(d.slice, d) for d in lesion + liver]])
    assert [c.key_slice for c in rank_by_contrast(mr, kept)] == [43, 39]  # no HU: the model's order stays


def test_a_box_drawn_off_a_lesion_is_ranked_by_the_lesion_it_misses_by_a_quarter(study):
    """The demo model's boxes often sit off the lesion's centre: the ranking looks for the contrast within a quarter
    of the box's size of where it was drawn (the reliability pass's density check still measures the box as drawn)."""
    from app.assistant.evidence import box_contrast
    from app.assistant.preread import located_contrast

    _, vol, truth = study
    (row,) = [r for r in truth["slices"] if r["index"] == 39]  # the 24 mm liver lesion (L5)
    b = row["boxes"][0]
    on = Box(b["x0"], b["y0"], b["x1"], b["y1"])
    w, h = on.width, on.height
    off = Box(on.x0 - 0.25 * w, on.y0 - 0.25 * h, on.x1 - 0.25 * w, on.y1 - 0.25 * h)  # up and left by a quarter
    values = vol.values(39)
    assert located_contrast(values, off) >= box_contrast(values, on) > 10.0
    assert box_contrast(values, off) < box_contrast(values, on)
    assert located_contrast(values, on) >= box_contrast(values, on)
    assert located_contrast(values, Box(0, 0, 1, 1)) is None  # too few pixels anywhere


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


def test_a_saved_preread_reads_back_onto_its_series_and_nothing_else(study, tmp_path):
    """What the pre-read on arrival writes (Preread.to_json) comes back onto the loaded series when the study
    is opened: the same lesions, boxes, key slices, sizes and reliability; refused for another series, a
    series with other slices now, or a damaged file."""
    import copy
    import json

    from app.assistant.preread import PrereadError, from_json

    _, vol, truth = study
    out = preread(TruthEngine(vol, truth), vol, PrereadOptions(batch_size=8, max_lesions=3, n_samples=2,
                                                                n_questions=1), image_spec=SPEC)
    doc = json.loads(json.dumps(out.to_json()))  # through a file's text, as it is stored
    doc["series"] = {"uid": vol.series.uid, "slices": len(vol)}
    back = from_json(doc, vol)
    assert back.model == out.model and back.series_uid == vol.series.uid and back.lesions
    assert [c.to_json() for c in back.lesions] == [les for les in doc["lesions"]]  # every field as saved
    for a, b in zip(back.lesions, out.lesions):
        assert a.key_box.iou(b.key_box) > 0.99 and a.slices == b.slices and a.answer is None
    other = copy.deepcopy(doc)
    other["series_uid"] = "1.2.3"
    with pytest.raises(PrereadError, match="another series"):
        from_json(other, vol)
    shorter = copy.deepcopy(doc)
    shorter["series"]["slices"] = len(vol) - 1
    with pytest.raises(PrereadError, match="pre-read it again"):
        from_json(shorter, vol)
    for damage in (lambda d: d["lesions"][0].pop("key_slice"), lambda d: d["lesions"][0].update(score="x"),
                   lambda d: d["lesions"][0]["boxes"].update({"999": d["lesions"][0]["box_pixels"]}),
                   lambda d: d.update(lesions="P1"), lambda d: d.update(weaker=[7])):
        bad = copy.deepcopy(doc)
        damage(bad)
        with pytest.raises(PrereadError):
            from_json(bad, vol)


def test_the_list_keeps_the_candidates_at_or_above_the_models_operating_point(study, tmp_path):
    """A model folder's preread_operating_point.json sets the score a candidate needs to be listed (and reasoned):
    the weaker ones stay in the candidates (the FROC ranks them all), their count is said and saved; an explicit
    min_score wins over the file; a damaged file is one clear error, not a crash or a silent full list."""
    import json

    from app.assistant.preread import OPERATING_POINT_FILE, PrereadError, below_point_note, from_json

    _, vol, truth = study
    engine = TruthEngine(vol, truth, extra_slice=10)  # one made-up box: a one-slice candidate
    options = PrereadOptions(batch_size=8, reasoning=False)
    everything = preread(engine, vol, options, image_spec=SPEC)
    assert everything.operating_point is None and everything.below_operating_point == 0
    scores = sorted({round(c.score, 6) for c in everything.candidates})
    assert len(scores) >= 2 and len(everything.lesions) == min(10, len(everything.candidates))
    cut = (scores[0] + scores[1]) / 2  # leaves out the weakest candidate(s)
    weak = sum(1 for c in everything.candidates if c.score < cut)
    engine.folder = tmp_path
    (tmp_path / OPERATING_POINT_FILE).write_text(json.dumps({"min_score": cut, "fp_per_volume": 1.0}))
    out = preread(engine, vol, options, image_spec=SPEC)
    assert len(out.candidates) == len(everything.candidates)  # all still ranked for the FROC
    assert out.lesions and all(c.score >= cut for c in out.lesions)
    assert out.below_operating_point == weak >= 1
    assert len(out.lesions) == min(10, len(out.candidates) - weak)
    # the weaker ones are kept for a reader who asks to see them: best first, located, not reasoned
    assert [c.id for c in out.weaker] == [c.id for c in out.candidates if c.score < cut][:10]
    assert all(c.location and c.answer is None and c.reliability is None for c in out.weaker)
    doc = json.loads(json.dumps(out.to_json()))
    assert doc["operating_point"] == {"min_score": round(cut, 6), "source": str(tmp_path / OPERATING_POINT_FILE),
                                      "fp_per_volume": 1.0}
    assert doc["below_operating_point"] == weak
    note = below_point_note(weak, cut)
    assert note.startswith(f"{weak} weaker candidate") and f"{cut:.2f}" in note and below_point_note(0, cut) == ""
    doc["series"] = {"uid": vol.series.uid, "slices": len(vol)}
    back = from_json(doc, vol)  # the pre-read on arrival's file keeps it
    assert back.operating_point.min_score == pytest.approx(cut) and back.below_operating_point == weak
    assert [c.to_json() for c in back.weaker] == doc["weaker"] and len(doc["weaker"]) == len(out.weaker)
    # an explicit min_score (xmedgpt preread --min-score 0) lists every candidate again
    again = preread(engine, vol, PrereadOptions(batch_size=8, reasoning=False, min_score=0.0), image_spec=SPEC)
    assert len(again.lesions) == len(everything.lesions) and again.below_operating_point == 0
    assert again.operating_point.source == "options"
    for damaged in ("{not json", json.dumps({"fp_per_volume": 1}), json.dumps({"min_score": 7})):
        (tmp_path / OPERATING_POINT_FILE).write_text(damaged)
        with pytest.raises(PrereadError, match="operating point .* is damaged"):
            preread(engine, vol, options, image_spec=SPEC)


def test_a_preread_run_in_the_viewer_is_kept_with_its_study(study, tmp_path):
    """The reader's own pre-read is kept as one on arrival is: its document beside theirs, a done job (the study
    list's AI state and worst tier), read back when the study is opened again ("in the viewer"), and the
    pre-read on arrival takes the series as read. A series not in the local database is not kept."""
    import json

    from app.assistant.preread import from_json
    from app.assistant.study_preread import VIEWER_REASON, keep_viewer_preread, saved_preread
    from app.studies.db import StudyDB
    from app.studies.importer import import_paths
    from app.studies.queue import JobQueue

    folder, vol, truth = study
    out = preread(TruthEngine(vol, truth), vol, PrereadOptions(batch_size=8, max_lesions=3, n_samples=2,
                                                                n_questions=1), image_spec=SPEC)
    db = StudyDB(tmp_path / "studies.sqlite")
    try:
        results = tmp_path / "results"
        assert keep_viewer_preread(db, results, vol, out) is None and not results.exists()  # not indexed
        import_paths(db, [folder])
        (study_row,) = db.search()
        assert study_row.ai_state == "none"
        path = keep_viewer_preread(db, results, vol, out)
        assert path is not None and path.parent.name == study_row.study_uid
        doc = json.loads(path.read_text())
        assert doc["study_uid"] == study_row.study_uid and doc["series"]["slices"] == len(vol)
        tiers = {les["reliability"]["tier"] for les in doc["lesions"]}
        expected = next(t for t in ("red", "amber", "green") if t in tiers)
        study_row = db.get(study_row.study_uid)
        assert (study_row.ai_state, study_row.ai_worst_tier) == ("done", expected)
        saved = saved_preread(db, vol.series.uid)
        assert saved is not None and saved.reason == VIEWER_REASON and saved.origin == "in the viewer"
        assert [c.to_json() for c in from_json(saved.document, vol).lesions] == doc["lesions"]
        assert JobQueue(db, runner=None).enqueue_study(study_row.study_uid, reason="arrival") == []  # read already
    finally:
        db.close()


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


# ----------------------------------------------------------------------------- the prefetching sweep

PRODUCER = "xmedgpt-preread-prepare"


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == PRODUCER and t.is_alive()]


def _sweep_key(sw) -> tuple:
    dets = [(d.slice, d.box, d.window, d.phrase, d.confidence, tuple(np.round(d.center_mm, 9)), d.width_mm,
             d.height_mm) for d in sw.detections]
    return dets, list(sw.answers.items()), sw.requests, sw.batches, sw.windows, sw.cancelled


class EncodingTruthEngine(TruthEngine):
    """The truth engine split like the local engine: ``encode`` (recording its thread) + ``generate_encoded``."""

    def __init__(self, *args, fail_encode_slices: Sequence[int] = (), fail_window: Window = LUNG, delay: float = 0.0,
                 answer_first_after_encodes: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encode_threads: list[str] = []  # in the order encode was called
        self.encoder_of: dict[tuple, str] = {}  # a batch's image keys → the thread that encoded it
        self.answered: list[tuple] = []  # the image keys of each batch answered, in order
        # encoding a batch that holds one of these slices (rendered in ``fail_window``) fails, whichever thread
        # gets to it and in whatever order the batches are encoded; ``failed_in``: the thread it failed in
        volume = args[0]
        self.fail_keys = {_image_key(prepare_model_image(render(volume, k, fail_window), SPEC,
                                                         pixel_spacing=volume.geometry.spacing).rgb)
                          for k in fail_encode_slices}
        self.failed_in: str | None = None
        self.delay = delay  # seconds per answered batch
        # the first batch is answered once this many batches were handed to encode (bounded): the producer, which
        # encodes the next batch while one is answered, gets there first even on a busy machine
        self.answer_first_after_encodes = answer_first_after_encodes
        self._encoded = threading.Condition()

    def encode(self, requests, *, on_device=True):
        with self._encoded:
            self.encode_threads.append(threading.current_thread().name)
            self.encoder_of[tuple(_image_key(r.image) for r in requests)] = threading.current_thread().name
            self._encoded.notify_all()
        if any(_image_key(r.image) in self.fail_keys for r in requests):
            self.failed_in = threading.current_thread().name
            raise XMedError("The image handed to the model must be RGB, 8 bits per channel.")
        return {"keys": [_image_key(r.image) for r in requests], "on_device": on_device}

    def generate_encoded(self, requests, inputs, cancel=None):
        assert inputs["keys"] == [_image_key(r.image) for r in requests]
        if not self.batches and self.answer_first_after_encodes:
            with self._encoded:
                self._encoded.wait_for(lambda: len(self.encode_threads) >= self.answer_first_after_encodes, 10)
        time.sleep(self.delay)
        self.answered.append(tuple(inputs["keys"]))
        self.batches.append(len(requests))
        return [Generation(text=self.answers.get(k, "No lesion is seen.")) for k in inputs["keys"]]


@pytest.fixture
def spy_render(monkeypatch):
    """Records every render of the sweep: (slice, window name, thread name), and lets a test slow it down."""
    import app.assistant.preread as pr

    calls: list[tuple[int, str, str]] = []
    cond = threading.Condition()
    state = {"delay": 0.0, "fail": None}
    real = pr.render

    def render_spy(volume, k, window=None, *args, **kwargs):
        if state["delay"]:
            time.sleep(state["delay"])
        if state["fail"] == k:
            state["failed_on"] = threading.current_thread().name
            raise XMedError(f"Slice {k} could not be rendered.")
        out = real(volume, k, window, *args, **kwargs)
        with cond:
            calls.append((k, window.name if window is not None else "default", threading.current_thread().name))
            cond.notify_all()
        return out

    monkeypatch.setattr(pr, "render", render_spy)
    return calls, cond, state



@pytest.mark.parametrize("engine_class", [TruthEngine, EncodingTruthEngine])
def test_prefetch_prepares_the_next_batch_while_this_one_is_answered(study, spy_render, engine_class):
    _, vol, truth = study
    calls, cond, _ = spy_render
    ks = range(8, 28)  # 20 requests in batches of 4: 5 batches
    sequential = engine_class(vol, truth, extra_slice=12)
    before = sweep(sequential, vol, slices=ks, batch_size=4, image_spec=SPEC, windows=lambda v, k: [LUNG],
                   prefetch=False)
    assert {c[2] for c in calls} == {threading.current_thread().name}  # without prefetch: all on this thread
    calls.clear()

    engine = engine_class(vol, truth, extra_slice=12)
    seen_ahead: list[int] = []
    answer = engine.generate_encoded if engine_class is EncodingTruthEngine else engine.generate_batch

    def answering(requests, *args, **kwargs):
        answered = sum(engine.batches)  # requests answered before this batch
        if answered + 4 < 20:  # the next batch is being prepared while this one is answered...
            with cond:
                assert cond.wait_for(lambda: len(calls) >= answered + 8, timeout=10), "next batch not prepared"
            time.sleep(0.1)
            seen_ahead.append(len(calls) - answered)  # ...and no further: one batch ahead at most
        return answer(requests, *args, **kwargs)

    if engine_class is EncodingTruthEngine:
        engine.generate_encoded = answering
    else:
        engine.generate_batch = answering
    after = sweep(engine, vol, slices=ks, batch_size=4, image_spec=SPEC, windows=lambda v, k: [LUNG])
    assert seen_ahead == [8, 8, 8, 8]
    # every batch after the first made by the producer (by slice: the caller may still be finishing an image of
    # the first batch, which both threads make, when the producer's first image of the second is recorded)
    assert {c[2] for c in calls if c[0] >= ks[4]} == {PRODUCER}
    assert sorted((k, w) for k, w, _ in calls) == [(k, "lung") for k in ks]  # each once
    if engine_class is EncodingTruthEngine:
        # by batch, not by call order: under load the caller may encode batch 1 after the producer encoded batch 2
        assert [engine.encoder_of[keys] for keys in engine.answered[1:]] == [PRODUCER] * 4
        assert sequential.encode_threads == ["MainThread"] * 5
    assert _sweep_key(after) == _sweep_key(before)  # the same answers and boxes, in the same order
    assert any(d.slice == 12 for d in after.detections) and len(after.answers) == 20
    assert not _producers()


def test_prefetched_sweep_with_the_demo_model_answers_as_the_sequential_one(tmp_path):
    from inference.engine.local import LocalEngine

    folder = write_ct_study(tmp_path / "ct", n_slices=12, size=96, seed=77)
    vol = load_series(scan([folder]).all_series()[0])
    engine = LocalEngine.from_folder(Path(__file__).resolve().parents[3] / "resources" / "models" / "demo",
                                     device="cpu")
    spec = ImageSpec.from_preprocessor_config(engine.folder)
    encoded_on: list[tuple[str, bool]] = []
    real_encode = engine.encode

    def encode(requests, *, on_device=True):
        encoded_on.append((threading.current_thread().name, on_device))
        return real_encode(requests, on_device=on_device)

    engine.encode = encode
    first = sweep(engine, vol, batch_size=5, image_spec=spec, max_new_tokens=24, prefetch=False)
    assert {t for t, _ in encoded_on} == {threading.current_thread().name}
    encoded_on.clear()
    second = sweep(engine, vol, batch_size=5, image_spec=spec, max_new_tokens=24)
    assert first.batches == second.batches >= 3 and PRODUCER in {t for t, _ in encoded_on}
    assert not any(on for _, on in encoded_on)  # encoded ahead on the CPU, moved when answered
    assert all(first.answers.values()) and _sweep_key(second) == _sweep_key(first)
    assert not _producers()


def test_cancel_mid_sweep_stops_the_producer_promptly(study, spy_render):
    _, vol, truth = study
    calls, _, state = spy_render
    state["delay"] = 0.05  # rendering is slow: the producer is busy when the cancel comes
    engine = TruthEngine(vol, truth)
    stop = threading.Event()
    at_cancel: list[int] = []
    answer = engine.generate_batch

    def answering(requests, cancel=None):
        out = answer(requests, cancel)
        if len(engine.batches) == 2:
            stop.set()
            at_cancel.append(len(calls))
        return out

    engine.generate_batch = answering
    t0 = time.perf_counter()
    sw = sweep(engine, vol, slices=range(40), batch_size=4, image_spec=SPEC, windows=lambda v, k: [LUNG],
               cancel=stop.is_set)
    assert sw.cancelled and sw.batches == 2 and engine.batches == [4, 4]
    assert PRODUCER in {c[2] for c in calls}
    assert not _producers()  # the producer's thread has ended when the sweep returns
    assert len(calls) <= at_cancel[0] + 1  # it stopped at the next image, not at the end of its batch
    assert time.perf_counter() - t0 < 0.05 * 40  # far from rendering all 40


def test_both_threads_render_the_first_batch(study, spy_render):
    _, vol, truth = study
    calls, _, state = spy_render
    state["delay"] = 0.03  # slow enough that the producer and the waiting caller each take some images
    engine = TruthEngine(vol, truth)
    sw = sweep(engine, vol, slices=range(16), batch_size=8, image_spec=SPEC, windows=lambda v, k: [LUNG])
    first = {t for k, _, t in calls if k < 8}
    assert first == {PRODUCER, threading.current_thread().name}
    assert {t for k, _, t in calls if k >= 8} <= first and sw.batches == 2 and not _producers()
    reference = sweep(TruthEngine(vol, truth), vol, slices=range(16), batch_size=8, image_spec=SPEC,
                      windows=lambda v, k: [LUNG], prefetch=False)
    assert _sweep_key(sw) == _sweep_key(reference)


def _answers_after(engine, seen: threading.Event) -> None:
    """Batches after the first are answered once ``seen`` is set (bounded): the producer, which prepares the next
    batch while one is answered, gets there first even on a busy machine (where the caller could otherwise catch
    up, make the batch itself and never let the producer ask)."""
    answer = engine.generate_batch

    def answering(requests, *args, **kwargs):
        if engine.batches:
            seen.wait(10)
        return answer(requests, *args, **kwargs)

    engine.generate_batch = answering


def test_cancel_seen_first_by_the_producer_ends_the_sweep(study):
    _, vol, truth = study
    engine = TruthEngine(vol, truth)
    told = threading.Event()
    _answers_after(engine, told)

    def cancel() -> bool:
        if threading.current_thread().name == PRODUCER and len(engine.batches) >= 1:
            told.set()
            return True
        return False
    # only the producer is told (a cancel flag set while it prepares): the caller learns it from the feed
    sw = sweep(engine, vol, slices=range(20), batch_size=4, image_spec=SPEC, windows=lambda v, k: [LUNG],
               cancel=cancel)
    assert sw.cancelled and 1 <= sw.batches < 5 and len(sw.answers) == 4 * sw.batches
    assert not _producers()


def test_a_cancel_callback_that_fails_on_the_producer_surfaces_instead_of_hanging(study):
    _, vol, truth = study
    engine = TruthEngine(vol, truth)
    died = threading.Event()
    _answers_after(engine, died)

    def cancel() -> bool:
        if threading.current_thread().name == PRODUCER and engine.batches:
            died.set()
            raise RuntimeError("the cancel flag's owner is gone")
        return False
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_try_sweep(engine, vol, cancel)), daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the sweep hung when its producer died"
    (outcome,) = result
    assert isinstance(outcome, RuntimeError) and "owner is gone" in str(outcome)
    assert not _producers()


def _try_sweep(engine, vol, cancel):
    try:
        return sweep(engine, vol, slices=range(20), batch_size=4, image_spec=SPEC, windows=lambda v, k: [LUNG],
                     cancel=cancel)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


@pytest.mark.parametrize("prefetch", [True, False])
def test_an_error_while_preparing_surfaces_where_its_batch_is_due(study, spy_render, prefetch):
    _, vol, truth = study
    _, _, state = spy_render
    state["fail"] = 18  # in the third batch
    engine = TruthEngine(vol, truth)
    if prefetch:  # the second batch is answered once the producer has tried the third (else, on a busy machine,
        answer = engine.generate_batch  # the caller can reach it first and help make it: also correct, not this test)

        def answering(requests, *args, **kwargs):
            if len(engine.batches) == 1:
                deadline = time.monotonic() + 10
                while "failed_on" not in state and time.monotonic() < deadline:
                    time.sleep(0.01)
            return answer(requests, *args, **kwargs)

        engine.generate_batch = answering
    with pytest.raises(XMedError, match=r"^Slice 18 could not be rendered\.$"):
        sweep(engine, vol, slices=range(10, 30), batch_size=4, image_spec=SPEC, windows=lambda v, k: [LUNG],
              prefetch=prefetch)
    assert engine.batches == [4, 4]  # the batches before it were answered, as without prefetch
    assert state["failed_on"] == (PRODUCER if prefetch else threading.current_thread().name)
    assert not _producers()


@pytest.mark.parametrize("prefetch", [True, False])
def test_an_error_while_encoding_surfaces_with_its_message(study, prefetch):
    _, vol, truth = study
    # the producer encodes batch 2 (slices 14-17) while batch 1 is answered (without prefetch, the caller after it);
    # on a busy machine the caller may encode batch 1 after the producer encoded batch 2: the failure follows the
    # batch, not the order of the calls
    engine = EncodingTruthEngine(vol, truth, fail_encode_slices=range(14, 18),
                                 answer_first_after_encodes=2 if prefetch else 0)
    seen: list[tuple[int, int]] = []
    with pytest.raises(XMedError, match=r"^The image handed to the model must be RGB, 8 bits per channel\.$"):
        sweep(engine, vol, slices=range(10, 30), batch_size=4, image_spec=SPEC, windows=lambda v, k: [LUNG],
              progress=lambda d, t: seen.append((d, t)), prefetch=prefetch)
    assert engine.batches == [4] and seen == [(0, 20), (4, 20)]
    assert engine.failed_in == (PRODUCER if prefetch else threading.current_thread().name)
    assert not _producers()


def test_a_lesions_description_is_its_own_line_of_the_detailed_description():
    """Several lesions at one key slice: step 3 describes them one per line, in step 2's order; each
    lesion of the list shows its own line (the whole step only when no box of the answer matches it)."""
    from types import SimpleNamespace

    from app.assistant.preread import _description
    from inference.types import ReasoningStep

    def finding(phrase, box):
        return SimpleNamespace(phrase=phrase, box_px=box, step=2)

    upper, lower = finding("mass", Box(100, 100, 140, 140)), finding("mass", Box(300, 300, 330, 330))
    step3 = ("L1: A 57 mm mass with spiculated margins in the right lower lobe.\n"
             "L2: A 39 mm mass with smooth margins in the left lower lobe.")
    answer = SimpleNamespace(steps=[ReasoningStep(3, "Detailed description", step3)], findings=[upper, lower])
    at = lambda box: SimpleNamespace(key_box=box)  # noqa: E731
    assert _description(answer, at(Box(302, 298, 332, 331))) == \
        "A 39 mm mass with smooth margins in the left lower lobe."
    assert _description(answer, at(Box(101, 99, 139, 141))) == \
        "A 57 mm mass with spiculated margins in the right lower lobe."
    # no box of the answer is this lesion: what the step says, introduced as not being about it
    from app.assistant.preread import UNBOXED_PREFIX

    assert _description(answer, at(Box(450, 450, 460, 460))) == (
        f"{UNBOXED_PREFIX} A 57 mm mass with spiculated margins in the right lower lobe. "
        "A 39 mm mass with smooth margins in the left lower lobe.")  # both lines, without their L1:/L2: labels
    one = SimpleNamespace(steps=[ReasoningStep(3, "Detailed description", "L1: A 12 mm nodule.")], findings=[])
    assert _description(one, at(Box(0, 0, 5, 5))) == f"{UNBOXED_PREFIX} A 12 mm nodule."
    boxed = SimpleNamespace(steps=one.steps, findings=[finding("nodule", Box(0, 0, 6, 6))])
    assert _description(boxed, at(Box(0, 0, 5, 5))) == "A 12 mm nodule."
