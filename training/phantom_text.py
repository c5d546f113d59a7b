"""The words of the phantom corpus: prompts, five-step reasoning, reports, VQA, preference pairs.

Everything is built from a :class:`~app.synthetic.cases.PhantomCase`'s ground truth
(:class:`~app.synthetic.truth.LesionTruth`), so a target never says more than the image
shows. Grounding uses the project's own formatter (:func:`inference.parsing.format_grounding`),
boxes on the 0–1000 scale, so the model is trained on exactly what the parser reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from app.synthetic.cases import PhantomCase
from app.synthetic.truth import LesionTruth, density_of
from inference.parsing import BOX_SCALE, format_grounding
from inference.types import STEP_NAMES, Box

COUNT_WORDS = ("No", "One", "Two", "Three", "Four")

REASONING_PROMPTS = (
    "Analyse this {desc} step by step: identify the structures, localize any lesion with its box, "
    "describe it, assess the whole image and write the report.",
    "Work through this {desc} in five steps (structures, localization, description, holistic analysis, "
    "report) and give the bounding box of every lesion.",
    "Read this {desc} like a radiologist, reasoning step by step, and ground each lesion you find.",
)
GROUNDING_PROMPTS = (
    "Locate every lesion in this image and give its bounding box.",
    "Find all lesions in this {desc}. Answer with a box for each.",
    "Where are the abnormalities? Output each one with its box.",
)
REPORT_PROMPTS = (
    "Write the findings and impression for this {desc}.",
    "Draft a radiology report for this {desc}.",
)


@dataclass(frozen=True)
class Question:
    qtype: str  # presence | count | laterality | location | size | density | margin
    question: str
    answer: str


def _box(t: LesionTruth) -> Box:
    return Box(*map(float, t.box_1000))


def _normal_statement(case: PhantomCase) -> str:
    if case.kind == "ct_abdomen":
        return "The liver parenchyma is otherwise homogeneous."
    if case.kind == "xray":
        return "The lungs are otherwise clear; the cardiac silhouette and mediastinum are unremarkable."
    return "The remaining lung parenchyma is clear."


def _negative_statement(case: PhantomCase) -> str:
    if case.kind == "ct_abdomen":
        return "No focal liver lesion."
    return "No pulmonary nodule or mass."


def _describe(t: LesionTruth) -> str:
    margin = {"smooth": "smooth", "lobulated": "lobulated", "spiculated": "spiculated"}[t.margin]
    return f"{t.size_mm:.0f} mm {t.kind} with {margin} margins in the {t.location}"


def _article(text: str) -> str:
    return ("An " if text[:1] in "8" or text.startswith(("11 ", "18 ")) else "A ") + text


def findings_and_impression(case: PhantomCase, lesions: list[LesionTruth]) -> str:
    """The report: FINDINGS then IMPRESSION, lesion by lesion, largest named in the impression."""
    if not lesions:
        return f"FINDINGS: {_negative_statement(case)} {_normal_statement(case)}\nIMPRESSION: No focal lesion."
    findings = " ".join(f"{_article(_describe(t))}." for t in lesions)
    largest = max(lesions, key=lambda t: t.size_mm)
    n = len(lesions)
    what = "lesion" if case.kind == "ct_abdomen" else "pulmonary lesion"
    if n == 1:
        impression = f"{largest.kind.capitalize()} in the {largest.location} ({largest.size_mm:.0f} mm)."
    else:
        sides = sorted({t.side for t in lesions})
        where = "both sides" if len(sides) == 2 else f"the {sides[0]} side"
        impression = (f"{COUNT_WORDS[n]} {what}s on {where}; the largest is a {largest.kind} in the "
                      f"{largest.location} ({largest.size_mm:.0f} mm).")
    return f"FINDINGS: {findings} {_normal_statement(case)}\nIMPRESSION: {impression}"


def grounding_answer(lesions: list[LesionTruth]) -> str:
    if not lesions:
        return "No lesion is seen."
    return "\n".join(format_grounding(t.phrase, [_box(t)]) for t in lesions)


def reasoning_steps(case: PhantomCase, lesions: list[LesionTruth]) -> list[str]:
    """The bodies of the five steps, all from the same ``lesions`` (so they agree with each other)."""
    n = len(lesions)
    desc = case.description
    step1 = f"{desc[0].upper()}{desc[1:]}. Visible structures: {', '.join(case.structures)}."
    if lesions:
        step2 = "\n".join(format_grounding(t.phrase, [_box(t)]) for t in lesions)
        step3 = "\n".join(f"{t.id}: {_article(_describe(t))}; {t.density}, {t.size_class} "
                          f"({t.size_mm:.0f} mm)." for t in lesions)
        by_side = {side: sum(t.side == side for t in lesions) for side in ("right", "left")}
        sides = ", ".join(f"{COUNT_WORDS[k].lower()} on the {side}" for side, k in by_side.items() if k)
        largest = max(lesions, key=lambda t: t.size_mm)
        if n == 1:
            step4 = (f"A single lesion, {largest.size_mm:.0f} mm, in the {largest.location}. "
                     f"{_normal_statement(case)}")
        else:
            step4 = (f"{COUNT_WORDS[n]} lesions in total ({sides}); the largest is "
                     f"{largest.size_mm:.0f} mm in the {largest.location}. {_normal_statement(case)}")
    else:
        step2 = "No focal lesion is localized."
        step3 = f"{_negative_statement(case)} {_normal_statement(case)}"
        step4 = "The image shows no abnormality."
    step5 = findings_and_impression(case, lesions)
    return [step1, step2, step3, step4, step5]


def join_steps(bodies: list[str], numbers: list[int] | None = None) -> str:
    """``Step k: <name>`` + body blocks (``numbers``: which step each body is, default 1..5)."""
    numbers = numbers or list(range(1, len(bodies) + 1))
    return "\n\n".join(f"Step {k}: {STEP_NAMES[k - 1]}\n{body}" for k, body in zip(numbers, bodies))


def reasoning_answer(case: PhantomCase, lesions: list[LesionTruth]) -> str:
    """The five steps, headed ``Step k: <name>``; step 2 grounds every lesion."""
    return join_steps(reasoning_steps(case, lesions))


def questions(case: PhantomCase, rng: np.random.Generator) -> list[Question]:
    """Attribute-level questions with short canonical answers."""
    lesions = case.lesions
    n = len(lesions)
    out = [
        Question("presence", str(rng.choice(["Is there a lesion in this image?", "Is any lesion visible?",
                                             "Does this image show a focal lesion?"])), "yes" if n else "no"),
        Question("count", "How many lesions are visible?", str(n)),
    ]
    side = "right" if rng.random() < 0.5 else "left"
    organ = f"{side} hepatic lobe" if case.kind == "ct_abdomen" else f"{side} lung"
    out.append(Question("laterality", f"Is there a lesion in the {organ}?",
                        "yes" if any(t.side == side for t in lesions) else "no"))
    if not lesions:
        return out
    largest = max(lesions, key=lambda t: t.size_mm)
    subject = "the lesion" if n == 1 else "the largest lesion"
    out.append(Question("location", f"Where is {subject}?", largest.location))
    out.append(Question("size", f"Is {subject} small (under 10 mm), medium (10 to 20 mm) or large?",
                        largest.size_class))
    if case.kind != "xray":
        choices = "hypodense or hyperdense" if largest.organ == "liver" else "solid or ground-glass"
        out.append(Question("density", f"Is {subject} {choices}?", largest.density))
    out.append(Question("margin", f"Are the margins of {subject} smooth, lobulated or spiculated?", largest.margin))
    return out


# ----------------------------------------------------------------------------- preference pairs


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    return Box(*map(float, a)).iou(Box(*map(float, b)))


def _moved_box(t: LesionTruth, avoid: list[tuple[int, int, int, int]],
               rng: np.random.Generator) -> tuple[int, int, int, int]:
    """The same-sized box somewhere it touches no true lesion."""
    x0, y0, x1, y1 = t.box_1000
    w, h = x1 - x0, y1 - y0
    for _ in range(200):
        nx = int(rng.integers(100, max(101, BOX_SCALE - 100 - w)))
        ny = int(rng.integers(150, max(151, BOX_SCALE - 150 - h)))
        cand = (nx, ny, nx + w, ny + h)
        if all(_iou(cand, b) == 0.0 for b in avoid):
            return cand
    return (BOX_SCALE - x1, BOX_SCALE - y1, BOX_SCALE - x0, BOX_SCALE - y0)


def _swap_side(text: str) -> str:
    return text.replace("right", "\0").replace("left", "right").replace("\0", "left")


def corrupt(case: PhantomCase, rng: np.random.Generator) -> tuple[str, list[LesionTruth]]:
    """A plausible but wrong reading: (error kind, wrong lesion list)."""
    kinds = ["hallucinated_lesion"] + (["wrong_box", "missed_lesion", "wrong_laterality"] if case.lesions else [])
    kind = str(rng.choice(kinds))
    return kind, _box_error(case, kind, rng)


def _invented(case: PhantomCase, rng: np.random.Generator) -> LesionTruth:
    """A lesion that is not there, placed where none is, with a plausible description."""
    size_mm = float(round(rng.uniform(6, 30), 1))
    side_px = max(8, int(round(size_mm / max(case.pixel_spacing_mm, 1e-3) * BOX_SCALE / case.image.shape[1])))
    for _ in range(50):
        cx = int(rng.integers(200, 800))
        cy = int(rng.integers(250, 750))
        box = (cx - side_px // 2, cy - side_px // 2, cx + (side_px + 1) // 2, cy + (side_px + 1) // 2)
        if all(_iou(box, t.box_1000) == 0.0 for t in case.lesions):
            break
    side = "right" if cx < BOX_SCALE // 2 else "left"
    if case.kind == "ct_abdomen":
        organ, location, kind, density = "liver", f"{side} hepatic lobe", "hypodense lesion", "hypodense"
    elif case.kind == "xray":
        zone = "upper" if cy < 420 else ("middle" if cy < 580 else "lower")
        organ, location, kind, density = "lung", f"{side} {zone} zone", "nodule", "solid"
    else:
        lobe = "upper" if cy < 450 else "lower"
        organ, location, kind, density = "lung", f"{side} {lobe} lobe", "solid nodule", "solid"
    w, h = case.image.shape[1], case.image.shape[0]
    px = (box[0] * w // BOX_SCALE, box[1] * h // BOX_SCALE, math.ceil(box[2] * w / BOX_SCALE),
          math.ceil(box[3] * h / BOX_SCALE))
    return LesionTruth(id=f"L{len(case.lesions) + 1}", organ=organ, side=side, location=location, kind=kind,
                       density=density, margin="smooth", size_mm=size_mm, box=px, box_1000=box)


# ----------------------------------------------------------------------------- self-contradicting chains

#: box errors: the whole chain follows one wrong lesion list (:func:`corrupt`)
BOX_ERRORS = ("wrong_box", "missed_lesion", "hallucinated_lesion", "wrong_laterality")
#: chain errors: every box is right, but the steps contradict each other or the chain is malformed
CHAIN_ERRORS = ("count_mismatch", "side_mismatch", "size_mismatch", "density_mismatch", "missing_step",
                "repeated_step")
_FLIP_KIND = {"solid nodule": "ground-glass nodule", "mass": "ground-glass nodule", "nodule": "ground-glass nodule",
              "ground-glass nodule": "solid nodule", "hypodense lesion": "hyperdense lesion",
              "cyst": "hyperdense lesion", "hyperdense lesion": "hypodense lesion"}


def _other_size(size_mm: float, rng: np.random.Generator) -> float:
    """A diameter in another size class (small < 10 ≤ medium < 20 ≤ large)."""
    ranges = [(4.0, 9.0), (11.0, 18.0), (24.0, 48.0)]
    here = 0 if size_mm < 10 else (1 if size_mm < 20 else 2)
    lo, hi = ranges[int(rng.choice([i for i in range(3) if i != here]))]
    return float(round(rng.uniform(lo, hi)))


def _flip_density(t: LesionTruth) -> LesionTruth:
    kind = _FLIP_KIND.get(t.kind, "ground-glass nodule" if t.organ == "lung" else "hyperdense lesion")
    return replace(t, kind=kind, density=density_of(t.organ, kind))


def chain_error_kinds(case: PhantomCase, errors: tuple[str, ...] = BOX_ERRORS + CHAIN_ERRORS) -> list[str]:
    """The error kinds of ``errors`` that make sense for this case (side/size/density need a lesion)."""
    needs_lesion = {"wrong_box", "missed_lesion", "wrong_laterality", "side_mismatch", "size_mismatch",
                    "density_mismatch"}
    return [e for e in errors if case.lesions or e not in needs_lesion]


def rejected_reasoning(case: PhantomCase, rng: np.random.Generator,
                       errors: tuple[str, ...] = BOX_ERRORS) -> tuple[str, str]:
    """(error kind, rejected five-step answer) for a DPO pair whose chosen answer is
    :func:`reasoning_answer` of the truth.

    With the default ``errors`` this is exactly ``corrupt`` + ``reasoning_answer`` (the phantom
    corpus's bytes do not change). The chain errors keep step 2's boxes right and make the chain
    contradict itself: step 5 (the report) disagrees with steps 2-4 on the lesion count, a side, a
    size class or a density; or a step is missing or repeated.
    """
    if tuple(errors) == BOX_ERRORS:
        error, wrong = corrupt(case, rng)
        return error, reasoning_answer(case, wrong)
    kinds = chain_error_kinds(case, tuple(errors))
    if not kinds:
        raise ValueError(f"no preference error of {errors} applies to a case without lesions")
    kind = str(rng.choice(kinds))
    if kind in BOX_ERRORS:
        return kind, reasoning_answer(case, _box_error(case, kind, rng))
    truth = list(case.lesions)
    steps = reasoning_steps(case, truth)
    if kind in ("missing_step", "repeated_step"):
        k = int(rng.integers(5))
        numbers = [1, 2, 3, 4, 5]
        if kind == "missing_step":
            del steps[k], numbers[k]
        else:
            steps.insert(k + 1, steps[k])
            numbers.insert(k + 1, numbers[k])
        return kind, join_steps(steps, numbers)
    report = list(truth)
    if kind == "count_mismatch":
        if len(report) >= 2 and rng.random() < 0.5:
            del report[int(rng.integers(len(report)))]
        else:
            report.append(_invented(case, rng))
    else:
        i = int(rng.integers(len(report)))
        t = report[i]
        if kind == "side_mismatch":
            report[i] = replace(t, side="left" if t.side == "right" else "right", location=_swap_side(t.location))
        elif kind == "size_mismatch":
            report[i] = replace(t, size_mm=_other_size(t.size_mm, rng))
        else:  # density_mismatch
            report[i] = _flip_density(t)
    steps[4] = findings_and_impression(case, report)
    return kind, join_steps(steps)


def rejected_grounding(case: PhantomCase, rng: np.random.Generator) -> tuple[str, str] | None:
    """(error kind, rejected answer) for a DPO pair on the grounding question, whose chosen answer is
    :func:`grounding_answer` of the truth: a lesion invented where there is none (the only kind on a
    lesion-free slice: the pre-read sweep's false positives), or a box moved off its lesion or a lesion
    left out (its misses).

    None where the draw would reject the empty answer itself (the one lesion of a slice left out): DPO then
    lowers "No lesion is seen." on every slice, not only where it is wrong (run 13d: lesion-free slices
    called empty 0.90 -> 0.80-0.82; without those pairs, run 13e: 0.92)."""
    kinds = ["hallucinated_lesion"] + (["wrong_box", "missed_lesion"] if case.lesions else [])
    kind = str(rng.choice(kinds))
    wrong = _box_error(case, kind, rng)
    return (kind, grounding_answer(wrong)) if wrong else None


def _box_error(case: PhantomCase, kind: str, rng: np.random.Generator) -> list[LesionTruth]:
    """The wrong lesion list of one box error (the same edits as :func:`corrupt`)."""
    lesions = list(case.lesions)
    if kind == "hallucinated_lesion":
        return lesions + [_invented(case, rng)]
    i = int(rng.integers(len(lesions)))
    t = lesions[i]
    if kind == "wrong_box":
        lesions[i] = replace(t, box_1000=_moved_box(t, [o.box_1000 for o in case.lesions], rng))
    elif kind == "missed_lesion":
        del lesions[i]
    else:  # wrong_laterality: the same finding reported on the other side, box mirrored with it
        x0, y0, x1, y1 = t.box_1000
        lesions[i] = replace(t, side="left" if t.side == "right" else "right", location=_swap_side(t.location),
                             box_1000=(BOX_SCALE - x1, y0, BOX_SCALE - x0, y1))
    return lesions
