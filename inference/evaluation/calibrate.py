"""Calibrating the reliability index: labelled records, judges, per-estimator uncertainties, thresholds.

What ``xmedgpt calibrate`` runs (and ``xmedgpt eval --labelled-out`` and the demo-model recipe).
The labelled set is a folder of ``*.jsonl`` files, one record per line::

    {"question": "Where is the nodule?", "answer": "right upper lobe", "label": 1,
     "image": "img/0001.npy",                                   # optional, RGB uint8 .npy or .png/.jpg
     "samples": [{"text": "RUL", "token_logprobs": [-0.1, -0.3]}, ...],   # optional, precomputed
     "greedy_token_logprobs": [-0.05, -0.2]}                     # optional, for the log-prob baseline

``label`` is 1 when ``answer`` is correct, 0 when wrong. Records without
``samples`` are sampled with a local model (all of them batched through
``Engine.sample``). :func:`calibrate` gives AUROC / AURAC per estimator, the
reliability diagram and the thresholds; :func:`format_report` prints them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.errors import XMedError
from inference.reliability import calibration as cal
from inference.reliability.clustering import cluster_answers
from inference.reliability.estimators import (
    confidence_weighted_semantic_entropy,
    discrete_semantic_entropy,
    lexical_disagreement,
    mean_token_logprob,
    naive_predictive_entropy,
    rao_blackwell_semantic_entropy,
)
from inference.reliability.judges import (
    ClosedFormJudge,
    EmbeddingJudge,
    Judge,
    NLIJudge,
)
from inference.reliability.scoring import ESTIMATORS, reliability_from_entropy
from inference.types import ChatRequest, Engine, Generation

log = logging.getLogger(__name__)

JUDGES = ("closed-form", "closed-form+embedding", "embedding", "nli", "closed-form+nli")


@dataclass
class Record:
    question: str
    answer: str
    correct: int
    image: np.ndarray | None = None
    samples: list[Generation] = field(default_factory=list)
    greedy_token_logprobs: list[float] = field(default_factory=list)
    source: str = ""


def _label(value, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.casefold() in ("correct", "incorrect", "wrong", "right"):
        return int(value.casefold() in ("correct", "right"))
    raise XMedError(f"{where}: 'label' must be 1/0, true/false or correct/incorrect, not {value!r}.")


def _load_image(path: Path) -> np.ndarray:
    if path.suffix.casefold() == ".npy":
        arr = np.load(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr.astype(np.uint8))


def load_records(folder: Path) -> list[Record]:
    """Every record of every ``*.jsonl`` file in ``folder`` (sorted by file name)."""
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    if not files:
        raise XMedError(f"No labelled data in {folder}: expected one or more .jsonl files.")
    records = []
    for f in files:
        for no, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{f.name} line {no}"
            try:
                d = json.loads(line)
                question, answer = str(d["question"]), str(d["answer"])
                label = d["label"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise XMedError(f"{where}: not a question/answer/label record.", detail=str(exc)) from exc
            samples = [Generation(str(s["text"]), [float(x) for x in s.get("token_logprobs", [])])
                       for s in d.get("samples", [])]
            # the image is needed only to sample a record that has no samples yet
            image = _load_image(f.parent / d["image"]) if d.get("image") and not samples else None
            records.append(Record(question, answer, _label(label, where), image, samples,
                                  [float(x) for x in d.get("greedy_token_logprobs", [])], where))
    return records


def write_records(path: Path, records: Sequence[Record], images: Sequence[str]) -> None:
    """``records`` as one ``.jsonl`` file that :func:`load_records` reads back, samples included
    (``images``: each record's image path, or "")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"question": r.question, "answer": r.answer, "label": r.correct, "image": image,
             "samples": [{"text": g.text, "token_logprobs": list(g.token_logprobs)} for g in r.samples],
             "greedy_token_logprobs": list(r.greedy_token_logprobs)} for r, image in zip(records, images)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def make_judge(name: str, nli_model: Path | None = None, threshold: float = 0.85) -> Judge:
    if name not in JUDGES:
        raise XMedError(f"Unknown judge {name!r}; choose one of {', '.join(JUDGES)}.")
    if "nli" in name and nli_model is None:
        raise XMedError("The NLI judge needs --nli-model DIR (a local NLI model folder).")
    inner: Judge | None = None
    if name.endswith("embedding"):
        inner = EmbeddingJudge(threshold=threshold)
    elif name.endswith("nli"):
        inner = NLIJudge(nli_model)
    if name.startswith("closed-form"):
        return ClosedFormJudge(fallback=inner)
    assert inner is not None
    return inner


def sample_missing(records: Sequence[Record], engine: Engine, n: int, batch: int = 8) -> None:
    """Fill in samples (and greedy log-probs) for records that have none."""
    todo = [r for r in records if not r.samples]
    for i in range(0, len(todo), batch):
        chunk = todo[i:i + batch]
        requests = [ChatRequest(prompt=f"{r.question} Answer in a few words, without explanation.",
                                image=r.image, max_new_tokens=48) for r in chunk]
        for r, gens in zip(chunk, engine.sample(requests, n=n, temperature=1.0, top_p=0.9)):
            r.samples = list(gens)
        log.info("sampled %d/%d records", min(i + batch, len(todo)), len(todo))
    for r in records:
        if not r.greedy_token_logprobs:
            r.greedy_token_logprobs = engine.generate(
                ChatRequest(prompt=f"{r.question} Answer in a few words, without explanation.",
                            image=r.image, max_new_tokens=48)).token_logprobs


