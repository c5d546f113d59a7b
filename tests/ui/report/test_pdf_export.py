"""PDF export: a real PDF with header, findings, impression, key images and boxes, checked as text and as pixels."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PySide6.QtGui import QImage

from app.dicom.display import to_uint8, window_to_unit
from app.dicom.model import Window
from app.report.draft import (
    DraftReport,
    FindingReliability,
    Origin,
    Provenance,
    ReportBox,
    StudyContext,
)
from app.synthetic.sample import write_ct_study
from inference.reliability.scoring import Tier
from inference.types import Box
from ui.report.pdf_export import write_pdf

pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler-utils (make system-deps)")


def lung_view(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return to_uint8(window_to_unit(hu, Window(1500, -600)))


def test_pdf_has_everything_and_renders(tmp_path, output_dir):
    folder = write_ct_study(tmp_path / "ct", n_slices=6, size=128, seed=1, noise_hu=0)
    files = sorted(folder.glob("CT*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study = StudyContext(str(first.StudyInstanceUID), patient_name=str(first.PatientName),
                         patient_id=str(first.PatientID), modality="CT", study_date=str(first.StudyDate),
                         accession_number="ACC-7", study_description="Chest")
    r = DraftReport(study=study, provenance=Provenance("xmedgpt-demo", "0.1", "ab" * 32))
    uid = lambda k: str(pydicom.dcmread(files[k], stop_before_pixels=True).SOPInstanceUID)  # noqa: E731
    a = r.add_finding("Solid nodule in the right upper lobe, 6 mm.", [ReportBox(Box(30, 30, 60, 60), 1, uid(1), "s")],
                      origin=Origin.AI, reliability=FindingReliability(0.85, Tier.GREEN))
    b = r.add_finding("Pleural effusion.", [ReportBox(Box(70, 70, 100, 100), 2, uid(2), "s")], origin=Origin.AI,
                      reliability=FindingReliability(0.2, Tier.RED))
    c = r.add_finding("Ground-glass opacity left upper lobe.", [ReportBox(Box(80, 20, 110, 50), 3, uid(3), "s")],
                      origin=Origin.AI, reliability=FindingReliability(0.5, Tier.AMBER))
    r.accept(a.id)
    r.reject(b.id)
    r.edit_text(c.id, "Ground-glass nodule in the left upper lobe, 14 mm.")
    r.set_impression("Two pulmonary nodules; CT follow-up in 3 months.")
    images = {k: lung_view(files[k]) for k in range(6)}

    draft_pdf = write_pdf(r, output_dir / "report-draft.pdf", images)
    r.sign("Smith^Jane")
    pdf = write_pdf(r, output_dir / "report-signed.pdf", images)
    assert pdf.read_bytes().startswith(b"%PDF")

    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              timeout=60, check=True).stdout
        assert "CT Report" in text and "ACC-7" in text
        assert "Solid nodule in the right upper lobe" in text and "Pleural effusion" not in text
        assert "Two pulmonary nodules" in text and "Signed by Jane Smith" in text
        assert "Key images" in text and "weights abababababab" in text
        assert "Slice 2" in text and "Slice 4" in text and "Slice 3" not in text  # rejected finding's image left out
        draft_text = subprocess.run(["pdftotext", str(draft_pdf), "-"], capture_output=True, text=True,
                                    timeout=60, check=True).stdout
        assert "DRAFT" in draft_text

    prefix = output_dir / "report-signed"
    subprocess.run(["pdftoppm", "-r", "80", "-png", "-f", "1", "-l", "1", str(pdf), str(prefix)], check=True, timeout=60)
    png = next(output_dir.glob("report-signed-*1.png"))
    img = QImage(str(png)).convertToFormat(QImage.Format.Format_RGB888)
    assert img.width() > 500 and img.height() > 700
    px = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, : img.width() * 3]
    px = px.reshape(img.height(), img.width(), 3).astype(int)
    dark = (px.sum(axis=2) < 200).mean()
    magenta = ((px[..., 0] > 200) & (px[..., 1] < 160) & (px[..., 2] > 170)).sum()  # finding 1's box
    cyan = ((px[..., 0] < 80) & (px[..., 1] > 150) & (px[..., 2] > 200)).sum()  # kept finding 2's box
    assert dark > 0.02  # text and the dark lung images are there
    assert magenta > 20 and cyan > 20


def test_each_key_image_is_shown_in_the_window_its_finding_was_found_in(tmp_path, output_dir):
    """Issue #20.13: the liver lesion found in the liver window is shown in it, the lung mass in the lung
    window, whatever window the reader is in when exporting; sections and addenda are in the PDF."""
    from app.dicom.display import render
    from app.dicom.presets import find_preset
    from app.report.session import study_context
    from tests.app.report.test_session import load_sample

    result, series, volume = load_sample()
    lung, liver = find_preset("lung"), find_preset("liver")
    ref = lambda k: (series.instances[k].sop_instance_uid, series.series_instance_uid or series.uid)  # noqa: E731
    r = DraftReport(study=study_context(result, series), provenance=Provenance("xmedgpt-demo", "0.1"))
    mass = r.add_finding("Spiculated mass, right lower lobe.", [ReportBox(Box(149, 319, 191, 357), 17, *ref(17))],
                         window=lung)
    cyst = r.add_finding("Hypodense lesion, right hepatic lobe.", [ReportBox(Box(150, 250, 200, 300), 26, *ref(26))],
                         window=liver)
    r.set_section("indication", "Weight loss.")
    r.set_section("technique", "CT chest and upper abdomen, portal venous phase.")
    r.set_section("comparison", "None.")
    r.sign("Smith^Jane")
    pending = r.add_addendum("Liver lesion is a cyst on ultrasound.", "Smith^Jane")
    r.sign_addendum(pending.id, "Smith^Jane")
    calls = []

    def renderer(k, window):
        calls.append((k, window))
        return render(volume, k, window or lung, False)

    pdf = write_pdf(r, output_dir / "report-key-image-windows.pdf", renderer)
    assert sorted(calls) == [(17, lung), (26, liver)]
    assert [f.window for f in r.findings] == [mass.window, cyst.window] == [lung, liver]
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                              timeout=60, check=True).stdout
        flat = " ".join(text.split())
        assert "Slice 18 · Lung window (W 1500 / L -600)" in flat
        assert "Slice 27 · Liver window (W 150 / L 90)" in flat
        assert flat.index("Indication Weight loss.") < flat.index("Technique CT chest") < flat.index("Comparison None.")
        assert "Addendum 1 Liver lesion is a cyst on ultrasound." in flat and "Addendum signed by Jane Smith" in flat
        assert "CT CT" not in flat
    prefix = output_dir / "report-key-image-windows"
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(prefix)], check=True, timeout=60)
    assert list(output_dir.glob("report-key-image-windows-*.png"))
