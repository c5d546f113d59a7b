"""Checks of a finding against the pixels, independent of the model.

Self-consistency cannot catch a model that is consistently wrong; these checks read
the frame itself (stored values after the modality LUT: Hounsfield units on CT) and
its geometry, and compare them with what the finding's sentence says about its box:

- ``size``: a stated size (mm or cm, the largest dimension) against the box's longer
  side in mm (pixel spacing); fails when they differ by more than
  :data:`SIZE_TOLERANCE_RATIO` (the larger over the smaller) *and* more than
  :data:`SIZE_TOLERANCE_MM`;
- ``side``: a stated right/left against the box centre in patient coordinates
  (DICOM LPS: +x is the patient's left) relative to the body's centre on the slice;
- ``density``: hypo/hyper/isodense, fat, air or calcified against the HU in the box's
  centre compared with a ring around the box (CT only);
- ``in_body``: a box that is mostly air below :data:`AIR_HU` *and* mostly outside the
  body outline (CT only) fails.

Each check is a :class:`inference.reliability.checks.Check` with its inputs; a check
that cannot run (no geometry, not CT, no pixel spacing) is recorded as not checked
(``passed`` None), and a statement the sentence does not make is not checked at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from app.dicom.model import Volume
from inference.imaging import PatientBox, pixel_box_to_patient
from inference.reliability.checks import EVIDENCE, Check, not_checked
from inference.reliability.judges import quantities
from inference.types import Box

#: size: fail when the larger of stated and measured exceeds the smaller by more than this share …
SIZE_TOLERANCE_RATIO = 0.5
#: … and they differ by more than this many mm (small lesions in loose boxes stay within it)
SIZE_TOLERANCE_MM = 10.0
#: side: a box centre closer than this to the body's centre (along patient x) is not checked
SIDE_MARGIN_MM = 5.0
#: density: hypo/hyperdense means the box's centre is at least this much below/above its ring (median HU)
DENSITY_MARGIN_HU = 10.0
#: density: isodense means the centre is within this of its ring
ISO_TOLERANCE_HU = 15.0
#: fat: at least this share of the centre's pixels in the fat range
FAT_HU = (-190.0, -30.0)
FAT_MIN_FRACTION = 0.3
#: air: a pixel below this is air; a stated air/gas needs this share of the centre
AIR_HU = -900.0
AIR_MIN_FRACTION = 0.2
#: calcified: at least this share of the box above CALCIUM_HU
CALCIUM_HU = 200.0
CALCIFIED_MIN_FRACTION = 0.02
#: in_body: fails when more than this share of the box is air and more than this share is outside the body
OUTSIDE_FRACTION = 0.5
#: body outline on CT: tissue above this, with the holes (lungs, bowel gas) inside it filled
BODY_HU = -500.0
#: the box's centre: the middle CORE_FRACTION of its width and height
CORE_FRACTION = 0.5
#: the ring: the box grown by RING_FRACTION of its size on each side (at least RING_MIN_PX), minus the box
RING_FRACTION = 0.25
RING_MIN_PX = 2
_MIN_CORE_PIXELS = 4
_MIN_RING_PIXELS = 8


@dataclass(frozen=True, eq=False)
class FramePixels:
    """One frame's values and geometry, kept with an answer so its boxes can be checked later."""

    values: np.ndarray | None  # (rows, cols) float32 after the modality LUT (HU on CT); None for colour
    modality: str
    frame: int = 0
    spacing: tuple[float, float] | None = None  # (row, column) mm
    origin: np.ndarray | None = None  # ImagePositionPatient of this frame (centre of its first pixel)
    row_direction: np.ndarray | None = None  # direction of increasing column
    col_direction: np.ndarray | None = None  # direction of increasing row
    shape: tuple[int, int] = (0, 0)  # (rows, columns) of the frame

    @classmethod
    def from_volume(cls, volume: Volume, frame: int) -> "FramePixels":
        values = None if volume.is_color else np.ascontiguousarray(volume.values(frame), dtype=np.float32)
        geo = volume.geometry
        spacing = tuple(geo.spacing) if geo is not None else _instance_spacing(volume)
        return cls(
            values=values,
            modality=(volume.series.modality or "").strip().upper(),
            frame=frame,
            spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
            origin=None if geo is None else np.asarray(geo.origins[frame], dtype=float),
            row_direction=None if geo is None else np.asarray(geo.row_direction, dtype=float),
            col_direction=None if geo is None else np.asarray(geo.col_direction, dtype=float),
            shape=(int(volume.frames.shape[1]), int(volume.frames.shape[2])),
        )

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT" and self.values is not None

    @property
    def has_geometry(self) -> bool:
        return self.origin is not None and self.spacing is not None

    def to_patient(self, x: float, y: float) -> np.ndarray:
        """Edge coordinates (x = column) → patient mm (pixel centres are at edge − 0.5)."""
        assert self.origin is not None and self.spacing is not None
        rs, cs = self.spacing
        return self.origin + (x - 0.5) * cs * self.row_direction + (y - 0.5) * rs * self.col_direction

    def box_mm(self, box: Box) -> PatientBox | None:
        if not self.has_geometry:
            return None
        return pixel_box_to_patient(box, self.origin, self.row_direction, self.col_direction, self.spacing)

    @cached_property
    def body(self) -> np.ndarray | None:
        """The body outline (bool, rows × cols): tissue with its enclosed holes filled; None without values."""
        if self.values is None:
            return None
        v = self.values
        if self.is_ct:
            tissue = v > BODY_HU
        else:
            lo, hi = np.percentile(v, [1, 99])
            tissue = v > lo + 0.1 * (hi - lo) if hi > lo else np.zeros(v.shape, bool)
        return _fill(tissue)

    def body_centre(self) -> tuple[float, float, str]:
        """(x, y) edge coordinates of the body's centre on this frame, and what it is."""
        body = self.body
        if body is not None and body.any():
            rows, cols = np.nonzero(body)
            return float(cols.mean()) + 0.5, float(rows.mean()) + 0.5, "the body's centre"
        rows, cols = self.values.shape[:2] if self.values is not None else self.shape
        return cols / 2, rows / 2, "the image centre"


