"""The reasoning must agree with itself (issue #13 "Trust").

A contradiction test set is generated from phantom truth: each case of
:func:`app.synthetic.cases.make_case` gets its consistent five-step text from
:func:`training.phantom_text.reasoning_answer`, parsed into steps the way the app does
(:func:`inference.parsing.parse_answer`); then exactly one step is perturbed (size ×2 or
÷2, side flip, count change, negation, density flip). The detector must find the
perturbed ones and leave the consistent ones alone. Hand-written cases from the issue
follow.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from app.synthetic.cases import PhantomCase, make_case
from inference.parsing import parse_answer
from inference.reliability.consistency import (
    Contradiction,
    StepCheck,
    check_answer_text,
    check_steps,
)
from inference.types import STEP_NAMES, Box, GroundedPhrase, ReasoningStep
from training.phantom_text import COUNT_WORDS, corrupt, reasoning_answer

#: seeds drawn from an unusual base that appears nowhere else in the repository
BASE_SEED = 731_357
N_CASES = 260
KINDS = ("size", "side", "count", "negation", "density")
_FLIP_DENSITY = {"solid": "ground-glass", "ground-glass": "solid", "hypodense": "hyperdense",
                 "hyperdense": "hypodense"}


# ----------------------------------------------------------------------------- the test set


def _split(text: str) -> list[str]:
    """The five ``Step k: Name\\nbody`` sections of a phantom answer."""
    sections = re.split(r"\n\n(?=Step [1-5]: )", text)
    assert len(sections) == 5
    return sections


def _body(section: str) -> tuple[str, str]:
    head, _, body = section.partition("\n")
    return head, body


def _swap_side(text: str) -> str:
    return text.replace("right", "\0").replace("left", "right").replace("\0", "left")


def _replace_nth(text: str, old: str, new: str, n: int) -> str:
    starts = [m.start() for m in re.finditer(re.escape(old), text)]
    k = starts[n]
    return text[:k] + new + text[k + len(old):]


def _count_phrase(n: int, noun: str = "lesion") -> str:
    return f"{COUNT_WORDS[n] if n < len(COUNT_WORDS) else str(n)} {noun}{'s' if n != 1 else ''}"


def perturb(case: PhantomCase, text: str, kind: str, rng: np.random.Generator) -> tuple[str, int] | None:
    """``text`` with exactly one step changed so that it contradicts the others; (text, step),
    or None when this case cannot carry this kind of contradiction in words."""
    sections = _split(text)
    lesions = case.lesions
    n = len(lesions)
    bodies = [_body(s) for s in sections]

    def with_step(k: int, body: str) -> tuple[str, int]:
        out = list(sections)
        out[k - 1] = f"{bodies[k - 1][0]}\n{body}"
        return "\n\n".join(out), k

    if kind == "count":
        if n == 0:
            body = f"{_count_phrase(int(rng.integers(1, 3)))} in total. {bodies[3][1].split('. ', 1)[-1]}"
            return with_step(4, "A single lesion in total." if body.startswith("One lesion ") else body)
        new = int(rng.choice([c for c in (n - 1, n + 1) if c >= 1]))
        choices = [4] + ([5] if n >= 2 else [])
        k = int(rng.choice(choices))
        body = bodies[k - 1][1]
        if k == 4 and n == 1:
            body = body.replace("A single lesion,", f"{_count_phrase(new)},", 1)
        elif k == 4:
            body = body.replace(f"{_count_phrase(n)} in total", f"{_count_phrase(new)} in total", 1)
        else:
            what = "lesion" if case.kind == "ct_abdomen" else "pulmonary lesion"
            body = body.replace(_count_phrase(n, what), _count_phrase(new, what), 1)
        assert body != bodies[k - 1][1]
        return with_step(k, body)
    if n == 0:
        return None
    t = lesions[int(rng.integers(n))]
    if kind == "negation":
        variant = int(rng.integers(3))
        if variant == 0:  # the whole synthesis says there is nothing
            return with_step(5, "No focal lesion.")
        if variant == 1:  # the findings describe the lesions, the impression denies them
            findings = bodies[4][1].split("\nIMPRESSION:")[0]
            return with_step(5, f"{findings}\nIMPRESSION: No focal lesion.")
        return with_step(4, "The image shows no abnormality.")
    if kind == "size":
        old = f"{t.size_mm:.0f} mm"
        steps = [k for k in (3, 4, 5) if old in bodies[k - 1][1]]
        k = int(rng.choice(steps))
        factor = 2.0 if rng.random() < 0.5 else 0.5
        new = f"{max(1, round(float(old.split()[0]) * factor))} mm"
        return with_step(k, bodies[k - 1][1].replace(old, new))
    if kind == "side":
        where = f"the {t.location}"
        steps = [k for k in (2, 3, 4, 5) if where in bodies[k - 1][1]]
        k = int(rng.choice(steps))
        body = bodies[k - 1][1]
        occurrence = int(rng.integers(body.count(where)))
        return with_step(k, _replace_nth(body, where, _swap_side(where), occurrence))
    if kind == "density":
        density = t.density
        if density not in t.kind:
            return None  # the density is said once, in step 3 only: flipping it contradicts nothing
        flipped = _FLIP_DENSITY[density]
        k = int(rng.choice([2, 3, 5]))
        body = bodies[k - 1][1]
        if k == 3:
            lines = body.split("\n")
            i = next(j for j, line in enumerate(lines) if line.startswith(f"{t.id}:"))
            if rng.random() < 0.5:  # the whole line: the other steps disagree
                lines[i] = lines[i].replace(density, flipped)
            else:  # only the summary after the semicolon: the line disagrees with itself
                lines[i] = lines[i].replace(f"; {density},", f"; {flipped},")
            return with_step(3, "\n".join(lines))
        return with_step(k, body.replace(t.kind, t.kind.replace(density, flipped)))
    raise ValueError(kind)


def steps_of(text: str) -> tuple[list[ReasoningStep], str]:
    parsed = parse_answer(text)
    assert not parsed.missing_steps
    return parsed.steps, parsed.text


def _test_set():
    consistent: list[tuple[int, StepCheck]] = []
    perturbed: list[tuple[int, str, int, StepCheck, str]] = []
    for i in range(N_CASES):
        case = make_case(BASE_SEED, i, size=96)
        text = reasoning_answer(case, case.lesions)
        steps, full = steps_of(text)
        consistent.append((i, check_steps(steps, 5, full)))
        # a wrong reading (a lesion invented, missed, moved or put on the other side) written
        # consistently: wrong, but not self-contradictory
        _, wrong = corrupt(case, np.random.default_rng([BASE_SEED, i, 2]))
        wrong_steps, wrong_full = steps_of(reasoning_answer(case, wrong))
        consistent.append((i, check_steps(wrong_steps, 5, wrong_full)))
        rng = np.random.default_rng([BASE_SEED, i, 1])
        first = i % len(KINDS)
        for kind in KINDS[first:] + KINDS[:first]:
            out = perturb(case, text, kind, rng)
            if out is not None:
                bad_text, step = out
                bad_steps, bad_full = steps_of(bad_text)
                perturbed.append((i, kind, step, check_steps(bad_steps, 5, bad_full), bad_text))
                break
    return consistent, perturbed


@pytest.fixture(scope="module")
def test_set():
    return _test_set()


def test_phantom_contradictions_are_found_and_consistent_reasoning_is_left_alone(test_set):
    consistent, perturbed = test_set
    assert len(consistent) >= 200 and len(perturbed) >= 200
    false_alarms = [(i, r) for i, r in consistent if not r.ok]
    by_kind: Counter[str] = Counter()
    found: Counter[str] = Counter()
    right_kind: Counter[str] = Counter()
    missed: list[tuple[int, str, int, str]] = []
    for i, kind, step, result, text in perturbed:
        by_kind[kind] += 1
        if result.contradictions:
            found[kind] += 1
            # a count of lesions against "no lesion" is both a count and a negation contradiction
            same = {kind} | ({"count", "negation"} if kind in ("count", "negation") else set())
            right_kind[kind] += any(c.kind in same for c in result.contradictions)
            assert any(step in c.steps for c in result.contradictions), (kind, step, result, text)
        else:
            missed.append((i, kind, step, text))
        assert not result.missing_steps and not result.leaked_headers
    recall = sum(found.values()) / len(perturbed)
    fa_rate = len(false_alarms) / len(consistent)
    print(f"\ncontradiction test set: {len(perturbed)} perturbed, {len(consistent)} consistent "
          f"({N_CASES} true readings and {N_CASES} consistently written wrong ones; "
          f"make_case seed {BASE_SEED}, cases 0-{N_CASES - 1})")
    print(f"{'perturbation':<14}{'n':>5}{'found':>7}{'recall':>8}{'right kind':>12}")
    for kind in KINDS:
        n = by_kind[kind]
        print(f"{kind:<14}{n:>5}{found[kind]:>7}{found[kind] / max(n, 1):>8.2f}{right_kind[kind] / max(n, 1):>12.2f}")
    print(f"{'all':<14}{len(perturbed):>5}{sum(found.values()):>7}{recall:>8.2f}"
          f"{sum(right_kind.values()) / len(perturbed):>12.2f}")
    print(f"false alarms on consistent texts: {len(false_alarms)}/{len(consistent)} = {fa_rate:.3f}")
    for i, kind, step, _text in missed[:10]:
        print(f"  missed: case {i}, {kind} in step {step}")
    assert all(by_kind[k] >= 20 for k in KINDS), by_kind
    assert recall >= 0.9, missed[:5]
    assert fa_rate <= 0.05, false_alarms[:5]


# ----------------------------------------------------------------------------- the issue's cases


def _steps(*bodies: str | None) -> list[ReasoningStep]:
    """Steps written by hand; each line of step 2 is a grounded phrase with its own box."""
    steps = [ReasoningStep(k, STEP_NAMES[k - 1], body) for k, body in enumerate(bodies, 1) if body is not None]
    for s in steps:
        if s.index == 2:
            s.phrases = [GroundedPhrase(line, (Box(100.0 * i, 100.0, 100.0 * i + 50, 150.0),))
                         for i, line in enumerate(s.text.split("\n")) if line.strip()]
    return steps


ISSUE_STEPS = _steps(
    "Axial CT slice of the chest in lung window. Visible structures: right lung, left lung, heart.",
    "mass in the right middle lobe",
    "A 42 mm mass with spiculated margins in the right middle lobe; solid, large (42 mm).",
    "A single lesion, 42 mm mass in the right middle lobe. The remaining lung parenchyma is clear.",
    "FINDINGS: No pulmonary nodule or mass. The remaining lung parenchyma is clear.\nIMPRESSION: No focal lesion.",
)


def test_the_42_mm_mass_against_no_pulmonary_nodule_or_mass():
    result = check_steps(ISSUE_STEPS)
    assert not result.ok
    pairs = {(c.kind, c.steps) for c in result.contradictions}
    assert ("negation", (4, 5)) in pairs
    message = next(c.message for c in result.contradictions if c.steps == (4, 5))
    assert message.startswith("the reasoning contradicts itself: step 4 reports a 42 mm mass in the right middle lobe")
    assert "step 5 reports no" in message
    assert any(message in m for m in result.messages())


def test_no_mass_then_a_mass_in_a_free_answer():
    found = check_answer_text("No mass. A 3 cm mass in the left lung.")
    assert [c.kind for c in found] == ["negation"]
    assert found[0].steps == (0, 0)
    assert "No mass" in found[0].message and "30 mm mass in the left lung" in found[0].message
    # the same inside one step of the reasoning
    result = check_steps(_steps("Chest CT.", "No mass is localized. A 30 mm mass in the left upper lobe.",
                                "A 30 mm mass in the left upper lobe.", "A single mass.",
                                "A 30 mm mass in the left upper lobe."))
    assert ("negation", (2, 2)) in {(c.kind, c.steps) for c in result.contradictions}


def test_leaked_header_inside_step_two():
    steps = _steps("Chest CT.", "nodule in the right upper lobe Step 3: Detailed description A 7 mm nodule.",
                   "A 7 mm solid nodule in the right upper lobe.", "A single lesion, 7 mm, in the right upper lobe.",
                   "Solid nodule in the right upper lobe (7 mm).")
    result = check_steps(steps)
    assert result.leaked_headers == (2,)
    assert not result.ok
    assert any("step 2 contains another step's heading" in m for m in result.messages())
    named = _steps("Chest CT.", "nodule in the right upper lobe\nHolistic analysis: one nodule.",
                   "A 7 mm nodule.", "One nodule.", "Nodule (7 mm).")
    assert check_steps(named).leaked_headers == (2,)
    # a step that refers to another in prose is no heading
    prose = _steps("Chest CT.", "nodule in the right upper lobe", "A 7 mm nodule, as localized in step 2.",
                   "One nodule, described in step 3.", "Nodule (7 mm).")
    assert check_steps(prose).leaked_headers == ()


def test_missing_and_empty_steps_are_named():
    steps = _steps("Chest CT.", None, "A 7 mm nodule in the right upper lobe.", None, None)
    result = check_steps(steps)
    assert result.missing_steps == (2, 4, 5)
    assert not result.ok
    assert result.messages()[0] == ("the reasoning is incomplete: step 2 (region localization), step 4 (holistic "
                                    "analysis) and step 5 (report synthesis) are missing")
    blank = _steps("Chest CT.", "  ", "A 7 mm nodule.", "One nodule.", "Nodule.")
    assert check_steps(blank).missing_steps == (2,)
    # a free answer (no steps) when none were expected: nothing missing
    assert check_steps([], expected=0, answer_text="A 7 mm nodule in the right upper lobe.").ok
    free = check_steps([], expected=5, answer_text="No mass. A 3 cm mass in the left lung.")
    assert free.missing_steps == (1, 2, 3, 4, 5) and free.contradictions[0].kind == "negation"


def test_each_kind_by_hand():
    def kinds(*bodies: str) -> set[tuple[str, tuple[int, int]]]:
        return {(c.kind, c.steps) for c in check_steps(_steps(*bodies)).contradictions}

    base = ("Chest CT.", "solid nodule in the right lower lobe", "A 12 mm solid nodule in the right lower lobe.",
            "A single lesion, 12 mm, in the right lower lobe.", "Solid nodule in the right lower lobe (12 mm).")
    assert kinds(*base) == set()
    assert ("side", (3, 5)) in kinds(*base[:2], base[2].replace("right", "left"), *base[3:])
    assert ("size", (3, 5)) in kinds(*base[:2], "A 12 mm solid nodule in the right lower lobe.", base[3],
                                     "Solid nodule in the right lower lobe (3 cm).")
    assert ("location", (3, 5)) in kinds(*base[:4], "Solid nodule in the right upper lobe (12 mm).")
    assert ("density", (3, 5)) in kinds(*base[:4], "Ground-glass nodule in the right lower lobe (12 mm).")
    assert ("count", (4, 5)) in kinds(*base[:3], "Two nodules in total.", "A solitary nodule (12 mm).")
    assert ("count", (2, 4)) in kinds(*base[:3], "Three lesions in total.", base[4])
    assert ("density", (3, 3)) in kinds(base[0], base[1], "A 12 mm hyperdense lesion in the right hepatic lobe; "
                                        "hypodense, medium.", base[3], base[4])
    # sizes in other units and shapes
    assert ("size", (3, 5)) in kinds(*base[:2], "A 12 x 8 mm solid nodule in the right lower lobe.", base[3],
                                     "Solid nodule in the right lower lobe (2.5 cm).")


#: radiology prose that holds no contradiction, worded the way reports are
REALISTIC_PROSE = (
    "There is a 2.3 cm spiculated mass in the right upper lobe, suspicious for malignancy. No other pulmonary "
    "nodules. No pleural effusion. No mediastinal lymphadenopathy.",
    "Multiple bilateral pulmonary nodules, the largest measuring 14 mm in the left lower lobe, consistent with "
    "metastases. No consolidation.",
    "A 3.2 x 2.8 cm hypodense lesion in segment 7 of the liver with peripheral nodular enhancement, likely a "
    "hemangioma. A 5 mm hypodense focus in segment 4 is too small to characterize. No biliary dilatation.",
    "Right lower lobe consolidation with air bronchograms. No cavitation. No pleural effusion. The left lung is clear.",
    "No acute intracranial abnormality. No mass effect or midline shift.",
    "A 6 mm solid nodule in the right middle lobe, unchanged. A calcified granuloma in the left upper lobe. "
    "No new nodules.",
    "Two hepatic cysts, the larger 12 mm in the right lobe of the liver and a 6 mm cyst in the left lobe of the liver.",
    "The previously described nodule in the right upper lobe is no longer seen. A new 8 mm nodule in the left "
    "lower lobe.",
    "Heterogeneous mass in the left kidney measuring 4.5 cm. The right kidney is normal. No renal calculi.",
    "A 12 mm hyperdense lesion in the right hepatic lobe, consistent with a hemangioma. The lesion is hyperdense.",
    "Bilateral ground-glass opacities. No solid nodule. A 9 mm part-solid nodule in the right upper lobe.",
    "No enhancing lesion. A 12 mm hypodense lesion in the right hepatic lobe, a simple cyst.",
    "No nodules larger than 6 mm. A 4 mm nodule in the right upper lobe.",
    "A 4 mm nodule in the right upper lobe. No nodule elsewhere. Findings: 1 nodule.",
)


def test_what_is_not_a_contradiction():
    def ok(*bodies: str) -> StepCheck:
        result = check_steps(_steps(*bodies))
        assert result.contradictions == (), result.messages()
        return result

    # two different lesions of different sizes, counted as two
    ok("Chest CT. Visible structures: right lung, left lung.",
       "nodule in the right upper lobe\nmass in the left lower lobe",
       "A 6 mm nodule in the right upper lobe. A 35 mm mass in the left lower lobe.",
       "Two lesions in total; the largest is 35 mm in the left lower lobe.",
       "FINDINGS: A 6 mm nodule in the right upper lobe. A 35 mm mass in the left lower lobe.\n"
       "IMPRESSION: Two pulmonary lesions on both sides; the largest is a mass in the left lower lobe (35 mm).")
    # step 1's normal structures are no side claim; a partial negation is no negation
    ok("Right lung, left lung, heart; no nodule is assessed here.", "nodule in the left upper lobe",
       "A 9 mm nodule in the left upper lobe.", "One nodule. No other nodules.",
       "Nodule in the left upper lobe (9 mm). No new mass. No suspicious lesion elsewhere.")
    # a negation scoped to the other side or another organ
    ok("Chest CT.", "mass in the right lung", "A 3 cm mass in the right lung. No nodule in the left lung.",
       "A single mass in the right lung.", "Right lung mass (30 mm). No focal liver lesion. No mass effect.")
    # the synthesis naming only the largest of several lesions
    ok("Abdominal CT.", "hypodense lesion in the right hepatic lobe\ncyst in the left hepatic lobe",
       "L1: A 24 mm hypodense lesion in the right hepatic lobe; hypodense.\n"
       "L2: A 12 mm cyst in the left hepatic lobe; hypodense.",
       "Two lesions; the largest is 24 mm in the right hepatic lobe.",
       "IMPRESSION: the largest is a hypodense lesion in the right hepatic lobe (24 mm).")
    # a hypodense lesion with a hyperdense rim is one lesion, not two densities
    ok("Abdominal CT.", "lesion in the right hepatic lobe",
       "A 20 mm hypodense lesion with a hyperdense rim in the right hepatic lobe.",
       "A single lesion, 20 mm.", "Hypodense lesion in the right hepatic lobe (2 cm).")
    assert check_answer_text("") == ()
    for prose in REALISTIC_PROSE:
        assert check_answer_text(prose) == (), prose
    assert check_answer_text("A 7 mm nodule in the right upper lobe and a 7 mm nodule in the left upper lobe.") == ()


def test_public_types():
    c = Contradiction("count", (4, 5), "x")
    check = StepCheck((), (), (c,))
    assert not check.ok and check.messages() == ["x"]
    assert StepCheck((), (), ()).ok
