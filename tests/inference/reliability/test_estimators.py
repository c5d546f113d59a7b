"""Estimators against values worked out by hand (natural log)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.reliability.estimators import (
    confidence_weighted_semantic_entropy,
    discrete_semantic_entropy,
    lexical_disagreement,
    mean_token_logprob,
    naive_predictive_entropy,
    rao_blackwell_semantic_entropy,
    rouge_l_f1,
)

LN = math.log


# --- discrete -----------------------------------------------------------------

def test_discrete_all_agree_is_zero():
    assert discrete_semantic_entropy([0] * 10) == 0.0


def test_discrete_all_different_is_log_n():
    assert discrete_semantic_entropy(list(range(10))) == pytest.approx(LN(10))


def test_discrete_split_counts():
    # counts 2, 1, 1 of 4 -> -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2
    assert discrete_semantic_entropy([3, 3, 7, 9]) == pytest.approx(1.5 * LN(2))


def test_discrete_rejects_empty():
    with pytest.raises(ValueError):
        discrete_semantic_entropy([])


# --- Rao-Blackwellised ----------------------------------------------------------

def test_rb_all_agree_is_zero_even_if_unsure():
    assert rao_blackwell_semantic_entropy([0, 0, 0], [LN(0.1)] * 3) == 0.0


def test_rb_all_different_equal_likelihoods_is_log_n():
    assert rao_blackwell_semantic_entropy([0, 1, 2, 3], [LN(0.2)] * 4) == pytest.approx(LN(4))


def test_rb_counts_duplicates():
    # cluster 0 holds the same answer twice (0.4 each -> 0.8), cluster 1 has 0.2.
    # p = (0.8, 0.2) after normalising by 1.0
    expected = -(0.8 * LN(0.8) + 0.2 * LN(0.2))
    assert rao_blackwell_semantic_entropy([0, 0, 1], [LN(0.4), LN(0.4), LN(0.2)]) == pytest.approx(expected)


def test_rb_renormalises_sums_above_one():
    # length-normalised "probabilities" 0.9, 0.9, 0.6 sum to 2.4: p = (1.8/2.4, 0.6/2.4) = (0.75, 0.25)
    expected = -(0.75 * LN(0.75) + 0.25 * LN(0.25))
    assert rao_blackwell_semantic_entropy([0, 0, 1], [LN(0.9), LN(0.9), LN(0.6)]) == pytest.approx(expected)


def test_rb_handles_very_small_likelihoods_without_underflow():
    # exp(-2000) underflows to 0; logsumexp must not. Equal likelihoods -> ln 2.
    assert rao_blackwell_semantic_entropy([0, 1], [-2000.0, -2000.0]) == pytest.approx(LN(2))


def test_rb_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        rao_blackwell_semantic_entropy([0, 1], [0.0])


# --- confidence-weighted --------------------------------------------------------

def test_cw_all_agree_and_sure_is_zero():
    assert confidence_weighted_semantic_entropy([0] * 5, [0.0] * 5) == 0.0


def test_cw_all_agree_but_unsure_is_not_zero():
    # N = 2, κ = 0.5 each: p(c) = 0.5, d = (0.25, 0.25)
    expected = -(0.5 * LN(0.5) + 2 * 0.25 * LN(0.25))
    got = confidence_weighted_semantic_entropy([0, 0], [LN(0.5), LN(0.5)])
    assert got == pytest.approx(expected)
    assert got == pytest.approx(1.5 * LN(2))


def test_cw_all_different_and_sure_is_log_n():
    assert confidence_weighted_semantic_entropy([0, 1, 2, 3], [0.0] * 4) == pytest.approx(LN(4))


def test_cw_duplicates_and_sum_above_one_after_length_normalisation():
    # κ = 0.9, 0.9, 0.6 (their plain sum 2.4 > 1). N = 3:
    # p(0) = 1.8/3 = 0.6, p(1) = 0.6/3 = 0.2, doubts 0.1/3, 0.1/3, 0.4/3 -> total 1
    outcomes = [0.6, 0.2, 0.1 / 3, 0.1 / 3, 0.4 / 3]
    assert sum(outcomes) == pytest.approx(1.0)
    expected = -sum(p * LN(p) for p in outcomes)
    assert confidence_weighted_semantic_entropy([0, 0, 1], [LN(0.9), LN(0.9), LN(0.6)]) == pytest.approx(expected)


def test_cw_clips_positive_log_likelihoods():
    assert confidence_weighted_semantic_entropy([0, 0], [0.3, 0.0]) == 0.0


def test_cw_equals_discrete_when_fully_confident():
    ids = [0, 0, 1, 2, 2, 2]
    assert confidence_weighted_semantic_entropy(ids, [0.0] * 6) == pytest.approx(discrete_semantic_entropy(ids))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 20), k1=st.floats(0.34, 1.0), k2=st.floats(0.34, 1.0))
def test_cw_all_agree_rises_as_confidence_falls(n, k1, k2):
    # the docstring promises monotonicity for κ > 1/(N+1); 0.34 > 1/3 covers every N >= 2
    lo, hi = sorted((k1, k2))
    h_lo = confidence_weighted_semantic_entropy([0] * n, [LN(lo)] * n)
    h_hi = confidence_weighted_semantic_entropy([0] * n, [LN(hi)] * n)
    assert h_lo >= h_hi - 1e-12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.floats(-30.0, 0.0)), min_size=1, max_size=15))
def test_cw_is_bounded(samples):
    ids = [c for c, _ in samples]
    lls = [ll for _, ll in samples]
    h = confidence_weighted_semantic_entropy(ids, lls)
    # at most 2N outcomes with positive mass
    assert 0.0 <= h <= LN(2 * len(samples)) + 1e-9


# --- baselines ------------------------------------------------------------------

def test_naive_predictive_entropy_is_minus_mean():
    assert naive_predictive_entropy([-1.0, -2.0, -6.0]) == pytest.approx(3.0)


def test_mean_token_logprob():
    assert mean_token_logprob([-0.1, -0.3, -0.2]) == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        mean_token_logprob([])


def test_rouge_l_hand_computed():
    # cand "the right upper lobe", ref "right lower lobe": LCS = (right, lobe) = 2
    # P = 2/4, R = 2/3, F = 2PR/(P+R) = (2 * 1/2 * 2/3) / (7/6) = 4/7
    assert rouge_l_f1("The right upper lobe", "right lower lobe") == pytest.approx(4 / 7)
    assert rouge_l_f1("Yes.", "yes") == 1.0
    assert rouge_l_f1("", "") == 1.0
    assert rouge_l_f1("no", "") == 0.0


def test_lexical_disagreement():
    assert lexical_disagreement(["yes", "Yes.", "YES"]) == 0.0
    assert lexical_disagreement(["only one"]) == 0.0
    assert lexical_disagreement(["yes", "no"]) == 1.0
    # pairs: (a,b) 4/7, (a,c) 1.0, (b,c) 4/7 -> 1 - mean
    answers = ["the right upper lobe", "right lower lobe", "The right upper lobe."]
    assert lexical_disagreement(answers) == pytest.approx(1 - (4 / 7 + 1 + 4 / 7) / 3)
