"""DICOM Structured Reports of a draft or signed report, written with highdicom.

Two documents per export, both in one new SR series of the source study:

- **Measurement report** (Comprehensive 3D SR, TID 1500): one planar ROI group
  (TID 1410) per box: a closed 5-point POLYLINE on the source image (geometric
  purpose "Bounded by"), the finding type, a tracking identifier (the box's UID
  and a readable id naming the report's finding: "Finding 1 (<id>) box 1"), for AI
  findings the algorithm (model name, version, weights hash), the reliability as
  "Certainty of Finding" in %, and, where the pixel spacing is known, the finding's
  diameters in mm (SNOMED "Long axis" and "Short axis": the longer and shorter side of
  its box, the lesion's extent along the image axes) and the area in mm². Every
  measurement carries the group's tracking identifier (so it belongs to the same
  finding as the group and its finding type) and the image it was made on.
  The reader's own measurements from the viewer (:mod:`app.viewer.measure_store`) follow,
  one planar ROI group each, tracked by the measurement's UID ("Measurement 2: angle"):
  a length (SNOMED "Length", mm) on its 2-point polyline, an angle (SNOMED "Angle", degrees)
  on its 3-point polyline (end, vertex, end), a Cobb angle (SNOMED "Cobb angle", degrees) on
  the 4 points of its two lines, and a rectangle or ellipse ROI (closed polyline / ELLIPSE)
  with its mean and standard deviation (HU for CT) and area (mm²). Each names the SOP instance
  (and frame) it was made on, in the region and in every measurement.
- **Narrative report** (Enhanced SR, TID 2000 "Diagnostic Imaging Report"): the
  sections the reader wrote, in report order: Indications for Procedure (DCM 121109),
  Current Procedure Descriptions (technique, DCM 121064), Prior Procedure Descriptions
  (comparison, DCM 121066), Findings (one TEXT per finding, with the images it was seen
  on), Impressions, and one Addendum section (DCM 121078) per signed addendum.

An addendum to a signed report is a new narrative SR instance
(``SR-addendum-report-<SOP UID>.dcm``, :func:`export_addendum_sr`): the whole report
with its addenda, COMPLETE / VERIFIED by the addendum's reader, with the signed
narrative SR (or the previous addendum SR) as its predecessor document. The signed
documents themselves are never rewritten; the measurements do not change, so no new
measurement SR is written.

A draft is exported PARTIAL / UNVERIFIED with every finding not rejected; a
signed report COMPLETE / VERIFIED with the reader as verifying observer, only
the findings the reader kept, and the draft documents (if given) referenced as
predecessors. Patient and study attributes are copied from the source images;
Type 2 ones missing there are filled from another source image or left empty.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import Comprehensive3DSRStorage, EnhancedSRStorage

from app.core.errors import XMedError
from app.core.paths import write_private
from app.report.draft import Addendum, DraftReport, Finding, Origin, ReportBox
from app.viewer.measure_store import SavedMeasurement

log = logging.getLogger(__name__)

MANUFACTURER = "XMedGPT Workstation"
BOUNDED_BY = Code("75958009", "SCT", "Bounded by")

#: finding type (as in the report templates) → SNOMED CT code
FINDING_CODES: dict[str, Code] = {
    "nodule": codes.SCT.Nodule,
    "solid nodule": codes.SCT.Nodule,
    "ground-glass nodule": codes.SCT.Nodule,
    "mass": codes.SCT.Mass,
    "lesion": codes.SCT.Lesion,
    "hypodense lesion": codes.SCT.Lesion,
    "cyst": codes.SCT.Cyst,
    "consolidation": Code("95436008", "SCT", "Lung consolidation"),
    "pleural effusion": codes.SCT.PleuralEffusion,
    "effusion": codes.SCT.PleuralEffusion,
    "lymphadenopathy": codes.SCT.Lymphadenopathy,
    "fracture": Code("125605004", "SCT", "Fracture of bone"),
    "hemorrhage": codes.SCT.Hemorrhage,
    "infarct": Code("55641003", "SCT", "Infarct"),
    "edema": codes.SCT.Edema,
    "pneumothorax": codes.SCT.Pneumothorax,
    "cardiomegaly": codes.SCT.Cardiomegaly,
}

#: modality → procedure reported (TID 1500 row 2)
PROCEDURE_CODES: dict[str, Code] = {
    "CT": Code("77477000", "SCT", "Computed tomography"),
    "MR": Code("113091000", "SCT", "Magnetic resonance imaging"),
    "CR": Code("363680008", "SCT", "Radiographic imaging procedure"),
    "DX": Code("363680008", "SCT", "Radiographic imaging procedure"),
    "US": Code("16310003", "SCT", "Ultrasonography"),
    "MG": Code("71651007", "SCT", "Mammography"),
    "PT": Code("82918005", "SCT", "Positron emission tomography"),
}
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging")
#: report section → (section heading, CID 7001; its text item's concept, CID 7002)
SECTION_CODES: dict[str, tuple[Code, Code]] = {
    "indication": (codes.DCM.IndicationsForProcedure, codes.DCM.IndicationsForProcedure),
    "technique": (codes.DCM.CurrentProcedureDescriptions, codes.DCM.ProcedureDescription),
    "comparison": (codes.DCM.PriorProcedureDescriptions, codes.DCM.ProcedureDescription),
}
ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")

#: Type 2 patient/study attributes highdicom reads from the first evidence image
TYPE2_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber")


class SrExportError(XMedError):
    """The report cannot be written as DICOM SR."""


@dataclass(frozen=True)
class SrOptions:
    institution_name: str = ""
    department_name: str = ""
    series_number: int = 9000
    verifying_organization: str = ""  # empty: the institution, else "Unspecified"


@dataclass(frozen=True)
class SrFiles:
    narrative: Path
    narrative_uid: str
    measurement: Path | None = None  # None when no kept finding has a box (nothing to measure)
    measurement_uid: str = ""

    @property
    def paths(self) -> list[Path]:
        return [p for p in (self.measurement, self.narrative) if p is not None]


# ---- sources ------------------------------------------------------------------------

def read_sources(paths: Iterable[Path]) -> dict[str, Dataset]:
    """Headers of the source images by SOP Instance UID (pixels are not needed)."""
    out: dict[str, Dataset] = {}
    for p in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for unreadable files
            raise SrExportError(f"Cannot read the source image {Path(p).name}: {exc}") from exc
        out[str(ds.SOPInstanceUID)] = ds
    return out


def _evidence(findings: Sequence[Finding], sources: Mapping[str, Dataset], report: DraftReport,
              measurements: Sequence[SavedMeasurement] = ()) -> list[Dataset]:
    """The source headers the findings (and measurements) point at (each once, in order), with Type 2
    attributes completed."""
    wanted: list[str] = []
    for f in findings:
        for b in f.boxes:
            if b.sop_instance_uid not in wanted:
                wanted.append(b.sop_instance_uid)
    for m in measurements:
        if m.sop_instance_uid not in wanted:
            wanted.append(m.sop_instance_uid)
    missing = [u for u in wanted if u not in sources]
    if missing:
        raise SrExportError(
            f"{len(missing)} image(s) that findings point at are not available; open the whole series and export again."
        )
    chosen = [sources[u] for u in wanted]
    if not chosen and sources:  # nothing boxed: reference the images of the study all the same
        chosen = [next(iter(sources.values()))]
    if not chosen:
        raise SrExportError("No source images were given for the report; open the study and export again.")
    study_uid = report.study.study_uid
    if any(str(ds.StudyInstanceUID) != study_uid for ds in chosen):
        raise SrExportError("A finding points at an image of another study; the report cannot be exported.")
    return evidence_copies(chosen, sources, study_uid)


def evidence_copies(chosen: Sequence[Dataset], sources: Mapping[str, Dataset], study_uid: str) -> list[Dataset]:
    """Copies of the ``chosen`` source headers as a document's evidence: text decoded and re-declared as UTF-8,
    type 2 attributes a header lacks taken from another image of the study (else empty)."""
    everyone = list(sources.values())
    out = []
    for ds in chosen:
        ds = copy.deepcopy(ds)
        # Everything typed (names, "×", "–", "µ") must survive: decode the source's text with its own
        # character set, then have the SR (highdicom copies this from the evidence) written as UTF-8.
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
        for kw in TYPE2_ATTRIBUTES:
            if kw not in ds:
                donor = next((d for d in everyone if kw in d and d.StudyInstanceUID == study_uid), None)
                setattr(ds, kw, donor.data_element(kw).value if donor is not None else None)
        out.append(ds)
    return out


# ---- measurement report (TID 1500) ------------------------------------------------------

def _kept(report: DraftReport) -> list[Finding]:
    if report.signed:
        return report.included_findings()
    return [f for f in report.findings if f.status.value != "rejected"]


def _observation_context(report: DraftReport, reader_name: str) -> hd.sr.ObservationContext:
    person = None
    name = report.signature.reader_name if report.signature else reader_name
    if name.strip():
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=name.strip()),
        )
    device = None
    p = report.provenance
    if p.model_id:
        device = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=_uid_from(p.weights_sha256 or p.model_id + p.model_version),
                name=p.model_id[:64],
                manufacturer_name=MANUFACTURER,
                model_name=" ".join(x for x in (p.model_id, p.model_version) if x)[:64],
            ),
        )
    if person is None and device is None:
        raise SrExportError("The report has neither a reader nor a model to name as observer; set your name in Settings.")
    return hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)


def _algorithm(report: DraftReport) -> hd.sr.AlgorithmIdentification:
    p = report.provenance
    params = [f"weights_sha256={p.weights_sha256}"] if p.weights_sha256 else None
    return hd.sr.AlgorithmIdentification(name=p.model_id[:64] or "unknown model",
                                         version=(p.model_version or "unspecified")[:64], parameters=params)


def _source_for_region(src: Dataset, frame_number: int) -> hd.sr.SourceImageForRegion:
    """The image reference; with the frame number when the image's IOD is multi-frame."""
    if "NumberOfFrames" in src:
        try:
            return hd.sr.SourceImageForRegion.from_source_image(src, [frame_number])
        except TypeError:  # NumberOfFrames on a single-frame IOD: highdicom refuses frame numbers
            pass
    return hd.sr.SourceImageForRegion.from_source_image(src)


