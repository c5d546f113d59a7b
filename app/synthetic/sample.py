"""A synthetic but DICOM-correct CT study of the chest and upper abdomen.

:func:`write_ct_study` rasterises the phantom of :mod:`app.synthetic.anatomy` slice by
slice into a CT Image Storage series (unsigned 12-bit stored values, rescale
intercept −1024, so stored value = HU + 1024) and writes, beside the files, a
ground-truth JSON with every lesion and its box on every slice it touches.

The study is reproducible: the same arguments give the same pixels and the
same UIDs (derived from the seed with :func:`pydicom.uid.generate_uid`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

from app.core.errors import XMedError
from app.synthetic.anatomy import (
    Anatomy,
    Grid,
    Lesion,
    Tissue,
    add_noise,
    place_lesion,
    render_ct_slice,
)
from app.synthetic.truth import LesionTruth, density_of, side_of, with_side

log = logging.getLogger(__name__)

GROUND_TRUTH_NAME = "ground_truth.json"
HU_OFFSET = 1024  # stored = HU + 1024, RescaleIntercept = -1024
MAX_STORED = 4095  # BitsStored 12


@dataclass(frozen=True)
class _LesionPlan:
    id: str
    organ: str
    side: str
    location: str
    kind: str
    depth: float  # fraction of the craniocaudal extent
    diameter_mm: float
    hu: float
    margin: float


# A handful of findings of different sizes, densities and margins, in both lungs and the liver. A lung
# lesion is placed in its side's lung; a liver lesion anywhere in the liver, its side (and the side word
# of its location) then read from where it landed (:func:`side_of`).
_PLAN: tuple[_LesionPlan, ...] = (
    _LesionPlan("L1", "lung", "right", "right upper lobe", "solid nodule", 0.22, 6.0, 30.0, 0.0),
    _LesionPlan("L2", "lung", "left", "left upper lobe", "ground-glass nodule", 0.34, 14.0, -480.0, 0.10),
    _LesionPlan("L3", "lung", "right", "right lower lobe", "mass", 0.55, 32.0, 40.0, 0.28),
    _LesionPlan("L4", "lung", "left", "left lower lobe", "solid nodule", 0.64, 11.0, 35.0, 0.14),
    _LesionPlan("L5", "liver", "right", "right hepatic lobe", "hypodense lesion", 0.80, 24.0, 38.0, 0.08),
    _LesionPlan("L6", "liver", "right", "right hepatic lobe", "cyst", 0.90, 12.0, 6.0, 0.0),
)


def plan_lesions(anatomy: Anatomy, seed: int) -> list[Lesion]:
    """Place the study's lesions inside their organs (positions jittered by ``seed``)."""
    rng = np.random.default_rng([seed, 7])
    lesions: list[Lesion] = []
    for p in _PLAN:
        r = p.diameter_mm / 2.0 / (1.0 + p.margin)
        s = (p.depth + float(rng.uniform(-0.02, 0.02))) * anatomy.extent_mm
        labels: tuple[int, ...]
        if p.organ == "lung":
            labels = (Tissue.LUNG_RIGHT,) if p.side == "right" else (Tissue.LUNG_LEFT,)
        else:
            labels = (Tissue.LIVER,)
        spot = None
        for attempt in range(6):
            spot = place_lesion(anatomy, labels, s, r + 3.0, rng)
            if spot is not None:
                break
            s += (-1) ** attempt * 0.02 * anatomy.extent_mm * (attempt + 1)
        if spot is None:
            log.warning("no room for lesion %s in the %s", p.id, p.location)
            continue
        # avoid overlapping an earlier lesion
        if any(math.dist((spot[0], spot[1], s), (o.x, o.y, o.s)) < (r + max(o.rx, o.ry)) * 1.3 for o in lesions):
            s += 2.5 * r
        squash = float(rng.uniform(0.85, 1.0))
        side = p.side if p.organ == "lung" else side_of(spot[0])
        lesions.append(Lesion(
            id=p.id, organ=p.organ, location=with_side(p.location, side), side=side, kind=p.kind,
            x=spot[0], y=spot[1], s=s, rx=r, ry=r * squash, rs=r * float(rng.uniform(0.85, 1.1)),
            hu=p.hu, margin=p.margin, lobes=int(rng.integers(5, 10)), phase=float(rng.uniform(0, 2 * math.pi)),
        ))
    return lesions


