"""The whole trust pass of one answer (app.assistant.session.check_answer), issue #13: the box is
checked, not only the words; every question is asked; negatives are checked; the reasoning is
checked against itself; the light never claims what it did not check.

A scripted engine (a deterministic test double of the Engine protocol) plays a model that is
*consistently* wrong or right, on the hand-made phantom of test_evidence (1 mm pixels, a 24 mm
hypodense lesion in the liver on the patient's right). The model image is the 200-pixel frame
on 0–1000, so a box in pixels is × 5.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

import app.assistant.session as session
from app.assistant.ask import Assistant
from app.assistant.session import check_answer, draft_findings, negative_target
from app.dicom.model import Window
from inference.imaging import ImageSpec
from inference.reliability.scoring import State, Thresholds, Tier
from inference.types import Box, ChatRequest, Generation
from tests.app.assistant.test_evidence import BESIDE, LESION, ct_volume

SPEC = ImageSpec(tile_size=56, max_tiles=6)


def norm(b: Box) -> str:
    return f"[[{b.x0 * 5:.0f}, {b.y0 * 5:.0f}, {b.x1 * 5:.0f}, {b.y1 * 5:.0f}]]"


def five_steps(step2: str, step5: str, step3: str = "Round and well defined.", step4: str = "Likely a cyst.") -> str:
    return (f"Step 1: Structure identification\nAxial CT of the upper abdomen.\n"
            f"Step 2: Region localization\n{step2}\n"
            f"Step 3: Detailed description\n{step3}\n"
            f"Step 4: Holistic analysis\n{step4}\n"
            f"Step 5: Report synthesis\n{step5}\n")


def lesion_answer(box: Box, size: str) -> str:
    return five_steps(f"There is a {size} <ref>hypodense lesion</ref><box>{norm(box)}</box> in the right hepatic lobe.",
                      f"Hypodense lesion in the right hepatic lobe, {size}.")


class ConsistentModel:
    """Always says the same: its draft, the draft's answers to every check question, and ``boxes``
    (cycled over the samples; None = "absent") when asked to locate something again."""

    def __init__(self, draft: str, answers: dict[str, str], boxes: list[Box | None],
                 decomposition: str = "presence | Is there a lesion in this image? | yes") -> None:
        self.draft, self.answers, self.boxes, self.decomposition = draft, answers, boxes, decomposition
        self.sample_calls: list[list[ChatRequest]] = []

    @property
    def model_id(self) -> str:
        return "consistent-model"

    def describe(self) -> str:
        return "consistent-model · test"

    def stream(self, request, cancel=None):
        yield self.draft

    def generate(self, request, cancel=None) -> Generation:
        return Generation(self.decomposition, [-0.01])

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        self.sample_calls.append(list(requests))
        out = []
        for r in requests:
            if "<ref>" in r.prompt:
                texts = []
                for i in range(n):
                    b = self.boxes[i % len(self.boxes)]
                    texts.append("It is absent from this image." if b is None else f"<ref>mass</ref><box>{norm(b)}</box>")
            else:
                key = next((k for k in self.answers if re.search(k, r.prompt, re.I)), None)
                texts = [self.answers[key] if key else "yes"] * n
            out.append([Generation(t, [-0.01]) for t in texts])
        return out


LESION_ANSWERS = {r"^Is there": "yes", r"^Where": "right hepatic lobe", r"size": "{size}",
                  r"density": "hypodense", r"^How many": "1"}


def answers_for(size: str) -> dict[str, str]:
    return {k: v.format(size=size) for k, v in LESION_ANSWERS.items()}


@pytest.fixture(autouse=True)
def reference_thresholds(monkeypatch):
    """Fixed tiers (green ≥ 0.7, amber ≥ 0.4), not a model's calibration."""
    monkeypatch.setattr(session, "thresholds_for", lambda _folder: Thresholds(green=0.7, amber=0.4))


def ask(engine, volume=None, question: str = "Describe the findings on this slice."):
    return Assistant(engine, image_spec=SPEC).ask(volume or ct_volume(), 0, None, question)


# ------------------------------------------------------------------ the box, not only the words

def test_the_right_box_with_the_right_words_is_green():
    engine = ConsistentModel(lesion_answer(LESION, "24 mm"), answers_for("24 mm"), [LESION])
    rel = check_answer(engine, ask(engine), n_samples=5, max_questions=5)
    assert rel.state is State.DONE and rel.tier is Tier.GREEN, rel.message
    (finding,) = rel.findings
    assert {c.name: c.passed for c in finding.checks} == {"box_consistency": True, "in_body": True, "size": True,
                                                          "side": True, "density": True}
    assert [c.name for c in rel.checks] == ["steps"] and rel.checks[0].passed is True


