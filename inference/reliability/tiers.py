"""Consistency + checks → the tier the light shows. Green means checked and right.

Per finding, in this order:

1. a failed ``guardrail`` or ``steps`` check (a structure the series cannot show;
   a contradiction) → **red**;
2. otherwise the consistency tier (its questions and its box grounded again,
   :mod:`inference.reliability.scoring`) — already never green when the model
   refused, failed or was cancelled;
3. a failed ``evidence``, ``consistency`` or ``negative`` check caps it at **amber**;
4. a check that could not run (``passed`` None) leaves no green: a finding that
   would be green is "not checked" (:attr:`Tier.NONE`, with the reason) instead.

The answer: answer-level checks (the reasoning's steps and contradictions, the
negative answer's re-readings) by the same rules, then the worst finding in the
order red < amber < not checked < green. Contradictions force red whatever the
samples say. The score stays the worst consistency (what the calibrated
thresholds were set on); the tier says what the checks allow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from inference.reliability.checks import (
    CONSISTENCY,
    EVIDENCE,
    GUARDRAIL,
    NEGATIVE,
    STEPS,
    Check,
)
from inference.reliability.scoring import (
    STATE_MEANING,
    TIER_MEANING,
    FindingResult,
    Reliability,
    State,
    Tier,
)

#: what a failed check of each kind allows at most
FAIL_CAP: dict[str, Tier] = {
    GUARDRAIL: Tier.RED,
    STEPS: Tier.RED,
    EVIDENCE: Tier.AMBER,
    CONSISTENCY: Tier.AMBER,
    NEGATIVE: Tier.AMBER,
}
#: final tiers from least to most reliable; "not checked" (NONE) ranks below green only
FINAL_RANK: dict[Tier, int] = {Tier.RED: 0, Tier.AMBER: 1, Tier.NONE: 2, Tier.GREEN: 3}
#: the words before the reasons, per final tier
TIER_LEAD: dict[Tier, str] = {
    Tier.RED: "Do not rely on this without your own review",
    Tier.AMBER: "Check this against the image",
    Tier.NONE: "Not checked, so not shown as reliable",
    Tier.GREEN: "Checked",
}
#: check names in words
CHECK_LABEL: dict[str, str] = {
    "box_consistency": "box re-read",
    "negative_grounding": "negative answer re-read",
    "in_body": "box inside the body",
    "size": "size",
    "side": "side",
    "density": "density",
    "region": "body region",
    "steps": "reasoning steps",
    "box": "box",
}


def cap(tier: Tier, limit: Tier) -> Tier:
    """``tier`` lowered to ``limit`` (in :data:`FINAL_RANK` order); a tier not assessed (NONE)
    becomes ``limit``: a failed check is known even when the consistency is not."""
    if tier is Tier.NONE:
        return limit
    return limit if FINAL_RANK[limit] < FINAL_RANK[tier] else tier


def worst_final(tiers: Iterable[Tier]) -> Tier:
    return min(tiers, key=FINAL_RANK.__getitem__)


def apply_checks(tier: Tier, checks: Sequence[Check]) -> tuple[Tier, list[str]]:
    """A tier after the checks, and the reasons (in words) of the checks that lowered it."""
    reasons: list[str] = []
    out = tier
    for c in checks:
        if c.passed is False:
            out = cap(out, FAIL_CAP[c.kind])
            reasons.append(check_sentence(c))
    if out is Tier.GREEN:
        missing = [c for c in checks if c.passed is None]
        if missing:
            out = Tier.NONE
            reasons.extend(check_sentence(c) for c in missing)
    return out, reasons


def finalize(
    reliability: Reliability,
    finding_checks: Mapping[str, Sequence[Check]] | None = None,
    answer_checks: Sequence[Check] = (),
    contradictions: Sequence[Any] = (),
    labels: Mapping[str, str] | None = None,
) -> Reliability:
    """The reliability with every check attached and the tiers they allow (a new object).

    Each finding's box check (from its re-groundings) goes first in its checks; a negative
    answer's goes to the answer level unless ``answer_checks`` already has one (the caller
    may word it better). ``labels``: finding id → how the message names it."""
    finding_checks = finding_checks or {}
    labels = labels or {}
    findings: list[FindingResult] = []
    answer_level = list(answer_checks)
    for fr in reliability.findings:
        checks = list(finding_checks.get(fr.finding_id, ()))
        if fr.box is not None:
            if not fr.box.probe.negative:
                checks.insert(0, fr.box.check())
            elif not any(c.name == "negative_grounding" for c in answer_level):
                answer_level.append(fr.box.check())
        base = fr.consistency_tier if fr.consistency_tier is not None else fr.tier
        tier, why = apply_checks(base, checks)
        findings.append(dataclasses.replace(fr, checks=checks, tier=tier, message=" ".join(why),
                                            consistency_tier=base))
    base = reliability.consistency_tier if reliability.consistency_tier is not None else reliability.tier
    out = dataclasses.replace(reliability, findings=findings, checks=answer_level,
                              contradictions=list(contradictions), consistency_tier=base)
    tiers = [f.tier for f in findings if f.reliability is not None or f.tier is not Tier.NONE]
    if reliability.state is State.DONE:
        tier = worst_final(tiers) if tiers else base
    else:
        tier = worst_final([base, *tiers])
        if tier is Tier.GREEN:
            tier = Tier.AMBER  # partly assessed: never green
    tier, why = apply_checks(tier, answer_level)
    out.tier = tier
    out.message = _message(out, reliability, why, labels)
    return out


def _message(out: Reliability, before: Reliability, answer_reasons: list[str], labels: Mapping[str, str]) -> str:
    deciding = [f for f in out.findings if f.message and f.tier is out.tier]
    reasons = list(answer_reasons)
    for f in deciding or [f for f in out.findings if f.message and f.tier is not Tier.GREEN]:
        name = labels.get(f.finding_id, f.finding_id)
        reasons.append(f"{name} — {f.message}" if len(out.findings) > 1 or name != "answer" else f.message)
    if before.state not in (State.DONE, State.PENDING):
        lead = before.message or STATE_MEANING[before.state]
        return " ".join([lead, *reasons])
    if not reasons:
        if before.state is State.DONE and out.tier is not Tier.NONE:
            return TIER_MEANING[out.tier]
        return before.message or TIER_MEANING[out.tier]
    return f"{TIER_LEAD[out.tier]}: " + " ".join(reasons)


def check_sentence(c: Check) -> str:
    """"size: the text says 42 mm but the box measures 24 × 23 mm." / "side not checked: …"."""
    label = CHECK_LABEL.get(c.name, c.name.replace("_", " "))
    text = c.detail.strip()
    if text and text[-1] not in ".!?":
        text += "."
    head = label if c.passed is not None else f"{label} not checked"
    return f"{head}: {text}" if text else f"{head}."
