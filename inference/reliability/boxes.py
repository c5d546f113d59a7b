"""Spatial consistency: does the model box the same place when asked again?

The attribute questions ask about the image in words; they say little about
whether a *box* is right. Here each finding's phrase is grounded again ``N``
times (the locate prompt of :mod:`inference.prompts`, sampled in the same
batched ``engine.sample`` call as the questions), the sampled boxes are grouped
by overlap (IoU ≥ :data:`SAME_BOX_IOU` with a cluster's first box = the same
place; samples without a box form one group), and the result is read like an
attribute question:

- entropy over the box clusters (the calibrated estimator), reliability ``exp(-H)``;
- ``agreement``: the share of samples whose box overlaps the draft's box
  (IoU ≥ :data:`SAME_BOX_IOU`); the reliability is capped by it, so consistent
  boxes somewhere else never read as reliable;
- for a negative answer (no box in the draft) the draft's "answer" is *no box*:
  ``agreement`` is the share of samples that box nothing, and ``consensus`` is the
  place most samples box when at least :data:`LOCALIZED_SHARE` of them agree on it.

Boxes stay on the model's 0–1000 scale of the image it was given (IoU does not
change under the axis scalings between that scale and frame pixels).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inference.parsing import parse_answer
from inference.prompts import ImageContext, build_prompt
from inference.reliability.checks import CONSISTENCY, NEGATIVE, Check
from inference.reliability.scoring import (
    ESTIMATORS,
    STATE_MEANING,
    State,
    Thresholds,
    Tier,
    is_refusal,
    reliability_from_entropy,
)
from inference.types import Box, ChatRequest, Generation

log = logging.getLogger(__name__)

#: two boxes mark the same place when their IoU is at least this
SAME_BOX_IOU = 0.5
#: a box check passes when at least this share of re-readings box the draft's place
AGREEMENT_MIN = 0.5
#: a negative answer is contradicted when at least this share of re-readings box one place
LOCALIZED_SHARE = 0.5
#: tokens for one grounded answer ("<ref>the lesion</ref><box>[[123, 456, 789, 999]]</box>")
GROUNDING_TOKENS = 48

_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class GroundingProbe:
    """Ask the model again where ``phrase`` is. ``draft_box`` (0–1000) is the draft's box,
    None for a negative answer (the draft says there is nothing to box)."""

    finding_id: str
    phrase: str
    draft_box: Box | None = None

    @property
    def negative(self) -> bool:
        return self.draft_box is None

    @property
    def target(self) -> str:
        """The phrase without its article: "a nodule" → "nodule"."""
        return _ARTICLE.sub("", " ".join(self.phrase.split())) or "lesion"


def grounding_question(probe: GroundingProbe) -> str:
    return f"Locate the {probe.target}."


def grounding_request(probe: GroundingProbe, image: np.ndarray | None, context: ImageContext | None = None,
                      max_new_tokens: int = GROUNDING_TOKENS) -> ChatRequest:
    """The locate prompt (system prompt with the guardrail, the image's context line) for the probe."""
    prompt = build_prompt("locate", grounding_question(probe), context)
    return ChatRequest(prompt=prompt.user, image=image, system=prompt.system, max_new_tokens=max_new_tokens)


def first_box(text: str) -> Box | None:
    """The first box of a sampled grounding answer (0–1000), None when it gives none."""
    for g in parse_answer(text).groundings:
        if g.phrase.boxes:
            return g.phrase.boxes[0]
    return None


def cluster_boxes(boxes: Sequence[Box | None], iou: float = SAME_BOX_IOU) -> list[int]:
    """Cluster id per box, numbered in order of first appearance: a box joins the first cluster
    whose first box it overlaps with IoU ≥ ``iou``; every "no box" (None) is one cluster."""
    ids: list[int] = []
    firsts: list[Box | None] = []
    for box in boxes:
        for cid, first in enumerate(firsts):
            if (box is None and first is None) or (
                    box is not None and first is not None and box.iou(first) >= iou):
                break
        else:
            firsts.append(box)
            cid = len(firsts) - 1
        ids.append(cid)
    return ids


@dataclass
class BoxResult:
    """The re-groundings of one probe and what they say about the draft's box."""

    probe: GroundingProbe
    answers: tuple[str, ...] = ()
    boxes: tuple[Box | None, ...] = ()
    cluster_ids: tuple[int, ...] = ()
    entropy: float | None = None
    reliability: float | None = None
    agreement: float | None = None  # share of samples that box what the draft boxed (negatives: nothing)
    tier: Tier = Tier.NONE
    state: State = State.PENDING
    consensus: Box | None = None  # negatives: the place at least LOCALIZED_SHARE of samples box
    consensus_count: int = 0
    message: str = ""

    @property
    def n(self) -> int:
        return len(self.boxes)

    @property
    def agreeing(self) -> int:
        return round((self.agreement or 0.0) * self.n)

    def clusters(self) -> list[tuple[Box | None, int]]:
        """(first box, count) per cluster in id order: for the details view."""
        counts = Counter(self.cluster_ids)
        firsts: dict[int, Box | None] = {}
        for cid, box in zip(self.cluster_ids, self.boxes):
            firsts.setdefault(cid, box)
        return [(firsts[c], counts[c]) for c in sorted(counts)]

    def summary(self) -> str:
        """In words, e.g. "8 of 10 re-readings boxed the draft's place; 2 gave no box"."""
        if self.state is not State.DONE:
            return self.message or STATE_MEANING[self.state]
        none = sum(1 for b in self.boxes if b is None)
        if self.probe.negative:
            boxed = self.n - none
            if not boxed:
                return f"none of {self.n} re-readings boxed anything"
            return f"{boxed} of {self.n} re-readings boxed something; the most agreed on one place: {self.consensus_count}"
        other = self.n - self.agreeing - none
        parts = [f"{self.agreeing} of {self.n} re-readings boxed the draft's place"]
        if other:
            parts.append(f"{other} elsewhere")
        if none:
            parts.append(f"{none} gave no box")
        return "; ".join(parts)

    def check(self) -> Check:
        """The result as a check: the draft's box is where the model's re-readings put it
        (negatives: the re-readings do not keep boxing one place)."""
        inputs = {"samples": self.n, "agreement": self.agreement, "entropy": self.entropy,
                  "iou_threshold": SAME_BOX_IOU}
        if self.probe.negative:
            if self.state is not State.DONE:
                return Check("negative_grounding", None, f"Not checked: {self.summary()}", NEGATIVE, inputs)
            localized = self.consensus is not None
            return Check("negative_grounding", not localized, self.summary(), NEGATIVE,
                         {**inputs, "consensus": self.consensus_count})
        if self.state is not State.DONE:
            return Check("box_consistency", None, f"Not checked: {self.summary()}", CONSISTENCY, inputs)
        passed = (self.agreement or 0.0) >= AGREEMENT_MIN
        return Check("box_consistency", passed, self.summary(), CONSISTENCY, inputs)


def score_boxes(probe: GroundingProbe, generations: Sequence[Generation], thresholds: Thresholds) -> BoxResult:
    """Cluster one probe's sampled boxes, take the entropy, compare with the draft's box."""
    texts = tuple(g.text.strip() for g in generations)
    if any(g.finish_reason == "cancelled" for g in generations):
        return BoxResult(probe, texts, state=State.CANCELLED, message=STATE_MEANING[State.CANCELLED])
    if not texts or all(not t for t in texts):
        return BoxResult(probe, texts, state=State.FAILED, message="The model gave no answer.")
    boxes = tuple(first_box(t) for t in texts)
    refusals = sum(1 for t, b in zip(texts, boxes) if b is None and is_refusal(t))
    if refusals * 2 >= len(texts):
        return BoxResult(probe, texts, boxes, state=State.REFUSED, message="The model declined to locate it again.")
    draft = probe.draft_box
    all_ids = cluster_boxes([draft, *boxes])
    draft_id, ids = all_ids[0], all_ids[1:]
    lls = [g.mean_logprob if thresholds.likelihood == "mean" else g.sum_logprob for g in generations]
    entropy = ESTIMATORS[thresholds.estimator](ids, lls)
    agreement = sum(1 for c in ids if c == draft_id) / len(ids)
    rel = min(reliability_from_entropy(entropy), agreement)
    tier = thresholds.tier(rel)
    message = ""
    consensus, consensus_count = None, 0
    if not probe.negative:
        if agreement == 0.0:
            tier, message = Tier.RED, "None of the model's re-readings boxes the draft's place."
        elif agreement < AGREEMENT_MIN and tier is Tier.GREEN:
            tier, message = Tier.AMBER, "Most of the model's re-readings box another place."
    else:
        counts = Counter(c for c, b in zip(ids, boxes) if b is not None)
        if counts:
            cid, consensus_count = counts.most_common(1)[0]
            if consensus_count / len(ids) >= LOCALIZED_SHARE:
                consensus = _mean_box([b for c, b in zip(ids, boxes) if c == cid and b is not None])
                if tier is Tier.GREEN:
                    tier = Tier.AMBER
                message = f"{consensus_count} of {len(ids)} re-readings boxed one place."
    remap = {c: i for i, c in enumerate(dict.fromkeys(ids))}
    return BoxResult(probe, texts, boxes, tuple(remap[c] for c in ids), entropy, rel, agreement, tier, State.DONE,
                     consensus, consensus_count, message)


def _mean_box(boxes: Sequence[Box]) -> Box:
    a = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], dtype=float).mean(axis=0)
    return Box(*(float(v) for v in a))