def test_a_consistently_repeated_wrong_box_beside_the_lesion_is_not_green():
    """The issue: the box beside the 24 mm lesion, the text says 42 mm, the model repeats both."""
    engine = ConsistentModel(lesion_answer(BESIDE, "42 mm"), answers_for("42 mm"), [BESIDE])
    answer = ask(engine)
    assert answer.findings[0].box_px.iou(LESION) < 0.15
    rel = check_answer(engine, answer, n_samples=5, max_questions=5)
    assert all(q.tier is Tier.GREEN for q in rel.questions)  # self-consistency alone would say green
    assert rel.findings[0].box.agreement == 1.0
    assert rel.tier is Tier.AMBER and rel.findings[0].tier is Tier.AMBER
    checks = {c.name: c for c in rel.findings[0].checks}
    assert checks["size"].passed is False and "42 mm" in checks["size"].detail and "24 × 24 mm" in checks["size"].detail
    assert checks["density"].passed is False
    assert "42 mm" in rel.message


def test_every_question_is_asked_and_the_boxes_go_in_the_same_batch():
    engine = ConsistentModel(lesion_answer(LESION, "24 mm"), answers_for("24 mm"), [LESION])
    rel = check_answer(engine, ask(engine), n_samples=4, max_questions=5)
    assert [q.question.attribute for q in rel.questions] == ["presence", "location", "size", "density", "count"]
    assert [q.question.draft_answer for q in rel.questions] == ["yes", "right hepatic lobe", "24 mm", "hypodense",
                                                                "1"]
    (call,) = engine.sample_calls  # one batched call: 5 questions and 1 grounding probe
    assert len(call) == 6 and "<ref>the hypodense lesion</ref>" in call[-1].prompt
    assert all(len(q.answers) == 4 for q in rel.questions) and rel.findings[0].box.n == 4


def test_when_the_text_states_nothing_the_box_supplies_the_draft_answers():
    draft = five_steps(f"There is <ref>a lesion</ref><box>{norm(LESION)}</box>.", "A lesion.")
    (finding,) = draft_findings(ask(ConsistentModel(draft, {}, [LESION])))
    assert finding.label == "lesion"
    assert finding.fill == {"presence": "yes", "count": "1", "location": "right", "size": "24 mm"}


# ------------------------------------------------------------------ what was not checked is not green

def test_a_side_that_could_not_be_checked_is_not_green():
    engine = ConsistentModel(lesion_answer(LESION, "24 mm"), answers_for("24 mm"), [LESION])
    rel = check_answer(engine, ask(engine, ct_volume(geometry=False)), n_samples=5, max_questions=5)
    side = next(c for c in rel.findings[0].checks if c.name == "side")
    assert side.passed is None and rel.findings[0].tier is Tier.NONE and rel.tier is Tier.NONE
    assert rel.findings[0].reliability is not None and "geometry" in rel.message


def test_a_structure_that_could_not_be_checked_against_the_body_region_is_not_green():
    draft = five_steps(f"The <ref>liver</ref><box>{norm(Box(10, 50, 95, 150))}</box> is normal in size.",
                       "Normal liver.")
    engine = ConsistentModel(draft, {r"^Where": "right"}, [Box(10, 50, 95, 150)])
    rel = check_answer(engine, ask(engine, ct_volume(body_part="")), n_samples=3, max_questions=2)
    region = next(c for c in rel.findings[0].checks if c.name == "region")
    assert region.passed is None and "body region" in region.detail
    assert rel.tier is not Tier.GREEN
    # with the body part in the header the same structure is checked, and passes
    rel = check_answer(engine, ask(engine, ct_volume(body_part="ABDOMEN")), n_samples=3, max_questions=2)
    assert next(c for c in rel.findings[0].checks if c.name == "region").passed is True


def test_without_the_step_checker_the_answer_is_not_green(monkeypatch):
    monkeypatch.setattr(session, "_consistency", lambda: None)
    engine = ConsistentModel(lesion_answer(LESION, "24 mm"), answers_for("24 mm"), [LESION])
    rel = check_answer(engine, ask(engine), n_samples=3, max_questions=5)
    assert rel.checks[0].name == "steps" and rel.checks[0].passed is None and rel.tier is Tier.NONE


# ------------------------------------------------------------------ negatives

NEGATIVE = five_steps("No focal lesion.", "No focal lesion.", step3="Homogeneous liver.", step4="Normal study.")