def box_polyline(b: ReportBox) -> np.ndarray:
    """The box as a closed 5-point polyline in DICOM image coordinates (column, row; 0,0 = top-left corner)."""
    x0, y0, x1, y1 = b.box.x0, b.box.y0, b.box.x1, b.box.y1
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _source_for_measurement(src: Dataset, frame_number: int) -> hd.sr.SourceImageForMeasurement:
    if "NumberOfFrames" in src:
        try:
            return hd.sr.SourceImageForMeasurement.from_source_image(src, [frame_number])
        except TypeError:
            pass
    return hd.sr.SourceImageForMeasurement.from_source_image(src)


def box_diameters_mm(b: ReportBox, pixel_spacing: Sequence[float] | None) -> tuple[float, float] | None:
    """(long axis, short axis) of a box in mm: its longer and shorter side (PixelSpacing is row, column
    spacing); None without a pixel spacing."""
    if pixel_spacing is None or len(pixel_spacing) != 2:
        return None
    across = b.box.width * float(pixel_spacing[1])  # columns × column spacing
    down = b.box.height * float(pixel_spacing[0])  # rows × row spacing
    return max(across, down), min(across, down)


def tracking_identifier(n: int, m: int, f: Finding, b: ReportBox) -> hd.sr.TrackingIdentifier:
    """The box's tracking UID and a readable id naming the report's finding."""
    return hd.sr.TrackingIdentifier(uid=b.tracking_uid, identifier=f"Finding {n} ({f.id}) box {m}")


