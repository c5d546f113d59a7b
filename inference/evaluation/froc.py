"""FROC and the competition performance metric for lesion detection in volumes (LUNA16's way).

Each volume has true lesions (centre in patient mm, longest diameter ``size_mm``) and predicted
lesion candidates (centre in mm, score). Matching, per volume:

- a prediction **hits** a true lesion when its centre lies within the lesion's radius + ``margin_mm``
  (5 mm) of the lesion's centre;
- a true lesion's score is the highest score of the predictions that hit it (None: never hit);
  further hits on the same lesion are neither true nor false positives (LUNA16 ignores them);
- a prediction that hits no true lesion is a false positive.

The FROC curve: for every threshold t (each distinct score, highest first; tied scores enter
together), sensitivity(t) = lesions whose score ≥ t / all lesions and FP rate(t) = false positives with
score ≥ t / volumes. **Sensitivity at r FPs per volume** is the best sensitivity of a threshold whose FP
rate is at most r (0 when every threshold has more; a step function, no interpolation). The
**competition performance metric (CPM)** is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per
volume. Per size bucket (:func:`inference.evaluation.sizes.size_bucket`) the lesions are those of the
bucket and the false positives are all of them (a false positive has no size).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from inference.evaluation.sizes import BUCKET_NAMES, size_bucket

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MARGIN_MM = 5.0


@dataclass(frozen=True)
class TrueLesion:
    center_mm: tuple[float, float, float]
    size_mm: float  # longest diameter
    id: str = ""

    @property
    def bucket(self) -> str:
        return size_bucket(float(self.size_mm))


@dataclass(frozen=True)
class Prediction:
    center_mm: tuple[float, float, float]
    score: float


@dataclass
class VolumeCase:
    id: str
    lesions: list[TrueLesion]
    predictions: list[Prediction]


@dataclass
class VolumeMatch:
    """One volume matched: each true lesion's best hitting score (None: missed) and the FP scores."""

    lesion_scores: list[float | None]
    fp_scores: list[float]
    buckets: list[str] = field(default_factory=list)


def hits(p: Prediction, t: TrueLesion, margin_mm: float = MARGIN_MM) -> bool:
    return math.dist(p.center_mm, t.center_mm) <= float(t.size_mm) / 2.0 + margin_mm


def match_volume(case: VolumeCase, margin_mm: float = MARGIN_MM) -> VolumeMatch:
    scores: list[float | None] = [None] * len(case.lesions)
    fps: list[float] = []
    for p in case.predictions:
        hit_any = False
        for j, t in enumerate(case.lesions):
            if hits(p, t, margin_mm):
                hit_any = True
                if scores[j] is None or p.score > scores[j]:
                    scores[j] = float(p.score)
        if not hit_any:
            fps.append(float(p.score))
    return VolumeMatch(scores, fps, [t.bucket for t in case.lesions])


@dataclass
class FrocResult:
    volumes: int
    lesions: int
    false_positives: int  # at the lowest threshold (every prediction kept)
    sensitivity: dict[float, float | None]  # FP rate → sensitivity (None without lesions)
    cpm: float | None
    max_sensitivity: float | None
    curve: list[tuple[float, float]]  # (FPs per volume, sensitivity) at each threshold, highest first

    def to_json(self) -> dict:
        return {
            "volumes": self.volumes,
            "lesions": self.lesions,
            "false_positives": self.false_positives,
            "fp_per_volume": round(self.false_positives / self.volumes, 4) if self.volumes else None,
            "sensitivity": {_rate_key(r): _r(s) for r, s in self.sensitivity.items()},
            "cpm": _r(self.cpm),
            "max_sensitivity": _r(self.max_sensitivity),
            "curve": [[round(f, 4), round(s, 4)] for f, s in self.curve],
        }


def _rate_key(r: float) -> str:
    return f"{r:g}"


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 4)


def froc_from_matches(matches: Sequence[VolumeMatch], rates: Sequence[float] = FP_RATES,
                      keep: Callable[[str], bool] | None = None) -> FrocResult:
    """FROC over matched volumes; ``keep(bucket)`` restricts the lesions (false positives stay all)."""
    n_vol = len(matches)
    lesion_scores = [s for m in matches for s, b in zip(m.lesion_scores, m.buckets or [""] * len(m.lesion_scores))
                     if keep is None or keep(b)]
    fp_scores = [s for m in matches for s in m.fp_scores]
    n_les = len(lesion_scores)
    found = sorted((s for s in lesion_scores if s is not None), reverse=True)
    fps = sorted(fp_scores, reverse=True)
    thresholds = sorted(set(found) | set(fps), reverse=True)
    curve: list[tuple[float, float]] = []
    for t in thresholds:
        tp = sum(1 for s in found if s >= t)
        fp = sum(1 for s in fps if s >= t)
        curve.append((fp / n_vol if n_vol else 0.0, tp / n_les if n_les else 0.0))
    if n_les == 0:
        sens: dict[float, float | None] = {r: None for r in rates}
        return FrocResult(n_vol, 0, len(fps), sens, None, None, curve)
    sens = {}
    for r in rates:
        ok = [s for f, s in curve if f <= r + 1e-12]
        sens[r] = max(ok) if ok else 0.0
    cpm = sum(sens[r] for r in rates) / len(rates)
    return FrocResult(n_vol, n_les, len(fps), sens, cpm, len(found) / n_les, curve)


