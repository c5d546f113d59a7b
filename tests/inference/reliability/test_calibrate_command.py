"""``xmedgpt calibrate`` on a small labelled set written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.cli import main
from inference.errors import XMedError
from inference.evaluation.calibrate import (
    Record,
    calibrate,
    load_records,
    sample_missing,
)
from inference.reliability.judges import ClosedFormJudge
from inference.reliability.scoring import load_thresholds
from inference.types import Generation


def _sample(text, lp=-0.1):
    return {"text": text, "token_logprobs": [lp, lp]}


def _write_set(folder, n_each=12):
    """Correct answers: the samples agree. Wrong answers: they split. One in between."""
    folder.mkdir()
    lines = []
    for i in range(n_each):
        lines.append({"question": "Where is the nodule?", "answer": "right upper lobe", "label": 1,
                      "samples": [_sample("RUL")] * 5, "greedy_token_logprobs": [-0.01]})
        lines.append({"question": "Where is the nodule?", "answer": "right upper lobe", "label": 0,
                      "samples": [_sample("RUL"), _sample("LUL"), _sample("left lower lobe"),
                                  _sample("RLL"), _sample("RUL")], "greedy_token_logprobs": [-2.0]})
    lines.append({"question": "Is there a nodule?", "answer": "yes", "label": "correct",
                  "samples": [_sample("yes")] * 4 + [_sample("no")], "image": "img.npy"})
    np.save(folder / "img.npy", np.zeros((8, 8, 3), np.uint8))
    (folder / "set.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    return folder


def test_calibrate_command_writes_thresholds(tmp_path, capsys):
    data = _write_set(tmp_path / "data")
    out = tmp_path / "calibration.json"
    code = main(["calibrate", "--data", str(data), "--out", str(out), "--judge", "closed-form", "--min-count", "5"])
    assert code == 0
    result = json.loads(out.read_text())
    per = result["metrics"]["per_estimator"]
    # every wrong answer has split samples, every correct one agreeing samples: perfect separation
    for name in ("discrete", "rao_blackwell", "confidence_weighted", "lexical", "greedy_logprob",
                 "draft_disagreement"):
        assert per[name]["auroc"] == pytest.approx(1.0), name
    assert per["greedy_logprob"]["n"] == 24  # the record without greedy log-probs is left out
    # green = lowest reliability with no error at or above it = the correct yes/no record:
    # CW with κ = exp(-0.1), 4 "yes" + 1 "no": p = (4κ/5, κ/5), five doubts (1-κ)/5
    k = math.exp(-0.1)
    outcomes = [4 * k / 5, k / 5] + [(1 - k) / 5] * 5
    h = -sum(p * math.log(p) for p in outcomes)
    assert result["thresholds"]["green"] == pytest.approx(math.exp(-h))
    assert result["metrics"]["green_error"] == 0.0
    assert result["calibrated"] is True
    th = load_thresholds(out)  # the app can read what was written
    assert th.estimator == "confidence_weighted" and th.likelihood == "mean"
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "reliability diagram" in printed and str(out) in printed


def test_missing_samples_need_a_model(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir()
    (data / "a.jsonl").write_text(json.dumps({"question": "Is there?", "answer": "yes", "label": 1}) + "\n")
    assert main(["calibrate", "--data", str(data), "--out", str(tmp_path / "c.json")]) == 1
    assert "--model" in capsys.readouterr().err


def test_bad_records_are_user_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"question": "q", "answer": "a", "label": 7}\n')
    with pytest.raises(XMedError, match="label"):
        load_records(tmp_path)
    with pytest.raises(XMedError, match="No labelled data"):
        load_records(tmp_path / "empty")


class _Engine:
    def __init__(self):
        self.calls = []

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        self.calls.append((len(requests), n))
        return [[Generation("yes", [-0.2])] * n for _ in requests]

    def generate(self, request, cancel=None):
        return Generation("yes", [-0.3])


def test_sample_missing_batches_and_fills_greedy():
    records = [Record("Is there?", "yes", 1) for _ in range(5)]
    engine = _Engine()
    sample_missing(records, engine, n=3, batch=4)
    assert engine.calls == [(4, 3), (1, 3)]
    assert all(len(r.samples) == 3 and r.greedy_token_logprobs == [-0.3] for r in records)
    result = calibrate(records, ClosedFormJudge(), min_count=1)
    assert math.isnan(result["metrics"]["per_estimator"]["discrete"]["auroc"])  # one class only