def test_negative_answers_are_recognised():
    assert negative_target(ask(ConsistentModel(NEGATIVE, {}, [None]))) == "focal lesion"
    normal = five_steps("The liver is normal.", "Normal study.", step3="Homogeneous.", step4="Unremarkable.")
    assert negative_target(ask(ConsistentModel(normal, {}, [None]))) == "lesion"
    positive = five_steps("A mass in the liver, no box given.", "Liver mass; no other lesion.")
    assert negative_target(ask(ConsistentModel(positive, {}, [None]))) is None
    # the demo model's own words on the sample's 32 mm mass (issue #13: "No focal lesion" never checked): the
    # negation runs over "or mass", which is not a lesion named outside it
    both = five_steps("No focal lesion is localized.", "FINDINGS: No pulmonary nodule or mass. The remaining lung "
                      "parenchyma is clear.\nIMPRESSION: No focal lesion.", step3="No pulmonary nodule or mass.",
                      step4="The image shows no abnormality.")
    assert negative_target(ask(ConsistentModel(both, {}, [None]))) == "nodule"
    listed = five_steps("Nothing focal.", "No nodule, mass or pleural effusion.")
    assert negative_target(ask(ConsistentModel(listed, {}, [None]))) == "nodule"
    but = five_steps("Nothing focal.", "No nodule, a mass in the liver.")
    assert negative_target(ask(ConsistentModel(but, {}, [None]))) is None  # a mass named: not a negative answer
    absent = ConsistentModel("The left kidney is absent from this image.", {}, [None])
    assert negative_target(ask(absent, question="Locate the left kidney")) == "left kidney"


def test_a_negative_answer_whose_re_readings_box_something_is_not_green_and_says_what():
    """The issue: "No focal lesion" on a slice holding a lesion. The model even answers "no" to every
    presence question (consistently wrong); its re-readings keep boxing the lesion."""
    engine = ConsistentModel(NEGATIVE, {r"^Is there": "no", r"^How many": "0"}, [LESION, LESION, LESION, None, None])
    rel = check_answer(engine, ask(engine), n_samples=5, max_questions=5)
    assert rel.state is State.DONE and all(q.tier is Tier.GREEN for q in rel.questions)
    assert [q.question.question for q in rel.questions][0] == "Is there a focal lesion in this image? Answer yes or no."
    assert [q.question.draft_answer for q in rel.questions] == ["no", "0"]
    assert rel.tier is not Tier.GREEN and rel.tier is Tier.AMBER
    check = next(c for c in rel.checks if c.name == "negative_grounding")
    assert check.passed is False
    assert "3 of 5 re-readings boxed a region on the patient's right" in check.detail
    assert "3 of 5 re-readings boxed a region on the patient's right" in rel.message
    (call,) = engine.sample_calls
    assert "<ref>the focal lesion</ref>" in call[-1].prompt


def test_a_negative_answer_whose_re_readings_find_nothing_is_green():
    engine = ConsistentModel(NEGATIVE, {r"^Is there": "no", r"^How many": "0"}, [None])
    rel = check_answer(engine, ask(engine), n_samples=5, max_questions=5)
    assert rel.tier is Tier.GREEN, rel.message
    assert next(c for c in rel.checks if c.name == "negative_grounding").passed is True


@pytest.mark.parametrize("window, cleared", [(Window(2500, 480, "Bone"), False), (Window(1500, -600, "Lung"), False),
                                             (Window(150, 90, "Liver"), True), (Window(400, 40, "Soft tissue"), True)])
def test_a_negative_answer_is_checked_only_in_a_window_that_shows_what_it_clears(window, cleared):
    """The trust evaluation saw it: "no lesion" read in the bone window, the model consistently sure, the light
    green on a slice with a lesion. A negative clears only what its window shows: on this abdominal slice the
    soft tissue (the liver window is one); in the bone or lung window it is not checked, never green."""
    engine = ConsistentModel(NEGATIVE, {r"^Is there": "no", r"^How many": "0"}, [None])
    answer = Assistant(engine, image_spec=SPEC).ask(ct_volume(), 0, window, "Describe the findings on this slice.")
    rel = check_answer(engine, answer, n_samples=5, max_questions=5)
    check = next(c for c in rel.checks if c.name == "negative_window")
    assert next(c for c in rel.checks if c.name == "negative_grounding").passed is True
    if cleared:
        assert check.passed is True and rel.tier is Tier.GREEN, rel.message
    else:
        assert check.passed is None and rel.tier is Tier.NONE
        assert f"read in the {window.name.lower()} window (W {window.width} / L {window.center})" in check.detail
        assert "read it in the soft tissue window" in rel.message


def test_an_answer_without_a_box_is_not_shown_as_checked():
    draft = five_steps("A mass in the liver.", "Liver mass.")
    engine = ConsistentModel(draft, {}, [None], decomposition="presence | Is there a mass? | yes")
    rel = check_answer(engine, ask(engine), n_samples=3, max_questions=3)
    box = next(c for c in rel.checks if c.name == "box")
    assert box.passed is None and rel.tier is not Tier.GREEN


