"""Evaluation metrics against hand-computed values, and ``xmedgpt eval`` end to end."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from app.commands.eval import main
from inference.evaluation import metrics as ev
from inference.evaluation.harness import (
    Options,
    evaluate,
    format_table,
    lesion_bucket,
    load_rgb,
)
from inference.evaluation.sizes import size_bucket
from inference.types import Box, ChatRequest, Generation
from training.model_factory import build_tiny_model
from training.phantoms import write_corpus

# ----------------------------------------------------------------------------- metrics by hand


def test_boxes_matched_one_to_one_with_misses_and_false_positives():
    truth = [Box(0, 0, 10, 10), Box(20, 20, 30, 30)]
    pred = [Box(0, 0, 10, 5), Box(50, 50, 60, 60), Box(0, 0, 10, 10)]
    im = ev.score_image(pred, truth, ["small", "large"])
    # the exact box wins lesion 1 (IoU 1); the half box then has nothing left; lesion 2 is missed
    assert im.ious == [1.0, 0.0]
    assert im.false_positives == 2 and not im.correct
    half = ev.score_image([Box(0, 0, 10, 5)], truth[:1], ["small"])
    assert half.ious == [0.5] and half.correct  # IoU exactly 0.5 counts as a hit
    empty_ok = ev.score_image([], [], [])
    empty_bad = ev.score_image([Box(1, 1, 2, 2)], [], [])
    s = ev.summarize_localization([im, half, empty_ok, empty_bad])
    assert s.lesions == 3
    assert s.mean_iou == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    assert s.accuracy_at_05 == pytest.approx(2 / 3)
    assert s.per_bucket["small"] == {"n": 2, "mean_iou": 0.75, "accuracy_at_05": 1.0}
    assert s.per_bucket["large"] == {"n": 1, "mean_iou": 0.0, "accuracy_at_05": 0.0}
    assert s.empty_images == 2 and s.empty_correct == 0.5
    assert s.false_positives_per_image == pytest.approx((2 + 0 + 0 + 1) / 4)
    assert s.image_accuracy == pytest.approx(2 / 4)


def test_one_size_rule_buckets_lesions_by_diameter():
    assert size_bucket(9.9) == "small"
    assert size_bucket(10) == "medium"
    assert size_bucket(19.9) == "medium"
    assert size_bucket(20) == "large"
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError):
            size_bucket(bad)
    # the harness buckets an annotated lesion by its size_mm; without one it is not guessed from the box
    assert lesion_bucket({"size_mm": 12.0, "box_1000": [0, 0, 10, 10]}) == "medium"
    assert lesion_bucket({"box_1000": [0, 0, 200, 200]}) == "unknown"
    assert ev.score_image([], [Box(0, 0, 200, 200)]).buckets == ["unknown"]


def test_vqa_accuracy_normalises_case_punctuation_and_articles():
    assert ev.vqa_correct("The Right upper lobe.", "right upper lobe")
    assert not ev.vqa_correct("left upper lobe", "right upper lobe")
    acc = ev.vqa_accuracy([("presence", "Yes.", "yes"), ("presence", "no", "yes"), ("count", "2", "2")])
    assert acc["all"] == {"n": 3, "accuracy": pytest.approx(2 / 3)}
    assert acc["presence"]["accuracy"] == 0.5 and acc["count"]["accuracy"] == 1.0


def test_finding_precision_recall_f1():
    prf = ev.finding_prf([["a", "b"], ["c"], []], [["a"], ["c", "d"], ["e"]])
    assert (prf.tp, prf.fp, prf.fn) == (2, 1, 2)
    assert prf.precision == pytest.approx(2 / 3)
    assert prf.recall == pytest.approx(2 / 4)
    assert prf.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert math.isnan(ev.finding_prf([[]], [[]]).precision)
    report = ("FINDINGS: A 12 mm solid nodule with smooth margins in the right upper lobe. "
              "An 8 mm ground-glass nodule in the left lower lobe. The remaining lung parenchyma is clear.\n"
              "IMPRESSION: Solid nodule in the right upper lobe (12 mm).")
    found = ev.extract_findings(report, ["solid nodule", "ground-glass nodule", "mass"],
                                ["right upper lobe", "left lower lobe"])
    assert found == ["solid nodule | right upper lobe", "ground-glass nodule | left lower lobe"]
    assert ev.extract_findings("FINDINGS: No pulmonary nodule or mass.", ["mass"], ["right upper lobe"]) == []


def test_kendall_tau_b_by_hand():
    r = ev.kendall_tau_b([1, 2, 3, 4, 5], [1, 2, 3, 5, 4])
    assert (r.concordant, r.discordant) == (9, 1)
    assert r.tau_b == pytest.approx(0.8)
    # var(S) = n(n-1)(2n+5)/18 = 5*4*15/18; z = 8/sqrt(var)
    assert r.p_value == pytest.approx(math.erfc(8 / math.sqrt(100 / 6) / math.sqrt(2)))
    # ties: x has one tied pair, y has one: tau_b = 4 / sqrt((6-1)(6-1))
    t = ev.kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3])
    assert (t.concordant, t.discordant) == (4, 0)
    assert t.tau_b == pytest.approx(0.8)
    assert ev.kendall_tau_b([3, 2, 1], [1, 2, 3]).tau_b == pytest.approx(-1.0)
    assert math.isnan(ev.kendall_tau_b([1, 1, 1], [1, 2, 3]).tau_b)


def test_kendall_matches_scipy_with_many_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, 40).tolist()
    y = (np.array(x) + rng.integers(-1, 2, 40)).tolist()
    ours = ev.kendall_tau_b(x, y)
    ref = stats.kendalltau(x, y, variant="b", method="asymptotic")
    assert ours.tau_b == pytest.approx(ref.statistic, abs=1e-12)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_timing_summary():
    t = ev.Timing()
    t.add(1.0, 10)
    t.add(3.0, 30)
    assert t.summary() == {"n": 2, "total_s": 4.0, "mean_s": 2.0, "median_s": 2.0, "max_s": 3.0,
                           "tokens_per_s": 10.0}


# ----------------------------------------------------------------------------- the harness


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("eval-data"), n=5, seed=21, size=64).out


class ReferenceEngine:
    """Answers every dataset prompt with its reference (a perfect model); samples agree with it."""

    def __init__(self, data: Path, wrong_vqa: int = 0) -> None:
        self.answers: dict[tuple[str, str], str] = {}
        for task in ("grounding", "vqa", "report", "reasoning"):
            for line in (data / f"{task}.jsonl").read_text().splitlines():
                rec = json.loads(line)
                key = (self._digest(load_rgb(data / rec["image"])), rec["conversations"][0]["value"][8:])
                self.answers[key] = rec["conversations"][1]["value"]
        self.wrong_vqa = wrong_vqa
        self.calls = 0

    @staticmethod
    def _digest(image: np.ndarray) -> str:
        return hashlib.sha1(image.tobytes()).hexdigest()

    @property
    def model_id(self) -> str:
        return "reference"

    def describe(self) -> str:
        return "reference answers"

    def _answer(self, request: ChatRequest) -> str:
        return self.answers[(self._digest(request.image), request.prompt)]

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        text = self._answer(request)
        if self.wrong_vqa and request.max_new_tokens == 16:
            self.calls += 1
            if self.calls <= self.wrong_vqa:
                text = "wrong answer"
        return Generation(text, [-0.1] * 5)

    def stream(self, request, cancel=None):
        yield self.generate(request).text

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        return [[Generation(self._answer(r), [-0.2, -0.1]) for _ in range(n)] for r in requests]


def test_perfect_answers_score_perfectly(corpus):
    result = evaluate(ReferenceEngine(corpus), corpus, Options(samples=2))
    loc = result["localization"]
    ann = [json.loads(x) for x in (corpus / "annotations.jsonl").read_text().splitlines()]
    assert loc["lesions"] == sum(len(a["lesions"]) for a in ann) > 0
    assert loc["mean_iou"] == pytest.approx(1.0) and loc["accuracy_at_05"] == 1.0
    by_size = [size_bucket(les["size_mm"]) for a in ann for les in a["lesions"]]
    assert {b: m["n"] for b, m in loc["per_bucket"].items()} == {b: by_size.count(b) for b in set(by_size)}
    assert result["reasoning_localization"]["mean_iou"] == pytest.approx(1.0)
    assert result["vqa"]["all"]["accuracy"] == 1.0
    assert result["findings"]["f1"] == 1.0 and result["findings"]["fn"] == 0
    assert result["kendall_tau_b"]["lesion_count"]["tau_b"] == pytest.approx(1.0)
    assert result["reliability"]["question"]["n"] == result["vqa"]["all"]["n"]
    assert set(result["timing"]) >= {"grounding", "vqa", "report", "reasoning"}
    table = format_table(result)
    assert "mean IoU" in table and "reliability AUROC" in table


class ContradictingEngine(ReferenceEngine):
    """The reference answers, but the first ``n`` five-step answers end by denying any lesion."""

    def __init__(self, data: Path, n: int) -> None:
        super().__init__(data)
        self.n, self.bent = n, 0

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        text = self._answer(request)
        if "Step 5: Report synthesis" in text and "<box>" in text and self.bent < self.n:
            self.bent += 1
            text = text[: text.index("Step 5: Report synthesis")] + "Step 5: Report synthesis\nNo focal lesion is seen."
        return Generation(text, [-0.1] * 5)


def test_five_step_answers_are_checked_for_contradictions(corpus):
    clean = evaluate(ReferenceEngine(corpus), corpus, Options(samples=0, tasks=("reasoning",)))
    steps = clean["reasoning_consistency"]
    assert steps["answers"] == clean["images"] and steps["contradicting"] == 0 and steps["incomplete"] == 0
    engine = ContradictingEngine(corpus, n=2)
    bent = evaluate(engine, corpus, Options(samples=0, tasks=("reasoning",)))
    assert engine.bent == 2
    steps = bent["reasoning_consistency"]
    assert steps["contradicting"] == 2 and steps["contradiction_rate"] == pytest.approx(2 / steps["answers"])
    assert steps["examples"] and "five-step answers" in format_table(bent)


def test_wrong_answers_are_counted(corpus):
    result = evaluate(ReferenceEngine(corpus, wrong_vqa=3), corpus, Options(samples=0, tasks=("vqa",)))
    n = result["vqa"]["all"]["n"]
    assert result["vqa"]["all"]["accuracy"] == pytest.approx((n - 3) / n)
    assert "localization" not in result and "reliability" not in result


def test_xmedgpt_eval_with_the_tiny_model_writes_json(corpus, tmp_path, capsys):
    model = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "eval.json"
    rc = main(["--data", str(corpus), "--model", str(model), "--json", str(out), "--limit", "2",
               "--samples", "2", "--tasks", "grounding,vqa", "--max-new-tokens", "8"])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["images"] == 2
    assert result["localization"]["lesions"] >= 0 and "per_bucket" in result["localization"]
    assert result["vqa"]["all"]["n"] > 0
    assert "confidence_weighted" in result["reliability"]["question"]
    assert result["timing"]["grounding"]["n"] == 2
    assert "localization (grounding)" in capsys.readouterr().out


def test_any_dataset_in_the_documented_format(corpus, tmp_path):
    """No annotations.jsonl: boxes come from the reference answers, findings from a record's list,
    Kendall's tau-b from numeric outcomes (e.g. a converted VQA-RAD / VinDr-CXR set)."""
    import shutil

    data = tmp_path / "generic"
    shutil.copytree(corpus / "images", data / "images")
    shutil.copy(corpus / "grounding.jsonl", data / "grounding.jsonl")
    vqa = []
    for line in (corpus / "vqa.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["question_type"] == "count":
            rec["outcome"] = int(rec["conversations"][1]["value"])
        vqa.append(rec)
    (data / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vqa))
    reports = []
    for line in (corpus / "report.jsonl").read_text().splitlines():
        rec = json.loads(line)
        rec["findings"] = ["nodule"] if "nodule" in rec["conversations"][1]["value"] else []
        reports.append(rec)
    (data / "report.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reports))
    engine = ReferenceEngine(corpus)
    result = evaluate(engine, data, Options(samples=0))
    assert result["localization"]["mean_iou"] == pytest.approx(1.0)
    # no annotations: the boxes of a reference answer carry no size, so no bucket is guessed (issue #18)
    assert set(result["localization"]["per_bucket"]) == {"unknown"}
    assert result["findings"]["fn"] == 0 and result["findings"]["fp"] == 0
    assert len({r["outcome"] for r in vqa if "outcome" in r}) > 1  # seed 21: counts 2, 0, 2, 3, 3
    assert result["kendall_tau_b"]["outcome"]["tau_b"] == pytest.approx(1.0)
    assert result["kendall_tau_b"]["outcome"]["n"] == 5


def test_labelled_answers_feed_xmedgpt_calibrate(corpus, tmp_path, capsys):
    """eval --labelled-out writes the sampled VQA answers, labelled right/wrong, which calibrate reads as is."""
    from ui.shell.cli import main as cli_main

    labelled = tmp_path / "calib" / "vqa_labelled.jsonl"
    result = evaluate(ReferenceEngine(corpus, wrong_vqa=3), corpus,
                      Options(samples=2, tasks=("vqa",), labelled_out=labelled))
    rows = [json.loads(x) for x in labelled.read_text().splitlines()]
    assert len(rows) == result["vqa"]["all"]["n"]
    assert [r["label"] for r in rows].count(0) == 3 and rows[0]["answer"] == "wrong answer"
    assert len(rows[0]["samples"]) == 2 and rows[0]["greedy_token_logprobs"] == [-0.1] * 5
    out = tmp_path / "calibration.json"
    assert cli_main(["calibrate", "--data", str(labelled.parent), "--out", str(out), "--judge", "closed-form",
                           "--min-count", "2"]) == 0
    cal = json.loads(out.read_text())
    assert cal["calibrated"] is True and cal["metrics"]["per_estimator"]["discrete"]["n"] == len(rows)
    # the three wrong answers disagree with every sample: disagreement with the draft ranks them perfectly
    assert cal["metrics"]["per_estimator"]["draft_disagreement"]["auroc"] == pytest.approx(1.0)
