"""Calibration metrics against hand computations."""

from __future__ import annotations

import math

import pytest

from inference.reliability.calibration import (
    aurac,
    auroc,
    choose_thresholds,
    expected_calibration_error,
    rejection_accuracy_curve,
    reliability_diagram,
)


def test_auroc_hand_computed():
    # wrong: 0.35, 0.8; right: 0.1, 0.4 -> pairs won 3 of 4
    assert auroc([0.1, 0.4, 0.35, 0.8], [1, 1, 0, 0]) == pytest.approx(0.75)
    assert auroc([0.1, 0.9], [1, 0]) == 1.0
    assert auroc([0.9, 0.1], [1, 0]) == 0.0
    assert auroc([0.5, 0.5], [1, 0]) == 0.5  # a tie counts half
    # ties across classes: wrong {0.5, 0.9}, right {0.5, 0.1}: 0.5~0.5 half, 0.5>0.1, 0.9>both -> 3.5/4
    assert auroc([0.5, 0.9, 0.5, 0.1], [0, 0, 1, 1]) == pytest.approx(3.5 / 4)
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))


def test_rejection_accuracy_and_aurac():
    curve = rejection_accuracy_curve([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0])
    assert list(curve) == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert aurac([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0]) == pytest.approx((1 + 0.5 + 2 / 3 + 0.5) / 4)
    # a tie at the top is kept in random order: expected accuracy 0.5 for k = 1 and 2
    assert aurac([0.1, 0.1, 0.3], [1, 0, 1]) == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)


def test_reliability_diagram_and_ece():
    bins = reliability_diagram([0.2, 0.4, 0.6, 1.0], [0, 1, 1, 1], n_bins=2)
    assert [(b.count, b.mean_reliability, b.accuracy) for b in bins] == [
        (2, pytest.approx(0.3), 0.5), (2, pytest.approx(0.8), 1.0)]
    assert expected_calibration_error(bins) == pytest.approx(0.2)
    edge = reliability_diagram([0.5], [1], n_bins=2)
    assert [b.count for b in edge] == [0, 1]
    assert math.isnan(edge[0].accuracy)
    with pytest.raises(ValueError):
        reliability_diagram([1.5], [1])


def test_choose_thresholds_hand_computed():
    r = [0.9] * 20 + [0.6] * 20 + [0.2] * 20
    c = [1] * 20 + [0] * 4 + [1] * 16 + [0] * 15 + [1] * 5
    t = choose_thresholds(r, c, max_green_error=0.05, max_amber_error=0.25, min_count=20)
    # >= 0.9: 0 % wrong; >= 0.6: 4/40 = 10 % (too many for green, fine for amber); >= 0.2: 19/60
    assert (t.green, t.amber) == (0.9, 0.6)
    assert t.green_error == 0.0 and t.amber_error == pytest.approx(0.2)


def test_choose_thresholds_never_green_when_target_unmet():
    t = choose_thresholds([0.9] * 20 + [0.8] * 20, [1, 0] * 20, min_count=5)  # 50 % wrong everywhere
    assert t.green > 1.0 and t.amber == t.green and t.green_error is None


def test_labels_must_be_binary():
    with pytest.raises(ValueError):
        auroc([0.1, 0.2], [1, 2])
