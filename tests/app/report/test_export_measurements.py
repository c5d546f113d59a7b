"""The reader's measurements in the signed report's SR (issue #17, item 4): TID 1500 measurement groups with
lengths in mm, angles and Cobb angles in degrees, ROI mean / SD / area, each with its image (SOP instance and
frame); the documents pass dciodvfy and read back with highdicom with the values we wrote."""

from __future__ import annotations

import pydicom
import pytest

from app.report.audit import AuditLog
from app.report.draft import DraftReport, ReportBox, StudyContext
from app.report.export.sr import export_sr, exportable_measurements, read_sources
from app.report.session import ReportSession
from app.report.workspace import Workspace
from app.synthetic.sample import write_ct_study
from app.viewer.measure import evaluate
from app.viewer.measure_store import MeasurementStore, SavedMeasurement, new_uid
from inference.types import Box
from tests.app.report.test_export_sr import assert_valid, roi_groups

SPACING = (0.5, 0.8)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, pydicom.Dataset]:
    folder = write_ct_study(tmp_path_factory.mktemp("ct-measure"), n_slices=4, size=64, seed=5, noise_hu=0)
    return read_sources(sorted(folder.glob("*.dcm")))


def saved(kind: str, points, sop: str, series: str, frame: int = 0, spacing=SPACING, frame_number: int = 1):
    values = None
    if kind in ("rect", "ellipse"):
        import numpy as np

        values = np.full((64, 64), 35.0, dtype=np.float32)
        values[::2] = 45.0  # mean 40, SD 5 (rows alternate)
    ev = evaluate(kind, points, spacing, values, "HU")
    return SavedMeasurement(kind, series, frame, tuple(points), ev.values, ev.unit, ev.value_unit, sop,
                            frame_number, new_uid())


def measurements_for(study):
    uids = list(study)
    series = str(study[uids[0]].SeriesInstanceUID)
    sp = tuple(float(v) for v in study[uids[0]].PixelSpacing)
    return [
        saved("length", [(10, 20), (30, 40)], uids[0], series, 0, sp),
        saved("angle", [(40, 10), (20, 10), (40, 30)], uids[1], series, 1, sp),
        saved("cobb", [(5, 5), (25, 5), (5, 30), (25, 50)], uids[2], series, 2, sp),
        saved("rect", [(8, 8), (24, 20)], uids[3], series, 3, sp),
        saved("ellipse", [(30, 30), (50, 44)], uids[3], series, 3, sp),
    ]


def report_of(study) -> DraftReport:
    first = next(iter(study.values()))
    r = DraftReport(study=StudyContext(str(first.StudyInstanceUID), modality="CT"))
    uid = list(study)[1]
    r.add_finding("Reader: small nodule.", [ReportBox(Box(10, 12, 20, 25), 1, uid, str(first.SeriesInstanceUID))])
    return r


def by_identifier(groups) -> dict[str, object]:
    return {str(g.tracking_identifier): g for g in groups}