def _roi_group(n: int, m: int, f: Finding, b: ReportBox, src: Dataset, report: DraftReport) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(b),
        source_image=_source_for_region(src, b.frame_number),
    )
    algorithm = _algorithm(report) if f.origin is Origin.AI else None
    tracking = tracking_identifier(n, m, f, b)
    measurements = []
    certainty = f.ai_certainty  # the AI's, only while the finding is the AI's (not edited by the reader)
    if certainty is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.DCM.CertaintyOfFinding,
            value=round(certainty.score * 100.0, 2),
            unit=codes.UCUM.Percent,
            tracking_identifier=tracking,
            algorithm_id=algorithm,
        ))
    spacing = src.get("PixelSpacing")
    diameters = box_diameters_mm(b, spacing)
    if diameters is not None:
        image = [_source_for_measurement(src, b.frame_number)]
        for name, value in zip((codes.SCT.LongAxis, codes.SCT.ShortAxis), diameters):
            measurements.append(hd.sr.Measurement(name=name, value=round(value, 2), unit=codes.UCUM.Millimeter,
                                                  tracking_identifier=tracking, referenced_images=image))
        area = b.box.area * float(spacing[0]) * float(spacing[1])
        measurements.append(hd.sr.Measurement(name=codes.SCT.Area, value=round(area, 3), unit=codes.UCUM.SquareMillimeter,
                                              tracking_identifier=tracking, referenced_images=image))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=region,
        finding_type=FINDING_CODES.get(f.finding_type.strip().lower(), codes.DCM.Finding),
        algorithm_id=algorithm,
        measurements=measurements or None,
        geometric_purpose=BOUNDED_BY,
    )


