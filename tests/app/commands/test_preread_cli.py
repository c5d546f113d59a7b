"""``xmedgpt preread``: a generated study in, the lesion JSON and a TID 1500 SR out (dciodvfy-clean,
read back with highdicom); ``xmedgpt eval-volume`` on the same study with the same scripted engine."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes

from app.cli import main
from app.commands import eval_volume
from app.commands import preread as preread_cmd
from app.dicom.loader import load_series
from app.dicom.scan import scan
from app.synthetic.sample import load_ground_truth, write_ct_study
from tests.app.assistant.test_preread import SPEC, TruthEngine
from tests.app.models.test_registry import write_model_folder
from tests.app.report.test_export_sr import assert_valid


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_ct_study(tmp_path_factory.mktemp("preread-cli") / "ct", n_slices=40, size=128, seed=9090)


@pytest.fixture
def scripted(monkeypatch, tmp_path, study):
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    volume = load_series(scan([study]).all_series()[0])
    truth = load_ground_truth(study)

    def fake_load(folder: Path, device: str, quantization: str):
        return TruthEngine(volume, truth), SPEC

    monkeypatch.setattr(preread_cmd, "load_engine", fake_load)
    monkeypatch.setattr(eval_volume, "load_engine", fake_load)
    write_model_folder(tmp_path / "model")
    return tmp_path / "model", truth


def test_writes_the_lesion_json_and_a_valid_sr(study, scripted, tmp_path, capsys):
    model, truth = scripted
    out, sr = tmp_path / "preread.json", tmp_path / "preread.dcm"
    code = main(["preread", str(study), "--model", str(model), "--json", str(out), "--sr", str(sr),
                 "--max-lesions", "4", "--reliability-samples", "2", "--reliability-questions", "1"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["series_uid"] == scan([study]).all_series()[0].uid
    assert doc["model"]["id"] == "truth-engine"
    assert set(doc["timing"]) >= {"sweep_s", "link_s", "reasoning_s", "total_s"}
    assert set(doc["windows"]) >= {"counts", "slices"} and len(doc["windows"]["slices"]) == 40
    lesions = doc["lesions"]
    assert len(lesions) == 4
    for les in lesions:
        assert set(les) >= {"id", "slices", "key_slice", "box_pixels", "boxes", "center_patient_mm", "diameter_mm",
                            "volume_ml", "location", "description", "reliability"}
        first, last = les["slices"]
        assert first <= les["key_slice"] <= last and les["boxes"][str(les["key_slice"])] == les["box_pixels"]
        assert set(les["box_pixels"]) == {"x0", "y0", "x1", "y1"} and len(les["center_patient_mm"]) == 3
        assert set(les["reliability"]) >= {"tier", "score", "checks"}
    # each reported lesion is one of the study's lesions (the engine answers with the ground truth)
    centres = [t["center_patient_mm"] for t in truth["lesions"]]
    for les in lesions:
        assert min(sum((a - b) ** 2 for a, b in zip(les["center_patient_mm"], c)) ** 0.5 for c in centres) < 8
    # the SR: dciodvfy clean, one volumetric group per lesion with its box on every slice of its range
    assert_valid(sr)
    doc_sr = hd.sr.srread(sr)
    assert doc_sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and doc_sr.CompletionFlag == "PARTIAL"
    groups = doc_sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(lesions)
    files = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: int(p.stem[2:]) - 1
             for p in study.glob("CT*.dcm")}
    for g, les in zip(groups, lesions):
        assert f"Lesion {les['id']}" in str(g.tracking_identifier)
        regions = g.roi
        slices = sorted(files[r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
                        for r in regions)
        assert slices == sorted(int(k) for k in les["boxes"])
        (diam,) = g.get_measurements(name=codes.SCT.LongAxis)
        assert diam.value == pytest.approx(les["diameter_mm"], abs=0.01) and diam.unit.value == "mm"
        (vol,) = g.get_measurements(name=codes.SCT.Volume)
        assert vol.value == pytest.approx(les["volume_ml"], abs=0.001) and vol.unit.value == "mL"
    printed = capsys.readouterr().out
    assert "lesion(s)" in printed and "The AI can miss lesions: read every slice." in printed
    # the audit trail: the request and the output, one box per lesion on its key slice (as the viewer records it)
    from app.core.settings import Settings
    from app.report.audit import read_records

    records = [r for _n, r, _e in read_records(Settings.load().audit_log_path()) if r is not None]
    (request,) = [r for r in records if r.action == "ai.request" and r.data.get("source") == "xmedgpt preread"]
    (output,) = [r for r in records if r.action == "ai.output" and r.data.get("source") == "xmedgpt preread"]
    assert request.data["image"] == {"series_uid": doc["series_uid"], "slices": 40}
    assert output.data["model_id"] == "truth-engine" and json.loads(output.data["text"]) == lesions
    sops = {int(p.stem[2:]) - 1: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
            for p in study.glob("CT*.dcm")}
    assert [(b["lesion"], b["frame"], b["sop_instance_uid"]) for b in output.data["boxes"]] == \
        [(les["id"], les["key_slice"], sops[les["key_slice"]]) for les in lesions]


def test_eval_volume_reports_froc_and_time_per_volume(study, scripted, tmp_path, capsys):
    model, truth = scripted
    out = tmp_path / "froc.json"
    assert main(["eval-volume", "--data", str(study), "--model", str(model), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["froc"]["lesions"] == len(truth["lesions"])
    assert doc["froc"]["sensitivity"]["2"] == 1.0 and doc["froc"]["cpm"] == 1.0
    assert set(doc["by_size"]) == {"small", "medium", "large"}
    assert doc["timing"]["per_volume_s"] > 0 and doc["volumes"][0]["slices"] == 40
    printed = capsys.readouterr().out
    assert "CPM" in printed and "time per volume" in printed


def test_eval_volume_fits_an_operating_point_into_the_model_folder_and_measures_it_after(study, scripted, tmp_path,
                                                                                          monkeypatch, capsys):
    """--fit-operating-point FP writes the lowest candidate score with at most FP false positives per volume into the
    model folder; eval-volume then measures the model there too, and the pre-read lists only what reaches it."""
    from app.assistant.preread import OPERATING_POINT_FILE

    model, truth = scripted
    volume = load_series(scan([study]).all_series()[0])
    monkeypatch.setattr(eval_volume, "load_engine",
                        lambda folder, device, quantization: (TruthEngine(volume, truth, extra_slice=12), SPEC))
    fitted = tmp_path / "fit.json"
    assert main(["eval-volume", "--data", str(study), "--model", str(model), "--json", str(fitted),
                 "--fit-operating-point", "0"]) == 0
    printed = capsys.readouterr().out
    assert "operating point fitted at 0 FP/volume" in printed and "written to" in printed
    point = json.loads((model / OPERATING_POINT_FILE).read_text())
    assert point["fp_per_volume"] == 0 and point["measured"]["false_positives"] == 0 and point["min_score"] > 0
    assert point["fitted_on"] == str(study)
    assert json.loads(fitted.read_text())["froc"]["false_positives"] == 1  # the FROC still counts every candidate
    out = tmp_path / "again.json"
    assert main(["eval-volume", "--data", str(study), "--model", str(model), "--json", str(out)]) == 0
    assert "at the model's operating point (score >= " in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["operating_point"]["false_positives"] == 0 and doc["operating_point"]["min_score"] == point["min_score"]
    assert doc["operating_point"]["sensitivity"] == point["measured"]["sensitivity"]
    assert main(["eval-volume", "--data", str(study), "--model", str(model), "--out", str(tmp_path / "x.json")]) == 1
    assert "give --fit-operating-point" in capsys.readouterr().err


def test_a_min_score_outside_0_to_1_is_refused(study, scripted, tmp_path, capsys):
    model, _ = scripted
    code = main(["preread", str(study), "--model", str(model), "--json", str(tmp_path / "p.json"), "--min-score", "2"])
    assert code == 1 and "--min-score must be a score from 0 to 1" in capsys.readouterr().err


def test_nothing_to_write_is_an_error(study, scripted, capsys):
    model, _ = scripted
    assert main(["preread", str(study), "--model", str(model)]) != 0
