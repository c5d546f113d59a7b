"""Decomposition, batched sampling, scoring/aggregation and the full pass on a scripted engine."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest

from inference.errors import XMedError
from inference.reliability.decomposition import (
    AttributeQuestion,
    DraftFinding,
    decompose,
    load_prompt,
    parse_decomposition,
    template_questions,
)
from inference.reliability.judges import ClosedFormJudge
from inference.reliability.pipeline import ReliabilitySettings, assess
from inference.reliability.sampling import (
    QuestionSamples,
    SampledAnswer,
    sample_answers,
)
from inference.reliability.scoring import (
    CALIBRATION_FILE,
    QuestionResult,
    State,
    Thresholds,
    Tier,
    aggregate,
    is_refusal,
    load_thresholds,
    reliability_from_entropy,
    score_question,
)
from inference.types import ChatRequest, Engine, Generation

NODULE = DraftFinding("f1", "12 mm spiculated nodule in the right upper lobe", "nodule",
                      {"presence": "yes", "location": "right upper lobe", "size": "12 mm", "shape": "spiculated"})
EFFUSION = DraftFinding("f2", "small left pleural effusion", "effusion", {"presence": "yes", "location": "left"})


class ScriptedEngine:
    """An Engine whose sampled answers are chosen per question by a function of the prompt."""

    def __init__(self, answer_for: dict[str, list[str]], decomposition: str = "", confidence: float = 1.0) -> None:
        self.answer_for = answer_for
        self.decomposition = decomposition
        self.confidence = confidence
        self.sample_calls: list[tuple[int, int, float, float]] = []
        self.generate_calls: list[ChatRequest] = []

    @property
    def model_id(self) -> str:
        return "scripted"

    def describe(self) -> str:
        return "scripted test engine"

    def generate(self, request, cancel=None) -> Generation:
        self.generate_calls.append(request)
        return Generation(self.decomposition, [-0.1])

    def stream(self, request, cancel=None):
        yield self.generate(request).text

    def sample(self, requests: Sequence[ChatRequest], n: int, temperature=1.0, top_p=0.9, cancel=None):
        self.sample_calls.append((len(requests), n, temperature, top_p))
        out = []
        for r in requests:
            key = next(k for k in self.answer_for if k in r.prompt)
            texts = (self.answer_for[key] * n)[:n]
            out.append([Generation(t, [math.log(self.confidence)] * 2) for t in texts])
        return out


def test_scripted_engine_satisfies_protocol():
    assert isinstance(ScriptedEngine({}), Engine)


# --- decomposition --------------------------------------------------------------

def test_template_questions_keep_draft_answers_in_attribute_order():
    qs = template_questions(NODULE)
    assert [q.attribute for q in qs] == ["presence", "location", "size", "shape"]
    assert qs[2].question == "What is the size of the nodule? Give the measurement with units."
    assert qs[2].draft_answer == "12 mm" and all(q.finding_id == "f1" for q in qs)


def test_count_template_pluralises():
    qs = template_questions(DraftFinding("x", "", "opacity", {"count": "3"}))
    assert qs[0].question.startswith("How many opacities")


def test_decompose_round_robin_so_every_finding_gets_asked():
    qs = decompose([NODULE, EFFUSION], max_questions=3)
    assert [(q.finding_id, q.attribute) for q in qs] == [("f1", "presence"), ("f2", "presence"), ("f1", "location")]


def test_parse_decomposition_drops_malformed_lines():
    text = "\n".join([
        "presence | Is there a nodule? | yes",
        "- location | Where is the nodule? | right upper lobe",
        "colour | What colour is it? | red",  # unknown attribute
        "size | What size | 12 mm",  # not a question
        "presence | Is there a mass? | no",  # duplicate attribute
        "Here are the questions:",
    ])
    qs = parse_decomposition("f", text, max_questions=6)
    assert [(q.attribute, q.draft_answer) for q in qs] == [("presence", "yes"), ("location", "right upper lobe")]


def test_free_text_findings_are_decomposed_by_the_model_with_the_prompt_file():
    engine = ScriptedEngine({}, decomposition="presence | Is there an effusion? | yes\nlocation | Which side? | left")
    qs = decompose([DraftFinding("f9", "Small left pleural effusion.")], engine)
    assert [q.attribute for q in qs] == ["presence", "location"]
    sent = engine.generate_calls[0].prompt
    assert "Small left pleural effusion." in sent and "attribute | question | answer" in sent
    assert "{finding}" in load_prompt() and "{max_questions}" in load_prompt()


def test_free_text_without_engine_is_an_error():
    with pytest.raises(ValueError):
        decompose([DraftFinding("f", "text only")])


# --- sampling -------------------------------------------------------------------

def test_all_questions_sampled_in_one_call():
    engine = ScriptedEngine({"Is there": ["Yes"], "Where": ["RUL", "right upper lobe"]})
    qs = template_questions(NODULE)[:2]
    out = sample_answers(engine, qs, np.zeros((4, 4, 3), np.uint8), n=10)
    assert engine.sample_calls == [(2, 10, 1.0, 0.9)]
    assert [len(s.answers) for s in out] == [10, 10]
    assert out[1].texts[:2] == ["RUL", "right upper lobe"]
    assert out[0].answers[0].sum_logprob == 0.0 and out[0].answers[0].n_tokens == 2


def test_wrong_number_of_samples_is_a_user_error():
    class Short(ScriptedEngine):
        def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
            return [[Generation("yes")] for _ in requests]

    with pytest.raises(XMedError):
        sample_answers(Short({}), template_questions(NODULE)[:1], None, n=3)


# --- scoring --------------------------------------------------------------------

TH = Thresholds(green=0.7, amber=0.4, estimator="discrete")
Q = AttributeQuestion("f1", "location", "Where is the nodule?", "right upper lobe")


def _samples(texts, q=Q, finish="stop", mean_lp=0.0):
    return QuestionSamples(q, tuple(SampledAnswer(t, mean_lp * 2, mean_lp, 2, finish) for t in texts))


def test_score_all_agree_is_green_with_reliability_one():
    r = score_question(_samples(["RUL", "right upper lobe", "In the right upper lobe."]), ClosedFormJudge(), TH)
    assert r.state is State.DONE and r.entropy == 0.0 and r.reliability == 1.0 and r.tier is Tier.GREEN
    assert r.cluster_ids == (0, 0, 0) and r.draft_cluster == 0 and r.draft_agreement == 1.0


def test_score_split_hand_computed():
    # 2 right / 2 left: H = ln 2, reliability = 1/2 -> amber (0.4 <= 0.5 < 0.7)
    r = score_question(_samples(["RUL", "LUL", "right upper lobe", "left upper lobe"]), ClosedFormJudge(), TH)
    assert r.entropy == pytest.approx(math.log(2)) and r.reliability == pytest.approx(0.5)
    assert r.tier is Tier.AMBER and r.draft_agreement == 0.5
    assert r.clusters() == [("RUL", 2), ("LUL", 2)]


def test_confident_consensus_against_the_draft_is_red():
    # the samples agree with each other (H = 0) but none says what the draft says:
    # the draft's claim scores 0, not a misleading 1.00 beside a red light
    r = score_question(_samples(["left upper lobe"] * 4), ClosedFormJudge(), TH)
    assert r.entropy == 0.0 and r.reliability == 0.0
    assert r.tier is Tier.RED and r.draft_agreement == 0.0
    assert r.cluster_ids == (0, 0, 0, 0) and r.draft_cluster is None


def test_reliability_is_capped_by_agreement_with_the_draft():
    # 3 of 4 samples say "left": consistent-ish (H = 0.56, exp(-H) = 0.57) but only 1/4 back the draft
    r = score_question(_samples(["LUL", "left upper lobe", "LUL", "RUL"]), ClosedFormJudge(), TH)
    assert r.draft_agreement == 0.25 and r.reliability == pytest.approx(0.25)
    assert r.tier is Tier.RED


def test_refused_failed_cancelled_states():
    judge = ClosedFormJudge()
    refused = score_question(_samples(["I'm sorry, I cannot determine that."] * 3 + ["RUL"]), judge, TH)
    assert refused.state is State.REFUSED and refused.tier is Tier.NONE
    assert score_question(_samples(["", ""]), judge, TH).state is State.FAILED
    assert score_question(_samples(["RUL"], finish="cancelled"), judge, TH).state is State.CANCELLED
    assert is_refusal("Unable to assess on this image") and not is_refusal("right upper lobe")


def test_estimator_and_likelihood_from_thresholds():
    th = Thresholds(green=0.7, amber=0.4, estimator="confidence_weighted", likelihood="mean")
    r = score_question(_samples(["RUL", "RUL"], mean_lp=math.log(0.5)), ClosedFormJudge(), th)
    assert r.entropy == pytest.approx(1.5 * math.log(2))  # see the estimator tests
    assert r.reliability == pytest.approx(reliability_from_entropy(1.5 * math.log(2)))


def _done(fid, rel, tier):
    return QuestionResult(AttributeQuestion(fid, "presence", "Is there?", "yes"), reliability=rel, tier=tier,
                          state=State.DONE, entropy=-math.log(rel))


def test_aggregate_worst_and_mean_per_finding_and_report():
    rel = aggregate([_done("a", 0.9, Tier.GREEN), _done("a", 0.5, Tier.AMBER), _done("b", 0.8, Tier.GREEN)])
    fa, fb = rel.findings
    assert (fa.reliability, fa.mean_reliability, fa.tier) == (0.5, pytest.approx(0.7), Tier.AMBER)
    assert (fb.reliability, fb.tier) == (0.8, Tier.GREEN)
    assert rel.worst == 0.5 and rel.mean == pytest.approx((0.9 + 0.5 + 0.8) / 3)
    assert rel.tier is Tier.AMBER and rel.state is State.DONE
    assert "check this against the image" in rel.meaning


def test_aggregate_never_green_when_unfinished():
    running = QuestionResult(AttributeQuestion("b", "size", "What size?", "1 cm"), state=State.RUNNING)
    rel = aggregate([_done("a", 0.95, Tier.GREEN), running])
    assert rel.state is State.RUNNING and rel.tier is Tier.AMBER
    assert rel.findings[0].tier is Tier.GREEN and rel.findings[1].tier is Tier.NONE
    refused = QuestionResult(AttributeQuestion("a", "size", "What size?", "1 cm"), state=State.REFUSED)
    rel = aggregate([_done("a", 0.95, Tier.GREEN), refused])
    assert rel.state is State.REFUSED and rel.tier is Tier.AMBER and "declined" in rel.meaning
    assert aggregate([]).tier is Tier.NONE


def test_thresholds_validate_and_shipped_calibration_loads(tmp_path):
    th = load_thresholds()
    assert th.estimator in ("discrete", "rao_blackwell", "confidence_weighted") and th.amber <= th.green
    assert json.loads(CALIBRATION_FILE.read_text())["version"] == 1
    with pytest.raises(ValueError):
        Thresholds(green=0.3, amber=0.6)
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(XMedError):
        load_thresholds(bad)


# --- full pass --------------------------------------------------------------------

def test_assess_end_to_end_one_batched_call():
    engine = ScriptedEngine({
        "Is there a nodule": ["Yes"],
        "Where is the nodule": ["RUL", "right upper lobe", "LLL"],
        "size of the nodule": ["12 mm", "1.3 cm"],
        "Is there an effusion": ["yes"],
        "Where is the effusion": ["left"],
    })
    progress: list[float] = []
    rel = assess(engine, [NODULE, EFFUSION], None, thresholds=TH,
                 settings=ReliabilitySettings(n_samples=6, max_questions=5),
                 progress=lambda m, f: progress.append(f))
    assert engine.sample_calls == [(5, 6, 1.0, 0.9)]
    assert rel.state is State.DONE and len(rel.questions) == 5
    loc = next(q for q in rel.questions if q.question.attribute == "location" and q.question.finding_id == "f1")
    # RUL, right upper lobe, LLL repeated: 4 vs 2 -> H = -(2/3 ln 2/3 + 1/3 ln 1/3)
    assert loc.entropy == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert rel.worst == pytest.approx(loc.reliability) and rel.tier is Tier.AMBER
    assert progress[0] == 0.0 and progress[-1] == pytest.approx(1.0)


def test_assess_engine_error_becomes_failed_state():
    class Broken(ScriptedEngine):
        def sample(self, *a, **k):
            raise XMedError("The GPU ran out of memory.")

    rel = assess(Broken({}), [NODULE], None, thresholds=TH)
    assert rel.state is State.FAILED and rel.tier is Tier.NONE and "out of memory" in rel.message


def test_assess_cancel_is_never_green():
    rel = assess(ScriptedEngine({"": ["yes"]}), [NODULE], None, thresholds=TH, cancel=lambda: True)
    assert rel.state is State.CANCELLED and rel.tier is Tier.NONE


def test_assess_no_findings():
    rel = assess(ScriptedEngine({}), [], None, thresholds=TH)
    assert rel.state is State.DONE and rel.tier is Tier.NONE and "Nothing to check" in rel.message


# --- every question asked ------------------------------------------------------

def test_template_questions_fill_up_when_the_model_gives_fewer_than_asked():
    """Issue #13: Details showed one question although Settings said 5."""
    engine = ScriptedEngine({}, decomposition="presence | Is there a lesion? | yes")
    finding = DraftFinding("f1", "A 42 mm hypodense lesion in the right hepatic lobe.", "hypodense lesion",
                           fill={"presence": "yes", "location": "right hepatic lobe", "size": "42 mm",
                                 "density": "hypodense", "count": "1"})
    qs = decompose([finding], engine, max_questions=5)
    assert [(q.attribute, q.draft_answer) for q in qs] == [
        ("presence", "yes"),  # the model's own question is kept
        ("location", "right hepatic lobe"), ("size", "42 mm"), ("density", "hypodense"), ("count", "1")]
    assert qs[0].question == "Is there a lesion?"
    assert qs[2].question == "What is the size of the hypodense lesion? Give the measurement with units."
    assert len(engine.generate_calls) == 1
    assert len(decompose([finding], engine, max_questions=3)) == 3