def ground_truth_path(dicom_folder: Path | str) -> Path | None:
    """The ground-truth JSON of a sample study: inside its folder, or beside it as
    ``<folder>.ground_truth.json`` (how the bundled sample keeps its folder DICOM-only)."""
    folder = Path(dicom_folder)
    for candidate in (folder / GROUND_TRUTH_NAME, folder.with_name(f"{folder.name}.{GROUND_TRUTH_NAME}")):
        if candidate.is_file():
            return candidate
    return None


def load_ground_truth(dicom_folder: Path | str) -> dict:
    """The parsed ground truth of a sample study (see :func:`ground_truth_path`).

    Its ``lesions`` are read through :meth:`LesionTruth.from_dict` and given back as
    :meth:`LesionTruth.to_dict`, so a file written before the record gained ``density`` and
    ``size_class`` (the bundled sample's) reads the same as a fresh one.
    """
    path = ground_truth_path(dicom_folder)
    if path is None:
        raise XMedError(f"No lesion ground truth found for {dicom_folder}.")
    doc = json.loads(path.read_text())
    doc["lesions"] = [les.to_dict() for les in ground_truth_lesions(doc)]
    return doc


def ground_truth_lesions(doc: dict) -> list[LesionTruth]:
    """The lesions of a parsed ground-truth document (old or new keys)."""
    return [LesionTruth.from_dict(les) for les in doc.get("lesions", [])]


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["xmedgpt-sample", str(seed), *map(str, parts)])


def _base_dataset(seed: int, n_slices: int, size: int, grid: Grid, thickness: float, body_part: str,
                  anatomy: Anatomy) -> Dataset:
    study_uid = _uid(seed, n_slices, size, "study")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # SOP common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.InstanceCreationDate = "20250101"
    ds.InstanceCreationTime = "120000"
    # patient
    ds.PatientName = "PHANTOM^CHEST"
    ds.PatientID = f"XMED-PHANTOM-{seed:04d}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.PatientAge = "065Y"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom: no patient data"
    # general study
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20250101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{seed:04d}"
    ds.AccessionNumber = f"PH{seed:06d}"
    ds.StudyDescription = "CT CHEST ABDOMEN WITH CONTRAST (SYNTHETIC PHANTOM)"
    # general series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = _uid(seed, n_slices, size, "series")
    ds.SeriesNumber = 2
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = "120100"
    ds.SeriesDescription = f"Axial {thickness:.2f} mm {'portal venous' if anatomy.contrast else 'non-contrast'}"
    ds.BodyPartExamined = body_part
    ds.PatientPosition = "HFS"
    # frame of reference
    ds.FrameOfReferenceUID = _uid(seed, n_slices, size, "frame")
    ds.PositionReferenceIndicator = ""
    # equipment
    ds.Manufacturer = "XMedGPT Workstation"
    ds.InstitutionName = "Synthetic data - not a patient"
    ds.ManufacturerModelName = "Synthetic CT phantom"
    ds.SoftwareVersions = "xmedgpt-sample 1"
    # general image / acquisition
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = "120100"
    ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionTime = "120030"
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = "Synthetic phantom for software testing; not for diagnosis."
    # image plane
    ds.PixelSpacing = [round(grid.spacing, 6), round(grid.spacing, 6)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = round(thickness, 4)
    # image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    # CT image
    ds.RescaleIntercept = -HU_OFFSET
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.DataCollectionDiameter = round(grid.fov_mm, 2)
    ds.ReconstructionDiameter = round(grid.fov_mm, 2)
    ds.GantryDetectorTilt = 0
    ds.TableHeight = 150
    ds.RotationDirection = "CW"
    ds.ConvolutionKernel = "STANDARD"
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 500
    # contrast
    if anatomy.contrast:
        ds.ContrastBolusAgent = "Iodinated contrast (synthetic)"
        ds.ContrastBolusRoute = "IV"
    # VOI LUT: soft tissue first (the default), lung second
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
    return ds


def write_ct_study(
    out_dir: Path | str,
    n_slices: int = 300,
    size: int = 512,
    seed: int = 0,
    *,
    compress: bool = False,
    noise_hu: float = 12.0,
    body_part: str = "CHEST",
    anatomy: Anatomy | None = None,
    progress: Callable[[int, int], None] | None = None,
    ground_truth: Path | str | None = None,
) -> Path:
    """Write a synthetic CT series into ``out_dir`` and return ``out_dir``.

    Files are ``CT0001.dcm`` … in head-to-feet order (InstanceNumber 1 at the
    lung apices). The lesion ground truth goes to ``ground_truth`` (default
    ``out_dir/ground_truth.json``; the bundled sample keeps it beside its
    folder so the folder holds DICOM only). The slices always cover the same
    330 mm of anatomy, so fewer slices mean thicker ones. ``compress`` stores
    RLE Lossless instead of explicit VR little endian.
    """
    if n_slices < 1 or size < 32:
        raise XMedError("A sample study needs at least 1 slice of at least 32×32 pixels.")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise XMedError(f"Cannot create the sample folder {out}: {exc.strerror or exc}") from exc
    anatomy = anatomy or Anatomy()
    grid = Grid(size)
    extent = anatomy.extent_mm
    step = extent / n_slices
    depths = (np.arange(n_slices) + 0.5) * step
    # centre each lesion on the nearest slice so even a small nodule shows at full size on thick slices
    lesions = [replace(les, s=float(depths[int(np.argmin(np.abs(depths - les.s)))])) for les in plan_lesions(anatomy, seed)]
    ds = _base_dataset(seed, n_slices, size, grid, step, body_part, anatomy)
    rng = np.random.default_rng([seed, 11])
    outside = ~grid.fov_mask
    origin_xy = float(grid.coords[0])
    slices_gt: list[dict] = []
    extent_of: dict[str, list[int]] = {}
    for k, s in enumerate(depths):
        sl = render_ct_slice(anatomy, float(s), grid, lesions)
        hu = add_noise(sl.hu, rng, noise_hu) if noise_hu > 0 else sl.hu
        stored = np.rint(hu + HU_OFFSET)
        np.clip(stored, 0, MAX_STORED, out=stored)
        pixels = stored.astype(np.uint16)
        pixels[outside] = 0
        z = -float(s)
        sop_uid = _uid(seed, n_slices, size, "instance", k)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(origin_xy, 4), round(origin_xy, 4), round(z, 4)]
        ds.SliceLocation = round(z, 4)
        name = f"CT{k + 1:04d}.dcm"
        if compress:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.compress(RLELossless, pixels, generate_instance_uid=False)
        else:
            ds.PixelData = pixels.tobytes()
        try:
            pydicom.dcmwrite(out / name, ds, enforce_file_format=True)
        except OSError as exc:
            raise XMedError(f"Cannot write {out / name}: {exc.strerror or exc}") from exc
        boxes = []
        for lesion in lesions:
            box = sl.boxes.get(lesion.id)
            if box is None:
                continue
            boxes.append({"lesion_id": lesion.id, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
                          "size_mm": round(lesion.diameter_mm, 1)})
            extent_of.setdefault(lesion.id, []).append(k)
        slices_gt.append({"index": k, "instance_number": k + 1, "file": name, "sop_instance_uid": sop_uid,
                          "z_mm": round(z, 4), "boxes": boxes})
        if progress is not None:
            progress(k + 1, n_slices)
    gt_path = Path(ground_truth) if ground_truth is not None else out / GROUND_TRUTH_NAME
    _write_ground_truth(gt_path, out, ds, grid, step, lesions, extent_of, slices_gt)
    log.info("wrote %d slices of %d×%d to %s", n_slices, size, size, out)
    return out


