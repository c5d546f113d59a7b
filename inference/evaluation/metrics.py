"""Evaluation metrics shared by ``xmedgpt eval`` and the training recipes (pure Python + numpy).

- localization: predicted boxes matched one-to-one to ground truth by IoU
  (greedy, best pair first); per lesion its IoU (0 when missed); mean IoU and
  accuracy@0.5 overall and per lesion-size bucket (the caller's buckets,
  "unknown" when it gives none); images without lesions count as right when
  the model draws no box;
- VQA accuracy: normalised exact match (case, punctuation, articles ignored);
- finding-level precision / recall / F1 (micro over images, multiset matching);
- Kendall's tau-b with the tie correction and its asymptotic p-value;
- timing summaries.

Boxes are :class:`inference.types.Box` on any common scale (IoU does not change
when x and y are scaled, so the 0–1000 grounding scale and pixels agree).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from inference.evaluation.sizes import BUCKET_NAMES
from inference.types import Box

#: Lesion size buckets in report order (the one size rule: :mod:`inference.evaluation.sizes`).
SIZE_BUCKETS: tuple[str, ...] = BUCKET_NAMES
#: The bucket of a lesion whose size is not annotated (never guessed from its box).
UNKNOWN_SIZE = "unknown"
IOU_THRESHOLD = 0.5


# ----------------------------------------------------------------------------- localization


def match_boxes(predicted: Sequence[Box], truth: Sequence[Box]) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(pred index, truth index, IoU)`` with IoU > 0, best pairs first."""
    pairs = sorted(((p.iou(t), i, j) for i, p in enumerate(predicted) for j, t in enumerate(truth)),
                   key=lambda x: (-x[0], x[1], x[2]))
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches = []
    for iou, i, j in pairs:
        if iou <= 0 or i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        matches.append((i, j, iou))
    return matches


@dataclass
class ImageLocalization:
    """One image: its lesions' IoUs (0 for a miss), their buckets, and the unmatched predictions."""

    ious: list[float]
    buckets: list[str]
    false_positives: int
    predicted: int

    @property
    def empty(self) -> bool:
        return not self.ious

    @property
    def correct(self) -> bool:
        """Every lesion found at IoU ≥ 0.5 and no extra box (an empty image: no box at all)."""
        return all(i >= IOU_THRESHOLD for i in self.ious) and self.false_positives == 0


def score_image(predicted: Sequence[Box], truth: Sequence[Box], buckets: Sequence[str] | None = None,
                threshold: float = IOU_THRESHOLD) -> ImageLocalization:
    buckets = list(buckets) if buckets is not None else [UNKNOWN_SIZE] * len(truth)
    ious = [0.0] * len(truth)
    matches = match_boxes(predicted, truth)
    for _i, j, iou in matches:
        ious[j] = iou
    good = sum(1 for _i, _j, iou in matches if iou >= threshold)
    return ImageLocalization(ious, buckets, false_positives=len(predicted) - good, predicted=len(predicted))


@dataclass
class LocalizationSummary:
    lesions: int
    mean_iou: float
    accuracy_at_05: float
    per_bucket: dict[str, dict[str, float]]  # bucket → {"n", "mean_iou", "accuracy_at_05"}
    empty_images: int
    empty_correct: float  # share of lesion-free images with no box drawn
    false_positives_per_image: float
    image_accuracy: float  # images entirely right (all found, nothing extra)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def summarize_localization(images: Sequence[ImageLocalization], threshold: float = IOU_THRESHOLD
                           ) -> LocalizationSummary:
    ious = [i for im in images for i in im.ious]
    buckets = [b for im in images for b in im.buckets]
    per_bucket: dict[str, dict[str, float]] = {}
    for name in list(SIZE_BUCKETS) + sorted(set(buckets) - set(SIZE_BUCKETS)):
        vals = [i for i, b in zip(ious, buckets) if b == name]
        if vals:
            per_bucket[name] = {"n": len(vals), "mean_iou": _mean(vals),
                                "accuracy_at_05": _mean([float(v >= threshold) for v in vals])}
    empty = [im for im in images if im.empty]
    return LocalizationSummary(
        lesions=len(ious),
        mean_iou=_mean(ious),
        accuracy_at_05=_mean([float(v >= threshold) for v in ious]),
        per_bucket=per_bucket,
        empty_images=len(empty),
        empty_correct=_mean([float(im.predicted == 0) for im in empty]),
        false_positives_per_image=_mean([float(im.false_positives) for im in images]),
        image_accuracy=_mean([float(im.correct) for im in images]),
    )


