"""The whole reliability pass for one draft: decompose → sample → cluster → score.

The attribute questions and the grounding probes (each finding's phrase located
again, :mod:`inference.reliability.boxes`) go to the engine in one batched
``sample`` call. The checks against the image and the final tier are added by the
caller (:func:`inference.reliability.tiers.finalize`), which knows the pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inference.errors import XMedError
from inference.prompts import ImageContext
from inference.reliability.boxes import (
    BoxResult,
    GroundingProbe,
    grounding_request,
    score_boxes,
)
from inference.reliability.decomposition import (
    AttributeQuestion,
    DraftFinding,
    decompose,
)
from inference.reliability.judges import ClosedFormJudge, Judge
from inference.reliability.sampling import answer_request, questions_from, sample_batch
from inference.reliability.scoring import (
    QuestionResult,
    Reliability,
    State,
    Thresholds,
    aggregate,
    load_thresholds,
    score_question,
)
from inference.types import CancelFn, Engine

log = logging.getLogger(__name__)

#: ``progress(message, fraction)``
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class ReliabilitySettings:
    """What the reader can set: samples per question and number of questions."""

    n_samples: int = 10
    max_questions: int = 5
    temperature: float = 1.0
    top_p: float = 0.9


def assess(
    engine: Engine,
    findings: Sequence[DraftFinding],
    image: np.ndarray | None,
    judge: Judge | None = None,
    thresholds: Thresholds | None = None,
    settings: ReliabilitySettings = ReliabilitySettings(),
    cancel: CancelFn | None = None,
    progress: Progress | None = None,
    probes: Sequence[GroundingProbe] = (),
    context: ImageContext | None = None,
) -> Reliability:
    """Reliability of a draft. Engine problems become a FAILED result, not an exception.

    ``probes``: phrases to ground again (``N`` samples each, in the same batched call as
    the questions); ``context`` is the image's header line for their locate prompt."""
    judge = judge if judge is not None else ClosedFormJudge()
    thresholds = thresholds if thresholds is not None else load_thresholds()
    report = progress or (lambda message, fraction: None)

    def stopped() -> bool:
        return cancel is not None and cancel()

    report("Preparing check questions", 0.0)
    questions: list[AttributeQuestion] = []
    probes = list(probes)
    ids = [f.id for f in findings]
    try:
        questions = decompose(findings, engine, settings.max_questions, cancel=cancel)
        if stopped():
            return _all(questions, probes, State.CANCELLED, thresholds, ids)
        if not questions and not probes:
            return Reliability(state=State.DONE, estimator=thresholds.estimator,
                               message="Nothing to check: the draft states no finding attributes.")
        what = f"{len(questions)} questions" + (f" and {len(probes)} boxes" if probes else "")
        report(f"Asking {what} × {settings.n_samples}", 0.1)
        requests = [answer_request(q, image) for q in questions]
        requests += [grounding_request(p, image, context) for p in probes]
        batches = sample_batch(engine, requests, settings.n_samples, settings.temperature, settings.top_p,
                               cancel=cancel)
    except XMedError as exc:
        log.warning("reliability pass failed: %s", exc)
        result = _all(questions, probes, State.FAILED, thresholds, ids)
        result.message = f"The reliability check failed: {exc}"
        return result
    if stopped():
        return _all(questions, probes, State.CANCELLED, thresholds, ids)
    samples = questions_from(questions, batches[: len(questions)])
    report("Grouping answers by meaning", 0.8)
    results: list[QuestionResult] = []
    total = len(samples) + len(probes)
    for i, s in enumerate(samples):
        results.append(score_question(s, judge, thresholds))
        report("Grouping answers by meaning", 0.8 + 0.2 * (i + 1) / total)
    boxes: list[BoxResult] = []
    for i, (p, batch) in enumerate(zip(probes, batches[len(questions):])):
        boxes.append(score_boxes(p, batch, thresholds))
        report("Grouping boxes by overlap", 0.8 + 0.2 * (len(samples) + i + 1) / total)
    return aggregate(results, thresholds.estimator, boxes=boxes, finding_ids=ids)


def _all(questions: Sequence[AttributeQuestion], probes: Sequence[GroundingProbe], state: State,
         thresholds: Thresholds, finding_ids: Sequence[str] = ()) -> Reliability:
    boxes = [BoxResult(p, state=state) for p in probes]
    result = aggregate([QuestionResult(q, state=state) for q in questions], thresholds.estimator, boxes=boxes,
                       finding_ids=finding_ids)
    result.state = state
    return result
