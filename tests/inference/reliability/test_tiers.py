"""Consistency + checks → tier (inference.reliability.tiers): green only when every check ran and
passed and the consistency clears the threshold; never green on a failed, refused or missing check."""

from __future__ import annotations

import pytest

from inference.reliability.boxes import BoxResult, GroundingProbe
from inference.reliability.checks import (
    CONSISTENCY,
    EVIDENCE,
    GUARDRAIL,
    NEGATIVE,
    STEPS,
    Check,
    not_checked,
)
from inference.reliability.decomposition import AttributeQuestion
from inference.reliability.scoring import (
    TIER_MEANING,
    QuestionResult,
    Reliability,
    State,
    Tier,
    aggregate,
)
from inference.reliability.tiers import FAIL_CAP, apply_checks, finalize, worst_final
from inference.types import Box


def done(fid: str, rel: float, tier: Tier, attribute: str = "presence") -> QuestionResult:
    return QuestionResult(AttributeQuestion(fid, attribute, "Is it there?", "yes"), ("yes",), (0,), 0.0, rel, tier,
                          State.DONE, 0, 1.0)


def green_answer(*fids: str) -> Reliability:
    return aggregate([done(f, 1.0, Tier.GREEN) for f in fids], "discrete")


PASS = Check("size", True, "the text says 24 mm; the box measures 24 × 24 mm")
SIZE_FAIL = Check("size", False, "the text says 42 mm but the box measures 24 × 24 mm")
SIDE_UNCHECKED = not_checked("side", "the image has no patient geometry")


def test_failure_caps_by_kind():
    assert FAIL_CAP == {GUARDRAIL: Tier.RED, STEPS: Tier.RED, EVIDENCE: Tier.AMBER, CONSISTENCY: Tier.AMBER,
                        NEGATIVE: Tier.AMBER}
    assert apply_checks(Tier.GREEN, [PASS]) == (Tier.GREEN, [])
    assert apply_checks(Tier.GREEN, [SIZE_FAIL])[0] is Tier.AMBER
    assert apply_checks(Tier.RED, [SIZE_FAIL])[0] is Tier.RED  # a cap never raises a tier
    assert apply_checks(Tier.GREEN, [Check("region", False, "the liver is not in a BRAIN MR", GUARDRAIL)])[0] is Tier.RED
    assert apply_checks(Tier.NONE, [SIZE_FAIL])[0] is Tier.AMBER  # a failed check is known even unassessed
    assert worst_final([Tier.GREEN, Tier.NONE, Tier.AMBER]) is Tier.AMBER
    assert worst_final([Tier.GREEN, Tier.NONE]) is Tier.NONE


def test_all_checks_passed_and_consistent_is_green():
    rel = finalize(green_answer("f1"), {"f1": [PASS]}, [Check("steps", True, "five steps, no contradiction", STEPS)])
    assert rel.tier is Tier.GREEN and rel.findings[0].tier is Tier.GREEN
    assert rel.message == TIER_MEANING[Tier.GREEN] and rel.message.startswith("Checked")
    assert rel.findings[0].checks == [PASS] and rel.checks[0].name == "steps"


def test_a_finding_whose_checks_were_not_run_is_never_green():
    rel = finalize(green_answer("f1"), {"f1": [PASS, SIDE_UNCHECKED]})
    assert rel.findings[0].tier is Tier.NONE and rel.tier is Tier.NONE
    assert rel.findings[0].reliability == 1.0  # the consistency is kept; the light does not claim it
    assert "not checked" in rel.message.lower() and "geometry" in rel.message


def test_a_failed_evidence_check_caps_a_perfectly_consistent_finding_at_amber():
    rel = finalize(green_answer("f1", "f2"), {"f1": [SIZE_FAIL], "f2": [PASS]})
    assert [f.tier for f in rel.findings] == [Tier.AMBER, Tier.GREEN]
    assert rel.tier is Tier.AMBER and "42 mm" in rel.message and "f1" in rel.message