# ---- the reader's measurements (viewer tools) ------------------------------------------------

MEASUREMENT_NAMES = {"length": "length", "angle": "angle", "cobb": "Cobb angle", "rect": "rectangle ROI",
                     "ellipse": "ellipse ROI"}
_A = {"length": "a", "angle": "an", "cobb": "a", "rect": "a", "ellipse": "an"}


def exportable_measurements(measurements: Iterable[SavedMeasurement],
                            sources: Mapping[str, Dataset]) -> tuple[list[SavedMeasurement], list[str]]:
    """The measurements the SR can carry (their image is among ``sources``, their numbers are in mm /
    degrees), and one sentence per kind of measurement left out."""
    out, left = [], []
    for m in measurements:
        if m.sop_instance_uid not in sources:
            left.append(f"{_A[m.kind]} {MEASUREMENT_NAMES[m.kind]} on an image not given for export")
        elif m.kind == "length" and (m.unit != "mm" or "length" not in m.values):
            left.append("a length without pixel spacing (pixels, not mm)")
        elif m.kind in ("angle", "cobb") and "angle" not in m.values:
            left.append(f"{_A[m.kind]} {MEASUREMENT_NAMES[m.kind]} with an arm of no length")
        elif m.kind in ("rect", "ellipse") and (m.unit != "mm²" or "area" not in m.values):
            left.append(f"{_A[m.kind]} {MEASUREMENT_NAMES[m.kind]} without pixel spacing")
        else:
            out.append(m)
    return out, sorted(set(left))


def _points_array(points, rows: int, cols: int) -> np.ndarray:
    """Image points as SCOORD graphic data, inside the image (0 … columns, 0 … rows)."""
    a = np.array(points, dtype=np.float32).reshape(-1, 2)
    a[:, 0] = np.clip(a[:, 0], 0.0, float(cols))
    a[:, 1] = np.clip(a[:, 1], 0.0, float(rows))
    return a


def measurement_region(m: SavedMeasurement, src: Dataset) -> hd.sr.ImageRegion:
    """The measurement's graphic on its image: polyline of a length / angle / Cobb angle / rectangle,
    ELLIPSE (major axis ends, then minor axis ends) of an ellipse ROI."""
    rows, cols = int(src.Rows), int(src.Columns)
    if m.kind in ("rect", "ellipse"):
        (ax, ay), (bx, by) = m.points
        x0, x1, y0, y1 = min(ax, bx), max(ax, bx), min(ay, by), max(ay, by)
        if m.kind == "rect":
            pts, kind = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], hd.sr.GraphicTypeValues.POLYLINE
        else:
            cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
            if x1 - x0 >= y1 - y0:
                pts = [[x0, cy], [x1, cy], [cx, y0], [cx, y1]]
            else:
                pts = [[cx, y0], [cx, y1], [x0, cy], [x1, cy]]
            kind = hd.sr.GraphicTypeValues.ELLIPSE
    else:
        pts, kind = list(m.points), hd.sr.GraphicTypeValues.POLYLINE
    return hd.sr.ImageRegion(graphic_type=kind, graphic_data=_points_array(pts, rows, cols),
                             source_image=_source_for_region(src, m.frame_number))


