"""FROC / CPM maths on hand-made volumes: hits, duplicates, ties, no predictions, no lesions, size buckets."""

from __future__ import annotations

import pytest

from inference.evaluation.froc import (
    FP_RATES,
    Prediction,
    TrueLesion,
    VolumeCase,
    format_table,
    froc,
    froc_by_size,
    match_volume,
)


def case(lesions, predictions, id="v"):
    return VolumeCase(id, [TrueLesion(c, s) for c, s in lesions], [Prediction(c, sc) for c, sc in predictions])


def test_hit_is_within_radius_plus_5_mm_and_duplicates_are_neither_tp_nor_fp():
    v = case([((0, 0, 0), 10.0), ((100, 0, 0), 20.0)],
             [((0, 0, 3), 0.9), ((50, 50, 0), 0.8), ((100, 12, 0), 0.7), ((0, 0, 0), 0.6)])
    m = match_volume(v)
    assert m.lesion_scores == [0.9, 0.7] and m.fp_scores == [0.8]
    r = froc([v])
    assert [r.sensitivity[x] for x in FP_RATES] == [0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert r.cpm == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)
    assert r.max_sensitivity == 1.0 and r.false_positives == 1 and r.lesions == 2


def test_boundary_of_the_hit_radius():
    on = case([((0, 0, 0), 10.0)], [((10.0, 0, 0), 1.0)])  # radius 5 + 5 mm: exactly on the edge
    off = case([((0, 0, 0), 10.0)], [((10.01, 0, 0), 1.0)])
    assert match_volume(on).lesion_scores == [1.0]
    assert match_volume(off).lesion_scores == [None] and match_volume(off).fp_scores == [1.0]


def test_tied_scores_enter_together():
    # a TP and an FP with the same score: the lesion can only be had together with the FP
    r = froc([case([((0, 0, 0), 10.0)], [((0, 0, 0), 0.5), ((80, 0, 0), 0.5)])])
    assert [r.sensitivity[x] for x in FP_RATES] == [0, 0, 0, 1, 1, 1, 1]
    assert r.cpm == pytest.approx(4 / 7)
    assert r.curve == [(1.0, 1.0)]


def test_no_predictions_gives_zero_and_no_lesions_gives_none():
    r = froc([case([((0, 0, 0), 10.0)], [])])
    assert all(s == 0.0 for s in r.sensitivity.values()) and r.cpm == 0.0 and r.max_sensitivity == 0.0
    empty = froc([case([], [((0, 0, 0), 0.9)])])
    assert all(s is None for s in empty.sensitivity.values()) and empty.cpm is None
    assert empty.false_positives == 1


def test_fp_rate_is_per_volume():
    # two volumes; one FP scored above both TPs → 0.5 FP per volume at the threshold that finds both
    a = case([((0, 0, 0), 10.0)], [((0, 0, 0), 0.8), ((60, 0, 0), 0.9)], "a")
    b = case([((0, 0, 0), 30.0)], [((3, 3, 3), 0.7)], "b")
    r = froc([a, b])
    assert r.sensitivity[0.25] == 0.0 and r.sensitivity[0.5] == 1.0 and r.sensitivity[8.0] == 1.0
    assert r.curve == [(0.5, 0.0), (0.5, 0.5), (0.5, 1.0)]


def test_perfect_detection_scores_cpm_one_and_ranking_matters():
    v = case([((0, 0, 0), 12.0), ((0, 100, 0), 25.0)],
             [((1, 1, 1), 0.9), ((0, 101, 0), 0.8), ((200, 0, 0), 0.1)])
    assert froc([v]).cpm == 1.0
    worse = case([((0, 0, 0), 12.0), ((0, 100, 0), 25.0)],
                 [((1, 1, 1), 0.9), ((0, 101, 0), 0.05), ((200, 0, 0), 0.1)])
    assert froc([worse]).cpm == pytest.approx((3 * 0.5 + 4 * 1.0) / 7)


def test_by_size_bucket_counts_the_buckets_lesions_against_every_fp():
    v = case([((0, 0, 0), 6.0), ((0, 100, 0), 14.0), ((100, 0, 0), 32.0)],
             [((0, 0, 0), 0.3), ((100, 0, 0), 0.9), ((300, 0, 0), 0.5)])
    by = froc_by_size([v])
    assert by["large"].lesions == 1 and by["large"].sensitivity[0.125] == 1.0
    assert by["small"].lesions == 1 and by["small"].sensitivity[0.5] == 0.0 and by["small"].sensitivity[1.0] == 1.0
    assert by["medium"].lesions == 1 and by["medium"].cpm == 0.0
    table = format_table(froc([v]), by)
    assert "CPM" in table and "small" in table and "0.125" in table
