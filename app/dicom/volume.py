"""A loaded series as a reslicable volume: geometry, orthogonal/oblique planes, thick slabs.

:func:`reslicable` turns a :class:`~app.dicom.model.Volume` into a :class:`Reslicable`: the
stored voxels (a *view* of ``Volume.frames``, no copy, when the slices are uniformly spaced
along one normal with one orientation and one rescale), the patient geometry (origin,
direction matrix, spacing, frame of reference) and the modality LUT as one slope/intercept
that is applied to each resliced plane, never to the whole volume.

Index convention (as ITK): a voxel index is ``(i, j, k)`` = (column, row, slice) and
``voxels[k, j, i]`` holds it; ``patient = origin + direction @ (index * spacing)`` with the
direction matrix's columns the row direction, the column direction and the slice direction.

Planes carry their own pixel ↔ patient mapping (:class:`Plane`), so a point clicked in one
view lands on the right pixel of every other view (:meth:`Plane.patient_to_pixel`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from app.core.errors import XMedError
from app.dicom.model import Geometry, Volume

log = logging.getLogger(__name__)

PLANES = ("axial", "coronal", "sagittal")
MODES = ("mip", "minip", "mean")
#: Slice gaps within this fraction of the typical gap count as uniform.
UNIFORM_TOLERANCE = 0.02
#: In-plane drift of the slice origins (mm, per slice) below which there is no gantry tilt.
TILT_TOLERANCE = 1e-3

# Patient axes (LPS): +x towards the patient's left, +y posterior, +z superior.
_X, _Y, _Z = np.eye(3)
#: For each named plane: (patient axis of its normal, patient axis + sign of its columns,
#: patient axis + sign of its rows). Radiological convention: axial seen from the feet
#: (patient's right on the left of the screen, anterior up); coronal seen from the front
#: (head up, patient's right on the left); sagittal seen from the patient's left (head up,
#: anterior on the left).
_PLANE_AXES = {
    "axial": (_Z, _X, _Y),
    "coronal": (_Y, _X, -_Z),
    "sagittal": (_X, _Y, -_Z),
}


def cross3(a, b) -> np.ndarray:
    """``np.cross`` of two 3-vectors (the same products), without its generic machinery: ~20× faster on
    one pair, which the MPR asks for dozens of times a frame."""
    a0, a1, a2 = (float(x) for x in a)
    b0, b1, b2 = (float(x) for x in b)
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


@dataclass(frozen=True)
class Plane:
    """A 2-D image grid in patient space: pixel (col, row) ↔ patient (x, y, z) in mm (LPS)."""

    origin: np.ndarray  # patient position of pixel (0, 0) centre
    u: np.ndarray  # unit direction of increasing column
    v: np.ndarray  # unit direction of increasing row
    spacing: tuple[float, float]  # (row spacing, column spacing) mm, as Geometry.spacing
    shape: tuple[int, int]  # (rows, cols)
    name: str = ""

    @property
    def normal(self) -> np.ndarray:
        n = cross3(self.u, self.v)
        return n / np.linalg.norm(n)

    def pixel_to_patient(self, col: float, row: float) -> np.ndarray:
        return self.origin + col * self.spacing[1] * self.u + row * self.spacing[0] * self.v

    def patient_to_pixel(self, point) -> tuple[float, float]:
        d = np.asarray(point, dtype=float) - self.origin
        return float(d @ self.u) / self.spacing[1], float(d @ self.v) / self.spacing[0]

    def distance(self, point) -> float:
        """Signed distance of ``point`` from the plane along its normal (mm)."""
        return float((np.asarray(point, dtype=float) - self.origin) @ self.normal)

    def geometry(self) -> Geometry:
        """The plane as a one-frame :class:`Geometry` (what the 2-D viewport code reads)."""
        return Geometry(origins=self.origin.reshape(1, 3), row_direction=self.u, col_direction=self.v,
                        spacing=self.spacing)


@dataclass
class PlaneImage:
    """A resliced plane: stored values (or their slab combination) plus the modality LUT."""

    stored: np.ndarray  # (rows, cols): the volume's dtype for single planes, MIP and MinIP; float32 for mean
    plane: Plane
    slope: float
    intercept: float
    index: int | None = None  # slice index along the plane's normal axis (orthogonal planes)
    slab_mm: float = 0.0
    mode: str = ""

    def values(self) -> np.ndarray:
        """Modality values (HU for CT), float32, computed on this plane only."""
        return self.stored.astype(np.float32) * np.float32(self.slope) + np.float32(self.intercept)

    def as_volume(self, source: Volume) -> Volume:
        """A one-frame :class:`Volume` over this plane, so ``display.render(v, 0, window)`` and
        the 2-D viewport show it with the series' windows, VOI LUT and photometric."""
        return replace(source, frames=self.stored[None], slopes=np.array([self.slope]),
                       intercepts=np.array([self.intercept]), geometry=self.plane.geometry(), loaded=1,
                       frame_problems={})


