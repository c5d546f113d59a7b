"""Greedy bidirectional-entailment clustering."""

from __future__ import annotations

from inference.reliability.clustering import cluster_answers
from inference.reliability.judges import ClosedFormJudge, Judge


class _FirstWordJudge(Judge):
    """Equivalent when the first words match; records every comparison."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def equivalent(self, question, a, b):
        self.calls.append((a, b))
        return a.split()[0].lower() == b.split()[0].lower()


def test_ids_in_order_of_first_appearance():
    judge = _FirstWordJudge()
    ids = cluster_answers("q", ["left lobe", "right lobe", "Left side", "basal", "right base"], judge)
    assert ids == [0, 1, 0, 2, 1]


def test_compares_with_first_member_of_each_cluster_only():
    judge = _FirstWordJudge()
    cluster_answers("q", ["a x", "a y", "b z"], judge)
    # "a y" vs rep "a x"; "b z" vs rep "a x" (no), and no cluster 1 yet -> new; never against "a y"
    assert judge.calls == [("a x", "a y"), ("a x", "b z")]


def test_identical_answers_skip_the_judge():
    judge = _FirstWordJudge()
    ids = cluster_answers("q", ["Yes.", "yes.", " Yes. ", "No."], judge)
    assert ids == [0, 0, 0, 1]
    assert judge.calls == [("Yes.", "No.")]


def test_all_different_and_empty():
    judge = ClosedFormJudge()
    assert cluster_answers("How many nodules?", ["1", "2", "3"], judge) == [0, 1, 2]
    assert cluster_answers("q", [], judge) == []


def test_closed_form_clusters_realistic_samples():
    answers = ["RUL", "right upper lobe", "Left upper lobe.", "In the right upper lobe", "LUL"]
    assert cluster_answers("Where is the nodule?", answers, ClosedFormJudge()) == [0, 0, 1, 0, 1]