def _measurement_group(n: int, m: SavedMeasurement, src: Dataset) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    tracking = hd.sr.TrackingIdentifier(uid=m.uid or _uid_from(f"measurement:{m.sop_instance_uid}:{m.points}"),
                                        identifier=f"Measurement {n}: {MEASUREMENT_NAMES[m.kind]}")
    image = [_source_for_measurement(src, m.frame_number)]

    def one(name: Code, value: float, unit: Code) -> hd.sr.Measurement:
        return hd.sr.Measurement(name=name, value=round(float(value), 3), unit=unit, tracking_identifier=tracking,
                                 referenced_images=image)

    if m.kind == "length":
        measurements = [one(codes.SCT.Length, m.values["length"], codes.UCUM.Millimeter)]
    elif m.kind == "angle":
        measurements = [one(codes.SCT.Angle, m.values["angle"], codes.UCUM.Degree)]
    elif m.kind == "cobb":
        measurements = [one(codes.SCT.CobbAngle, m.values["angle"], codes.UCUM.Degree)]
    else:
        unit = codes.UCUM.HounsfieldUnit if m.value_unit == "HU" else codes.UCUM.NoUnits
        measurements = [one(codes.SCT.Mean, m.values[k], unit) if k == "mean"
                        else one(codes.SCT.StandardDeviation, m.values[k], unit)
                        for k in ("mean", "sd") if k in m.values]
        measurements.append(one(codes.SCT.Area, m.values["area"], codes.UCUM.SquareMillimeter))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=measurement_region(m, src),
        measurements=measurements,
    )


def measurement_sr(
    report: DraftReport,
    sources: Mapping[str, Dataset],
    *,
    reader_name: str = "",
    options: SrOptions = SrOptions(),
    previous: Sequence[Dataset] = (),
    series_instance_uid: str | None = None,
    instance_number: int = 1,
    measurements: Sequence[SavedMeasurement] = (),
) -> hd.sr.Comprehensive3DSR:
    """TID 1500: a group per finding box, then a group per reader measurement (``measurements``, those
    :func:`exportable_measurements` keeps)."""
    findings = _kept(report)
    measurements, _ = exportable_measurements(measurements, sources)
    evidence = _evidence(findings, sources, report, measurements)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    groups = [
        _roi_group(n, m, f, b, by_uid[b.sop_instance_uid], report)
        for n, f in enumerate(findings, 1)
        for m, b in enumerate(f.boxes, 1)
    ]
    groups += [_measurement_group(n, m, by_uid[m.sop_instance_uid]) for n, m in enumerate(measurements, 1)]
    if not groups:
        raise SrExportError("No kept finding has a box and there are no measurements, so there is nothing for a "
                            "measurement report.")
    content = hd.sr.MeasurementReport(
        observation_context=_observation_context(report, reader_name),
        procedure_reported=PROCEDURE_CODES.get(report.study.modality.upper(), IMAGING_PROCEDURE),
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content[0],
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=options.series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        **_document_flags(report, options, previous),
    )


# ---- narrative report (TID 2000) --------------------------------------------------------

def _text_section(heading: Code, item: Code, texts: Sequence[str]) -> hd.sr.ContainerContentItem:
    rel = hd.sr.RelationshipTypeValues
    section = hd.sr.ContainerContentItem(name=heading, relationship_type=rel.CONTAINS)
    section.ContentSequence = [hd.sr.TextContentItem(name=item, value=t, relationship_type=rel.CONTAINS)
                               for t in texts]
    return section


def _addendum_text(a: Addendum) -> str:
    sig = a.signature
    return f"{a.text}\n(Addendum signed by {sig.reader_name} on {sig.signed_at} UTC.)" if sig else a.text


