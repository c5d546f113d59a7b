"""Entropy → reliability in [0, 1] → tier, per question, per finding, per report.

Reliability of a question is ``exp(-H)``: 1 when every answer means the same,
``1/k`` when the answers split evenly into ``k`` meanings (``exp(H)`` is the
effective number of meanings). A finding takes its worst question, a report its
worst finding (the tier) and also reports the mean. Tiers come from thresholds
in ``resources/reliability/calibration.json``.

Honesty rules: a result that is not finished is never green (tier NONE while
pending/running/cancelled, at most amber when only part was assessed); a model
that refused or failed says so in its state; a draft answer that most of the
model's own samples contradict is never green, one that none supports is red.

A finding's consistency combines its questions and, when its box was grounded
again, the box result (:mod:`inference.reliability.boxes`). The checks against the
image and the reasoning (:mod:`inference.reliability.checks`) then set the final
tier (:mod:`inference.reliability.tiers`): green means checked and right.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inference.errors import XMedError
from inference.reliability.checks import Check
from inference.reliability.clustering import cluster_answers
from inference.reliability.decomposition import AttributeQuestion
from inference.reliability.estimators import (
    confidence_weighted_semantic_entropy,
    discrete_semantic_entropy,
    rao_blackwell_semantic_entropy,
)
from inference.reliability.judges import Judge
from inference.reliability.sampling import QuestionSamples
from inference.resources import resource

if TYPE_CHECKING:
    from inference.reliability.boxes import BoxResult

log = logging.getLogger(__name__)

CALIBRATION_FILE = resource("reliability", "calibration.json")
#: a model's own calibration, inside its folder; it wins over the shipped (uncalibrated) defaults
MODEL_CALIBRATION = "reliability_calibration.json"


class Tier(str, Enum):
    GREEN = "green"
    AMBER = "amber"
    RED = "red"
    NONE = "none"  # not assessed (yet): grey


class State(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"
    CANCELLED = "cancelled"


TIER_MEANING: dict[Tier, str] = {
    Tier.GREEN: "Checked: the model gives the same answer when asked again, and every check against the image "
                "and its own reasoning passed.",
    Tier.AMBER: "Partly consistent: check this against the image before relying on it.",
    Tier.RED: "Inconsistent: the model contradicts itself; do not rely on this without your own review.",
    Tier.NONE: "Not assessed: reliability has not been computed for this.",
}
STATE_MEANING: dict[State, str] = {
    State.PENDING: "Reliability check waiting to start.",
    State.RUNNING: "Reliability check in progress.",
    State.DONE: "Reliability check finished.",
    State.REFUSED: "The model declined to answer some check questions; those parts are unverified.",
    State.FAILED: "The reliability check failed; the draft is unverified.",
    State.CANCELLED: "The reliability check was cancelled; the draft is unverified.",
}
#: assessed tiers from least to most reliable (Tier.NONE is not assessed and has no rank)
TIER_RANK = {Tier.RED: 0, Tier.AMBER: 1, Tier.GREEN: 2}
_STATE_RANK = [State.FAILED, State.CANCELLED, State.REFUSED, State.RUNNING, State.PENDING]

#: name → (function of cluster ids and log-likelihoods → entropy)
ESTIMATORS: dict[str, Callable[[Sequence[int], Sequence[float]], float]] = {
    "discrete": lambda ids, lls: discrete_semantic_entropy(ids),
    "rao_blackwell": rao_blackwell_semantic_entropy,
    "confidence_weighted": confidence_weighted_semantic_entropy,
}

_REFUSAL = re.compile(
    r"\b(i\s*(?:am|'m)\s*(?:sorry|unable|not able)|i\s*(?:cannot|can't|can not)|as an ai|"
    r"cannot (?:be )?determine|unable to (?:determine|assess|answer)|not possible to (?:determine|tell))",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """The answer declines instead of answering (apology, 'I cannot…', 'unable to determine')."""
    return bool(_REFUSAL.search(text))


@dataclass(frozen=True)
class Thresholds:
    """Reliability ≥ ``green`` → green, ≥ ``amber`` → amber, else red."""

    green: float
    amber: float
    estimator: str = "confidence_weighted"
    likelihood: str = "mean"  # "mean" (length-normalised) or "sum" token log-probs
    calibrated: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.amber <= self.green:
            raise ValueError(f"thresholds must satisfy 0 ≤ amber ≤ green, got amber={self.amber}, green={self.green}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; one of {sorted(ESTIMATORS)}")
        if self.likelihood not in ("mean", "sum"):
            raise ValueError("likelihood must be 'mean' or 'sum'")

    def tier(self, reliability: float) -> Tier:
        if reliability >= self.green:
            return Tier.GREEN
        if reliability >= self.amber:
            return Tier.AMBER
        return Tier.RED


def load_thresholds(path: Path | str = CALIBRATION_FILE) -> Thresholds:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        t = data["thresholds"]
        return Thresholds(
            green=float(t["green"]), amber=float(t["amber"]),
            estimator=data.get("estimator", "confidence_weighted"),
            likelihood=data.get("likelihood", "mean"),
            calibrated=bool(data.get("calibrated", False)),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise XMedError(f"The reliability calibration file {path.name} is missing or damaged.", detail=str(exc)) from exc


def thresholds_for(model_folder: Path | str | None) -> Thresholds:
    """The tiers for a model: its folder's ``reliability_calibration.json`` when it has one (thresholds are
    calibrated per model), else the shipped defaults."""
    own = Path(model_folder) / MODEL_CALIBRATION if model_folder else None
    return load_thresholds(own if own is not None and own.is_file() else CALIBRATION_FILE)


def worst_tier(tiers: Iterable[Tier]) -> Tier:
    """The least reliable of assessed tiers (red before amber before green)."""
    return min(tiers, key=TIER_RANK.__getitem__)


def reliability_from_entropy(entropy: float) -> float:
    """``exp(-H)`` in (0, 1]."""
    return float(math.exp(-max(0.0, entropy)))


@dataclass
class QuestionResult:
    question: AttributeQuestion
    answers: tuple[str, ...] = ()
    cluster_ids: tuple[int, ...] = ()
    entropy: float | None = None
    reliability: float | None = None
    tier: Tier = Tier.NONE
    state: State = State.PENDING
    draft_cluster: int | None = None  # cluster the draft's own answer falls in, None if it matches none
    draft_agreement: float | None = None  # fraction of samples that mean what the draft says
    message: str = ""

    def clusters(self) -> list[tuple[str, int]]:
        """(first answer, count) per cluster, in cluster-id order: for the details chart."""
        counts = Counter(self.cluster_ids)
        firsts: dict[int, str] = {}
        for cid, text in zip(self.cluster_ids, self.answers):
            firsts.setdefault(cid, text)
        return [(firsts[c], counts[c]) for c in sorted(counts)]


@dataclass
class FindingResult:
    finding_id: str
    questions: list[QuestionResult]
    reliability: float | None  # worst question (and box consistency)
    mean_reliability: float | None
    tier: Tier
    state: State
    box: BoxResult | None = None  # the phrase grounded again
    checks: list[Check] = field(default_factory=list)  # box, evidence, region (set by tiers.finalize)
    consistency_tier: Tier | None = None  # the tier from consistency alone, before the checks
    message: str = ""  # why the tier is what it is, when a check decided it


@dataclass
class Reliability:
    """The reliability index of one draft: what the traffic light shows."""

    findings: list[FindingResult] = field(default_factory=list)
    worst: float | None = None
    mean: float | None = None
    tier: Tier = Tier.NONE
    state: State = State.PENDING
    estimator: str = ""
    message: str = ""
    checks: list[Check] = field(default_factory=list)  # answer level: steps, negative answer, …
    contradictions: list[Any] = field(default_factory=list)  # consistency.Contradiction (kind, steps, message)
    consistency_tier: Tier | None = None  # the tier from consistency alone, before the checks

    @property
    def questions(self) -> list[QuestionResult]:
        return [q for f in self.findings for q in f.questions]

    @property
    def boxes(self) -> list[BoxResult]:
        return [f.box for f in self.findings if f.box is not None]

    @property
    def score(self) -> float | None:
        """The number shown with the tier: the worst consistency."""
        return self.worst

    def all_checks(self) -> list[Check]:
        """Answer-level checks, then every finding's."""
        return [*self.checks, *(c for f in self.findings for c in f.checks)]

    @property
    def meaning(self) -> str:
        """The tier's meaning in words, or what is unfinished."""
        if self.state is State.DONE:
            return TIER_MEANING[self.tier]
        return STATE_MEANING[self.state]

    @classmethod
    def running(cls, estimator: str = "") -> "Reliability":
        return cls(state=State.RUNNING, estimator=estimator, message=STATE_MEANING[State.RUNNING])


