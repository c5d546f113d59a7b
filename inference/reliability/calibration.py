"""Calibration metrics and threshold choice (pure numpy).

Conventions: ``uncertainty`` is higher when an answer is more likely wrong
(an entropy); ``reliability`` is in [0, 1] and higher when more likely right;
``correct`` is 1 for a correct answer, 0 for a wrong one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _arrays(scores: Sequence[float], correct: Sequence[int | bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    if s.ndim != 1 or s.shape != c.shape or s.size == 0:
        raise ValueError("need equally long, non-empty score and label lists")
    if not np.all(np.isin(c, (0.0, 1.0))):
        raise ValueError("labels must be 0 (wrong) or 1 (correct)")
    return s, c


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, x.size + 1):
        if end == x.size or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2.0
            start = end
    return ranks


def auroc(uncertainty: Sequence[float], correct: Sequence[int | bool]) -> float:
    """P(uncertainty of a wrong answer > that of a right one), ties counting ½ (Mann–Whitney).

    NaN when the labels hold only one class.
    """
    u, c = _arrays(uncertainty, correct)
    wrong = c == 0
    n_wrong, n_right = int(wrong.sum()), int((~wrong).sum())
    if n_wrong == 0 or n_right == 0:
        return float("nan")
    ranks = _average_ranks(u)
    return float((ranks[wrong].sum() - n_wrong * (n_wrong + 1) / 2.0) / (n_wrong * n_right))


def rejection_accuracy_curve(uncertainty: Sequence[float], correct: Sequence[int | bool]) -> np.ndarray:
    """Accuracy when keeping the k most certain answers, k = 1..n (ties: expected value)."""
    u, c = _arrays(uncertainty, correct)
    order = np.argsort(u, kind="mergesort")
    u_sorted, c_sorted = u[order], c[order]
    acc = np.empty(u.size)
    kept_correct = 0.0
    start = 0
    while start < u.size:
        end = start
        while end < u.size and u_sorted[end] == u_sorted[start]:
            end += 1
        group_rate = c_sorted[start:end].mean()  # tied answers are kept in random order
        for k in range(start + 1, end + 1):
            acc[k - 1] = (kept_correct + (k - start) * group_rate) / k
        kept_correct += c_sorted[start:end].sum()
        start = end
    return acc


def aurac(uncertainty: Sequence[float], correct: Sequence[int | bool]) -> float:
    """Area under the rejection–accuracy curve: mean accuracy over keep-fractions 1/n … 1."""
    return float(rejection_accuracy_curve(uncertainty, correct).mean())


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    mean_reliability: float  # NaN for an empty bin
    accuracy: float  # NaN for an empty bin


def reliability_diagram(reliability: Sequence[float], correct: Sequence[int | bool], n_bins: int = 10) -> list[Bin]:
    """Equal-width bins over [0, 1]; the last bin includes 1.0."""
    r, c = _arrays(reliability, correct)
    if np.any((r < 0) | (r > 1)):
        raise ValueError("reliability must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.minimum(np.searchsorted(edges, r, side="right") - 1, n_bins - 1)
    bins = []
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        bins.append(Bin(float(edges[b]), float(edges[b + 1]), n,
                        float(r[m].mean()) if n else float("nan"), float(c[m].mean()) if n else float("nan")))
    return bins


def expected_calibration_error(bins: Sequence[Bin]) -> float:
    """Σ_b (n_b / n) |accuracy_b − mean reliability_b|."""
    total = sum(b.count for b in bins)
    if total == 0:
        raise ValueError("no samples in the bins")
    return float(sum(b.count / total * abs(b.accuracy - b.mean_reliability) for b in bins if b.count))


def lowest_threshold_below_error(
    reliability: Sequence[float], correct: Sequence[int | bool], max_error: float, min_count: int = 1
) -> float | None:
    """Smallest t (a value seen in the data) such that answers with reliability ≥ t
    have an observed error rate < ``max_error``, with at least ``min_count`` of them.
    None when no such t exists.
    """
    r, c = _arrays(reliability, correct)
    best = None
    for t in np.unique(r)[::-1]:  # from most to least reliable
        kept = r >= t
        if kept.sum() >= min_count and (1.0 - c[kept].mean()) < max_error:
            best = float(t)
    return best


@dataclass(frozen=True)
class ChosenThresholds:
    green: float
    amber: float
    green_error: float | None  # observed error rate at and above green (None: no answer there)
    amber_error: float | None  # observed error rate in [amber, green)


def choose_thresholds(
    reliability: Sequence[float],
    correct: Sequence[int | bool],
    max_green_error: float = 0.05,
    max_amber_error: float = 0.25,
    min_count: int = 20,
) -> ChosenThresholds:
    """Green where the observed error rate is < ``max_green_error`` (amber likewise).

    Where no threshold meets the target, green is set above 1 (never shown):
    an honest light rather than a green one that is wrong too often. Note the
    scan picks the lowest qualifying value, so error rates just above it are
    measured on the same data: use a held-out set or a large one.
    """
    r, c = _arrays(reliability, correct)
    green = lowest_threshold_below_error(r, c, max_green_error, min_count)
    amber = lowest_threshold_below_error(r, c, max_amber_error, min_count)
    green = 1.01 if green is None else green
    amber = green if amber is None else min(amber, green)

    def error(mask: np.ndarray) -> float | None:
        return float(1.0 - c[mask].mean()) if mask.any() else None

    return ChosenThresholds(green, amber, error(r >= green), error((r >= amber) & (r < green)))
