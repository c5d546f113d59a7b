"""The whole reliability pass for one draft: decompose → sample → cluster → score."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from inference.errors import XMedError
from inference.reliability.decomposition import (
    AttributeQuestion,
    DraftFinding,
    decompose,
)
from inference.reliability.judges import ClosedFormJudge, Judge
from inference.reliability.sampling import sample_answers
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
) -> Reliability:
    """Reliability of a draft. Engine problems become a FAILED result, not an exception."""
    judge = judge if judge is not None else ClosedFormJudge()
    thresholds = thresholds if thresholds is not None else load_thresholds()
    report = progress or (lambda message, fraction: None)

    def stopped() -> bool:
        return cancel is not None and cancel()

    report("Preparing check questions", 0.0)
    questions: list[AttributeQuestion] = []
    try:
        questions = decompose(findings, engine, settings.max_questions, cancel=cancel)
        if stopped():
            return _all(questions, State.CANCELLED, thresholds)
        if not questions:
            return Reliability(state=State.DONE, estimator=thresholds.estimator,
                               message="Nothing to check: the draft states no finding attributes.")
        report(f"Asking {len(questions)} questions × {settings.n_samples}", 0.1)
        samples = sample_answers(engine, questions, image, settings.n_samples, settings.temperature,
                                 settings.top_p, cancel=cancel)
    except XMedError as exc:
        log.warning("reliability pass failed: %s", exc)
        result = _all(questions, State.FAILED, thresholds)
        result.message = f"The reliability check failed: {exc}"
        return result
    if stopped():
        return _all(questions, State.CANCELLED, thresholds)
    report("Grouping answers by meaning", 0.8)
    results: list[QuestionResult] = []
    for i, s in enumerate(samples):
        results.append(score_question(s, judge, thresholds))
        report("Grouping answers by meaning", 0.8 + 0.2 * (i + 1) / len(samples))
    return aggregate(results, thresholds.estimator)


def _all(questions: Sequence[AttributeQuestion], state: State, thresholds: Thresholds) -> Reliability:
    result = aggregate([QuestionResult(q, state=state) for q in questions], thresholds.estimator)
    result.state = state
    return result