def _instance_spacing(volume: Volume) -> tuple[float, float] | None:
    for inst in volume.series.instances:
        if inst.pixel_spacing:
            return inst.pixel_spacing
    return None


def _fill(mask: np.ndarray) -> np.ndarray:
    """Fill what each row and each column encloses, and keep where both agree: the lungs inside
    the chest wall are body, air beside the patient is not."""
    if not mask.any():
        return mask.copy()

    def spans(m: np.ndarray) -> np.ndarray:
        out = np.zeros_like(m)
        has = m.any(axis=1)
        first = np.argmax(m, axis=1)
        last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
        idx = np.arange(m.shape[1])[None, :]
        out[has] = (idx >= first[has, None]) & (idx <= last[has, None])
        return out

    return (spans(mask) & spans(mask.T).T) | mask


# ------------------------------------------------------------------------ what the sentence says

_SIDE = re.compile(r"\b(right|left)(?:[- ]sided)?\b(?!\s+(?:ventric\w*|atri(?:um|al)|heart|coronary|"
                   r"main\s+coronary|bundle))", re.IGNORECASE)
_BILATERAL = re.compile(r"\b(?:bilateral(?:ly)?|both\s+sides|on\s+both)\b", re.IGNORECASE)

_DENSITY_WORDS: tuple[tuple[str, str], ...] = (
    ("calcified", r"calcifi\w*|calcific"),
    ("fat", r"fat|fatty|fat[- ]containing|lipomatous"),
    ("air", r"air|gas|air[- ]filled|gas[- ]containing|cavitary|cavitating"),
    ("hypodense", r"hypodens\w*|hypoattenuat\w*|hypointens\w*|low[- ](?:attenuation|density)"),
    ("hyperdense", r"hyperdens\w*|hyperattenuat\w*|hyperintens\w*|high[- ](?:attenuation|density)"),
    ("isodense", r"isodens\w*|isoattenuat\w*|isointens\w*"),
)
_DENSITY = [(name, re.compile(rf"\b(?:{rx})\b", re.IGNORECASE)) for name, rx in _DENSITY_WORDS]


