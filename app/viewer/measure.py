"""Measurements on one frame, in millimetres and modality units (HU for CT).

Points are in image pixel coordinates (x = column, y = row) where pixel (c, r)
covers [c, c+1) × [r, r+1); its centre is (c + 0.5, r + 0.5). A pixel belongs
to a region when its centre lies inside the drawn shape. Spacing comes from the
series geometry: ``(row spacing, column spacing)`` in mm, as in PixelSpacing.
Without geometry the unit is the pixel and ``unit`` says so.

Angles are measured in millimetres, not pixels: with anisotropic pixels (0.5 mm rows,
0.8 mm columns) a line at 45° on the pixel grid is not at 45° in the patient, and the
angle the reader reads must be the patient's. :func:`angle` is the angle at a vertex
(0–180°), :func:`cobb` the angle between two lines (0–90°, which way each line was drawn
does not matter). :func:`evaluate` gives every kind's numbers and label in one place, for
the viewport, the saved workspace and the SR export alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.dicom.model import Geometry


def spacing_of(geometry: Geometry | None) -> tuple[float, float] | None:
    """(row, column) spacing in mm, or None when the series has no usable PixelSpacing."""
    if geometry is None:
        return None
    row_sp, col_sp = (float(v) for v in geometry.spacing)
    if not (math.isfinite(row_sp) and math.isfinite(col_sp)) or row_sp <= 0 or col_sp <= 0:
        return None
    return (row_sp, col_sp)


@dataclass(frozen=True)
class Length:
    value: float
    unit: str  # "mm" or "px"

    def __str__(self) -> str:
        return f"{self.value:.1f} {self.unit}"


def length(p0: tuple[float, float], p1: tuple[float, float], spacing: tuple[float, float] | None) -> Length:
    """Distance between two image points, in mm when the spacing is known."""
    dx = float(p1[0]) - float(p0[0])
    dy = float(p1[1]) - float(p0[1])
    if spacing is None:
        return Length(math.hypot(dx, dy), "px")
    row_sp, col_sp = spacing
    return Length(math.hypot(dx * col_sp, dy * row_sp), "mm")


@dataclass(frozen=True)
class RoiStats:
    """Statistics of the pixels inside a region, as shown beside an ROI."""

    mean: float
    sd: float
    min: float
    max: float
    area: float  # of the drawn shape, in mm² (or px² without spacing)
    pixels: int
    area_unit: str = "mm²"
    value_unit: str = "HU"

    def lines(self) -> list[str]:
        u = f" {self.value_unit}" if self.value_unit else ""
        if self.pixels == 0:
            return [f"Area {self.area:.1f} {self.area_unit}", "no pixel inside"]
        return [
            f"Mean {self.mean:.1f}{u}  SD {self.sd:.1f}",
            f"Min {self.min:.0f}  Max {self.max:.0f}",
            f"Area {self.area:.1f} {self.area_unit}",
        ]


def _bounds(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def rect_mask(shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Pixels of a (rows, cols) image whose centres lie inside the rectangle."""
    x0, y0, x1, y1 = _bounds(x0, y0, x1, y1)
    rows, cols = shape
    cx = np.arange(cols) + 0.5
    cy = np.arange(rows) + 0.5
    return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]


