"""Reliability index: how far to trust each statement of a draft (issue 4).

The draft's findings are decomposed into attribute-level questions
(:mod:`.decomposition`), ``N`` answers are sampled per question in one batched
engine call (:mod:`.sampling`), grouped by meaning with a pluggable judge
(:mod:`.judges`, :mod:`.clustering`), turned into an entropy
(:mod:`.estimators`), then into a reliability in [0, 1] and a green / amber /
red tier from a calibration file (:mod:`.scoring`, :mod:`.calibration`).
:func:`assess` (:mod:`.pipeline`) runs the whole pass for one draft; each finding's
box is grounded again in the same batched call (:mod:`.boxes`). Checks against the
image and the reasoning (:mod:`.checks`, :mod:`.consistency`) then decide the final
tier (:func:`finalize`, :mod:`.tiers`): green means checked and right.
"""

from inference.reliability.boxes import BoxResult, GroundingProbe, cluster_boxes
from inference.reliability.checks import Check
from inference.reliability.clustering import cluster_answers
from inference.reliability.decomposition import AttributeQuestion, DraftFinding
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
from inference.reliability.pipeline import ReliabilitySettings, assess
from inference.reliability.scoring import (
    QuestionResult,
    Reliability,
    State,
    Thresholds,
    Tier,
    load_thresholds,
)
from inference.reliability.tiers import finalize

__all__ = [
    "AttributeQuestion",
    "BoxResult",
    "Check",
    "GroundingProbe",
    "ClosedFormJudge",
    "DraftFinding",
    "EmbeddingJudge",
    "Judge",
    "NLIJudge",
    "QuestionResult",
    "Reliability",
    "ReliabilitySettings",
    "State",
    "Thresholds",
    "Tier",
    "assess",
    "cluster_answers",
    "cluster_boxes",
    "confidence_weighted_semantic_entropy",
    "discrete_semantic_entropy",
    "finalize",
    "lexical_disagreement",
    "load_thresholds",
    "mean_token_logprob",
    "naive_predictive_entropy",
    "rao_blackwell_semantic_entropy",
]