def uncertainties(record: Record, judge: Judge) -> dict[str, float]:
    """Estimator name → uncertainty of one record (higher = more likely wrong)."""
    texts = [g.text.strip() for g in record.samples]
    # the judged answer is clustered first, as the live pass does, but not counted in the entropies
    all_ids = cluster_answers(record.question, [record.answer, *texts], judge)
    ids = all_ids[1:]
    sums = [g.sum_logprob for g in record.samples]
    means = [g.mean_logprob for g in record.samples]
    out = {
        "discrete": discrete_semantic_entropy(ids),
        "rao_blackwell": rao_blackwell_semantic_entropy(ids, sums),
        "confidence_weighted": confidence_weighted_semantic_entropy(ids, means),
        "naive_entropy": naive_predictive_entropy(sums),
        "lexical": lexical_disagreement(texts),
        "draft_disagreement": sum(1 for c in ids if c != all_ids[0]) / len(ids),
    }
    out["greedy_logprob"] = (-mean_token_logprob(record.greedy_token_logprobs)
                             if record.greedy_token_logprobs else float("nan"))
    return out


def calibrate(
    records: Sequence[Record],
    judge: Judge,
    estimator: str = "confidence_weighted",
    max_green_error: float = 0.05,
    max_amber_error: float = 0.25,
    min_count: int = 20,
) -> dict:
    """Metrics per estimator, reliability diagram and thresholds for ``estimator``."""
    if estimator not in ESTIMATORS:
        raise XMedError(f"Unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}.")
    missing = [r.source for r in records if not r.samples]
    if missing:
        raise XMedError(f"{len(missing)} records have no sampled answers (first: {missing[0]}); "
                        "give --model to sample them.")
    rows = [uncertainties(r, judge) for r in records]
    correct = [r.correct for r in records]
    metrics = {}
    for name in rows[0]:
        u = np.array([row[name] for row in rows])
        ok = ~np.isnan(u)
        if ok.sum() == 0:
            continue
        c = np.array(correct)[ok]
        metrics[name] = {"auroc": cal.auroc(u[ok], c), "aurac": cal.aurac(u[ok], c), "n": int(ok.sum())}
    rel = [reliability_from_entropy(row[estimator]) for row in rows]
    bins = cal.reliability_diagram(rel, correct)
    chosen = cal.choose_thresholds(rel, correct, max_green_error, max_amber_error, min_count)
    return {
        "version": 1,
        "estimator": estimator,
        "likelihood": "sum" if estimator == "rao_blackwell" else "mean",
        "n_samples": int(np.median([len(r.samples) for r in records])),
        "thresholds": {"green": chosen.green, "amber": chosen.amber},
        "calibrated": True,
        "note": (f"Calibrated on {len(records)} labelled answers ({sum(correct)} correct) with the "
                 f"{getattr(judge, 'name', 'given')} judge: green where the observed error rate < "
                 f"{max_green_error:.0%}, amber < {max_amber_error:.0%}."),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics": {
            "per_estimator": metrics,
            "green_error": chosen.green_error,
            "amber_error": chosen.amber_error,
            "ece": cal.expected_calibration_error(bins),
            "reliability_diagram": [
                {"low": b.low, "high": b.high, "count": b.count,
                 "mean_reliability": None if math.isnan(b.mean_reliability) else b.mean_reliability,
                 "accuracy": None if math.isnan(b.accuracy) else b.accuracy} for b in bins
            ],
        },
    }


def format_report(result: dict) -> str:
    lines = ["estimator             AUROC   AURAC      n"]
    for name, m in result["metrics"]["per_estimator"].items():
        lines.append(f"{name:<20} {m['auroc']:6.3f}  {m['aurac']:6.3f}  {m['n']:5d}")
    lines.append("")
    lines.append(f"reliability diagram ({result['estimator']}, reliability = exp(-entropy)):")
    lines.append("bin            n   mean rel.  accuracy")
    for b in result["metrics"]["reliability_diagram"]:
        mr = "     -" if b["mean_reliability"] is None else f"{b['mean_reliability']:6.3f}"
        ac = "     -" if b["accuracy"] is None else f"{b['accuracy']:6.3f}"
        lines.append(f"[{b['low']:.1f}, {b['high']:.1f})  {b['count']:5d}   {mr}     {ac}")
    t = result["thresholds"]
    lines.append("")
    green = "never (no reliability reaches the error target)" if t["green"] > 1 else f">= {t['green']:.3f}"
    lines.append(f"thresholds: green {green}, amber >= {t['amber']:.3f}; ECE {result['metrics']['ece']:.3f}")
    return "\n".join(lines)
