"""A PDF report as a DICOM Encapsulated PDF instance (PS3.3 A.45.1), so a PACS can store it beside the SR.

The patient and study come from a DICOM file of the same report (its SR): same Study Instance UID,
patient, accession; a new series (modality ``DOC``) and SOP Instance UID. Written with pydicom in
Explicit VR Little Endian, file meta included.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from app.core.errors import XMedError
from app.core.paths import write_atomic

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
_PATIENT_STUDY = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                  "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
                  "StudyID", "StudyDescription", "InstitutionName")


def encapsulate_pdf(pdf: Path, like: Path | Dataset, out: Path, *, title: str = "Radiology report",
                    series_number: int = 9901, manufacturer: str = "XMedGPT Workstation") -> Dataset:
    """Write ``pdf`` as an Encapsulated PDF instance at ``out`` (patient and study of ``like``);
    returns the dataset (``SOPInstanceUID`` etc.)."""
    data = Path(pdf).read_bytes()
    if not data.startswith(b"%PDF"):
        raise XMedError(f"{pdf} is not a PDF file.")
    src = like if isinstance(like, Dataset) else pydicom.dcmread(like, stop_before_pixels=True)
    if not src.get("StudyInstanceUID"):
        raise XMedError("The report's DICOM file has no Study Instance UID; the PDF cannot be filed with it.")
    stamp = datetime.now()
    ds = Dataset()
    for kw in _PATIENT_STUDY:
        if kw in src:
            setattr(ds, kw, src.data_element(kw).value)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        if kw not in ds:
            setattr(ds, kw, "")  # type 2: present, may be empty
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DOC"
    ds.SeriesNumber = series_number
    ds.SeriesDescription = title
    ds.InstanceNumber = 1
    ds.Manufacturer = manufacturer
    ds.ConversionType = "WSD"  # workstation
    ds.ContentDate = stamp.strftime("%Y%m%d")
    ds.ContentTime = stamp.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.AcquisitionDateTime = stamp.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the report names the patient
    ds.DocumentTitle = title
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "18748-4", "LN", "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = Sequence([concept])
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(data)
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    write_atomic(Path(out), buf.getvalue())
    return ds