# ------------------------------------------------------------------ the reasoning against itself

CONTRADICTING = five_steps(f"There is a <ref>mass</ref><box>{norm(LESION)}</box> in the right hepatic lobe.",
                           "No focal liver lesion or mass.", step3="The mass measures 24 mm.",
                           step4="A 24 mm mass in the right hepatic lobe.")


def test_an_answer_with_a_step_contradiction_is_red():
    engine = ConsistentModel(CONTRADICTING, {r"^Where": "right hepatic lobe", r"size": "24 mm"}, [LESION])
    rel = check_answer(engine, ask(engine), n_samples=3, max_questions=3)
    assert rel.tier is Tier.RED
    steps = rel.checks[0]
    assert steps.name == "steps" and steps.passed is False and "step 5" in steps.detail
    assert rel.contradictions and all(c.kind == "negation" for c in rel.contradictions)
    assert "contradicts itself" in rel.message


def test_step_contradictions_force_red_through_the_checker_interface(monkeypatch):
    """The same rule against a local double of inference.reliability.consistency (its API only)."""
    contradiction = SimpleNamespace(kind="size", steps=(3, 5), message="step 3 gives 24 mm, step 5 gives 42 mm")
    missing = SimpleNamespace(missing_steps=(4,), leaked_headers=(), contradictions=(contradiction,), ok=False,
                              messages=lambda: ["step 4 is missing", contradiction.message])
    double = SimpleNamespace(check_steps=lambda steps, expected=5, answer_text="": missing,
                             check_answer_text=lambda text: (contradiction,))
    monkeypatch.setattr(session, "_consistency", lambda: double)
    engine = ConsistentModel(lesion_answer(LESION, "24 mm"), answers_for("24 mm"), [LESION])
    rel = check_answer(engine, ask(engine), n_samples=3, max_questions=5)
    assert rel.tier is Tier.RED and rel.findings[0].tier is Tier.GREEN
    assert rel.checks[0].detail == "step 4 is missing; step 3 gives 24 mm, step 5 gives 42 mm"
    assert rel.contradictions == [contradiction]
    # a free answer (locate) is checked by its text
    free = ConsistentModel(f"<ref>mass</ref><box>{norm(LESION)}</box>", {}, [LESION])
    rel = check_answer(free, ask(free, question="Locate the mass"), n_samples=3, max_questions=2)
    assert rel.checks[0].name == "contradictions" and rel.checks[0].passed is False and rel.tier is Tier.RED


def test_a_question_about_a_structure_the_series_region_cannot_confirm_is_not_green():
    engine = ConsistentModel(lesion_answer(LESION, "24 mm"), answers_for("24 mm"), [LESION])
    answer = ask(engine, ct_volume(body_part=""), question="Is there a lesion in the liver?")
    assert answer.guardrail.structures_unchecked
    rel = check_answer(engine, answer, n_samples=3, max_questions=5)
    region = next(c for c in rel.checks if c.name == "region")
    assert region.passed is None and "the liver" in region.detail and "not known" in region.detail
    assert rel.findings[0].tier is Tier.GREEN and rel.tier is Tier.NONE


@pytest.mark.parametrize("said, passed", [("bone", False), ("lung", False), ("soft tissue", True), ("liver", True)])
def test_the_window_the_reasoning_names_is_checked_against_the_one_shown(said, passed):
    """Seen in a real-window reading: "Axial CT slice of the chest in bone window" beside the soft tissue
    window. The workstation knows the window; a wrong one is a misread image and keeps the answer from green."""
    draft = NEGATIVE.replace("Axial CT of the upper abdomen.", f"Axial CT slice of the upper abdomen in {said} window.")
    engine = ConsistentModel(draft, {r"^Is there": "no", r"^How many": "0"}, [None])
    answer = Assistant(engine, image_spec=SPEC).ask(ct_volume(), 0, Window(400, 40, "Soft tissue"),
                                                    "Describe the findings on this slice.")
    rel = check_answer(engine, answer, n_samples=5, max_questions=5)
    check = next(c for c in rel.checks if c.name == "stated_window")
    assert check.passed is passed
    if passed:
        assert rel.tier is Tier.GREEN, rel.message
    else:
        assert rel.tier is Tier.AMBER, rel.message
        assert (f"the reasoning says the image is in the {said} window; it was shown in the soft tissue window "
                "(W 400 / L 40)") in check.detail


def test_an_answer_naming_no_window_gets_no_window_check():
    engine = ConsistentModel(NEGATIVE, {r"^Is there": "no", r"^How many": "0"}, [None])
    rel = check_answer(engine, ask(engine), n_samples=5, max_questions=5)
    assert not any(c.name == "stated_window" for c in rel.checks)