@dataclass
class Reslicable:
    """Voxels on a uniform grid plus the geometry to address them in patient mm."""

    voxels: np.ndarray  # (nk, nj, ni) stored values: a view of Volume.frames when possible
    origin: np.ndarray  # (3,) patient position of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3) columns: row direction (i), column direction (j), slice direction (k)
    spacing: np.ndarray  # (3,) mm along i, j, k
    slope: float = 1.0
    intercept: float = 0.0
    frame_of_reference: str = ""
    warnings: list[str] = field(default_factory=list)
    resampled: bool = False
    source: Volume | None = None
    _background: float | None = field(default=None, repr=False)
    #: plane name → its axes (:meth:`_axes_for`); the direction never changes, and MPR asks ~80 times a frame
    _axes: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        nk, nj, ni = self.voxels.shape
        return ni, nj, nk

    # -- index ↔ patient ---------------------------------------------------------------------------
    def index_to_patient(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=float)
        return self.origin + (ijk * self.spacing) @ self.direction.T

    def patient_to_index(self, point) -> np.ndarray:
        """Continuous (i, j, k) of a patient point (round it for the voxel that holds it)."""
        d = np.asarray(point, dtype=float) - self.origin
        return (d @ self.direction) / self.spacing  # direction is orthonormal

    def voxel_of(self, point) -> tuple[int, int, int]:
        """The voxel (i, j, k) that holds ``point``, clamped into the volume."""
        idx = np.rint(self.patient_to_index(point)).astype(int)
        hi = np.array(self.shape_ijk) - 1
        return tuple(int(x) for x in np.clip(idx, 0, hi))

    def center(self) -> np.ndarray:
        return self.index_to_patient((np.array(self.shape_ijk) - 1) / 2.0)

    def contains(self, point, margin: float = 0.5) -> bool:
        idx = self.patient_to_index(point)
        return bool(np.all(idx >= -margin) and np.all(idx <= np.array(self.shape_ijk) - 1 + margin))

    def clamp(self, point) -> np.ndarray:
        """``point`` moved to the nearest position inside the voxel grid."""
        idx = np.clip(self.patient_to_index(point), 0, np.array(self.shape_ijk) - 1)
        return self.index_to_patient(idx)

    # -- orthogonal planes ---------------------------------------------------------------------------
    def _axes_for(self, name: str) -> tuple[int, tuple[int, int], tuple[int, int]]:
        """(array axis of the normal, (array axis, sign) of columns, (array axis, sign) of rows).

        Array axes: 0 = k (slices), 1 = j (rows), 2 = i (columns). Each patient axis goes to
        the volume axis most parallel to it, so a sagittal MR stack still gives a true axial.
        """
        cached = self._axes.get(name)
        if cached is not None:
            return cached
        if name not in _PLANE_AXES:
            raise XMedError(f"Unknown plane {name!r}: choose one of {', '.join(PLANES)}")
        normal, along_cols, along_rows = _PLANE_AXES[name]
        # volume axis vectors by array axis: 0 → k, 1 → j, 2 → i
        vec = [self.direction[:, 2], self.direction[:, 1], self.direction[:, 0]]
        cos = np.array([[abs(float(v @ p)) for p in (_X, _Y, _Z)] for v in vec])  # (array axis, patient axis)
        assign = _best_assignment(cos)  # patient axis → array axis
        by_patient = {0: assign[0], 1: assign[1], 2: assign[2]}

        def pick(p: np.ndarray) -> tuple[int, int]:
            pa = int(np.argmax(np.abs(p)))
            ax = by_patient[pa]
            return ax, 1 if float(vec[ax] @ p) > 0 else -1

        n_ax, _ = pick(normal)
        self._axes[name] = out = (n_ax, pick(along_cols), pick(along_rows))
        return out

    def count(self, name: str) -> int:
        """How many slices the ``name`` plane has (along its normal)."""
        n_ax, _, _ = self._axes_for(name)
        return int(self.voxels.shape[n_ax])

    def plane(self, name: str, index: int) -> Plane:
        """Geometry of orthogonal plane ``name`` at slice ``index`` along its normal axis."""
        n_ax, (c_ax, c_sign), (r_ax, r_sign) = self._axes_for(name)
        dims = self.voxels.shape
        array_to_ijk = (2, 1, 0)
        corner = np.zeros(3)
        corner[array_to_ijk[n_ax]] = index
        corner[array_to_ijk[c_ax]] = 0 if c_sign > 0 else dims[c_ax] - 1
        corner[array_to_ijk[r_ax]] = 0 if r_sign > 0 else dims[r_ax] - 1
        u = c_sign * self.direction[:, array_to_ijk[c_ax]]
        v = r_sign * self.direction[:, array_to_ijk[r_ax]]
        return Plane(origin=self.index_to_patient(corner), u=u, v=v,
                     spacing=(float(self.spacing[array_to_ijk[r_ax]]), float(self.spacing[array_to_ijk[c_ax]])),
                     shape=(int(dims[r_ax]), int(dims[c_ax])), name=name)

    def index_at(self, name: str, point) -> int:
        """Slice index of plane ``name`` that holds the patient ``point`` (clamped)."""
        n_ax, _, _ = self._axes_for(name)
        ijk = self.voxel_of(point)
        return int(ijk[(2, 1, 0)[n_ax]])

    def _oriented(self, arr: np.ndarray, n_ax: int, c: tuple[int, int], r: tuple[int, int]) -> np.ndarray:
        """``arr`` (the volume with axis ``n_ax`` reduced away) as (rows, cols), flipped as the plane wants."""
        rest = [a for a in range(3) if a != n_ax]
        out = arr if rest.index(r[0]) == 0 else arr.T
        if r[1] < 0:
            out = out[::-1]
        if c[1] < 0:
            out = out[:, ::-1]
        return out

    def reslice(self, name: str, index: int | None = None, *, position=None, slab_mm: float = 0.0,
                mode: str = "mip") -> PlaneImage:
        """Plane ``name`` at slice ``index`` or at the slice through patient ``position`` (mm).

        ``slab_mm`` > 0 combines the slices within that thickness (centred on the plane)
        by ``mode``: ``mip`` (maximum), ``minip`` (minimum) or ``mean``.
        """
        n_ax, c, r = self._axes_for(name)
        n = self.voxels.shape[n_ax]
        if index is None:
            index = n // 2 if position is None else self.index_at(name, position)
        if not 0 <= index < n:
            raise XMedError(f"Slice {index} is outside the {name} planes (0 to {n - 1})")
        lo, hi = slab_range(index, n, slab_mm, float(self.spacing[(2, 1, 0)[n_ax]]))
        sel: list = [slice(None)] * 3
        if hi - lo <= 1:
            sel[n_ax] = index
            stored = np.ascontiguousarray(self._oriented(self.voxels[tuple(sel)], n_ax, c, r))
            mode_used = ""
        else:
            if mode not in MODES:
                raise XMedError(f"Unknown slab mode {mode!r}: choose mip, minip or mean")
            stored = _combine(self.voxels, n_ax, lo, hi, mode)
            stored = np.ascontiguousarray(self._oriented(stored, n_ax, c, r))
            mode_used = mode
        return PlaneImage(stored=stored, plane=self.plane(name, index), slope=self.slope,
                          intercept=self.intercept, index=index,
                          slab_mm=(hi - lo) * float(self.spacing[(2, 1, 0)[n_ax]]) if mode_used else 0.0,
                          mode=mode_used)

    # -- oblique planes ------------------------------------------------------------------------------
    def oblique_plane(self, center, normal, up=None, size_mm: float | None = None,
                      pixel_mm: float | None = None) -> Plane:
        """A square plane through ``center`` perpendicular to ``normal``.

        Its rows run along ``up`` projected into the plane (default: the patient's feet for
        planes that are not axial, posterior for near-axial ones); its pixels are the
        volume's finest spacing; it covers the volume's outline in the plane (pixel grid anchored
        at the volume's centre), or a square of ``size_mm`` centred on ``center``.
        """
        n = np.asarray(normal, dtype=float)
        n = n / np.linalg.norm(n)
        if up is None:
            up = -_Z if abs(n @ _Z) < 0.8 else _Y
        v = np.asarray(up, dtype=float) - (np.asarray(up, dtype=float) @ n) * n
        if np.linalg.norm(v) < 1e-6:
            raise XMedError("The plane's up direction is parallel to its normal")
        v /= np.linalg.norm(v)
        u = np.cross(v, n)
        pixel_mm = float(pixel_mm or self.spacing.min())
        c = np.asarray(center, dtype=float)
        if size_mm is None:
            # just the volume's outline in this plane: its 8 corners projected on the plane's axes, on
            # a grid anchored at the volume's centre (projected into the plane), so parallel planes
            # through other points share one grid and a dragged crosshair does not move the image
            c = self.center() - float((self.center() - c) @ n) * n
            ni, nj, nk = self.shape_ijk
            corners = np.array([[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5)
                                for k in (-0.5, nk - 0.5)])
            rel = self.index_to_patient(corners) - c
            a, b = rel @ u / pixel_mm, rel @ v / pixel_mm
            c0, c1 = int(np.floor(a.min())), int(np.ceil(a.max()))
            r0, r1 = int(np.floor(b.min())), int(np.ceil(b.max()))
            return Plane(origin=c + c0 * pixel_mm * u + r0 * pixel_mm * v, u=u, v=v, spacing=(pixel_mm, pixel_mm),
                         shape=(r1 - r0 + 1, c1 - c0 + 1), name="oblique")
        npx = max(1, int(np.ceil(size_mm / pixel_mm)))
        origin = c - (npx - 1) / 2.0 * pixel_mm * (u + v)
        return Plane(origin=origin, u=u, v=v, spacing=(pixel_mm, pixel_mm), shape=(npx, npx), name="oblique")

    def sample(self, plane: Plane, slab_mm: float = 0.0, mode: str = "mip", cval: float | None = None) -> PlaneImage:
        """Trilinear samples of the volume on ``plane`` (float32 stored units), optionally a slab.

        Points outside the volume get ``cval`` (default: the volume's minimum stored value).
        """
        from app.dicom._mpr_kernels import MODE_CODES, sample_plane

        if cval is None:
            cval = self.background()
        rows, cols = plane.shape
        # continuous array index (k, j, i) of pixel (0, 0) and its steps per row / column / mm of normal
        base = self._array_index(plane.origin)
        dc = self._array_step(plane.u * plane.spacing[1])
        dr = self._array_step(plane.v * plane.spacing[0])
        dn = self._array_step(plane.normal)
        step_n = float(self.spacing.min())
        offsets = np.zeros(1)
        if slab_mm > 0:
            if mode not in MODES:
                raise XMedError(f"Unknown slab mode {mode!r}: choose mip, minip or mean")
            m = max(1, int(round(slab_mm / step_n)))
            offsets = (np.arange(m) - (m - 1) / 2.0) * step_n
        out = np.empty((rows, cols), dtype=np.float32)
        sample_plane(self.voxels, base, dr, dc, dn, offsets, MODE_CODES[mode if len(offsets) > 1 else ""],
                     float(cval), out)
        return PlaneImage(stored=out, plane=plane, slope=self.slope, intercept=self.intercept,
                          slab_mm=step_n * len(offsets) if len(offsets) > 1 else 0.0,
                          mode=mode if len(offsets) > 1 else "")

    def background(self) -> float:
        """The value shown outside the volume: its minimum stored value (computed once)."""
        if self._background is None:
            self._background = float(self.voxels.min()) if self.voxels.size else 0.0
        return self._background

    def _array_index(self, point) -> np.ndarray:
        ijk = self.patient_to_index(point)
        return ijk[::-1].copy()

    def _array_step(self, vec) -> np.ndarray:
        ijk = (np.asarray(vec, dtype=float) @ self.direction) / self.spacing
        return ijk[::-1].copy()