def narrative_sr(
    report: DraftReport,
    sources: Mapping[str, Dataset],
    *,
    reader_name: str = "",
    options: SrOptions = SrOptions(),
    previous: Sequence[Dataset] = (),
    series_instance_uid: str | None = None,
    instance_number: int = 2,
    addenda: Sequence[Addendum] = (),
) -> hd.sr.EnhancedSR:
    """The narrative report; ``addenda`` (signed ones) are added as Addendum sections and the
    last addendum's reader verifies the document."""
    findings = _kept(report)
    evidence = _evidence(findings, sources, report)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    rel = hd.sr.RelationshipTypeValues
    finding_items = []
    for f in findings:
        item = hd.sr.TextContentItem(name=codes.DCM.Finding, value=f.text, relationship_type=rel.CONTAINS)
        refs = []
        for uid in dict.fromkeys(b.sop_instance_uid for b in f.boxes):
            src = by_uid[uid]
            refs.append(hd.sr.ImageContentItem(
                name=codes.DCM.SourceOfMeasurement,
                referenced_sop_class_uid=src.SOPClassUID,
                referenced_sop_instance_uid=src.SOPInstanceUID,
                relationship_type=rel.INFERRED_FROM,
            ))
        if refs:
            item.ContentSequence = refs
        finding_items.append(item)
    findings_section = hd.sr.ContainerContentItem(name=codes.DCM.Findings, relationship_type=rel.CONTAINS)
    findings_section.ContentSequence = finding_items or [
        hd.sr.TextContentItem(name=codes.DCM.Finding, value="No findings recorded.", relationship_type=rel.CONTAINS)
    ]
    impression_section = hd.sr.ContainerContentItem(name=codes.DCM.Impressions, relationship_type=rel.CONTAINS)
    impression_section.ContentSequence = [hd.sr.TextContentItem(
        name=codes.DCM.Impression, value=report.impression_text() or "None given.", relationship_type=rel.CONTAINS)]
    sections = [_text_section(*SECTION_CODES[name], [report.section(name).strip()])
                for name in SECTION_CODES if report.section(name).strip()]
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = [
        *hd.sr.LanguageOfContentItemAndDescendants(language=ENGLISH),
        *_observation_context(report, reader_name),
        *sections,
        findings_section,
        impression_section,
        *(_text_section(codes.DCM.Addendum, codes.DCM.Addendum, [_addendum_text(a)]) for a in addenda),
    ]
    flags = _document_flags(report, options, previous)
    if addenda and addenda[-1].signature is not None:
        flags["verifying_observer_name"] = addenda[-1].signature.reader_name
    return hd.sr.EnhancedSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=options.series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        **flags,
    )


# ---- both, to files ---------------------------------------------------------------------

def _document_flags(report: DraftReport, options: SrOptions, previous: Sequence[Dataset]) -> dict:
    flags: dict = {
        "manufacturer": MANUFACTURER,
        "institution_name": options.institution_name or None,
        "institutional_department_name": options.department_name or None,
        "is_complete": report.signed,
        "is_final": report.signed,
        "is_verified": report.signed,
        "previous_versions": list(previous) or None,
    }
    if report.signed:
        flags["verifying_observer_name"] = report.signature.reader_name
        flags["verifying_organization"] = options.verifying_organization or options.institution_name or "Unspecified"
    return flags


def export_sr(
    report: DraftReport,
    sources: Mapping[str, Dataset],
    out_dir: Path,
    *,
    reader_name: str = "",
    options: SrOptions = SrOptions(),
    previous: Sequence[Dataset | Path] = (),
    measurement_path: Path | None = None,
    narrative_path: Path | None = None,
    measurements: Sequence[SavedMeasurement] = (),
) -> SrFiles:
    """Write the measurement and narrative SR of ``report``; ``previous``: the draft SRs this one replaces;
    ``measurements``: the reader's measurements of the study (those on images among ``sources`` go in).

    Files go into ``out_dir`` as ``SR-{draft|signed}-{measurements|report}-<SOP UID>.dcm``
    unless ``measurement_path``/``narrative_path`` name them (``xmedgpt analyze --sr OUT.dcm``).
    """
    prev = [pydicom.dcmread(p) if isinstance(p, (str, Path)) else p for p in previous]
    prev_measure = [d for d in prev if d.SOPClassUID == Comprehensive3DSRStorage]
    prev_narrative = [d for d in prev if d.SOPClassUID == EnhancedSRStorage]
    series_uid = hd.UID()
    has_boxes = any(f.boxes for f in _kept(report)) or bool(exportable_measurements(measurements, sources)[0])
    m = measurement_sr(report, sources, reader_name=reader_name, options=options, previous=prev_measure,
                       series_instance_uid=series_uid, measurements=measurements) if has_boxes else None
    n = narrative_sr(report, sources, reader_name=reader_name, options=options, previous=prev_narrative,
                     series_instance_uid=series_uid)
    out_dir = Path(out_dir)
    kind = "signed" if report.signed else "draft"
    mp = (measurement_path or out_dir / f"SR-{kind}-measurements-{m.SOPInstanceUID}.dcm") if m is not None else None
    np_ = narrative_path or out_dir / f"SR-{kind}-report-{n.SOPInstanceUID}.dcm"
    try:
        if m is not None:
            write_private(mp, lambda p: m.save_as(p, enforce_file_format=True))
        write_private(np_, lambda p: n.save_as(p, enforce_file_format=True))
    except OSError as exc:
        raise SrExportError(f"Cannot write the structured report to {out_dir}: {exc.strerror or exc}.") from exc
    log.info("wrote SR %s", ", ".join(p.name for p in (mp, np_) if p))
    return SrFiles(np_, str(n.SOPInstanceUID), mp, str(m.SOPInstanceUID) if m is not None else "")


