"""training.position_probe: a lesion's slice moved up and down, the answer's box scored against the moved box."""

from __future__ import annotations

import numpy as np
import pytest

from inference.errors import XMedError
from inference.parsing import format_grounding
from inference.resources import SAMPLE_STUDY
from inference.types import Box, ChatRequest, Generation
from training import position_probe as pp

STUDY = SAMPLE_STUDY


class FixedEngine:
    """A model that learnt where the lesion sits: the same box whatever the image shows."""

    def __init__(self, box: Box) -> None:
        self.box, self.requests = box, []

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        self.requests.append(request)
        return Generation(text=format_grounding("mass", [self.box]))


class SeeingEngine(FixedEngine):
    """A model that finds the lesion where it is: the box moved by the shift it reads off the pixels."""

    def __init__(self, box: Box, original: np.ndarray) -> None:
        super().__init__(box)
        self.original = original

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        self.requests.append(request)
        h = request.image.shape[0]
        dy = next(d for d in range(-h // 2, h // 2) if np.array_equal(np.roll(self.original, d, axis=0), request.image))
        b = self.box
        return Generation(text=format_grounding("mass", [Box(b.x0, b.y0 + dy / h * 1000, b.x1, b.y1 + dy / h * 1000)]))


def _mass():
    from app.synthetic.study_dataset import study_examples

    k = pp.key_slice(STUDY, "L3")
    ex = study_examples(STUDY, ["lung"], str(k + 1)).examples[0]
    mass = next(les for les in ex.lesions if les["id"] == "L3")
    return k, ex.image, Box(*map(float, mass["box_1000"]))


def test_a_model_that_learnt_the_place_scores_only_where_the_lesion_was_and_one_that_sees_it_everywhere():
    k, image, box = _mass()
    assert 16 <= k + 1 <= 18  # the sample's 32 mm mass: slices 17-19 (1-based), largest on one of them
    fixed = pp.probe(FixedEngine(box), STUDY, "L3", ["lung"], shifts=(-24, 0, 24))
    assert [r.shift_px for r in fixed] == [-24, 0, 24] and {r.window for r in fixed} == {"lung"}
    assert fixed[1].iou > 0.99 and fixed[0].iou < 0.5 and fixed[2].iou < 0.5
    seeing = SeeingEngine(box, image)
    rows = pp.probe(seeing, STUDY, "L3", ["lung"], shifts=(-24, 0, 24))
    assert all(r.iou > 0.99 and r.boxes == 1 for r in rows), rows
    assert all(r.prompt == pp.grounding_question() for r in seeing.requests)  # the question eval scores
    table = pp.format_rows(fixed)
    assert "-24" in table and "+24" in table and "lung" in table


def test_an_unknown_lesion_is_a_clear_error(capsys):
    with pytest.raises(XMedError, match="Lesion L9 is on no slice .* L1, L2, L3"):
        pp.key_slice(STUDY, "L9")
    assert pp.main(["--model", str(STUDY), "--study", str(STUDY), "--lesion", "L9"]) == 2
    assert "Lesion L9 is on no slice" in capsys.readouterr().err
