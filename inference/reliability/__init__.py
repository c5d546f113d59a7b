"""Reliability index: how far to trust each statement of a draft (issue 4).

The draft's findings are decomposed into attribute-level questions
(:mod:`.decomposition`), ``N`` answers are sampled per question in one batched
engine call (:mod:`.sampling`), grouped by meaning with a pluggable judge
(:mod:`.judges`, :mod:`.clustering`), turned into an entropy
(:mod:`.estimators`), then into a reliability in [0, 1] and a green / amber /
red tier from a calibration file (:mod:`.scoring`, :mod:`.calibration`).
"""

from inference.reliability.estimators import (
    confidence_weighted_semantic_entropy,
    discrete_semantic_entropy,
    lexical_disagreement,
    mean_token_logprob,
    naive_predictive_entropy,
    rao_blackwell_semantic_entropy,
)

__all__ = [
    "confidence_weighted_semantic_entropy",
    "discrete_semantic_entropy",
    "lexical_disagreement",
    "mean_token_logprob",
    "naive_predictive_entropy",
    "rao_blackwell_semantic_entropy",
]
