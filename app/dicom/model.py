"""The study model: what a scan finds and what a loaded series holds.

This module is the contract between the DICOM engine (app/dicom) and its users
(the viewer, the assistant, the report). Plain dataclasses, no I/O.

Functions built on it (each in its own module of app/dicom):
- ``scan.scan(paths, progress=None) -> ScanResult``: headers only
  (``stop_before_pixels``), folders, files, DICOMDIR, zip; bad files become
  ``FileProblem`` with a one-line reason, never an exception.
- ``loader.load_series(series, on_frame=None, cancel=None) -> Volume``: decodes
  pixels in slice order; ``on_frame(k, volume)`` is called as each frame lands
  (the viewer shows frame 0 before the rest arrive); ``cancel()`` returning
  True stops early with ``XMedError``.
- ``display.render(volume, k, window, invert=False) -> np.ndarray`` uint8
  (rows, cols) or (rows, cols, 3) for colour: what the reader sees. Passing
  ``display.VOI_LUT`` as the window applies the header's VOI LUT instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FileProblem:
    """A file that could not be read or decoded, with a reason a reader understands."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Window:
    """Window width/centre in output units of the modality LUT (HU for CT)."""

    width: float
    center: float
    name: str = ""

    @property
    def low(self) -> float:
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        return self.center + self.width / 2.0


@dataclass
class Instance:
    """One SOP instance (one file, or one member of a zip) found by a scan."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    rows: int
    columns: int
    number_of_frames: int = 1
    instance_number: int | None = None
    image_position: tuple[float, float, float] | None = None
    image_orientation: tuple[float, float, float, float, float, float] | None = None
    pixel_spacing: tuple[float, float] | None = None  # (row spacing, column spacing) in mm
    slice_thickness: float | None = None
    transfer_syntax_uid: str = ""
    photometric: str = ""
    image_type: tuple[str, ...] = ()
    acquisition_number: int | None = None


@dataclass
class Series:
    """A series: instances sorted along the slice normal, plus what was noticed.

    ``uid`` identifies this stack in the program. A DICOM series that holds
    several stacks (localizers, another plane, another image size) is split:
    the extra stacks get ``"<SeriesInstanceUID>#2"``, ``"#3"``…, and
    ``series_instance_uid`` keeps the real DICOM UID for export and references.
    """

    uid: str
    number: int | None
    description: str
    modality: str
    body_part: str = ""
    instances: list[Instance] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # non-uniform spacing, duplicates, …
    problems: list[FileProblem] = field(default_factory=list)
    series_instance_uid: str = ""
    part: int = 0  # 0 for the main stack, 1.. for split-off stacks

    @property
    def frame_count(self) -> int:
        return sum(i.number_of_frames for i in self.instances)


@dataclass(frozen=True)
class FrameRef:
    """Where a frame of a loaded series comes from: its slice index and the instance (and frame
    within it) that holds it. Boxes on that frame are stored against it (report, SR)."""

    slice_index: int
    sop_instance_uid: str
    series_uid: str
    frame_number: int = 1  # 1-based frame within a multi-frame instance


@dataclass
class StudyEntry:
    uid: str
    date: str = ""
    time: str = ""
    description: str = ""
    accession: str = ""
    series: list[Series] = field(default_factory=list)


@dataclass
class Patient:
    id: str
    name: str
    birth_date: str = ""
    sex: str = ""
    studies: list[StudyEntry] = field(default_factory=list)


@dataclass
class ScanResult:
    """Everything a scan found: the Patient → Study → Series → Instance tree and bad files."""

    patients: list[Patient] = field(default_factory=list)
    problems: list[FileProblem] = field(default_factory=list)

    def all_series(self) -> list[Series]:
        return [s for p in self.patients for st in p.studies for s in st.series]


@dataclass
class Geometry:
    """Per-frame plane geometry: pixel (col, row) ↔ patient (x, y, z) in mm (LPS)."""

    origins: np.ndarray  # (n, 3) ImagePositionPatient of each frame
    row_direction: np.ndarray  # (3,) direction of increasing column index
    col_direction: np.ndarray  # (3,) direction of increasing row index
    spacing: tuple[float, float]  # (row spacing, column spacing) mm

    def pixel_to_patient(self, frame: int, col: float, row: float) -> np.ndarray:
        o = self.origins[frame]
        return o + col * self.spacing[1] * self.row_direction + row * self.spacing[0] * self.col_direction

    def patient_to_pixel(self, frame: int, point: np.ndarray) -> tuple[float, float]:
        d = np.asarray(point, dtype=float) - self.origins[frame]
        return (
            float(d @ self.row_direction) / self.spacing[1],
            float(d @ self.col_direction) / self.spacing[0],
        )


@dataclass
class Volume:
    """A loaded series (or frame stack).

    ``frames`` holds the stored values in slice order, shape (n, rows, cols) for
    grey images (int16 where they fit, else uint16/int32/float32) or
    (n, rows, cols, 3) uint8 RGB. ``slopes``/``intercepts`` are the per-frame
    modality LUT (value = stored * slope + intercept, HU for CT). ``loaded`` is
    how many frames have arrived so far during a progressive load.
    """

    series: Series
    frames: np.ndarray
    slopes: np.ndarray
    intercepts: np.ndarray
    geometry: Geometry | None
    default_window: Window | None
    photometric: str = "MONOCHROME2"
    voi_lut: object | None = None  # app.dicom.luts.Lut decoded from the header; render(..., display.VOI_LUT) applies it
    loaded: int = 0
    frame_problems: dict[int, str] = field(default_factory=dict)

    @property
    def is_color(self) -> bool:
        return self.frames.ndim == 4

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def values(self, k: int) -> np.ndarray:
        """Frame k after the modality LUT (float32; HU for CT)."""
        f = self.frames[k]
        if self.is_color:
            return f
        return f.astype(np.float32) * np.float32(self.slopes[k]) + np.float32(self.intercepts[k])
