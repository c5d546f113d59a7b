"""The reliability panel shows what the Reliability says: lamp, score, words, busy bar, cluster charts."""

from __future__ import annotations

import pytest

from inference.reliability.decomposition import AttributeQuestion
from inference.reliability.judges import ClosedFormJudge
from inference.reliability.sampling import QuestionSamples, SampledAnswer
from inference.reliability.scoring import (
    TIER_MEANING,
    QuestionResult,
    Reliability,
    State,
    Thresholds,
    Tier,
    aggregate,
    score_question,
)
from ui.assistant.reliability_panel import ReliabilityPanel

TH = Thresholds(green=0.7, amber=0.4, estimator="discrete")


def _scored(attribute, question, draft, answers, finding="f1"):
    q = AttributeQuestion(finding, attribute, question, draft)
    samples = QuestionSamples(q, tuple(SampledAnswer(a, -0.2, -0.1, 2) for a in answers))
    return score_question(samples, ClosedFormJudge(), TH)


@pytest.fixture
def panel(qtbot) -> ReliabilityPanel:
    w = ReliabilityPanel()
    qtbot.addWidget(w)
    w.resize(420, 620)
    w.show()
    return w


def test_running_is_dark_with_spinner(panel):
    panel.set_running()
    assert panel.light.lit() == [] and panel.spinner.isVisible()
    assert "computing" in panel.score.text() and "in progress" in panel.meaning.text()


def test_green_result_lights_green_with_score_and_meaning(panel):
    rel = aggregate([_scored("presence", "Is there a nodule?", "yes", ["yes"] * 10)], "discrete")
    panel.show_reliability(rel)
    assert panel.light.lit() == [Tier.GREEN] and not panel.spinner.isVisible()
    assert "1.00" in panel.score.text()
    assert panel.meaning.text() == TIER_MEANING[Tier.GREEN]


def test_details_chart_per_question_with_cluster_counts(panel, qtbot, output_dir):
    results = [
        _scored("presence", "Is there a nodule?", "yes", ["yes"] * 9 + ["no"]),
        _scored("location", "Where is the nodule?", "right upper lobe",
                ["RUL"] * 5 + ["left upper lobe"] * 3 + ["right lower lobe"] * 2),
        _scored("size", "What is the size of the nodule?", "12 mm", ["12 mm", "1.2 cm", "3 cm"] * 3 + ["12 mm"],
                finding="f2"),
    ]
    rel = aggregate(results, "discrete")
    panel.show_reliability(rel)
    assert panel.light.lit() == [Tier.RED]  # location splits three ways: 1/exp(H) < 0.4
    assert not panel.scroll.isVisible()
    panel.details_button.click()
    assert panel.scroll.isVisible()
    assert len(panel.question_views) == 3
    heights = [list(v.bars.opts["height"]) for v in panel.question_views]
    assert heights == [[9, 1], [5, 3, 2], [7, 3]]
    assert "finding f2" in panel.question_views[2].findChildren(type(panel.score))[0].text()
    assert "entropy" in panel.question_views[1].summary.text()
    qtbot.wait(50)
    panel.grab().save(str(output_dir / "reliability_panel.png"))


def test_refused_and_failed_are_said_not_hidden(panel):
    refused = QuestionResult(AttributeQuestion("f1", "size", "What size?", "1 cm"), state=State.REFUSED,
                             message="The model declined to answer this question.")
    rel = aggregate([_scored("presence", "Is there a nodule?", "yes", ["yes"] * 10), refused], "discrete")
    panel.show_reliability(rel)
    assert panel.light.lit() == [Tier.AMBER]  # partly assessed: never green
    assert "declined" in panel.meaning.text()
    assert panel.question_views[1].chart is None and "refused" in panel.question_views[1].summary.text()
    failed = Reliability(state=State.FAILED, message="The reliability check failed: the GPU ran out of memory.")
    panel.show_reliability(failed)
    assert panel.light.lit() == [] and "out of memory" in panel.meaning.text()
    assert not panel.details_button.isEnabled()