def _best_assignment(cos: np.ndarray) -> dict[int, int]:
    """Patient axis → array axis, one to one, maximising the total |cos| (3! permutations)."""
    from itertools import permutations

    best, best_score = None, -1.0
    for perm in permutations(range(3)):  # perm[patient axis] = array axis
        score = sum(cos[perm[p], p] for p in range(3))
        if score > best_score:
            best, best_score = perm, score
    return {p: best[p] for p in range(3)}


def slab_range(index: int, n: int, slab_mm: float, spacing: float) -> tuple[int, int]:
    """Slices ``lo..hi-1`` of a slab of ``slab_mm`` centred on ``index`` (clipped to 0..n)."""
    if slab_mm <= 0 or spacing <= 0:
        return index, index + 1
    m = max(1, int(round(slab_mm / spacing)))
    lo = index - (m - 1) // 2
    hi = lo + m
    return max(0, lo), min(n, hi)


def _combine(voxels: np.ndarray, axis: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """MIP / MinIP / mean of slices ``lo..hi-1`` along ``axis``, slice by slice (no big temporaries)."""
    sel: list = [slice(None)] * 3

    def part(k: int) -> np.ndarray:
        sel[axis] = k
        return voxels[tuple(sel)]

    if mode == "mean" and axis != 2:
        out = part(lo).astype(np.float32)
        for k in range(lo + 1, hi):
            out += part(k)
        out /= np.float32(hi - lo)
        return out
    if axis == 2 and hi - lo > 1:
        # columns of a C-ordered volume: one kernel pass over the contiguous runs (numpy would
        # gather each strided column separately, a cache line per voxel)
        from app.dicom._mpr_kernels import MODE_CODES, reduce_last

        out = np.empty(voxels.shape[:2], dtype=np.float32 if mode == "mean" else voxels.dtype)
        reduce_last(voxels, lo, hi, MODE_CODES[mode], out)
        return out
    out = np.array(part(lo))
    fn = np.maximum if mode == "mip" else np.minimum
    for k in range(lo + 1, hi):
        fn(out, part(k), out=out)
    return out


# --- building the reslicable volume -------------------------------------------------------------------


def reslicable(volume: Volume, frame_of_reference: str = "") -> Reslicable:
    """The volume on a uniform grid, with its geometry.

    Uniformly spaced, consistently oriented slices with one rescale give a view of
    ``volume.frames`` (no copy). Non-uniform spacing, gaps or gantry tilt are resampled to
    uniform spacing (SimpleITK, linear) and a warning says so; per-slice rescale values are
    folded into a float32 copy (also said).
    """
    g = volume.geometry
    if volume.is_color:
        raise XMedError("Colour images cannot be resliced")
    if g is None:
        raise XMedError("This series has no geometry (pixel spacing, position, orientation): it cannot be resliced")
    n = len(volume)
    if volume.loaded and volume.loaded < n:
        raise XMedError("The series is still loading")
    row = g.row_direction / np.linalg.norm(g.row_direction)
    col = g.col_direction / np.linalg.norm(g.col_direction)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    origins = np.asarray(g.origins, dtype=float).reshape(n, 3)
    warnings: list[str] = []
    frames = volume.frames
    slopes = np.asarray(volume.slopes, dtype=float)
    intercepts = np.asarray(volume.intercepts, dtype=float)
    slope, intercept = float(slopes[0]), float(intercepts[0])
    if n > 1 and (np.ptp(slopes) > 1e-9 or np.ptp(intercepts) > 1e-9):
        frames = frames.astype(np.float32) * slopes[:, None, None].astype(np.float32) \
            + intercepts[:, None, None].astype(np.float32)
        slope, intercept = 1.0, 0.0
        warnings.append("slices have different rescale slopes/intercepts: the volume was converted to "
                        "modality values (a float copy) for reslicing")
    if not frame_of_reference:
        frame_of_reference = _frame_of_reference(volume)
    if n == 1:
        direction = np.stack([row, col, normal], axis=1)
        spacing = np.array([g.spacing[1], g.spacing[0], 1.0])
        return Reslicable(frames, origins[0].copy(), direction, spacing, slope, intercept, frame_of_reference,
                          warnings, source=volume)
    dist = origins @ normal
    order = np.argsort(dist, kind="stable")
    if not (np.all(order == np.arange(n)) or np.all(order == np.arange(n)[::-1])):
        raise XMedError("The slices are not in order along their normal")
    gaps = np.diff(dist)
    sign = 1.0 if gaps.mean() >= 0 else -1.0
    gaps = np.abs(gaps)
    if np.any(gaps < 1e-3):
        raise XMedError("Two slices share a position: the series cannot be resliced as one volume")
    typical = float(np.median(gaps))
    inplane = origins - origins[0] - np.outer(dist - dist[0], normal)
    tilt = float(np.abs(inplane).max()) > TILT_TOLERANCE * n
    uniform = bool(np.all(np.abs(gaps - typical) <= max(0.01, UNIFORM_TOLERANCE * typical)))
    if uniform and not tilt:
        direction = np.stack([row, col, sign * normal], axis=1)
        spacing = np.array([g.spacing[1], g.spacing[0], float(np.abs(dist[-1] - dist[0]) / (n - 1))])
        return Reslicable(frames, origins[0].copy(), direction, spacing, slope, intercept, frame_of_reference,
                          warnings, source=volume)
    return _resample(frames, origins, row, col, sign * normal, g.spacing, typical, tilt, slope, intercept,
                     frame_of_reference, warnings, volume)


def _resample(frames, origins, row, col, normal, spacing2, typical, tilt, slope, intercept, frame_of_reference,
              warnings, volume) -> Reslicable:
    """Linear resampling of an irregular stack onto a uniform grid with SimpleITK.

    Each output slice lies on the first slice's plane moved along ``normal``; its voxels are
    interpolated from the two input slices around it (each input slice sits where its
    ImagePositionPatient says, so gaps and tilt are honoured).
    """
    import SimpleITK as sitk

    n, rows, cols = frames.shape[:3]
    dist = (origins - origins[0]) @ normal
    m = int(np.floor(dist[-1] / typical + 1e-6)) + 1
    out = np.empty((m, rows, cols), dtype=np.float32 if frames.dtype.kind == "f" else frames.dtype)
    direction = np.stack([row, col, normal], axis=1)
    ref = sitk.Image(cols, rows, 1, sitk.sitkFloat32)
    ref.SetSpacing((float(spacing2[1]), float(spacing2[0]), 1.0))
    ref.SetDirection(tuple(direction.reshape(-1)))
    for k in range(m):
        d = k * typical
        b = int(np.clip(np.searchsorted(dist, d, side="right") - 1, 0, n - 2))
        a_w = float(np.clip((d - dist[b]) / (dist[b + 1] - dist[b]), 0.0, 1.0))
        target = origins[0] + d * normal
        acc = None
        for kk, w in ((b, 1.0 - a_w), (b + 1, a_w)):
            if w <= 0:
                continue
            # the input slice as a one-slice image at its own position, resampled onto the target plane
            img = sitk.GetImageFromArray(frames[kk][None].astype(np.float32))
            img.SetSpacing((float(spacing2[1]), float(spacing2[0]), 1.0))
            img.SetDirection(tuple(direction.reshape(-1)))
            img.SetOrigin(tuple(origins[kk] - (origins[kk] - target) @ normal * normal))
            ref.SetOrigin(tuple(target))
            res = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            part = sitk.GetArrayFromImage(res)[0] * np.float32(w)
            acc = part if acc is None else acc + part
        out[k] = np.rint(acc).astype(out.dtype) if out.dtype.kind != "f" else acc
    why = "gantry tilt" if tilt else "non-uniform slice spacing"
    warnings.append(f"{why}: the volume was resampled to a uniform {typical:.2f} mm grid for MPR "
                    f"({n} slices → {m}); reformatted planes are interpolated")
    spacing = np.array([spacing2[1], spacing2[0], typical])
    return Reslicable(out, origins[0].copy(), direction, spacing, slope, intercept, frame_of_reference, warnings,
                      resampled=True, source=volume)


def _frame_of_reference(volume: Volume) -> str:
    sources = getattr(volume, "frame_sources", None)
    if not sources:
        return ""
    try:
        import pydicom

        ds = pydicom.dcmread(str(sources[0][0]), stop_before_pixels=True,
                             specific_tags=["FrameOfReferenceUID"])
        return str(ds.get("FrameOfReferenceUID", ""))
    except Exception:  # noqa: BLE001 - a missing UID only means no cross-series sync
        return ""
