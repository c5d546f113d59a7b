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


def test_details_list_the_checks_and_each_questions_samples(panel, qtbot, output_dir):
    """Issue #13: Details lists every question with its samples, and every check with what it compared."""
    from inference.reliability.boxes import GroundingProbe, score_boxes
    from inference.reliability.checks import STEPS, Check
    from inference.reliability.tiers import finalize
    from inference.types import Box, Generation

    box = score_boxes(GroundingProbe("hypodense lesion", "hypodense lesion", Box(335, 350, 455, 470)),
                      [Generation("<ref>lesion</ref><box>[[335, 350, 455, 470]]</box>", [-0.01])] * 5, TH)
    questions = [_scored("presence", "Is there a hypodense lesion?", "yes", ["yes"] * 5, "hypodense lesion"),
                 _scored("size", "What is its size?", "42 mm", ["42 mm"] * 4 + ["4 cm"], "hypodense lesion")]
    size = Check("size", False, "the text says 42 mm but the box measures 24 × 24 mm")
    side = Check("side", None, "the image has no patient geometry")
    rel = finalize(aggregate(questions, "discrete", boxes=[box]), {"hypodense lesion": [size, side]},
                   [Check("steps", True, "all five steps are there and do not contradict each other", STEPS)])
    panel.show_reliability(rel)
    assert panel.light.lit() == [Tier.AMBER] and "42 mm" in panel.meaning.text()
    assert "1 box re-read" in panel.score.text() and "1 failed, 1 not checked" in panel.score.text()
    panel.details_button.click()
    answer_view, finding_view = panel.check_views
    assert answer_view.texts() == ["✓ steps passed: all five steps are there and do not contradict each other"]
    assert finding_view.texts() == [
        "✓ box consistency passed: 5 of 5 re-readings boxed the draft's place",
        "✗ size failed: the text says 42 mm but the box measures 24 × 24 mm",
        "– side not checked: the image has no patient geometry",
    ]
    assert "amber" in finding_view.title.text()
    assert [v.samples.text() for v in panel.question_views] == ["answers: 5× yes", "answers: 5× 42 mm"]
    qtbot.wait(50)
    panel.grab().save(str(output_dir / "reliability_checks.png"))


def test_not_checked_leaves_the_light_dark_and_says_why(panel):
    from inference.reliability.checks import not_checked
    from inference.reliability.tiers import finalize

    rel = finalize(aggregate([_scored("presence", "Is there a nodule?", "yes", ["yes"] * 10)], "discrete"),
                   {"f1": [not_checked("region", "the body region of this series could not be told")]})
    panel.show_reliability(rel)
    assert rel.tier is Tier.NONE and panel.light.lit() == []
    assert panel.meaning.text().startswith("Not checked") and "body region" in panel.meaning.text()
    assert "not checked" in panel.check_views[0].title.text()
