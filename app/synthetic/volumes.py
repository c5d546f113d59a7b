"""Phantom CT studies in memory: the volumes of ``xmedgpt sample`` without the DICOM files.

:func:`random_study` draws a study the way :func:`app.synthetic.sample.write_ct_study` builds
one (the same :class:`~app.synthetic.anatomy.Anatomy`, 512-px :class:`~app.synthetic.anatomy.Grid`
over 380 mm, slices covering the anatomy's extent, each lesion centred on its nearest slice,
Gaussian noise, stored value = HU + 1024 clipped to 12 bits, 0 outside the field of view) but
with a jittered body and 0–6 lesions drawn as the training corpus's generator draws them
(:mod:`app.synthetic.cases`: lung nodules and masses 6–45 mm, liver lesions 8–50 mm).

:func:`render_stored` turns stored values into what the viewer shows in a window: the same
LINEAR window function and uint8 rounding as :func:`app.dicom.display.render` applies to a
loaded CT series (tested bit for bit against a written study).

What one slice shows of a lesion is decided from the rendered pixels and the lesion's box only
(:func:`lesion_visibility`), so a training corpus written from these volumes and
``xmedgpt eval`` on a study written by ``xmedgpt sample`` apply the same rule: a lesion is
*visible* on a slice in a window when its cross-section is at least :data:`MIN_SECTION_MM`
across and its median grey level differs from the ring around it by at least
:data:`MIN_CONTRAST` grey levels; :func:`section_size_mm` is its size on that slice (the box's
longer side in mm), which is what is bucketed by :func:`inference.evaluation.sizes.size_bucket`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from app.dicom.display import to_uint8, window_to_unit
from app.dicom.model import Window
from app.dicom.presets import find_preset
from app.synthetic.anatomy import (
    Anatomy,
    Grid,
    Lesion,
    Tissue,
    add_noise,
    render_ct_slice,
)
from app.synthetic.cases import _ct_liver_lesion, _ct_lung_lesion, _lung_lobe
from app.synthetic.truth import LesionTruth, density_of, to_1000

HU_OFFSET = 1024  # as the sample study: stored = HU + 1024, RescaleIntercept -1024
MAX_STORED = 4095  # BitsStored 12
#: the header window of a sample study (its first WindowCenter/WindowWidth: "SOFT TISSUE")
HEADER_WINDOW = Window(400.0, 40.0, "soft tissue")
#: the windows a reader uses on these studies, by the names the CLI and the corpus use
STUDY_WINDOWS: tuple[str, ...] = ("soft_tissue", "lung", "liver", "bone", "default")
MIN_SECTION_MM = 4.0  # a cross-section smaller than this is not called a lesion on the slice
MIN_CONTRAST = 6.0  # grey levels between the lesion's median and its ring's median


def study_window(name: str) -> Window | None:
    """The :class:`Window` of a study window name (``default``: None, the header's window)."""
    key = name.strip().lower()
    if key in ("default", "header"):
        return None
    window = find_preset(key)
    if window is None:
        raise ValueError(f"unknown window {name!r}; use one of {', '.join(STUDY_WINDOWS)} or 'all'")
    return window


def render_stored(stored: np.ndarray, window: Window | None) -> np.ndarray:
    """Stored CT values (uint16, intercept −1024) → the viewer's uint8 in ``window`` (None: header)."""
    w = HEADER_WINDOW if window is None else window
    return to_uint8(window_to_unit(stored.astype(np.float64) - HU_OFFSET, Window(w.width, w.center)))


# ----------------------------------------------------------------------------- visibility


def section_size_mm(box: tuple[int, int, int, int], spacing_mm: float) -> float:
    """A lesion's size on one slice: the longer side of its pixel box in mm (0.1 mm)."""
    return round(max(box[2] - box[0], box[3] - box[1]) * spacing_mm, 1)


def lesion_contrast(image: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """|median grey of the ellipse inscribed in ``box`` (inner 70 %) − median of a ring around it|."""
    x0, y0, x1, y1 = (int(v) for v in box)
    h, w = image.shape[:2]
    grey = image if image.ndim == 2 else image[..., 0]
    bw, bh = max(x1 - x0, 1), max(y1 - y0, 1)
    pad = max(3, int(math.ceil(0.4 * max(bw, bh))))
    r0, r1, c0, c1 = max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)
    rows = np.arange(r0, r1)[:, None] + 0.5
    cols = np.arange(c0, c1)[None, :] + 0.5
    cx, cy, rx, ry = (x0 + x1) / 2.0, (y0 + y1) / 2.0, bw / 2.0, bh / 2.0
    q = ((cols - cx) / rx) ** 2 + ((rows - cy) / ry) ** 2
    inner = q <= 0.7 ** 2
    gap = 2.0 / max(min(rx, ry), 1.0)  # two pixels outside the box's ellipse
    ring = (q >= (1.0 + gap) ** 2) & (q <= ((max(rx, ry) + pad) / max(rx, ry)) ** 2)
    patch = grey[r0:r1, c0:c1].astype(np.float64)
    if not inner.any() or not ring.any():
        return 0.0
    return float(abs(np.median(patch[inner]) - np.median(patch[ring])))


def lesion_visibility(image: np.ndarray, box: tuple[int, int, int, int], spacing_mm: float) -> tuple[bool, float]:
    """(visible, contrast) of a lesion box on a rendered slice (see the module docstring)."""
    contrast = lesion_contrast(image, box)
    return section_size_mm(box, spacing_mm) >= MIN_SECTION_MM and contrast >= MIN_CONTRAST, contrast


# ----------------------------------------------------------------------------- studies


@dataclass
class StudySlice:
    """One axial slice: stored values, tissue labels and each lesion's pixel box on it."""

    index: int
    depth_mm: float
    stored: np.ndarray  # uint16 (rows, cols)
    labels: np.ndarray  # uint8 tissue labels (anatomy.Tissue, LESION + i)
    boxes: dict[str, tuple[int, int, int, int]]


@dataclass
class PhantomStudy:
    """A CT study in memory: anatomy, slice depths, lesions; slices rendered on demand."""

    seed: int  # the noise of slice k is drawn from (seed, index, k)
    index: int
    anatomy: Anatomy
    grid: Grid
    depths: np.ndarray  # mm below the thoracic inlet, head to feet
    lesions: list[Lesion]
    locations: dict[str, str]  # lesion id → anatomical location
    noise_hu: float = 12.0
    structures_present: dict[int, set[int]] = field(default_factory=dict)

    @property
    def spacing_mm(self) -> float:
        return self.grid.spacing

    @property
    def slice_spacing_mm(self) -> float:
        return float(self.anatomy.extent_mm / len(self.depths))

    def lesion_slices(self, lesion: Lesion) -> list[int]:
        """Indices of the slices the lesion's ellipsoid crosses."""
        return [k for k, s in enumerate(self.depths) if abs(s - lesion.s) < lesion.rs]

    def render(self, k: int) -> StudySlice:
        """Slice ``k`` as :func:`~app.synthetic.sample.write_ct_study` stores it (noise drawn from (seed, k))."""
        s = float(self.depths[k])
        sl = render_ct_slice(self.anatomy, s, self.grid, self.lesions)
        hu = add_noise(sl.hu, np.random.default_rng([self.seed, self.index, 11, k]), self.noise_hu) if self.noise_hu > 0 else sl.hu
        stored = np.rint(hu + HU_OFFSET)
        np.clip(stored, 0, MAX_STORED, out=stored)
        pixels = stored.astype(np.uint16)
        pixels[~self.grid.fov_mask] = 0
        return StudySlice(k, s, pixels, sl.labels, dict(sl.boxes))

    def truth(self, lesion: Lesion) -> LesionTruth:
        """The study-level record (as ground_truth.json has it): diameter, HU, centre, slice range."""
        span = self.lesion_slices(lesion)
        return LesionTruth(
            id=lesion.id, organ=lesion.organ, side=lesion.side, location=self.locations[lesion.id], kind=lesion.kind,
            density=density_of(lesion.organ, lesion.kind), margin=lesion.margin_name,
            size_mm=round(lesion.diameter_mm, 1), hu=round(lesion.hu, 1),
            center_patient_mm=(round(lesion.x, 2), round(lesion.y, 2), round(-lesion.s, 2)),
            slices=(min(span), max(span)) if span else ())


def slice_truth(study: PhantomStudy, lesion: Lesion, box: tuple[int, int, int, int]) -> LesionTruth:
    """The lesion as one slice shows it: its box there and its size on the slice (:func:`section_size_mm`)."""
    size = study.grid.size
    return LesionTruth(
        id=lesion.id, organ=lesion.organ, side=lesion.side, location=study.locations[lesion.id], kind=lesion.kind,
        density=density_of(lesion.organ, lesion.kind), margin=lesion.margin_name,
        size_mm=section_size_mm(box, study.spacing_mm), box=tuple(int(v) for v in box),  # type: ignore[arg-type]
        box_1000=to_1000(box, size, size))


def random_study(seed: int, index: int = 0, n_slices: int = 120, size: int = 512, max_lesions: int = 6,
                 lesion_mm: tuple[float, float] | None = None) -> PhantomStudy:
    """Study ``index`` of ``seed`` (depends on these alone): jittered anatomy, 0..``max_lesions`` lung and liver lesions (the corpus generator's
    sizes unless ``lesion_mm``), each centred on its nearest slice as in the sample study."""
    rng = np.random.default_rng([seed, index, 1313])
    anatomy = Anatomy.random(rng)
    grid = Grid(size)
    E = anatomy.extent_mm
    depths = (np.arange(n_slices) + 0.5) * (E / n_slices)
    n = int(rng.integers(0, max_lesions + 1))
    lesions: list[Lesion] = []
    for _ in range(n):
        lung = rng.random() < 0.6
        s = float(rng.uniform(0.15, 0.68) * E) if lung else float(rng.uniform(0.76, 0.93) * E + anatomy.dome_shift)
        s = float(depths[int(np.argmin(np.abs(depths - s)))])
        make = _ct_lung_lesion if lung else _ct_liver_lesion
        lesion = make(rng, anatomy, s, len(lesions), lesions, lesion_mm)
        if lesion is not None and all(math.dist((lesion.x, lesion.y, lesion.s), (o.x, o.y, o.s))
                                      > (lesion.diameter_mm + o.diameter_mm) / 2 + 4.0 for o in lesions):
            lesions.append(replace(lesion, id=f"L{len(lesions) + 1}"))
    locations: dict[str, str] = {}
    for lesion in lesions:
        if lesion.location:
            locations[lesion.id] = lesion.location
        else:
            labels = render_ct_slice(anatomy, lesion.s, Grid(128, grid.fov_mm), table=False).labels
            heart = bool((labels == Tissue.HEART).any())
            locations[lesion.id] = _lung_lobe(lesion, heart, anatomy.lung_centre(lesion.side)[1])
    return PhantomStudy(seed, index, anatomy, grid, depths, lesions, locations, noise_hu=float(rng.uniform(6.0, 18.0)))