def score_question(
    samples: QuestionSamples, judge: Judge, thresholds: Thresholds
) -> QuestionResult:
    """Cluster one question's samples, take the entropy, map to a tier."""
    q = samples.question
    texts = samples.texts
    if samples.cancelled:
        return QuestionResult(q, tuple(texts), state=State.CANCELLED, message=STATE_MEANING[State.CANCELLED])
    if not texts or all(not t for t in texts):
        return QuestionResult(q, tuple(texts), state=State.FAILED, message="The model gave no answer.")
    if sum(is_refusal(t) for t in texts) * 2 >= len(texts):
        return QuestionResult(q, tuple(texts), state=State.REFUSED, message="The model declined to answer this question.")
    # the draft's answer is clustered with the samples (placed first) but not counted in the entropy
    all_ids = cluster_answers(q.question, [q.draft_answer, *texts], judge)
    draft_id, ids = all_ids[0], all_ids[1:]
    lls = [a.mean_logprob if thresholds.likelihood == "mean" else a.sum_logprob for a in samples.answers]
    entropy = ESTIMATORS[thresholds.estimator](ids, lls)
    agreement = sum(1 for c in ids if c == draft_id) / len(ids)
    # The score is the reliability of the draft's claim: consistent samples that all say
    # something else must not read as "1.00". Capping by the share of samples that agree
    # with the draft keeps the number and the tier telling the same story.
    rel = min(reliability_from_entropy(entropy), agreement)
    tier = thresholds.tier(rel)
    message = ""
    if agreement == 0.0:
        tier, message = Tier.RED, "None of the model's repeated answers agrees with the draft."
    elif agreement < 0.5 and tier is Tier.GREEN:
        tier, message = Tier.AMBER, "Most of the model's repeated answers differ from the draft."
    # renumber so that ids start at 0 over the samples alone (draft may own cluster 0)
    remap = {c: i for i, c in enumerate(dict.fromkeys(ids))}
    return QuestionResult(
        q, tuple(texts), tuple(remap[c] for c in ids), entropy, rel, tier, State.DONE,
        draft_cluster=remap.get(draft_id), draft_agreement=agreement, message=message,
    )