def export_addendum_sr(
    report: DraftReport,
    sources: Mapping[str, Dataset],
    out_dir: Path,
    *,
    predecessor: Dataset | Path | None,
    options: SrOptions = SrOptions(),
    path: Path | None = None,
) -> tuple[Path, str]:
    """The signed report with its signed addenda as a new narrative SR that names ``predecessor``
    (the signed narrative SR, or the previous addendum SR) as its predecessor; returns (path, SOP UID)."""
    addenda = report.signed_addenda()
    if not report.signed or not addenda:
        raise SrExportError("Only a signed report with a signed addendum has an addendum SR.")
    prev = [pydicom.dcmread(predecessor) if isinstance(predecessor, (str, Path)) else predecessor] \
        if predecessor is not None else []
    n = narrative_sr(report, sources, options=options, previous=prev, addenda=addenda,
                     series_instance_uid=str(prev[0].SeriesInstanceUID) if prev else None,
                     instance_number=int(prev[0].get("InstanceNumber", 2)) + 1 if prev else 3)
    target = path or Path(out_dir) / f"SR-addendum-report-{n.SOPInstanceUID}.dcm"
    try:
        write_private(target, lambda p: n.save_as(p, enforce_file_format=True))
    except OSError as exc:
        raise SrExportError(f"Cannot write the addendum SR to {target.parent}: {exc.strerror or exc}.") from exc
    log.info("wrote addendum SR %s", target.name)
    return target, str(n.SOPInstanceUID)


def _uid_from(text: str) -> str:
    """A stable UID for a model (PS3.5 B.2 form, from the SHA-256 of ``text``)."""
    return f"2.25.{uuid.UUID(bytes=hashlib.sha256(text.encode('utf-8')).digest()[:16]).int}"


# ---- series pre-read (issue #15) --------------------------------------------------------