def test_a_wrong_box_beside_a_lesion_is_not_green():
    """The issue's case: the model repeats its box and its words (consistency 1.0), but the box sits
    beside the lesion: its re-readings agree with it, the pixels do not."""
    box = BoxResult(GroundingProbe("lesion", "hypodense lesion", Box(0, 0, 10, 10)), ("…",) * 5, (Box(0, 0, 10, 10),) * 5,
                    (0,) * 5, 0.0, 1.0, 1.0, Tier.GREEN, State.DONE)
    consistent = aggregate([done("lesion", 1.0, Tier.GREEN)], "discrete", boxes=[box])
    assert consistent.tier is Tier.GREEN
    density = Check("density", False, "the text says hypodense but centre 60 HU, around it 60 HU")
    rel = finalize(consistent, {"lesion": [SIZE_FAIL, density]})
    assert rel.tier is not Tier.GREEN and rel.tier is Tier.AMBER
    assert [c.name for c in rel.findings[0].checks] == ["box_consistency", "size", "density"]


def test_a_guardrail_mismatch_is_red_however_consistent():
    rel = finalize(green_answer("kidney"), {"kidney": [Check("region", False, "not in a CHEST CT", GUARDRAIL)]})
    assert rel.tier is Tier.RED and "CHEST CT" in rel.message


def test_an_answer_with_a_step_contradiction_is_red():
    class Contradiction:  # the shape of inference.reliability.consistency.Contradiction
        kind, steps = "negation", (4, 5)
        message = "the reasoning contradicts itself: step 4 reports a 42 mm mass, step 5 reports no mass"

    steps = Check("steps", False, Contradiction.message, STEPS)
    rel = finalize(green_answer("f1"), {"f1": [PASS]}, [steps], [Contradiction()])
    assert rel.tier is Tier.RED and rel.findings[0].tier is Tier.GREEN
    assert "step 4 reports a 42 mm mass" in rel.message and rel.contradictions[0].kind == "negation"


def test_a_contradiction_is_red_even_when_nothing_else_was_assessed():
    empty = Reliability(state=State.DONE, message="Nothing to check: the answer states no finding.")
    rel = finalize(empty, {}, [Check("contradictions", False, "the answer contradicts itself", STEPS)])
    assert rel.tier is Tier.RED
    assert finalize(empty, {}, [Check("contradictions", True, "fine", STEPS)]).tier is Tier.NONE


def test_a_negative_answer_contradicted_by_its_re_readings_is_not_green():
    probe = GroundingProbe("answer", "focal lesion", None)
    box = BoxResult(probe, ("…",) * 5, (Box(1, 1, 9, 9),) * 3 + (None, None), (0, 0, 0, 1, 1), 0.67, 0.4, 0.4,
                    Tier.AMBER, State.DONE, Box(1, 1, 9, 9), 3)
    presence = QuestionResult(AttributeQuestion("answer", "presence", "Is there a focal lesion?", "no"), ("no",) * 5,
                              (0,) * 5, 0.0, 1.0, Tier.GREEN, State.DONE, 0, 1.0)
    rel = finalize(aggregate([presence], "discrete", boxes=[box]))
    assert rel.tier is not Tier.GREEN
    (check,) = rel.checks
    assert check.name == "negative_grounding" and check.passed is False and "3 of 5" in check.detail
    assert "3 of 5" in rel.message


def test_unfinished_or_refused_passes_are_never_green():
    refused = QuestionResult(AttributeQuestion("f1", "size", "What size?", "1 cm"), state=State.REFUSED)
    partial = aggregate([done("f1", 1.0, Tier.GREEN), refused], "discrete")
    assert finalize(partial, {"f1": [PASS]}).tier is Tier.AMBER
    failed = Reliability(state=State.FAILED, message="The reliability check failed: out of memory.")
    out = finalize(failed, {}, [Check("steps", True, "ok", STEPS)])
    assert out.tier is Tier.NONE and out.message.startswith("The reliability check failed")


@pytest.mark.parametrize("kind", [EVIDENCE, CONSISTENCY, NEGATIVE, GUARDRAIL, STEPS])
def test_no_failed_check_of_any_kind_leaves_green(kind):
    rel = finalize(green_answer("f1"), {"f1": [Check("x", False, "wrong", kind)]})
    assert rel.tier is not Tier.GREEN and rel.findings[0].tier is not Tier.GREEN
