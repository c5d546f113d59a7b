"""DICOM Structured Reports of a draft or signed report, written with highdicom.

Two documents per export, both in one new SR series of the source study:

- **Measurement report** (Comprehensive 3D SR, TID 1500): one planar ROI group
  (TID 1410) per box: a closed 5-point POLYLINE on the source image (geometric
  purpose "Bounded by"), the finding type, a tracking identifier (the box's UID
  and a readable id), for AI findings the algorithm (model name, version,
  weights hash), the reliability as "Certainty of Finding" in %, and the area in
  mm² where the pixel spacing is known.
- **Narrative report** (Enhanced SR, TID 2000 "Diagnostic Imaging Report"): a
  Findings section (one TEXT per finding, with the images it was seen on) and an
  Impressions section.

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
from app.report.draft import DraftReport, Finding, Origin, ReportBox

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


def _evidence(findings: Sequence[Finding], sources: Mapping[str, Dataset], report: DraftReport) -> list[Dataset]:
    """The source headers the findings point at (each once, in order), with Type 2 attributes completed."""
    wanted: list[str] = []
    for f in findings:
        for b in f.boxes:
            if b.sop_instance_uid not in wanted:
                wanted.append(b.sop_instance_uid)
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


def _roi_group(n: int, m: int, f: Finding, b: ReportBox, src: Dataset, report: DraftReport) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(b),
        source_image=_source_for_region(src, b.frame_number),
    )
    algorithm = _algorithm(report) if f.origin is Origin.AI else None
    measurements = []
    if f.reliability is not None:
        measurements.append(hd.sr.Measurement(
            name=codes.DCM.CertaintyOfFinding,
            value=round(f.reliability.score * 100.0, 2),
            unit=codes.UCUM.Percent,
            algorithm_id=algorithm,
        ))
    spacing = src.get("PixelSpacing")
    if spacing is not None and len(spacing) == 2:
        area = b.box.area * float(spacing[0]) * float(spacing[1])
        measurements.append(hd.sr.Measurement(name=codes.SCT.Area, value=round(area, 3), unit=codes.UCUM.SquareMillimeter))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=b.tracking_uid, identifier=f"Finding {n} box {m}"),
        referenced_region=region,
        finding_type=FINDING_CODES.get(f.finding_type.strip().lower(), codes.DCM.Finding),
        algorithm_id=algorithm,
        measurements=measurements or None,
        geometric_purpose=BOUNDED_BY,
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
) -> hd.sr.Comprehensive3DSR:
    findings = _kept(report)
    evidence = _evidence(findings, sources, report)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    groups = [
        _roi_group(n, m, f, b, by_uid[b.sop_instance_uid], report)
        for n, f in enumerate(findings, 1)
        for m, b in enumerate(f.boxes, 1)
    ]
    if not groups:
        raise SrExportError("No kept finding has a box, so there is nothing for a measurement report.")
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

def narrative_sr(
    report: DraftReport,
    sources: Mapping[str, Dataset],
    *,
    reader_name: str = "",
    options: SrOptions = SrOptions(),
    previous: Sequence[Dataset] = (),
    series_instance_uid: str | None = None,
    instance_number: int = 2,
) -> hd.sr.EnhancedSR:
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
        name=codes.DCM.Impression, value=report.impression.strip() or "None given.", relationship_type=rel.CONTAINS)]
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = [
        *hd.sr.LanguageOfContentItemAndDescendants(language=ENGLISH),
        *_observation_context(report, reader_name),
        findings_section,
        impression_section,
    ]
    return hd.sr.EnhancedSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=options.series_number,
        sop_instance_uid=hd.UID(),
        instance_number=instance_number,
        **_document_flags(report, options, previous),
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
) -> SrFiles:
    """Write the measurement and narrative SR of ``report``; ``previous``: the draft SRs this one replaces.

    Files go into ``out_dir`` as ``SR-{draft|signed}-{measurements|report}-<SOP UID>.dcm``
    unless ``measurement_path``/``narrative_path`` name them (``xmedgpt analyze --sr OUT.dcm``).
    """
    prev = [pydicom.dcmread(p) if isinstance(p, (str, Path)) else p for p in previous]
    prev_measure = [d for d in prev if d.SOPClassUID == Comprehensive3DSRStorage]
    prev_narrative = [d for d in prev if d.SOPClassUID == EnhancedSRStorage]
    series_uid = hd.UID()
    has_boxes = any(f.boxes for f in _kept(report))
    m = measurement_sr(report, sources, reader_name=reader_name, options=options, previous=prev_measure,
                       series_instance_uid=series_uid) if has_boxes else None
    n = narrative_sr(report, sources, reader_name=reader_name, options=options, previous=prev_narrative,
                     series_instance_uid=series_uid)
    out_dir = Path(out_dir)
    kind = "signed" if report.signed else "draft"
    mp = (measurement_path or out_dir / f"SR-{kind}-measurements-{m.SOPInstanceUID}.dcm") if m is not None else None
    np_ = narrative_path or out_dir / f"SR-{kind}-report-{n.SOPInstanceUID}.dcm"
    try:
        for p in (mp, np_):
            if p is not None:
                p.parent.mkdir(parents=True, exist_ok=True)
        if m is not None:
            m.save_as(mp, enforce_file_format=True)
        n.save_as(np_, enforce_file_format=True)
    except OSError as exc:
        raise SrExportError(f"Cannot write the structured report to {out_dir}: {exc.strerror or exc}.") from exc
    log.info("wrote SR %s", ", ".join(p.name for p in (mp, np_) if p))
    return SrFiles(np_, str(n.SOPInstanceUID), mp, str(m.SOPInstanceUID) if m is not None else "")


def _uid_from(text: str) -> str:
    """A stable UID for a model (PS3.5 B.2 form, from the SHA-256 of ``text``)."""
    return f"2.25.{uuid.UUID(bytes=hashlib.sha256(text.encode('utf-8')).digest()[:16]).int}"
