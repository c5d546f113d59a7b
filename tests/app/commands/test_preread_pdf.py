"""``xmedgpt preread --pdf``: a Qt-free PDF with a summary page and one page per lesion (its text, its key
image with the box), written headless; and the writer on its own (wrapping, no lesion, characters
outside WinAnsi)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.commands import preread as preread_cmd
from app.dicom.loader import load_series
from app.dicom.scan import scan
from app.report.export.preread_pdf import (
    images_text,
    text_width,
    wrap,
    write_preread_pdf,
)
from app.synthetic.sample import load_ground_truth, write_ct_study
from tests.app.assistant.test_preread import SPEC, TruthEngine
from tests.app.models.test_registry import write_model_folder


def pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b(?!s)", data))


def pdf_text(path: Path) -> str:
    """The PDF's text: pdftotext where poppler is installed, else the (Flate) content streams' strings."""
    if shutil.which("pdftotext"):
        return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                              text=True).stdout
    data = path.read_bytes()
    out = []
    for m in re.finditer(rb"/Filter /FlateDecode >>\nstream\n(.*?)\nendstream", data, re.DOTALL):
        out += [s.decode("cp1252") for s in re.findall(rb"\((.*?)\) Tj", zlib.decompress(m.group(1)))]
    return "\n".join(out)


def image_count(data: bytes) -> int:
    return len(re.findall(rb"/Subtype /Image", data))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_ct_study(tmp_path_factory.mktemp("preread-pdf") / "ct", n_slices=40, size=128, seed=9090)


@pytest.fixture
def scripted(monkeypatch, tmp_path, study):
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    volume = load_series(scan([study]).all_series()[0])

    def fake_load(folder: Path, device: str, quantization: str):
        return TruthEngine(volume, load_ground_truth(study)), SPEC

    monkeypatch.setattr(preread_cmd, "load_engine", fake_load)
    write_model_folder(tmp_path / "model")
    return tmp_path / "model"


def test_pdf_has_a_summary_and_a_page_per_lesion_with_its_text_and_key_image(study, scripted, tmp_path, capsys):
    out, pdf = tmp_path / "preread.json", tmp_path / "out" / "preread.pdf"
    code = main(["preread", str(study), "--model", str(scripted), "--json", str(out), "--pdf", str(pdf),
                 "--max-lesions", "3", "--reliability-samples", "2", "--reliability-questions", "1"])
    assert code == 0, capsys.readouterr().err
    assert str(pdf) in capsys.readouterr().out
    lesions = json.loads(out.read_text())["lesions"]
    assert len(lesions) == 3
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-1.") and data.rstrip().endswith(b"%%EOF")
    assert pdf.stat().st_mode & 0o077 == 0  # patient data: owner-only, as the report's exports
    assert pdf_pages(data) == 1 + len(lesions)  # the summary, then one page per lesion
    assert image_count(data) == 2 * len(lesions)  # the key slice and the zoom on its box
    text = pdf_text(pdf)
    assert "Series pre-read" in text and "not a report" in text
    for les in lesions:
        assert les["id"] in text
        assert les["location"][:1].upper() + les["location"][1:] in text
        assert f"{les['diameter_mm']:.1f}" in text  # the table and the lesion page
        assert images_text(les) in text  # 1-based images in the table
        assert f"Reliability: {les['reliability']['tier']}" in text
        assert "A round solid nodule with smooth margins." in text  # the description
        assert f"Image {les['key_slice'] + 1}" in text  # the key image's caption


def test_pdf_alone_is_enough_to_write(study, scripted, tmp_path):
    pdf = tmp_path / "only.pdf"
    assert main(["preread", str(study), "--model", str(scripted), "--pdf", str(pdf), "--no-reasoning",
                 "--max-lesions", "2"]) == 0
    text = pdf_text(pdf)
    assert pdf_pages(pdf.read_bytes()) == 3 and "not assessed" in text
    assert "No description" in text  # no stage 3: the page says so instead of inventing one


def test_the_command_stays_headless(study, scripted, tmp_path):
    """``app`` may not import Qt: the preread command and its PDF writer load without PySide6."""
    code = ("import sys; import app.commands.preread, app.report.export.preread_pdf; "
            "assert not any(m.startswith(('PySide6', 'pyqtgraph')) for m in sys.modules), 'Qt was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])


def test_writer_without_lesions_and_with_odd_characters(tmp_path):
    doc = {"series_uid": "1.2.3", "model": {"id": "demo", "engine": "demo · CPU"}, "lesions": [],
           "timing": {"total_s": 1.0, "sweep_s": 0.5, "reasoning_s": 0.0, "slices": 3, "requests": 3}}
    pdf = write_preread_pdf(tmp_path / "none.pdf", doc, header={"Patient": "Zoë Ünal (ID 7)"})
    assert pdf_pages(pdf.read_bytes()) == 1
    text = pdf_text(pdf)
    assert "The AI found no lesion" in text and "not a negative read" in text and "Zoë Ünal" in text
    lesion = {"id": "P1", "slices": [4, 4], "key_slice": 4, "box_pixels": {"x0": 10, "y0": 12, "x1": 30, "y1": 28},
              "diameter_mm": 8.04, "location": "left lung", "window": "lung",
              "description": "Nodule ≥ 8 mm (" + "very " * 200 + "long) with a \\ backslash.",
              "reliability": {"tier": "amber", "score": 0.5, "checks": [{"name": "box", "passed": False,
                                                                          "detail": "moved → 3 px"}]}}
    frame = np.zeros((64, 48), np.uint8)
    pdf = write_preread_pdf(tmp_path / "one.pdf", {**doc, "lesions": [lesion]}, lambda les: frame)
    data = pdf.read_bytes()
    assert pdf_pages(data) >= 2 and image_count(data) == 2
    text = pdf_text(pdf)
    assert "P1" in text and "Nodule >= 8 mm" in text and "backslash" in text and "amber (0.50)" in text
    assert "Images: 5 (1 image" in text and images_text(lesion) == "5"


def test_wrap_keeps_lines_inside_the_width():
    text = "The quick brown fox jumps over the lazy dog " * 20 + "x" * 400
    for line in wrap(text, 200, 10):
        assert text_width(line, 10) <= 200
    assert "".join(wrap("a" * 50, 30, 10)) == "a" * 50
