"""The reader's key images as a DICOM Key Object Selection document, written beside the signed report's SR.

A Key Object Selection (KOS, TID 2010, written with highdicom) is how a PACS and every DICOM viewer know
which images of a study a radiologist flagged: the document title "Of Interest" (DCM 113000), the signing
reader as the observer, a description naming the report, and one IMAGE reference per marked image (SOP
class and instance, and the frame of a multi-frame image), with the study's patient and study attributes
and the referenced series in its evidence. It is its own series (modality KO), one per signed report, in
the study's exports folder: ``KO-signed-key-images-<SOP UID>.dcm``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from app.core.paths import write_private
from app.report.draft import DraftReport
from app.report.export.sr import (
    MANUFACTURER,
    SrExportError,
    SrOptions,
    evidence_copies,
)
from app.viewer.key_images import KeyImage

log = logging.getLogger(__name__)

#: series number of the KOS series (the SRs are 9000)
KOS_SERIES_NUMBER = 9001


def exportable_key_images(images: Sequence[KeyImage], sources: Mapping[str, Dataset],
                          study_uid: str) -> tuple[list[KeyImage], list[str]]:
    """The key images the document can reference (their image is among ``sources`` and of this study),
    and one sentence for those left out."""
    kept, left = [], 0
    for k in images:
        src = sources.get(k.sop_instance_uid)
        if src is None or str(src.get("StudyInstanceUID", "")) != study_uid:
            left += 1
        else:
            kept.append(k)
    notes = [f"{left} key image(s) on images not given for export were left out of the key image selection"] \
        if left else []
    return kept, notes


def _evidence(images: Sequence[KeyImage], sources: Mapping[str, Dataset], study_uid: str) -> list[Dataset]:
    """The source header of each key image once, prepared as the SR prepares its evidence."""
    unique = list(dict.fromkeys(k.sop_instance_uid for k in images))
    return evidence_copies([sources[u] for u in unique], sources, study_uid)


def key_object_selection(report: DraftReport, images: Sequence[KeyImage], sources: Mapping[str, Dataset], *,
                         options: SrOptions | None = None, description: str = "",
                         series_instance_uid: str | None = None) -> hd.ko.KeyObjectSelectionDocument:
    """The KOS document of ``images`` (all on images among ``sources``, of the report's study)."""
    options = options or SrOptions()
    if not images:
        raise SrExportError("No key images were marked, so there is no key image selection to write.")
    study_uid = report.study.study_uid
    evidence = _evidence(images, sources, study_uid)
    if any(str(ds.StudyInstanceUID) != study_uid for ds in evidence):
        raise SrExportError("A key image belongs to another study; the key image selection cannot be written.")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    referenced = [by_uid[k.sop_instance_uid] for k in images]
    signer = report.signature.reader_name if report.signature else ""
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=signer or "Unknown"),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=referenced,
        observer_person_context=observer,
        description=(description or "Key images marked by the reader")[:1024],
    )
    # a key frame of a multi-frame image: its IMAGE item names that frame (highdicom names the instance)
    items = [it for it in content[0].ContentSequence if it.ValueType == "IMAGE"]
    for it, k in zip(items, images):
        if int(by_uid[k.sop_instance_uid].get("NumberOfFrames", 1) or 1) > 1:
            it.ReferencedSOPSequence[0].ReferencedFrameNumber = [k.frame_number]
    return hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=options.series_number + 1 if options.series_number else KOS_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        institution_name=options.institution_name or None,
        institutional_department_name=options.department_name or None,
    )


def export_kos(report: DraftReport, images: Sequence[KeyImage], sources: Mapping[str, Dataset], out_dir: Path, *,
               options: SrOptions | None = None, description: str = "",
               path: Path | None = None) -> tuple[Path, str]:
    """Write the key image selection of a signed report into ``out_dir``; returns (path, SOP Instance UID)."""
    doc = key_object_selection(report, images, sources, options=options, description=description)
    kind = "signed" if report.signed else "draft"
    target = path or Path(out_dir) / f"KO-{kind}-key-images-{doc.SOPInstanceUID}.dcm"
    try:
        write_private(target, lambda p: doc.save_as(p, enforce_file_format=True))
    except OSError as exc:
        raise SrExportError(f"Cannot write the key image selection to {target.parent}: {exc.strerror or exc}.") from exc
    log.info("wrote key object selection %s (%d image(s))", target.name, len(images))
    return target, str(doc.SOPInstanceUID)