def _write_ground_truth(path: Path, out: Path, ds: Dataset, grid: Grid, step: float, lesions: list[Lesion],
                       extent_of: dict[str, list[int]], slices_gt: list[dict]) -> None:
    def truth(lesion: Lesion) -> LesionTruth:
        span = extent_of.get(lesion.id)
        return LesionTruth(
            id=lesion.id, organ=lesion.organ, side=lesion.side, location=lesion.location, kind=lesion.kind,
            density=density_of(lesion.organ, lesion.kind), margin=lesion.margin_name,
            size_mm=round(lesion.diameter_mm, 1), hu=lesion.hu,
            center_patient_mm=(round(lesion.x, 2), round(lesion.y, 2), round(-lesion.s, 2)),
            slices=(min(span), max(span)) if span else (),
        )

    doc = {
        "description": "Synthetic CT phantom: lesion boxes per slice",
        "coordinates": "pixels of each slice: x = column, y = row; x1, y1 exclusive",
        "dicom_folder": Path(os.path.relpath(out.resolve(), path.parent.resolve())).as_posix(),
        "study_instance_uid": ds.StudyInstanceUID,
        "series_instance_uid": ds.SeriesInstanceUID,
        "rows": int(ds.Rows),
        "columns": int(ds.Columns),
        "pixel_spacing_mm": [grid.spacing, grid.spacing],
        "slice_spacing_mm": step,
        "lesions": [truth(lesion).to_dict() for lesion in lesions],
        "slices": slices_gt,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))
    except OSError as exc:
        raise XMedError(f"Cannot write the ground truth {path}: {exc.strerror or exc}") from exc