def test_fill_up_spreads_across_findings_and_never_exceeds_the_cap():
    a = DraftFinding("a", "text a", "nodule", fill={"presence": "yes", "size": "8 mm", "count": "1"})
    b = DraftFinding("b", "text b", "cyst", fill={"presence": "yes", "location": "left"})
    qs = decompose([a, b], ScriptedEngine({}, decomposition="no usable line"), max_questions=4)
    assert [(q.finding_id, q.attribute) for q in qs] == [("a", "presence"), ("b", "presence"), ("b", "location"),
                                                       ("a", "size")]
    # a location that is only a side (from the box) is asked as laterality, so "left lower zone" is not a miss
    assert qs[2].question == "On which side of the patient is the cyst: right or left? Answer with one word."


def test_each_free_text_finding_is_asked_for_its_share_of_the_questions():
    engine = ScriptedEngine({}, decomposition="presence | Is there a lesion? | yes")
    findings = [DraftFinding(f"f{i}", f"Finding {i}.", "lesion", fill={"presence": "yes", "count": "1"})
                for i in range(3)]
    qs = decompose(findings, engine, max_questions=5)
    assert [c.max_new_tokens for c in engine.generate_calls] == [2 * 32] * 3  # ceil(5 / 3) lines each
    assert all("At most 2 lines" in c.prompt for c in engine.generate_calls)
    assert [(q.finding_id, q.attribute) for q in qs] == [("f0", "presence"), ("f1", "presence"), ("f2", "presence"),
                                                       ("f0", "count"), ("f1", "count")]
