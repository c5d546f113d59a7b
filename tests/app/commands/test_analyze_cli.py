"""``xmedgpt analyze``: a DICOM folder in, a JSON answer out, coordinates checked
against the DICOM header read independently with pydicom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from app.cli import main
from app.commands import analyze
from app.synthetic.sample import write_ct_study
from inference.imaging import ImageSpec
from tests.app.assistant.test_ask import FIVE_STEPS, ScriptedEngine
from tests.app.models.test_registry import write_model_folder

SIZE = 64


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_ct_study(tmp_path_factory.mktemp("ct") / "study", n_slices=4, size=SIZE, seed=3, noise_hu=0)


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """The command's engine replaced by a scripted one; settings isolated in tmp_path."""
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    engines: list[ScriptedEngine] = []

    def fake_load(folder: Path, device: str, quantization: str):
        engines.append(ScriptedEngine(answer_text[0], model_id=f"scripted:{folder.name}"))
        return engines[-1], ImageSpec(tile_size=56, max_tiles=6)

    answer_text = [FIVE_STEPS]
    monkeypatch.setattr(analyze, "load_engine", fake_load)
    write_model_folder(tmp_path / "model")
    return engines, answer_text, tmp_path / "model"


def test_writes_steps_findings_in_three_coordinate_systems_model_and_timing(study, scripted, tmp_path, capsys):
    engines, _, model = scripted
    out = tmp_path / "answer.json"
    code = main(["analyze", str(study), "--slice", "3", "--question", "Any liver lesion?",
                 "--model", str(model), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["model"]["id"] == "scripted:model"
    assert [s["title"] for s in data["steps"]][:2] == ["Structure identification", "Region localization"]
    assert data["source"]["slice"] == 2 and data["source"]["slices"] == 4
    assert data["timing"]["total_s"] > 0 and data["timing"]["first_token_s"] is not None
    lesion = next(f for f in data["findings"] if f["phrase"] == "hypodense lesion")
    assert lesion["box_normalized"] == {"x0": 600, "y0": 250, "x1": 700, "y1": 500}
    assert lesion["box_pixels"] == pytest.approx({"x0": 38.4, "y0": 16.0, "x1": 44.8, "y1": 32.0})
    assert lesion["model_id"] == "scripted:model"
    # patient mm from the header of the file that holds that slice
    mm = lesion["box_patient_mm"]
    z = mm["corners"][0][2]
    files = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(study.glob("*.dcm"))]
    (ds,) = [d for d in files if abs(float(d.ImagePositionPatient[2]) - z) < 1e-3]
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    row_sp, col_sp = (float(v) for v in ds.PixelSpacing)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    expected_tl = ipp + (38.4 - 0.5) * col_sp * iop[:3] + (16.0 - 0.5) * row_sp * iop[3:]
    np.testing.assert_allclose(mm["corners"][0], expected_tl, atol=1e-3)
    assert mm["width_mm"] == pytest.approx(6.4 * col_sp, abs=1e-3)
    # the engine saw the slice at the model's resolution
    (req,) = engines[0].requests
    assert req.image.shape[0] % 56 == 0 and req.image.shape[1] % 56 == 0
    assert "wrote" in capsys.readouterr().out


def test_mismatched_question_warns_on_screen_and_in_the_file(study, scripted, tmp_path, capsys):
    _, answer_text, model = scripted
    answer_text[0] = "The left knee is absent from this image."
    out = tmp_path / "a.json"
    assert main(["analyze", str(study), "--question", "Locate the left knee", "--model", str(model),
                 "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["task"] == "locate"
    assert data["guardrail_warnings"] == ["The question asks about the left knee but this series is a CHEST CT."]
    assert data["findings"] == []
    assert "warning: The question asks about the left knee" in capsys.readouterr().out


def test_without_a_model_it_says_what_to_do(study, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(analyze, "DEMO_MODEL_DIR", tmp_path / "no-demo")
    assert main(["analyze", str(study), "--json", str(tmp_path / "x.json")]) == 1
    assert "No model configured: pass --model DIR" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_slice_outside_the_series_is_refused(study, scripted, tmp_path, capsys):
    _, _, model = scripted
    assert main(["analyze", str(study), "--slice", "9", "--model", str(model), "--json", str(tmp_path / "x.json")]) == 1
    assert "--slice 9: this series has images 1 to 4" in capsys.readouterr().err



def test_locate_without_a_target_is_one_line_not_a_traceback(study, scripted, tmp_path, capsys):
    _, _, model = scripted
    assert main(["analyze", str(study), "--task", "locate", "--model", str(model),
                 "--json", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert "--task locate needs --question naming what to find" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_with_the_real_tiny_model(study, tmp_path, monkeypatch):
    from training.model_factory import build_tiny_model

    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    model = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "tiny.json"
    assert main(["analyze", str(study), "--model", str(model), "--device", "cpu", "--quantization", "none",
                 "--max-new-tokens", "16", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"]["id"] == "tiny InternVL (random)"
    assert data["image"]["model_width"] % 56 == 0 and data["image"]["columns"] == SIZE
    assert data["timing"]["pieces"] >= 1
    assert data["source"]["model_folder"] == str(model)
