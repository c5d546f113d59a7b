"""``xmedgpt analyze --slice 0,2-3 | all --reliability``: one answer per slice, each with its
reliability (tier, score, checks) at answer level and per finding, contradictions and guardrail warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main
from app.commands import analyze
from app.core.errors import XMedError
from app.synthetic.sample import write_ct_study
from inference.imaging import ImageSpec
from tests.app.assistant.test_ask import FIVE_STEPS, ScriptedEngine
from tests.app.models.test_registry import write_model_folder

SIZE = 64


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_ct_study(tmp_path_factory.mktemp("ct") / "study", n_slices=4, size=SIZE, seed=3, noise_hu=0)


@pytest.fixture
def model(monkeypatch, tmp_path) -> tuple[list[ScriptedEngine], Path]:
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    engines: list[ScriptedEngine] = []

    def fake_load(folder: Path, device: str, quantization: str):
        engines.append(ScriptedEngine(FIVE_STEPS, model_id=f"scripted:{folder.name}"))
        return engines[-1], ImageSpec(tile_size=56, max_tiles=6)

    monkeypatch.setattr(analyze, "load_engine", fake_load)
    write_model_folder(tmp_path / "model")
    return engines, tmp_path / "model"


def test_slices_are_numbered_from_1_as_the_viewer_and_the_report_number_them():
    """``--slice 17`` printed "slice 18/32" and ``eval --slices 17`` meant another image than ``analyze --slice 17``:
    every command now takes the viewer's image numbers, and the JSON keeps 0-based indices."""
    from app.dicom.slice_request import one_slice, slice_index, slice_numbers

    assert one_slice(None) and one_slice("3") and not one_slice("3,4") and not one_slice("all")
    assert slice_index("3", 10) == 2 and slice_index(None, 10) is None
    assert slice_numbers("3,7,2-4", 10) == [1, 2, 3, 6] and slice_numbers(" all ", 4) == [0, 1, 2, 3]
    assert slice_numbers("10", 10) == [9]
    with pytest.raises(XMedError, match=r"--slice 8-12: this series has images 1 to 10"):
        slice_numbers("8-12", 10)
    with pytest.raises(XMedError, match=r"this series has images 1 to 10"):
        slice_index("0", 10)
    with pytest.raises(XMedError, match="backwards"):
        slice_numbers("5-3", 10)
    with pytest.raises(XMedError, match="expected image numbers from 1"):
        slice_numbers("3,x", 10)


def _check_shape(check: dict) -> None:
    assert set(check) == {"name", "passed", "detail"} and check["passed"] in (True, False, None)


def test_a_list_and_range_of_slices_with_reliability(study, model, tmp_path, capsys):
    engines, folder = model
    out = tmp_path / "slices.json"
    code = main(["analyze", str(study), "--slice", "1,3-4", "--reliability", "--reliability-samples", "3",
                 "--reliability-questions", "2", "--model", str(folder), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["source"]["frames"] == [0, 2, 3] and data["source"]["slices"] == 4
    assert [a["frame"] for a in data["slices"]] == [0, 2, 3]  # 0-based slice index: image number - 1
    for answer in data["slices"]:
        assert answer["source"]["slice"] == answer["frame"]
        assert answer["guardrail_warnings"] == []
        assert isinstance(answer["contradictions"], list)
        rel = answer["reliability"]
        assert rel["tier"] in ("green", "amber", "red", "none") and "score" in rel
        for check in rel["checks"]:
            _check_shape(check)
        assert [c["name"] for c in rel["checks"]][0] == "steps"
        lesion = next(f for f in answer["findings"] if f["phrase"] == "hypodense lesion")
        assert set(lesion["box_pixels"]) == {"x0", "y0", "x1", "y1"}
        frel = lesion["reliability"]
        assert frel["tier"] in ("green", "amber", "red", "none")
        names = [c["name"] for c in frel["checks"]]
        assert names[0] == "box_consistency" and "in_body" in names
        for check in frel["checks"]:
            _check_shape(check)
        assert len(frel["questions"]) >= 1 and all(len(q["answers"]) == 3 for q in frel["questions"])
    # one engine, every slice asked and each answer checked (one batched sample call per answer)
    (engine,) = engines
    assert len(engine.requests) == 3
    printed = capsys.readouterr().out
    assert "image 3/4:" in printed and "reliability" in printed and "images 1,3-4 of 1-4" in printed


def test_all_slices(study, model, tmp_path, capsys):
    _, folder = model
    out = tmp_path / "all.json"
    assert main(["analyze", str(study), "--slice", "all", "--model", str(folder), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [a["frame"] for a in data["slices"]] == [0, 1, 2, 3]
    assert all(a["reliability"] is None and "contradictions" in a for a in data["slices"])
    assert all(f["reliability"] is None for a in data["slices"] for f in a["findings"])


def test_one_slice_keeps_todays_shape_and_gains_reliability(study, model, tmp_path, capsys):
    _, folder = model
    out = tmp_path / "one.json"
    assert main(["analyze", str(study), "--slice", "3", "--reliability", "--reliability-samples", "2",
                 "--model", str(folder), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert "slices" not in data  # today's single answer, not a list
    assert data["frame"] == 2 and data["source"]["slice"] == 2
    assert data["reliability"]["tier"] in ("green", "amber", "red", "none")
    assert all("reliability" in f for f in data["findings"])


def test_bad_slice_lists_are_refused_before_the_model_runs(study, model, tmp_path, capsys):
    engines, folder = model
    assert main(["analyze", str(study), "--slice", "1-9", "--model", str(folder), "--json", str(tmp_path / "x.json")]) == 1
    assert "--slice 1-9: this series has images 1 to 4" in capsys.readouterr().err
    assert main(["analyze", str(study), "--slice", "0", "--model", str(folder), "--json", str(tmp_path / "x.json")]) == 1
    assert "this series has images 1 to 4" in capsys.readouterr().err
    assert main(["analyze", str(study), "--slice", "1,2", "--model", str(folder), "--sr", str(tmp_path / "x.dcm")]) == 1
    assert "one slice" in capsys.readouterr().err
    assert engines == [] and not (tmp_path / "x.json").exists()