# ----------------------------------------------------------------------------- VQA

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces ("The Right lobe." → "right lobe")."""
    text = _PUNCT.sub(" ", text.casefold())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def vqa_correct(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def vqa_accuracy(pairs: Iterable[tuple[str, str, str]]) -> dict[str, dict[str, float]]:
    """``(question type, prediction, reference)`` → accuracy and count, overall and per type."""
    by_type: dict[str, list[float]] = {}
    overall: list[float] = []
    for qtype, pred, ref in pairs:
        ok = float(vqa_correct(pred, ref))
        by_type.setdefault(qtype or "other", []).append(ok)
        overall.append(ok)
    out = {"all": {"n": len(overall), "accuracy": _mean(overall)}}
    out.update({k: {"n": len(v), "accuracy": _mean(v)} for k, v in sorted(by_type.items())})
    return out


# ----------------------------------------------------------------------------- findings


@dataclass
class PRF:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def f1(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "precision": self.precision,
                "recall": self.recall, "f1": self.f1}


def finding_prf(predicted: Sequence[Iterable[str]], truth: Sequence[Iterable[str]]) -> PRF:
    """Micro precision / recall / F1 over images; each image's findings matched as multisets."""
    if len(predicted) != len(truth):
        raise ValueError("need one finding list per image for both predictions and truth")
    total = PRF()
    for p, t in zip(predicted, truth):
        cp, ct = Counter(p), Counter(t)
        tp = sum((cp & ct).values())
        total.tp += tp
        total.fp += sum(cp.values()) - tp
        total.fn += sum(ct.values()) - tp
    return total


def extract_findings(text: str, kinds: Iterable[str], locations: Iterable[str]) -> list[str]:
    """``"kind | location"`` for every sentence naming a known lesion kind and a known location.

    The longest matching kind and location win ("solid nodule" over "nodule"); a
    sentence that negates ("No focal lesion.") names no finding.
    """
    kinds = sorted({k.casefold() for k in kinds if k}, key=len, reverse=True)
    locations = sorted({loc.casefold() for loc in locations if loc}, key=len, reverse=True)
    body = text.split("IMPRESSION:")[0] if "IMPRESSION:" in text else text
    out = []
    for sentence in re.split(r"(?<=[.;\n])\s*", body.casefold()):
        if re.match(r"\s*(?:findings:\s*)?no\b", sentence):
            continue
        kind = next((k for k in kinds if re.search(rf"\b{re.escape(k)}\b", sentence)), None)
        where = next((loc for loc in locations if re.search(rf"\b{re.escape(loc)}\b", sentence)), None)
        if kind and where:
            out.append(f"{kind} | {where}")
    return out


# ----------------------------------------------------------------------------- Kendall's tau-b


@dataclass(frozen=True)
class KendallResult:
    tau_b: float
    p_value: float
    n: int
    concordant: int
    discordant: int


def _tie_sums(values: Sequence[float]) -> tuple[int, int, int]:
    """Σt(t-1), Σt(t-1)(t-2), Σt(t-1)(2t+5) over groups of t tied values."""
    counts = Counter(values).values()
    return (sum(t * (t - 1) for t in counts), sum(t * (t - 1) * (t - 2) for t in counts),
            sum(t * (t - 1) * (2 * t + 5) for t in counts))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> KendallResult:
    """Kendall's tau-b = (C − D) / √((n0 − n1)(n0 − n2)), ties in x and in y corrected.

    The two-sided p-value is from the normal approximation with the tie-corrected
    variance of S = C − D (Kendall 1970). NaN when either variable is constant.
    """
    if len(x) != len(y):
        raise ValueError("x and y must be equally long")
    n = len(x)
    c = d = 0
    for i in range(n):
        for j in range(i + 1, n):
            s = (x[i] > x[j]) - (x[i] < x[j])
            t = (y[i] > y[j]) - (y[i] < y[j])
            if s * t > 0:
                c += 1
            elif s * t < 0:
                d += 1
    n0 = n * (n - 1) // 2
    tx1, tx2, tx5 = _tie_sums(x)
    ty1, ty2, ty5 = _tie_sums(y)
    n1, n2 = tx1 // 2, ty1 // 2
    denom = math.sqrt((n0 - n1) * (n0 - n2)) if n0 > n1 and n0 > n2 else 0.0
    if denom == 0:
        return KendallResult(float("nan"), float("nan"), n, c, d)
    tau = (c - d) / denom
    var = (n * (n - 1) * (2 * n + 5) - tx5 - ty5) / 18.0
    var += tx1 * ty1 / (2.0 * n * (n - 1))
    if n > 2:
        var += tx2 * ty2 / (9.0 * n * (n - 1) * (n - 2))
    p = math.erfc(abs(c - d) / math.sqrt(var) / math.sqrt(2.0)) if var > 0 else float("nan")
    return KendallResult(tau, p, n, c, d)


# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    def add(self, seconds: float, tokens: int = 0) -> None:
        self.seconds.append(seconds)
        self.tokens.append(tokens)

    def summary(self) -> dict[str, float]:
        if not self.seconds:
            return {"n": 0}
        total = sum(self.seconds)
        return {"n": len(self.seconds), "total_s": total, "mean_s": total / len(self.seconds),
                "median_s": statistics.median(self.seconds), "max_s": max(self.seconds),
                "tokens_per_s": sum(self.tokens) / total if total > 0 and sum(self.tokens) else float("nan")}
