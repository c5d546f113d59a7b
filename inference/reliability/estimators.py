"""Uncertainty estimators for one attribute question (natural log everywhere).

Inputs are the ``N`` sampled answers to one question: their cluster ids (from
:func:`inference.reliability.clustering.cluster_answers`) and, where needed, one
log-likelihood per sample (the sum of its token log-probs, or their mean for a
length-normalised likelihood). Higher entropy = less consistent = less reliable.

The semantic-entropy estimators follow Farquhar et al. (Nature 2024); the
confidence-weighted one is this project's formulation (see its docstring).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "discrete_semantic_entropy",
    "rao_blackwell_semantic_entropy",
    "confidence_weighted_semantic_entropy",
    "naive_predictive_entropy",
    "mean_token_logprob",
    "lexical_disagreement",
    "rouge_l_f1",
]


def _entropy(p: np.ndarray) -> float:
    """Shannon entropy of a probability vector, with 0·log 0 = 0."""
    p = p[p > 0]
    return float(-np.sum(p * np.log(p))) + 0.0  # + 0.0 turns -0.0 into 0.0


def _ids_and_lls(cluster_ids: Sequence[int], log_likelihoods: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(cluster_ids, dtype=np.int64)
    lls = np.asarray(log_likelihoods, dtype=np.float64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("need at least one sampled answer")
    if lls.shape != ids.shape:
        raise ValueError(f"{ids.size} cluster ids but {lls.size} log-likelihoods")
    if not np.all(np.isfinite(lls)):
        raise ValueError("log-likelihoods must be finite")
    return ids, lls


def discrete_semantic_entropy(cluster_ids: Sequence[int]) -> float:
    """Entropy of the cluster frequencies: ``H = -Σ_c (n_c/N) log(n_c/N)``.

    Ranges from 0 (all answers mean the same) to ``log N`` (all differ).
    """
    ids = np.asarray(cluster_ids, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError("need at least one sampled answer")
    _, counts = np.unique(ids, return_counts=True)
    return _entropy(counts / ids.size)


def rao_blackwell_semantic_entropy(cluster_ids: Sequence[int], log_likelihoods: Sequence[float]) -> float:
    """Likelihood-weighted semantic entropy.

    ``log p̃(c) = logsumexp_{i: c_i = c} ℓ_i`` over *every* sample (duplicates
    included), then ``p(c) = p̃(c) / Σ_c' p̃(c')`` and ``H = -Σ_c p(c) log p(c)``.
    The renormalisation makes it insensitive to a common scale, so length-
    normalised likelihoods whose exponentials sum to more than 1 are fine.
    It is 0 whenever every sample falls in one cluster, however unsure the model was.
    """
    ids, lls = _ids_and_lls(cluster_ids, log_likelihoods)
    clusters = np.unique(ids)
    log_pc = np.array([np.logaddexp.reduce(lls[ids == c]) for c in clusters])
    log_pc -= np.logaddexp.reduce(log_pc)
    return _entropy(np.exp(log_pc))


def confidence_weighted_semantic_entropy(cluster_ids: Sequence[int], log_likelihoods: Sequence[float]) -> float:
    """Semantic entropy that keeps the model's own doubt (this project's formulation).

    Each sample ``i`` has a confidence ``κ_i = min(1, exp(ℓ_i))`` (use the *mean*
    token log-prob, so that κ is a per-token geometric-mean probability and does
    not shrink with answer length). Sample ``i`` votes ``κ_i / N`` for its
    meaning cluster; the rest of its vote, ``(1 - κ_i) / N``, goes to an outcome
    of its own: an unnamed alternative the model kept open while answering.

        p(c) = (1/N) Σ_{i: c_i = c} κ_i          d_i = (1 - κ_i) / N
        H_CW = -Σ_c p(c) log p(c)  -  Σ_i d_i log d_i

    The outcomes sum to exactly 1, so there is nothing to renormalise even when
    the ``exp(ℓ_i)`` summed over samples exceed 1 (the usual case after length
    normalisation); values of ``ℓ_i > 0`` (not valid log-probs) are clipped to κ = 1.

    Properties: with every κ_i = 1 it equals :func:`discrete_semantic_entropy`;
    when all samples agree it is ``-κ̄ log κ̄ - Σ_i d_i log d_i`` (not 0 unless
    the model was sure); for all-agree answers it rises monotonically as the
    confidence falls, for κ above 1/(N+1). Keeping each sample's doubt as a
    separate outcome, rather than pooling ``1 - Σp`` into one, is what gives that
    monotonicity: a pooled residual would make "certainly unsure" look as
    reliable as "fairly sure" (binary entropy is symmetric about 1/2).
    """
    ids, lls = _ids_and_lls(cluster_ids, log_likelihoods)
    n = ids.size
    kappa = np.exp(np.minimum(lls, 0.0))
    clusters = np.unique(ids)
    p_clusters = np.array([kappa[ids == c].sum() for c in clusters]) / n
    doubts = (1.0 - kappa) / n
    return _entropy(np.concatenate([p_clusters, doubts]))


def naive_predictive_entropy(log_likelihoods: Sequence[float]) -> float:
    """Monte-Carlo sequence-level entropy ``-(1/N) Σ_i ℓ_i`` (no meaning clustering).

    With summed log-probs it is the length-dependent predictive entropy; with
    mean token log-probs, its length-normalised variant.
    """
    lls = np.asarray(log_likelihoods, dtype=np.float64)
    if lls.ndim != 1 or lls.size == 0:
        raise ValueError("need at least one log-likelihood")
    return float(-lls.mean()) + 0.0


def mean_token_logprob(token_logprobs: Sequence[float]) -> float:
    """Mean token log-prob of one (greedy) answer. Higher = more confident (≤ 0)."""
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.ndim != 1 or lp.size == 0:
        raise ValueError("the answer has no token log-probs")
    return float(lp.mean())


_WORD = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 on lower-cased word tokens: ``2PR/(P+R)`` with P = LCS/|cand|, R = LCS/|ref|.

    Two empty texts are identical (1.0); one empty text shares nothing (0.0).
    """
    a, b = _tokens(candidate), _tokens(reference)
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    lcs = _lcs_length(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def lexical_disagreement(answers: Sequence[str]) -> float:
    """``1 - mean ROUGE-L F1`` over all unordered pairs of answers (0 for one answer)."""
    if len(answers) == 0:
        raise ValueError("need at least one answer")
    if len(answers) == 1:
        return 0.0
    scores = [rouge_l_f1(answers[i], answers[j]) for i in range(len(answers)) for j in range(i + 1, len(answers))]
    return 1.0 - float(np.mean(scores))
