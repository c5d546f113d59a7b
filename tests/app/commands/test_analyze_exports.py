"""``xmedgpt analyze … --sr OUT.dcm --pdf OUT.pdf``: the answer about the bundled sample as a
draft SR pair (valid per dciodvfy, boxes and references read back with highdicom) and a PDF,
with the AI request and output in the audit log."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from app.cli import main as headless_main
from app.commands import analyze
from app.core.paths import AppPaths
from app.report.audit import read_records, verify
from tests.app.assistant.test_ask import ScriptedEngine
from tests.app.models.test_registry import write_model_folder
from tests.app.report.test_session import (
    ANSWER,
    MASS_PX,
    SAMPLE,
    SLICE,
    SPEC,
    dciodvfy_errors,
)


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(analyze, "load_engine", lambda folder, device, q: (ScriptedEngine(ANSWER), SPEC))
    write_model_folder(tmp_path / "model")
    return tmp_path / "model"


def run_analyze(argv: list[str]) -> int:
    from ui.shell.cli import (
        main,  # the installed `xmedgpt` command: it supplies the PDF writer
    )

    return main(argv)


def test_sr_and_pdf_of_the_draft(scripted, tmp_path, output_dir, capsys):
    sr, pdf = tmp_path / "out" / "draft.dcm", output_dir / "analyze-draft.pdf"
    code = run_analyze(["analyze", str(SAMPLE), "--slice", str(SLICE + 1), "--window", "1500/-600",
                        "--question", "Any lung lesion?", "--model", str(scripted), "--sr", str(sr), "--pdf", str(pdf)])
    assert code == 0, capsys.readouterr().err
    narrative = sr.with_name("draft-report.dcm")
    assert f"wrote {sr}, {narrative}, {pdf}" in capsys.readouterr().out
    for p in (sr, narrative):
        assert dciodvfy_errors(p) == [], p
    ds = hd.sr.srread(sr)
    assert ds.CompletionFlag == "PARTIAL" and ds.VerificationFlag == "UNVERIFIED"
    groups = ds.content.get_planar_roi_measurement_groups()
    assert len(groups) == 3  # a draft keeps every AI finding not rejected
    assert groups[0].roi.value[0].tolist() == pytest.approx(MASS_PX[:2], abs=1e-3)
    assert groups[0].roi.value[2].tolist() == pytest.approx(MASS_PX[2:], abs=1e-3)
    source = pydicom.dcmread(sorted(SAMPLE.glob("*.dcm"))[SLICE], stop_before_pixels=True)
    ref = groups[0].roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert ref == source.SOPInstanceUID and ds.StudyInstanceUID == source.StudyInstanceUID
    text = pydicom.dcmread(narrative)
    assert text.SOPClassUID == pydicom.uid.EnhancedSRStorage and text.SeriesInstanceUID == ds.SeriesInstanceUID

    assert pdf.read_bytes().startswith(b"%PDF")
    if shutil.which("pdftoppm"):  # for a person to look at
        subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf), str(output_dir / "analyze-draft")],
                       check=True, timeout=60)
    if shutil.which("pdftotext"):
        body = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout
        # a draft lists the AI's proposals as such, says it is a draft and which model prepared it
        assert "1. A mass in the right lower lobe." in body and body.count("AI proposal, not yet reviewed") == 3
        assert "Draft – not signed." in body and "scripted-xmedgpt" in body

    log = AppPaths.detect().audit_log
    assert verify(log).ok
    actions = [r.action for _, r, _ in read_records(log)]
    assert actions[:3] == ["ai.request", "ai.output", "report.open"] and actions.count("report.export") == 3


def test_pdf_needs_the_qt_writer_and_some_output_is_required(scripted, tmp_path, capsys):
    args = ["analyze", str(SAMPLE), "--model", str(scripted)]
    assert headless_main([*args, "--pdf", str(tmp_path / "x.pdf")]) == 1  # app.cli alone has no Qt
    assert "installed `xmedgpt` command" in capsys.readouterr().err
    assert not (tmp_path / "x.pdf").exists()
    assert headless_main(args) == 1
    assert "--json OUT, --sr OUT.dcm and/or --pdf OUT.pdf" in capsys.readouterr().err


def test_sr_alone_without_qt(scripted, tmp_path, capsys):
    sr = tmp_path / "only.dcm"
    assert headless_main(["analyze", str(SAMPLE), "--slice", str(SLICE + 1), "--model", str(scripted),
                          "--sr", str(sr)]) == 0, capsys.readouterr().err
    assert dciodvfy_errors(sr) == [] and Path(sr.with_name("only-report.dcm")).exists()
