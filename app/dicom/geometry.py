"""Slice geometry: plane normals, ordering along the normal, spacing checks and
the per-frame :class:`~app.dicom.model.Geometry` (pixel ↔ patient, LPS mm)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.dicom.model import Geometry

#: Two orientations count as the same plane when their directions agree this well (cos).
SAME_DIRECTION = 0.9995


def normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit slice normal (row direction × column direction) of an ImageOrientationPatient."""
    o = np.asarray(orientation, dtype=float)
    n = np.cross(o[:3], o[3:6])
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise ValueError("degenerate ImageOrientationPatient")
    return n / norm


def same_orientation(a: Sequence[float] | None, b: Sequence[float] | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if tuple(a) == tuple(b):
        return True  # the usual case inside a series: identical header values
    a_ = np.asarray(a, dtype=float)
    b_ = np.asarray(b, dtype=float)
    return bool(
        _cos(a_[:3], b_[:3]) > SAME_DIRECTION and _cos(a_[3:], b_[3:]) > SAME_DIRECTION
    )


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu < 1e-9 or nv < 1e-9:
        return 0.0
    return float(u @ v / (nu * nv))


def distances_along(positions: np.ndarray, orientation: Sequence[float]) -> np.ndarray:
    """Signed distance of each ImagePositionPatient along the slice normal (mm)."""
    return np.asarray(positions, dtype=float).reshape(-1, 3) @ normal(orientation)


def spacing_warnings(distances: np.ndarray) -> tuple[float | None, list[str]]:
    """Check sorted slice distances: duplicates, missing slices, non-uniform spacing.

    Returns the typical spacing (median gap) and the warnings a reader should see.
    """
    d = np.sort(np.asarray(distances, dtype=float))
    if d.size < 2:
        return None, []
    gaps = np.diff(d)
    tol_dup = 1e-3
    dup = int(np.count_nonzero(gaps < tol_dup))
    real = gaps[gaps >= tol_dup]
    warnings: list[str] = []
    if dup:
        warnings.append(
            f"{dup} slice{'s' if dup > 1 else ''} share a position with another slice "
            "(duplicates or repeated acquisitions)"
        )
    if real.size == 0:
        return None, warnings
    typical = _median(real)
    tol = max(0.01, 0.02 * typical)
    if np.all(np.abs(real - typical) <= tol):
        return typical, warnings
    big = real > typical * 1.5
    missing = int(np.sum(np.round(real[big] / typical) - 1)) if typical > 0 else 0
    if missing > 0 and np.all(np.abs(real[~big] - typical) <= tol):
        where = np.flatnonzero(gaps >= tol_dup)[np.flatnonzero(big)[0]]
        warnings.append(
            f"about {missing} slice{'s' if missing > 1 else ''} missing: gap of "
            f"{gaps[where]:.2f} mm after slice {where + 1} (usual spacing {typical:.2f} mm)"
        )
    else:
        warnings.append(
            f"non-uniform slice spacing: {real.min():.2f}–{real.max():.2f} mm "
            f"(usual {typical:.2f} mm); distances and 3D views are approximate"
        )
    return typical, warnings


def build_geometry(
    positions: Sequence[Sequence[float] | None],
    orientation: Sequence[float] | None,
    spacing: Sequence[float] | None,
) -> Geometry | None:
    """Geometry for frames in display order, or None when the header lacks what it needs.

    With a pixel spacing but no position/orientation (projection radiographs),
    the frames get a nominal plane at the origin so lengths in mm stay right.
    """
    if spacing is None or len(spacing) != 2 or min(spacing) <= 0:
        return None
    n = len(positions)
    if orientation is None or any(p is None for p in positions):
        origins = np.zeros((n, 3))
        row = np.array([1.0, 0.0, 0.0])
        col = np.array([0.0, 1.0, 0.0])
    else:
        origins = np.asarray(positions, dtype=float).reshape(n, 3)
        o = np.asarray(orientation, dtype=float)
        row = o[:3] / np.linalg.norm(o[:3])
        col = o[3:6] / np.linalg.norm(o[3:6])
    return Geometry(
        origins=origins,
        row_direction=row,
        col_direction=col,
        spacing=(float(spacing[0]), float(spacing[1])),
    )


def slice_spacing(geometry: Geometry) -> float | None:
    """Median distance between consecutive frame planes (mm), None for one frame."""
    if geometry.origins.shape[0] < 2:
        return None
    n = np.cross(geometry.row_direction, geometry.col_direction)
    d = np.diff(geometry.origins @ n)
    d = np.abs(d[np.abs(d) > 1e-6])
    return _median(d) if d.size else None


def _median(values: np.ndarray) -> float:
    """Median via np.partition: np.median imports numpy.ma, 8–20 ms on the first scan of a process."""
    v = np.asarray(values, dtype=float).ravel()
    n = v.size
    half = n // 2
    if n % 2:
        return float(np.partition(v, half)[half])
    part = np.partition(v, [half - 1, half])
    return float((part[half - 1] + part[half]) / 2.0)