def export_preread_sr(
    lesions: Sequence[Mapping],
    slice_sop_uids: Sequence[str],
    sources: Mapping[str, Dataset],
    path: Path,
    *,
    model_id: str,
    model_version: str = "",
    weights_sha256: str = "",
    modality: str = "CT",
    options: SrOptions = SrOptions(),
) -> str:
    """The lesions of a series pre-read (``xmedgpt preread``) as a draft TID 1500 measurement SR at ``path``;
    returns its SOP Instance UID.

    ``lesions`` are the pre-read's JSON lesions (``id``, ``slices``, ``key_slice``, ``boxes`` {slice: box in
    pixels}, ``diameter_mm``, ``volume_ml``, ``reliability``); ``slice_sop_uids[k]`` is the SOP Instance UID of
    slice k; ``sources`` the series headers (:func:`read_sources`). Each lesion is one volumetric ROI group
    (TID 1411): a closed box polyline on every slice of its range (its 3-D extent, the key slice's box among
    them), tracking id "Lesion <id>: slices a-b (0-based), key slice k"; measurements: the longest axial
    diameter (SNOMED "Long axis", mm, on the key slice), the approximate volume (SNOMED "Volume", ml, on
    every slice of the range) and, when assessed, the reliability as "Certainty of Finding" (%). The model is
    the observer device and the algorithm; PARTIAL / UNVERIFIED (an AI draft for the reader to check).
    """
    if not lesions:
        raise SrExportError("The pre-read found no lesion, so there is nothing for a measurement report.")
    rel = [str(u) for u in slice_sop_uids]
    params = [f"weights_sha256={weights_sha256}"] if weights_sha256 else None
    algorithm = hd.sr.AlgorithmIdentification(name=model_id[:64] or "unknown model",
                                              version=(model_version or "unspecified")[:64], parameters=params)

    def source(k: int) -> Dataset:
        if not 0 <= k < len(rel) or rel[k] not in sources:
            raise SrExportError(f"Slice {k} of the pre-read is not among the source images; export again with "
                                "the whole series.")
        return sources[rel[k]]

    groups = []
    used: list[str] = []
    for les in lesions:
        boxes = {int(k): b for k, b in les["boxes"].items()}
        key = int(les["key_slice"])
        first, last = (int(v) for v in les["slices"])
        regions = []
        for k in sorted(boxes):
            b = boxes[k]
            x0, y0, x1, y1 = (float(b[n]) for n in ("x0", "y0", "x1", "y1"))
            regions.append(hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32),
                source_image=hd.sr.SourceImageForRegion.from_source_image(source(k)),
            ))
            if rel[k] not in used:
                used.append(rel[k])
        tracking = hd.sr.TrackingIdentifier(
            uid=_uid_from(f"preread:{rel[key]}:{les['id']}:{first}:{last}"),
            identifier=f"Lesion {les['id']}: slices {first}-{last} (0-based), key slice {key}"[:64],
        )
        key_image = [hd.sr.SourceImageForMeasurement.from_source_image(source(key))]
        measurements = [hd.sr.Measurement(name=codes.SCT.LongAxis, value=round(float(les["diameter_mm"]), 2),
                                          unit=codes.UCUM.Millimeter, tracking_identifier=tracking,
                                          referenced_images=key_image, algorithm_id=algorithm)]
        if les.get("volume_ml") is not None:
            measurements.append(hd.sr.Measurement(
                name=codes.SCT.Volume, value=round(float(les["volume_ml"]), 3),
                unit=Code("mL", "UCUM", "milliliter"), tracking_identifier=tracking, algorithm_id=algorithm,
                referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(source(k))
                                   for k in sorted(boxes)]))
        score = (les.get("reliability") or {}).get("score")
        if score is not None:
            measurements.append(hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding,
                                                  value=round(float(score) * 100.0, 2), unit=codes.UCUM.Percent,
                                                  tracking_identifier=tracking, algorithm_id=algorithm))
        kind = str(les.get("phrase") or "lesion").strip().lower()
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_regions=regions,
            finding_type=FINDING_CODES.get(kind, codes.SCT.Lesion),
            algorithm_id=algorithm,
            measurements=measurements,
            geometric_purpose=BOUNDED_BY,
        ))
    evidence = []
    for uid in used:
        ds = copy.deepcopy(sources[uid])
        ds.decode()
        ds.SpecificCharacterSet = "ISO_IR 192"
        for kw in TYPE2_ATTRIBUTES:
            if kw not in ds:
                setattr(ds, kw, None)
        evidence.append(ds)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid_from(weights_sha256 or model_id + model_version), name=model_id[:64] or "unknown model",
            manufacturer_name=MANUFACTURER, model_name=" ".join(x for x in (model_id, model_version) if x)[:64]),
    )
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE_CODES.get(modality.upper(), IMAGING_PROCEDURE),
        imaging_measurements=groups,
    )
    doc = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=content[0], series_instance_uid=hd.UID(), series_number=options.series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        institution_name=options.institution_name or None,
        institutional_department_name=options.department_name or None,
        is_complete=False, is_final=False, is_verified=False,
    )
    try:
        write_private(Path(path), lambda p: doc.save_as(p, enforce_file_format=True))
    except OSError as exc:
        raise SrExportError(f"Cannot write the structured report to {path}: {exc.strerror or exc}.") from exc
    log.info("wrote pre-read SR %s (%d lesions)", Path(path).name, len(groups))
    return str(doc.SOPInstanceUID)
