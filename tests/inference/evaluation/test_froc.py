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


def test_an_operating_point_is_the_lowest_threshold_within_the_false_positive_budget():
    """Two volumes: lesions scored 0.9 (large), 0.6 (medium) and 0.2 (missed below two FPs); false positives at
    0.8, 0.5, 0.4 and 0.3. At most one FP per volume keeps the scores down to 0.5 (two FPs over two volumes):
    the threshold sits halfway to the next score down (0.45), and what it keeps is measured there."""
    from inference.evaluation.froc import at_threshold, fit_operating_point

    a = case([((0, 0, 0), 30.0), ((200, 0, 0), 12.0)], [((0, 0, 0), 0.9), ((200, 0, 0), 0.6), ((99, 99, 0), 0.8),
                                                         ((-99, 99, 0), 0.3)], "a")
    b = case([((0, 0, 0), 8.0)], [((0, 0, 0), 0.2), ((99, 0, 99), 0.5), ((0, 99, 99), 0.4)], "b")
    matches = [match_volume(a), match_volume(b)]
    fit = fit_operating_point(matches, 1.0)
    assert fit.min_score == pytest.approx(0.45)
    assert fit.false_positives == 2 and fit.fp_per_volume == 1.0 and fit.volumes == 2 and fit.lesions == 3
    assert fit.sensitivity == pytest.approx(2 / 3)
    assert fit.by_size == {"small": 0.0, "medium": 1.0, "large": 1.0}
    # a tighter budget, one FP in all: down to the 0.6 lesion, before the 0.5 FP
    tight = fit_operating_point(matches, 0.5)
    assert tight.min_score == pytest.approx(0.55) and tight.false_positives == 1
    assert tight.sensitivity == pytest.approx(2 / 3)
    # a budget every candidate fits in keeps them all (threshold 0)
    loose = fit_operating_point(matches, 10.0)
    assert loose.min_score == 0.0 and loose.sensitivity == 1.0 and loose.false_positives == 4
    # the same threshold measured on other volumes
    other = at_threshold([match_volume(case([((0, 0, 0), 25.0)], [((0, 0, 0), 0.44), ((50, 50, 50), 0.46)]))],
                         fit.min_score)
    assert other.sensitivity == 0.0 and other.false_positives == 1 and other.by_size["large"] == 0.0
    assert other.to_json()["min_score"] == 0.45 and other.to_json()["fp_per_volume"] == 1.0


def test_no_operating_point_fits_when_the_best_candidate_is_already_too_many_false_positives():
    from inference.evaluation.froc import fit_operating_point

    v = case([((0, 0, 0), 10.0)], [((50, 50, 50), 0.9), ((60, 60, 60), 0.9), ((0, 0, 0), 0.1)])
    with pytest.raises(ValueError, match="more than 1 false positives per volume"):
        fit_operating_point([match_volume(v)], 1.0)
    both = fit_operating_point([match_volume(v)], 2.0)  # the 0.1 hit adds no false positive: everything is kept
    assert both.min_score == 0.0 and both.sensitivity == 1.0 and both.false_positives == 2
    with pytest.raises(ValueError):
        fit_operating_point([], 1.0)