def _worst_state(states: Sequence[State]) -> State:
    for s in _STATE_RANK:
        if s in states:
            return s
    return State.DONE


def _combine(results: Sequence[QuestionResult | BoxResult]) -> tuple[float | None, float | None, Tier, State]:
    """Worst and mean reliability, worst tier and state of question (and box) results."""
    done = [r for r in results if r.state is State.DONE and r.reliability is not None]
    state = _worst_state([r.state for r in results]) if results else State.PENDING
    if not done:
        return None, None, Tier.NONE, state
    worst = min(r.reliability for r in done)
    mean = float(np.mean([r.reliability for r in done]))
    tier = worst_tier(r.tier for r in done)
    if state is not State.DONE and tier is Tier.GREEN:
        tier = Tier.AMBER  # partly assessed: never green
    return worst, mean, tier, state


def aggregate(results: Sequence[QuestionResult], estimator: str = "",
              boxes: Sequence[BoxResult] = (), finding_ids: Sequence[str] = ()) -> Reliability:
    """Question (and box) results → per-finding (worst, mean) → report (worst finding, mean).

    ``finding_ids`` lists findings in order, so a finding that got a box check but no
    question (the question cap) still has its result; a finding's box result counts
    like one more question."""
    by_finding: dict[str, list[QuestionResult]] = {fid: [] for fid in finding_ids}
    for r in results:
        by_finding.setdefault(r.question.finding_id, []).append(r)
    box_of: dict[str, BoxResult] = {}
    for b in boxes:
        by_finding.setdefault(b.probe.finding_id, [])
        box_of.setdefault(b.probe.finding_id, b)
    findings = []
    for fid, qs in by_finding.items():
        box = box_of.get(fid)
        if not qs and box is None:
            continue
        worst, mean, tier, state = _combine([*qs, *([box] if box is not None else [])])
        findings.append(FindingResult(fid, qs, worst, mean, tier, state, box=box, consistency_tier=tier))
    worst, mean, tier, state = _combine([*results, *box_of.values()])
    if state is State.DONE and tier is not Tier.NONE:
        message = TIER_MEANING[tier]
    else:
        message = STATE_MEANING[state]
    return Reliability(findings, worst, mean, tier, state, estimator, message, consistency_tier=tier)
