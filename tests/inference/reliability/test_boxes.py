"""Spatial consistency (inference.reliability.boxes): a finding's phrase grounded again N times,
the boxes clustered by overlap, the draft's box compared with them; batched with the questions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inference.reliability.boxes import (
    GroundingProbe,
    cluster_boxes,
    first_box,
    grounding_request,
    score_boxes,
)
from inference.reliability.checks import CONSISTENCY, NEGATIVE
from inference.reliability.decomposition import DraftFinding
from inference.reliability.pipeline import ReliabilitySettings, assess
from inference.reliability.scoring import State, Thresholds, Tier
from inference.types import Box, Generation
from tests.inference.reliability.test_pipeline import ScriptedEngine

TH = Thresholds(green=0.7, amber=0.4, estimator="discrete")
DRAFT = Box(600, 250, 700, 500)
NEAR = Box(610, 260, 705, 505)  # IoU with DRAFT ≈ 0.83
ELSEWHERE = Box(100, 100, 200, 200)


def grounded(box: Box | None, phrase: str = "lesion") -> Generation:
    if box is None:
        return Generation("The lesion is absent from this image.", [-0.01])
    return Generation(f"<ref>{phrase}</ref><box>[[{box.x0:.0f}, {box.y0:.0f}, {box.x1:.0f}, {box.y1:.0f}]]</box>",
                      [-0.01])


def test_boxes_overlapping_by_half_are_one_cluster_and_no_box_is_its_own():
    assert DRAFT.iou(NEAR) >= 0.5 and DRAFT.iou(Box(650, 250, 750, 500)) < 0.5
    assert cluster_boxes([DRAFT, NEAR, ELSEWHERE, None, Box(650, 250, 750, 500), None]) == [0, 0, 1, 2, 3, 2]


def test_first_box_reads_a_grounded_answer():
    assert first_box("<ref>the nodule</ref><box>[[10, 20, 30, 40]]</box>") == Box(10, 20, 30, 40)
    assert first_box("The nodule is absent from this image.") is None


def test_grounding_request_is_the_locate_prompt_with_the_guardrail_and_context():
    from inference.prompts import ImageContext

    image = np.zeros((4, 4, 3), np.uint8)
    r = grounding_request(GroundingProbe("f", "a hypodense lesion", DRAFT), image, ImageContext("CT", "ABDOMEN"))
    assert "<ref>the hypodense lesion</ref>" in r.prompt and "CT ABDOMEN" in r.prompt
    assert "absent" in r.system and r.image is image and r.max_new_tokens <= 64


def test_consistent_boxes_on_the_draft_are_green_and_pass():
    res = score_boxes(GroundingProbe("f", "lesion", DRAFT), [grounded(NEAR)] * 10, TH)
    assert res.state is State.DONE and res.agreement == 1.0 and res.entropy == 0.0 and res.tier is Tier.GREEN
    check = res.check()
    assert check.passed is True and check.kind == CONSISTENCY and "10 of 10" in check.detail


def test_consistent_boxes_somewhere_else_are_red_and_fail():
    res = score_boxes(GroundingProbe("f", "lesion", DRAFT), [grounded(ELSEWHERE)] * 10, TH)
    assert res.agreement == 0.0 and res.entropy == 0.0 and res.reliability == 0.0 and res.tier is Tier.RED
    assert res.check().passed is False and "0 of 10" in res.check().detail and "10 elsewhere" in res.check().detail


def test_split_boxes_take_the_entropy_over_box_clusters():
    gens = [grounded(NEAR)] * 5 + [grounded(ELSEWHERE)] * 3 + [grounded(None)] * 2
    res = score_boxes(GroundingProbe("f", "lesion", DRAFT), gens, TH)
    assert res.entropy == pytest.approx(-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)))
    assert res.agreement == 0.5 and res.tier is Tier.RED  # exp(-H) = 0.36 < 0.4
    assert res.clusters() == [(NEAR, 5), (ELSEWHERE, 3), (None, 2)]
    assert "2 gave no box" in res.summary()


def test_a_refused_or_cancelled_box_check_is_not_checked():
    refused = score_boxes(GroundingProbe("f", "lesion", DRAFT), [Generation("I cannot determine this.")] * 4, TH)
    assert refused.state is State.REFUSED and refused.check().passed is None
    cancelled = score_boxes(GroundingProbe("f", "lesion", DRAFT), [Generation("", finish_reason="cancelled")] * 4, TH)
    assert cancelled.state is State.CANCELLED and cancelled.check().passed is None


def test_a_negative_answer_whose_re_readings_box_one_place_fails():
    probe = GroundingProbe("answer", "focal lesion", None)
    gens = [grounded(NEAR, "mass")] * 3 + [grounded(None)] * 2
    res = score_boxes(probe, gens, TH)
    assert res.consensus is not None and res.consensus.iou(NEAR) > 0.9 and res.consensus_count == 3
    assert res.agreement == pytest.approx(0.4) and res.tier is not Tier.GREEN
    check = res.check()
    assert check.passed is False and check.kind == NEGATIVE and check.name == "negative_grounding"


def test_a_negative_answer_whose_re_readings_box_nothing_passes():
    res = score_boxes(GroundingProbe("answer", "focal lesion", None), [grounded(None)] * 5, TH)
    assert res.consensus is None and res.agreement == 1.0 and res.tier is Tier.GREEN
    assert res.check().passed is True and "none of 5" in res.check().detail
    # scattered boxes that do not agree on a place do not contradict the negative answer
    scattered = [grounded(Box(100 * i, 0, 100 * i + 50, 50)) for i in range(2)] + [grounded(None)] * 3
    assert score_boxes(GroundingProbe("answer", "lesion", None), scattered, TH).check().passed is True


class GroundingEngine(ScriptedEngine):
    """Answers attribute questions from the script and every locate prompt with ``boxes`` in turn."""

    def __init__(self, answer_for, boxes):
        super().__init__(answer_for)
        self.boxes = boxes
        self.requests = []

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        self.sample_calls.append((len(requests), n, temperature, top_p))
        self.requests.append(list(requests))
        out = []
        for r in requests:
            if "<ref>" in r.prompt:
                out.append([grounded(self.boxes[i % len(self.boxes)]) for i in range(n)])
            else:
                key = next(k for k in self.answer_for if k in r.prompt)
                out.append([Generation(t, [0.0]) for t in (self.answer_for[key] * n)[:n]])
        return out


def test_questions_and_boxes_are_sampled_in_one_batched_call():
    finding = DraftFinding("f1", "A hypodense lesion.", "hypodense lesion", {"presence": "yes"})
    engine = GroundingEngine({"Is there": ["yes"]}, [NEAR])
    rel = assess(engine, [finding], np.zeros((8, 8, 3), np.uint8), thresholds=TH,
                 settings=ReliabilitySettings(n_samples=6, max_questions=5),
                 probes=[GroundingProbe("f1", "hypodense lesion", DRAFT)])
    assert engine.sample_calls == [(2, 6, 1.0, 0.9)]
    assert "<ref>" in engine.requests[0][1].prompt and engine.requests[0][1].system
    (fr,) = rel.findings
    assert fr.box is not None and fr.box.agreement == 1.0 and len(fr.questions) == 1
    assert rel.tier is Tier.GREEN and rel.boxes == [fr.box]


def test_a_box_the_model_does_not_repeat_makes_a_consistent_finding_red():
    finding = DraftFinding("f1", "A hypodense lesion.", "hypodense lesion", {"presence": "yes"})
    rel = assess(GroundingEngine({"Is there": ["yes"]}, [ELSEWHERE]), [finding], None, thresholds=TH,
                 probes=[GroundingProbe("f1", "hypodense lesion", DRAFT)])
    assert rel.questions[0].tier is Tier.GREEN
    assert rel.findings[0].tier is Tier.RED and rel.tier is Tier.RED


def test_a_finding_past_the_question_cap_still_has_its_box_checked():
    a = DraftFinding("a", "", "nodule", {"presence": "yes"})
    b = DraftFinding("b", "", "cyst", {"presence": "yes"})
    rel = assess(GroundingEngine({"Is there": ["yes"]}, [NEAR]), [a, b], None, thresholds=TH,
                 settings=ReliabilitySettings(n_samples=3, max_questions=1),
                 probes=[GroundingProbe("a", "nodule", DRAFT), GroundingProbe("b", "cyst", DRAFT)])
    assert [(f.finding_id, len(f.questions), f.box is not None) for f in rel.findings] == [("a", 1, True),
                                                                                         ("b", 0, True)]