def stated_size_mm(text: str) -> tuple[float, ...] | None:
    """The first length the sentence states, in mm (largest dimension first)."""
    for q in quantities(text):
        if q.dimension == "length" and q.values and q.values[0] > 0:
            return q.values
    return None


def stated_side(text: str, phrase: str = "") -> str | None:
    """"right", "left" or "both" as the sentence places the finding (the side word nearest
    the phrase); None when it names no side."""
    if _BILATERAL.search(text):
        return "both"
    hits = [(m.start(), m.group(1).lower()) for m in _SIDE.finditer(text)]
    if not hits:
        return None
    where = text.casefold().find(phrase.casefold()) if phrase else -1
    if where < 0 or len({s for _, s in hits}) == 1:
        sides = {s for _, s in hits}
        return hits[0][1] if len(sides) == 1 else _nearest(hits, 0)
    return _nearest(hits, where)


def _nearest(hits: list[tuple[int, str]], at: int) -> str | None:
    ranked = sorted(hits, key=lambda h: abs(h[0] - at))
    if len(ranked) > 1 and abs(ranked[0][0] - at) == abs(ranked[1][0] - at) and ranked[0][1] != ranked[1][1]:
        return None
    return ranked[0][1]


def stated_density(text: str) -> str | None:
    """hypodense, hyperdense, isodense, fat, air or calcified, as the sentence says it (first match wins
    in that order of specificity: calcified, fat, air, then hypo/hyper/iso)."""
    for name, rx in _DENSITY:
        if rx.search(text):
            return name
    return None


# ------------------------------------------------------------------------ the checks

def sizes_disagree(stated_mm: float, measured_mm: float) -> bool:
    """The size rule of every check: off by more than SIZE_TOLERANCE_RATIO *and* SIZE_TOLERANCE_MM."""
    big, small = max(stated_mm, measured_mm), max(min(stated_mm, measured_mm), 1e-6)
    return big / small - 1.0 > SIZE_TOLERANCE_RATIO and abs(stated_mm - measured_mm) > SIZE_TOLERANCE_MM


def check_size(text: str, box: Box, pixels: FramePixels | None) -> Check | None:
    stated = stated_size_mm(text)
    if stated is None:
        return None
    said = _mm_text(stated)
    if pixels is None or pixels.spacing is None:
        return not_checked("size", f"the text says {said}, but the image has no pixel spacing to measure the box",
                           stated_mm=stated)
    rs, cs = pixels.spacing
    w, h = box.width * cs, box.height * rs
    measured = max(w, h)
    big = max(stated[0], measured)
    small = max(min(stated[0], measured), 1e-6)
    ratio = big / small - 1.0
    diff = abs(stated[0] - measured)
    inputs = {"stated_mm": stated, "box_mm": (round(w, 1), round(h, 1)), "difference_mm": round(diff, 1),
              "ratio": round(ratio, 3), "tolerance_ratio": SIZE_TOLERANCE_RATIO, "tolerance_mm": SIZE_TOLERANCE_MM}
    box_text = f"{w:.0f} × {h:.0f} mm"
    if sizes_disagree(stated[0], measured):
        return Check("size", False, f"the text says {said} but the box measures {box_text} "
                     f"(off by {diff:.0f} mm, {ratio:.0%})", EVIDENCE, inputs)
    return Check("size", True, f"the text says {said}; the box measures {box_text}", EVIDENCE, inputs)


