"""``xmedgpt eval`` on a DICOM study written by ``xmedgpt sample``: slices rendered as the viewer renders them in
the chosen windows, scored per window and lesion size through the harness's in-memory entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.commands.eval import main
from app.core.errors import XMedError
from app.synthetic.sample import write_ct_study
from app.synthetic.study_dataset import parse_slices, parse_windows, study_examples
from inference.evaluation.harness import (
    ImageExample,
    Options,
    evaluate_examples,
    format_table,
)
from inference.parsing import format_grounding
from inference.types import Box, Generation

SEED = 8181  # a study no committed data uses


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    # 8 thick slices: the 6 mm solid nodule (L1) lands on slice 2, the 14 mm ground-glass nodule (L2) on slice 3
    return write_ct_study(tmp_path_factory.mktemp("sample") / "study", n_slices=8, seed=SEED)


def test_slices_and_windows_parse_like_the_viewer_numbers_them():
    assert parse_slices("3,7,20-22", 30) == [2, 6, 19, 20, 21]
    assert parse_slices(None, 4) == [0, 1, 2, 3] and parse_slices("all", 2) == [0, 1]
    with pytest.raises(XMedError):
        parse_slices("0-3", 30)
    assert parse_windows("all") == ["soft_tissue", "lung", "liver", "bone", "default"]
    assert parse_windows(None) == ["default"]
    with pytest.raises(XMedError):
        parse_windows("lung,sunset")


def test_study_examples_show_what_each_window_shows(study):
    se = study_examples(study, ["soft_tissue", "lung"], "1-3")
    assert [e.id for e in se.examples][:2] == ["slice 0001 soft_tissue", "slice 0001 lung"]
    assert len(se.examples) == 6 and all(e.image.shape == (512, 512, 3) for e in se.examples)
    by_id = {e.id: e for e in se.examples}
    gt = json.loads((study / "ground_truth.json").read_text())
    ggo = next(les for les in gt["lesions"] if les["kind"] == "ground-glass nodule")
    on = [e for e in se.examples if any(les["id"] == ggo["id"] for les in e.lesions)]
    assert on and all(e.group == "lung" for e in on)  # the ground-glass nodule shows in lung window only
    assert se.hidden["soft_tissue"] >= 1
    for e in by_id.values():
        for les in e.lesions:
            assert les["size_mm"] <= les["lesion_size_mm"] + 0.8 and len(les["box_1000"]) == 4


class TruthEngine:
    """Answers grounding with the truth boxes of the image it is shown (a perfect model)."""

    def __init__(self, examples: list[ImageExample]) -> None:
        self.boxes = {e.image.tobytes(): [les["box_1000"] for les in e.lesions] for e in examples}

    def describe(self) -> str:
        return "truth"

    def generate(self, request, cancel=None) -> Generation:
        boxes = self.boxes[np.ascontiguousarray(request.image).tobytes()]
        text = "\n".join(format_grounding("lesion", [Box(*map(float, b))]) for b in boxes) or "No lesion is seen."
        return Generation(text, [-0.1])


def test_examples_entry_point_scores_per_window_and_size(study):
    se = study_examples(study, ["soft_tissue", "lung"], "1-3")
    result = evaluate_examples(TruthEngine(se.examples), se.examples, Options(samples=0, tasks=("grounding",)),
                               group_by="window")
    assert result["localization"]["mean_iou"] == pytest.approx(1.0)
    assert set(result["per_group"]) == {"soft_tissue", "lung"}
    lung = result["per_group"]["lung"]["localization"]
    assert lung["lesions"] == sum(len(e.lesions) for e in se.examples if e.group == "lung")
    assert "small" in lung["per_bucket"]  # the 6 mm nodule
    assert "window lung (grounding)" in format_table(result)
    with pytest.raises(XMedError):
        evaluate_examples(TruthEngine(se.examples), se.examples, Options(tasks=("vqa",)))


def test_xmedgpt_eval_on_a_sample_study_with_the_tiny_model(study, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["--data", str(study), "--model", str(tiny_model_dir), "--window", "soft_tissue,lung",
               "--slices", "1-3", "--max-new-tokens", "8", "--device", "cpu", "--quantization", "none",
               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "window soft_tissue (grounding)" in printed and "window lung (grounding)" in printed
    assert "small" in printed and "not shown in the window" in printed
    result = json.loads(out.read_text())
    assert result["images"] == 6 and result["study"]["slices"] == [1, 2, 3]
    assert result["timing"]["grounding"]["n"] == 6


def test_window_and_slices_need_a_study(tmp_path, tiny_model_dir):
    (tmp_path / "grounding.jsonl").write_text("")
    with pytest.raises(XMedError):
        main(["--data", str(tmp_path), "--model", str(tiny_model_dir), "--window", "lung"])


def test_eval_refuses_a_malformed_model_folder_in_one_line(tmp_path):
    """The same folder check as models add, analyze and serve: no traceback from a broken config."""
    from app.commands.eval import main

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": {"a": 1}}')
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    data = tmp_path / "data"
    data.mkdir()
    (data / "vqa.jsonl").write_text("")
    from inference.errors import XMedError

    with pytest.raises(XMedError) as info:
        main(["--data", str(data), "--model", str(model), "--samples", "0"])
    assert "\n" not in str(info.value)


class CropTruthEngine:
    """Answers grounding on the zoom pass's crops of the study's slices with the truth as the crop shows it: a
    lesion wholly inside, its box; one the crop cuts, the part inside (as a detector would box it)."""

    def __init__(self, examples: list[ImageExample], crop: int, overlap: int) -> None:
        from app.synthetic.truth import to_1000
        from inference.zoom import crop_origins

        self.answers: dict[bytes, str] = {}
        for e in examples:
            h, w = e.image.shape[:2]
            boxes = [[v * s / 1000 for v, s in zip(les["box_1000"], (w, h, w, h))] for les in e.lesions]
            for x, y in crop_origins(w, h, crop, overlap):
                lines = []
                for b in boxes:
                    cut = (max(b[0], x) - x, max(b[1], y) - y, min(b[2], x + crop) - x, min(b[3], y + crop) - y)
                    if cut[2] > cut[0] and cut[3] > cut[1]:
                        lines.append(format_grounding("lesion", [Box(*map(float, to_1000(cut, crop, crop)))]))
                key = np.ascontiguousarray(e.image[y:y + crop, x:x + crop]).tobytes()
                self.answers[key] = "\n".join(lines) or "No lesion is seen."
        self.asked = 0

    def describe(self) -> str:
        return "crop truth"

    def generate(self, request, cancel=None) -> Generation:
        self.asked += 1
        return Generation(self.answers[np.ascontiguousarray(request.image).tobytes()], [-0.1])


def test_the_zoom_pass_scores_through_the_harness_on_the_studys_own_slices(study, tiny_model_dir):
    """Options.zoom: each 512-px slice is asked as nine overlapping 224-px crops; with answers that are right
    for every crop, the merged boxes score as the truth does (to the grounding scale's rounding)."""
    se = study_examples(study, ["lung"], "1-3")
    engine = CropTruthEngine(se.examples, 224, 80)
    result = evaluate_examples(engine, se.examples, Options(samples=0, tasks=("grounding",), zoom=224),
                               group_by="window")
    loc = result["localization"]
    assert engine.asked == 9 * len(se.examples) and loc["lesions"] > 0
    assert loc["mean_iou"] > 0.85 and loc["accuracy_at_05"] == 1.0, loc
    assert loc["false_positives_per_image"] == 0
    with pytest.raises(XMedError, match="zoom-overlap"):
        main(["--data", str(study), "--model", str(tiny_model_dir), "--zoom", "224", "--zoom-overlap", "224"])