def ellipse_mask(shape: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Pixels whose centres lie inside the ellipse inscribed in the rectangle."""
    x0, y0, x1, y1 = _bounds(x0, y0, x1, y1)
    rows, cols = shape
    a = (x1 - x0) / 2.0
    b = (y1 - y0) / 2.0
    if a <= 0 or b <= 0:
        return np.zeros(shape, dtype=bool)
    cx = (np.arange(cols) + 0.5 - (x0 + a)) / a
    cy = (np.arange(rows) + 0.5 - (y0 + b)) / b
    return (cy[:, None] ** 2 + cx[None, :] ** 2) <= 1.0


def _stats(values: np.ndarray, mask: np.ndarray, area: float, spacing, value_unit: str) -> RoiStats:
    unit = "mm²" if spacing is not None else "px²"
    inside = values[mask]
    if inside.size == 0:
        return RoiStats(math.nan, math.nan, math.nan, math.nan, area, 0, unit, value_unit)
    inside = inside.astype(np.float64)
    return RoiStats(
        mean=float(inside.mean()),
        sd=float(inside.std(ddof=1)) if inside.size > 1 else 0.0,
        min=float(inside.min()),
        max=float(inside.max()),
        area=area,
        pixels=int(inside.size),
        area_unit=unit,
        value_unit=value_unit,
    )


def _pixel_area(spacing: tuple[float, float] | None) -> float:
    return 1.0 if spacing is None else spacing[0] * spacing[1]


def rect_stats(
    values: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    spacing: tuple[float, float] | None,
    value_unit: str = "HU",
) -> RoiStats:
    """Mean/SD/min/max of ``values`` (rows, cols) inside a rectangle; area of the rectangle."""
    bx0, by0, bx1, by1 = _bounds(x0, y0, x1, y1)
    area = (bx1 - bx0) * (by1 - by0) * _pixel_area(spacing)
    return _stats(values, rect_mask(values.shape[:2], x0, y0, x1, y1), area, spacing, value_unit)


def ellipse_stats(
    values: np.ndarray,
    x0: float,
    y0: float,
    x1: float,
    y1: float,
    spacing: tuple[float, float] | None,
    value_unit: str = "HU",
) -> RoiStats:
    """Statistics inside the ellipse inscribed in the rectangle; area π·a·b in mm²."""
    bx0, by0, bx1, by1 = _bounds(x0, y0, x1, y1)
    area = math.pi * (bx1 - bx0) / 2.0 * (by1 - by0) / 2.0 * _pixel_area(spacing)
    return _stats(values, ellipse_mask(values.shape[:2], x0, y0, x1, y1), area, spacing, value_unit)


@dataclass(frozen=True)
class Angle:
    """An angle in degrees (NaN when an arm has no length)."""

    value: float

    def __str__(self) -> str:
        return "—°" if not math.isfinite(self.value) else f"{self.value:.1f}°"


def _mm(p0, p1, spacing: tuple[float, float] | None) -> tuple[float, float]:
    """The vector p0 → p1 in mm (x along the columns, y along the rows); pixels without spacing."""
    dx = float(p1[0]) - float(p0[0])
    dy = float(p1[1]) - float(p0[1])
    if spacing is None:
        return dx, dy
    row_sp, col_sp = spacing
    return dx * col_sp, dy * row_sp


def _between(u: tuple[float, float], v: tuple[float, float]) -> float:
    """Angle between two vectors in degrees, 0–180 (NaN if either has no length)."""
    if math.hypot(*u) < 1e-12 or math.hypot(*v) < 1e-12:
        return math.nan
    cross = u[0] * v[1] - u[1] * v[0]
    dot = u[0] * v[0] + u[1] * v[1]
    return math.degrees(math.atan2(abs(cross), dot))


def angle(p0, vertex, p2, spacing: tuple[float, float] | None) -> Angle:
    """The angle at ``vertex`` between the arms to ``p0`` and ``p2`` (degrees, 0–180), in mm."""
    return Angle(_between(_mm(vertex, p0, spacing), _mm(vertex, p2, spacing)))


def cobb(a0, a1, b0, b1, spacing: tuple[float, float] | None) -> Angle:
    """Cobb angle: the angle between line a0–a1 and line b0–b1 (degrees, 0–90), in mm.

    Lines have no direction, so the acute angle between them is the answer (two endplates
    drawn in either order give the same Cobb angle)."""
    theta = _between(_mm(a0, a1, spacing), _mm(b0, b1, spacing))
    if not math.isfinite(theta):
        return Angle(theta)
    return Angle(min(theta, 180.0 - theta))


#: Measurement kinds and how many image points define each.
POINTS = {"length": 2, "rect": 2, "ellipse": 2, "angle": 3, "cobb": 4}


@dataclass(frozen=True)
class Evaluation:
    """The numbers of one measurement: ``values`` by name (only finite ones), their units, the label."""

    values: dict[str, float]
    unit: str  # length: "mm"/"px"; angles: "deg"; ROIs: the area's unit "mm²"/"px²"
    value_unit: str = ""  # ROIs: the unit of mean/SD/min/max ("HU" for CT, "" otherwise)
    text: str = ""


def evaluate(kind: str, points, spacing: tuple[float, float] | None, values: np.ndarray | None = None,
             value_unit: str = "HU") -> Evaluation:
    """The numbers and label of a ``kind`` measurement over image ``points`` (see :data:`POINTS`).

    ``values`` (rows, cols) is needed for ROIs only. Non-finite numbers (an ROI with no pixel
    inside, an angle arm of no length) are left out of ``values``.
    """
    pts = [(float(x), float(y)) for x, y in points]
    if kind not in POINTS or len(pts) != POINTS[kind]:
        raise ValueError(f"a {kind} measurement needs {POINTS.get(kind, '?')} points, not {len(pts)}")
    if kind == "length":
        ln = length(pts[0], pts[1], spacing)
        return Evaluation({"length": ln.value}, ln.unit, "", str(ln))
    if kind in ("angle", "cobb"):
        a = angle(*pts, spacing) if kind == "angle" else cobb(*pts, spacing)
        label = str(a) if kind == "angle" else f"Cobb {a}"
        return Evaluation({"angle": a.value} if math.isfinite(a.value) else {}, "deg", "", label)
    (x0, y0), (x1, y1) = pts
    if values is None:
        raise ValueError("an ROI needs the frame's values")
    fn = rect_stats if kind == "rect" else ellipse_stats
    st = fn(values, x0, y0, x1, y1, spacing, value_unit)
    nums = {"mean": st.mean, "sd": st.sd, "min": st.min, "max": st.max, "area": st.area, "pixels": float(st.pixels)}
    return Evaluation({k: v for k, v in nums.items() if math.isfinite(v)}, st.area_unit, st.value_unit,
                      "\n".join(st.lines()))


def value_unit_for(modality: str) -> str:
    """Unit of the modality LUT output: HU for CT, none otherwise."""
    return "HU" if modality.upper() == "CT" else ""