def check_side(text: str, phrase: str, box: Box, pixels: FramePixels | None) -> Check | None:
    side = stated_side(text, phrase)
    if side is None or side == "both":
        return None
    if pixels is None or not pixels.has_geometry:
        return not_checked("side", f"the text says {side}, but the image has no patient geometry "
                           "(Image Position/Orientation) to tell the patient's sides", stated=side)
    assert pixels.row_direction is not None and pixels.col_direction is not None
    if max(abs(pixels.row_direction[0]), abs(pixels.col_direction[0])) < 0.5:
        return not_checked("side", f"the text says {side}, but this slice does not run across the body "
                           "(sagittal): one slice cannot tell the side", stated=side)
    bx, by = (box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2
    cx, cy, ref = pixels.body_centre()
    box_x = float(pixels.to_patient(bx, by)[0])
    ref_x = float(pixels.to_patient(cx, cy)[0])
    offset = box_x - ref_x  # LPS: + is the patient's left
    inputs = {"stated": side, "box_centre_x_mm": round(box_x, 1), "reference_x_mm": round(ref_x, 1),
              "reference": ref, "margin_mm": SIDE_MARGIN_MM}
    if abs(offset) < SIDE_MARGIN_MM:
        return not_checked("side", f"the text says {side}, but the box centre is within {SIDE_MARGIN_MM:.0f} mm "
                           f"of {ref}", **inputs)
    found = "left" if offset > 0 else "right"
    where = f"the box centre is {abs(offset):.0f} mm to the patient's {found} of {ref}"
    if found == side:
        return Check("side", True, f"the text says {side}; {where}", EVIDENCE, inputs)
    return Check("side", False, f"the text says {side} but {where}", EVIDENCE, inputs)


def check_density(text: str, box: Box, pixels: FramePixels | None) -> Check | None:
    density = stated_density(text)
    if density is None:
        return None
    if pixels is None or not pixels.is_ct:
        modality = pixels.modality if pixels is not None and pixels.modality else "not CT"
        return not_checked("density", f"the text says {density}; density is checked in Hounsfield units, "
                           f"on CT only (this image: {modality})", stated=density)
    core, ring = _core_and_ring(pixels.values, box)
    if core.size < _MIN_CORE_PIXELS or (density in ("hypodense", "hyperdense", "isodense") and ring.size < _MIN_RING_PIXELS):
        return not_checked("density", f"the text says {density}, but the box is too small to measure", stated=density)
    inside = float(np.median(core))
    around = float(np.median(ring)) if ring.size else float("nan")
    inputs = {"stated": density, "inside_hu": round(inside, 1), "around_hu": round(around, 1)}
    hu = f"centre {inside:.0f} HU, around it {around:.0f} HU"
    if density == "hypodense":
        ok = inside <= around - DENSITY_MARGIN_HU
        why = f"{hu}" + ("" if ok else f": not {DENSITY_MARGIN_HU:.0f} HU lower")
    elif density == "hyperdense":
        ok = inside >= around + DENSITY_MARGIN_HU
        why = f"{hu}" + ("" if ok else f": not {DENSITY_MARGIN_HU:.0f} HU higher")
    elif density == "isodense":
        ok = abs(inside - around) <= ISO_TOLERANCE_HU
        why = f"{hu}" + ("" if ok else f": they differ by more than {ISO_TOLERANCE_HU:.0f} HU")
    elif density == "fat":
        share = float(np.mean((core >= FAT_HU[0]) & (core <= FAT_HU[1])))
        ok = share >= FAT_MIN_FRACTION
        inputs["fat_share"] = round(share, 3)
        why = f"{share:.0%} of the centre is fat ({FAT_HU[0]:.0f} to {FAT_HU[1]:.0f} HU)"
    elif density == "air":
        share = float(np.mean(core < AIR_HU))
        ok = share >= AIR_MIN_FRACTION
        inputs["air_share"] = round(share, 3)
        why = f"{share:.0%} of the centre is air (below {AIR_HU:.0f} HU)"
    else:  # calcified
        values = _crop(pixels.values, box)
        share = float(np.mean(values > CALCIUM_HU)) if values.size else 0.0
        ok = share >= CALCIFIED_MIN_FRACTION
        inputs["calcium_share"] = round(share, 3)
        why = f"{share:.0%} of the box is above {CALCIUM_HU:.0f} HU"
    if ok:
        return Check("density", True, f"the text says {density}; {why}", EVIDENCE, inputs)
    return Check("density", False, f"the text says {density} but {why}", EVIDENCE, inputs)


def check_in_body(box: Box, pixels: FramePixels | None) -> Check | None:
    """CT only (None elsewhere: no claim that HU can test)."""
    if pixels is None or not pixels.is_ct:
        return None
    values = _crop(pixels.values, box)
    if values.size == 0:
        return not_checked("in_body", "the box covers no pixel")
    body = _crop(pixels.body, box)
    air = float(np.mean(values < AIR_HU))
    outside = float(np.mean(~body))
    inputs = {"air_share": round(air, 3), "outside_share": round(outside, 3), "air_hu": AIR_HU}
    if air > OUTSIDE_FRACTION and outside > OUTSIDE_FRACTION:
        return Check("in_body", False, f"{air:.0%} of the box is air (below {AIR_HU:.0f} HU) and {outside:.0%} "
                     "lies outside the body", EVIDENCE, inputs)
    return Check("in_body", True, f"{1 - outside:.0%} of the box lies inside the body", EVIDENCE, inputs)


def evidence_checks(text: str, phrase: str, box: Box, pixels: FramePixels | None) -> list[Check]:
    """Every check that applies to a finding's sentence and box (in frame pixels), in a fixed order."""
    checks = (check_in_body(box, pixels), check_size(text, box, pixels), check_side(text, phrase, box, pixels),
              check_density(text, box, pixels))
    return [c for c in checks if c is not None]


def box_side(box: Box, pixels: FramePixels | None) -> str | None:
    """"right" or "left": the patient's side the box centre lies on (None when it cannot be told)."""
    if pixels is None or not pixels.has_geometry:
        return None
    assert pixels.row_direction is not None and pixels.col_direction is not None
    if max(abs(pixels.row_direction[0]), abs(pixels.col_direction[0])) < 0.5:
        return None
    cx, cy, _ = pixels.body_centre()
    offset = float(pixels.to_patient((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)[0] - pixels.to_patient(cx, cy)[0])
    if abs(offset) < SIDE_MARGIN_MM:
        return None
    return "left" if offset > 0 else "right"


def box_size_mm(box: Box, pixels: FramePixels | None) -> float | None:
    """The box's longer side in mm (None without pixel spacing)."""
    if pixels is None or pixels.spacing is None:
        return None
    return max(box.width * pixels.spacing[1], box.height * pixels.spacing[0])


# ------------------------------------------------------------------------ pixels

def _bounds(box: Box, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    rows, cols = shape[:2]
    x0 = int(np.clip(np.floor(box.x0), 0, cols))
    x1 = int(np.clip(np.ceil(box.x1), 0, cols))
    y0 = int(np.clip(np.floor(box.y0), 0, rows))
    y1 = int(np.clip(np.ceil(box.y1), 0, rows))
    return x0, y0, x1, y1


def _crop(a: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = _bounds(box, a.shape)
    return a[y0:y1, x0:x1]


def box_contrast(values: np.ndarray, box: Box) -> float | None:
    """How much the box's centre stands out from the ring around it: |median(centre) − median(ring)| in the
    values' units (HU on CT), as the density check measures them; None when either holds too few pixels."""
    core, ring = _core_and_ring(np.asarray(values), box)
    if core.size < _MIN_CORE_PIXELS or ring.size < _MIN_RING_PIXELS:
        return None
    return abs(float(np.median(core)) - float(np.median(ring)))


def _core_and_ring(values: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The values in the middle of the box and in a ring around it (flattened)."""
    w, h = box.width, box.height
    mx, my = w * (1 - CORE_FRACTION) / 2, h * (1 - CORE_FRACTION) / 2
    core = _crop(values, Box(box.x0 + mx, box.y0 + my, box.x1 - mx, box.y1 - my)).ravel()
    gx, gy = max(RING_MIN_PX, w * RING_FRACTION), max(RING_MIN_PX, h * RING_FRACTION)
    ox0, oy0, ox1, oy1 = _bounds(Box(box.x0 - gx, box.y0 - gy, box.x1 + gx, box.y1 + gy), values.shape)
    ix0, iy0, ix1, iy1 = _bounds(box, values.shape)
    outer = np.zeros(values.shape, bool)
    outer[oy0:oy1, ox0:ox1] = True
    outer[iy0:iy1, ix0:ix1] = False
    return core, values[outer]


def _mm_text(values: tuple[float, ...]) -> str:
    return " × ".join(f"{v:g}" for v in values) + " mm"