def test_measurements_export_as_tid1500_groups_that_validate_and_read_back(study, tmp_path, output_dir):
    ms = measurements_for(study)
    report = report_of(study)
    report.sign("Smith^Jane")
    files = export_sr(report, study, tmp_path, reader_name="Smith^Jane", measurements=ms)
    for p in files.paths:
        assert_valid(p)
    pydicom.dcmread(files.measurement).save_as(output_dir / "sr-measurements-angles-rois.dcm",
                                               enforce_file_format=True)
    _, groups = roi_groups(files.measurement)
    assert len(groups) == 1 + len(ms)  # the finding's box, then each measurement
    for m, g in zip(ms, groups[1:], strict=True):
        assert str(g.tracking_uid) == m.uid
        values = {x.name.meaning: (x.value, x.unit.value) for x in g.get_measurements()}
        region = g.roi
        src_ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert src_ref.ReferencedSOPInstanceUID == m.sop_instance_uid
        for x in g.get_measurements():  # every measurement names its image
            (img,) = x.referenced_images
            assert img.referenced_sop_instance_uid == m.sop_instance_uid
        if m.kind == "length":
            assert values == {"Length": (pytest.approx(round(m.values["length"], 3)), "mm")}
            assert region.GraphicType == "POLYLINE" and len(region.GraphicData) == 4
        elif m.kind == "angle":
            assert values == {"Angle": (pytest.approx(round(m.values["angle"], 3)), "deg")}
            assert region.GraphicType == "POLYLINE" and list(region.GraphicData) == [40, 10, 20, 10, 40, 30]
        elif m.kind == "cobb":
            assert values == {"Cobb angle": (pytest.approx(round(m.values["angle"], 3)), "deg")}
            assert len(region.GraphicData) == 8
        else:
            assert values["Mean"] == (pytest.approx(round(m.values["mean"], 3)), "[hnsf'U]")
            assert values["Standard Deviation"] == (pytest.approx(round(m.values["sd"], 3)), "[hnsf'U]")
            assert values["Area"] == (pytest.approx(round(m.values["area"], 3)), "mm2")
            assert region.GraphicType == ("POLYLINE" if m.kind == "rect" else "ELLIPSE")
    # the numbers themselves, worked out from the points and the study's pixel spacing
    row_sp, col_sp = (float(v) for v in next(iter(study.values())).PixelSpacing)
    length = next(g for g in groups if str(g.tracking_uid) == ms[0].uid)
    (x,) = length.get_measurements()
    assert x.value == pytest.approx(((20 * col_sp) ** 2 + (20 * row_sp) ** 2) ** 0.5, abs=1e-3)
    ang = next(g for g in groups if str(g.tracking_uid) == ms[1].uid)
    assert ang.get_measurements()[0].value == pytest.approx(45.0, abs=1e-3)
    rect = next(g for g in groups if str(g.tracking_uid) == ms[3].uid)
    vals = {v.name.meaning: v.value for v in rect.get_measurements()}
    assert vals["Mean"] == pytest.approx(40.0, abs=0.5) and vals["Area"] == pytest.approx(16 * 12 * row_sp * col_sp,
                                                                                      abs=1e-3)


def test_the_session_exports_what_the_workspace_saved(study, tmp_path):
    ms = measurements_for(study)
    report = report_of(study)
    session = ReportSession(Workspace(tmp_path / "ws"), AuditLog(tmp_path / "audit.jsonl", user="Smith^Jane"),
                            reader_name="Smith^Jane", snapshot_seconds=0.0)
    first = next(iter(study.values()))
    other = SavedMeasurement("length", "9.9", 0, ((0, 0), (5, 5)), {"length": 3.0}, "mm", "", "9.9.9.9", 1, new_uid())
    MeasurementStore(tmp_path / "ws").save(str(first.StudyInstanceUID), [*ms, other])
    session._attach(report)
    report.sign("Smith^Jane")
    done = session.export(study, tmp_path / "out")
    assert_valid(done.sr.measurement)
    _, groups = roi_groups(done.sr.measurement)
    assert {str(g.tracking_uid) for g in groups[1:]} == {m.uid for m in ms}
    assert done.notes == ["Not in the SR: a length on an image not given for export."]


def test_measurements_alone_make_a_measurement_report(study, tmp_path):
    first = next(iter(study.values()))
    report = DraftReport(study=StudyContext(str(first.StudyInstanceUID), modality="CT"))
    files = export_sr(report, study, tmp_path, reader_name="Smith^Jane", measurements=measurements_for(study)[:2])
    assert files.measurement is not None
    assert_valid(files.measurement)
    _, groups = roi_groups(files.measurement)
    assert [g.get_measurements()[0].name.meaning for g in groups] == ["Length", "Angle"]


def test_measurements_the_sr_cannot_carry_are_named(study):
    uid = next(iter(study))
    px = saved("length", [(0, 0), (3, 4)], uid, "1", spacing=None)
    flat = saved("angle", [(1, 1), (1, 1), (4, 2)], uid, "1")
    kept, left = exportable_measurements([px, flat], study)
    assert kept == [] and left == ["a length without pixel spacing (pixels, not mm)", "an angle with an arm of no length"]