def froc(cases: Sequence[VolumeCase], rates: Sequence[float] = FP_RATES, margin_mm: float = MARGIN_MM) -> FrocResult:
    return froc_from_matches([match_volume(c, margin_mm) for c in cases], rates)


def froc_by_size(cases: Sequence[VolumeCase], rates: Sequence[float] = FP_RATES,
                 margin_mm: float = MARGIN_MM) -> dict[str, FrocResult]:
    """FROC per size bucket (small, medium, large): the bucket's lesions against every false positive."""
    matches = [match_volume(c, margin_mm) for c in cases]
    return {b: froc_from_matches(matches, rates, keep=lambda x, b=b: x == b) for b in BUCKET_NAMES}


def format_table(overall: FrocResult, by_size: dict[str, FrocResult] | None = None) -> str:
    """The FROC table ``xmedgpt eval-volume`` prints."""
    head = "lesions  " + "  ".join(f"{_rate_key(r):>6}" for r in overall.sensitivity) + "     CPM"
    lines = [f"{'':10}{head}"]

    def row(name: str, res: FrocResult) -> str:
        cells = "  ".join(f"{'-' if s is None else f'{s:.3f}':>6}" for s in res.sensitivity.values())
        cpm = "-" if res.cpm is None else f"{res.cpm:.3f}"
        return f"{name:10}{res.lesions:7d}  {cells}  {cpm:>6}"

    lines.append(row("all", overall))
    for name, res in (by_size or {}).items():
        lines.append(row(name, res))
    lines.append(f"(sensitivity at 1/8 … 8 false positives per volume; {overall.volumes} volume(s), "
                 f"{overall.false_positives} false positive(s) in all)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- operating point


@dataclass(frozen=True)
class OperatingPointResult:
    """What a score threshold keeps over matched volumes: candidates with score ≥ ``min_score`` are listed."""

    min_score: float
    volumes: int
    lesions: int
    sensitivity: float | None  # lesions hit by a listed candidate / all lesions (None without lesions)
    false_positives: int  # listed candidates that hit no lesion
    by_size: dict[str, float | None] = field(default_factory=dict)  # bucket → sensitivity

    @property
    def fp_per_volume(self) -> float:
        return self.false_positives / self.volumes if self.volumes else 0.0

    def to_json(self) -> dict:
        return {"min_score": round(self.min_score, 6), "volumes": self.volumes, "lesions": self.lesions,
                "sensitivity": _r(self.sensitivity), "false_positives": self.false_positives,
                "fp_per_volume": round(self.fp_per_volume, 4), "by_size": {b: _r(s) for b, s in self.by_size.items()}}


def at_threshold(matches: Sequence[VolumeMatch], min_score: float) -> OperatingPointResult:
    """Sensitivity (overall and per size bucket) and false positives of the candidates scoring ≥ ``min_score``."""
    pairs = [(s, b) for m in matches for s, b in zip(m.lesion_scores, m.buckets or [""] * len(m.lesion_scores))]

    def sensitivity(keep: Callable[[str], bool]) -> float | None:
        chosen = [s for s, b in pairs if keep(b)]
        return sum(1 for s in chosen if s is not None and s >= min_score) / len(chosen) if chosen else None

    fps = sum(1 for m in matches for s in m.fp_scores if s >= min_score)
    return OperatingPointResult(float(min_score), len(matches), len(pairs), sensitivity(lambda b: True), fps,
                                {name: sensitivity(lambda b, name=name: b == name) for name in BUCKET_NAMES})


def fit_operating_point(matches: Sequence[VolumeMatch], fp_per_volume: float) -> OperatingPointResult:
    """The lowest score threshold whose false positives per volume stay at most ``fp_per_volume``: every
    distinct score is tried, highest first (tied scores enter together); the threshold is set halfway between the
    last score kept and the next one down (0 when every candidate is kept), so a new volume's candidate scoring
    like either is not decided by rounding. ValueError when even the best-scoring candidates draw more false
    positives than that (a list that would always be empty is no operating point)."""
    if fp_per_volume < 0:
        raise ValueError("fp_per_volume must be at least 0")
    n_vol = len(matches)
    if n_vol == 0:
        raise ValueError("no volumes to fit an operating point on")
    scores = sorted({s for m in matches for s in (*m.fp_scores, *(x for x in m.lesion_scores if x is not None))},
                    reverse=True)
    kept = None
    for i, t in enumerate(scores):
        if sum(1 for m in matches for s in m.fp_scores if s >= t) / n_vol > fp_per_volume + 1e-12:
            break
        kept = i
    if kept is None:
        raise ValueError(f"even the best-scoring candidates draw more than {fp_per_volume:g} false positives per "
                         "volume")
    lower = scores[kept + 1] if kept + 1 < len(scores) else None
    threshold = 0.0 if lower is None else (scores[kept] + lower) / 2.0
    return at_threshold(matches, threshold)
