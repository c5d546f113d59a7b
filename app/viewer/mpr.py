"""Multi-planar reformatting without Qt: the crosshair, the three planes it defines, which
slice each view shows, where the other planes cross each view (reference lines) and the slab.

One :class:`MprState` per volume. The crosshair is a patient point (mm, LPS); each view
(axial, coronal, sagittal) shows the plane of its orientation through that point. Clicking
at pixel (col, row) of one view moves the point within that view's plane, so the other two
views change slice and the clicked view does not. Rotating the crosshair in the axial view
by an angle tilts the coronal and sagittal planes about the axial normal (oblique planes,
trilinear); at angle 0 every plane is an exact slice of the voxel grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.dicom.volume import MODES, PLANES, Plane, PlaneImage, Reslicable, cross3

VIEWS = PLANES  # ("axial", "coronal", "sagittal")
#: Slab thicknesses (mm) the toolbar and keys step through; 0 is a single plane.
SLAB_STEPS = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0)
#: Colours of each plane's reference lines and its view frame (as in most workstations).
PLANE_COLORS = {"axial": (255, 80, 80), "coronal": (80, 220, 80), "sagittal": (80, 150, 255)}


#: A view's place in the MPR grid: (row, column, row span, column span).
Cell = tuple[int, int, int, int]
#: The three planes side by side, and the axial beside the other two stacked.
SIDE_BY_SIDE: tuple[Cell, ...] = ((0, 0, 1, 1), (0, 1, 1, 1), (0, 2, 1, 1))
AXIAL_BESIDE_STACK: tuple[Cell, ...] = ((0, 0, 2, 1), (0, 1, 1, 1), (1, 1, 1, 1))


def three_plane_cells(width: float, height: float) -> tuple[Cell, ...]:
    """Where the axial, coronal and sagittal views go in an area of ``width`` x ``height``: side by side,
    or -- when that leaves the views narrow strips (1366-px screens with both docks open: three 170-px
    columns) -- the axial at full height beside the coronal over the sagittal. The arrangement whose
    smallest view holds the larger square image wins."""
    side = min(width / 3, height)
    stacked = min(width / 2, height / 2)
    return AXIAL_BESIDE_STACK if stacked > side else SIDE_BY_SIDE


@dataclass(frozen=True)
class RefLine:
    """Where plane ``of`` crosses a view: a segment in that view's pixels (col, row), plus the
    two slab edges when ``of`` shows a thick slab (``edges`` empty otherwise)."""

    of: str
    p0: tuple[float, float]
    p1: tuple[float, float]
    edges: tuple[tuple[tuple[float, float], tuple[float, float]], ...] = ()


class MprState:
    """Crosshair, slab and rotation shared by the three MPR views of one volume.

    What a view's planes, crosshair pixel and reference lines are depends only on the crosshair
    point, the rotation and the slab: they are computed once per such state (the three views ask
    for them dozens of times a frame while scrolling) and forgotten when any of them changes.
    """

    def __init__(self, volume: Reslicable, point=None) -> None:
        self.volume = volume
        self.slab_mm = 0.0
        self.mode = "mip"
        self.angle_deg = 0.0  # crosshair rotation in the axial view
        self._memo_key: tuple | None = None
        self._memo: dict = {}
        self._normals: dict[str, np.ndarray] = {}  # straight planes' normals (they never change)
        self.point = self._place(volume.center() if point is None else point)

    def _cached(self, what: str, view: str, compute):
        """``compute()`` once per (what, view) and crosshair / rotation / slab state."""
        key = (np.asarray(self.point, dtype=float).tobytes(), self.angle_deg, self.slab_mm, self.mode)
        if key != self._memo_key:
            self._memo_key, self._memo = key, {}
        try:
            return self._memo[what, view]
        except KeyError:
            out = self._memo[what, view] = compute()
            return out

    def _place(self, point) -> np.ndarray:
        """``point`` inside the volume; without rotation, on the centre of the voxel that holds it,
        so the crosshair, the reference lines and the slices shown agree to the voxel."""
        if abs(self.angle_deg % 180.0) > 1e-9:
            return self.volume.clamp(point)
        return self.volume.index_to_patient(self.volume.voxel_of(point))

    # -- planes ----------------------------------------------------------------------------------
    def is_oblique(self, view: str) -> bool:
        return view != "axial" and abs(self.angle_deg % 180.0) > 1e-9

    def index(self, view: str) -> int:
        """The slice of ``view``'s orientation that holds the crosshair (orthogonal planes)."""
        return self._cached("index", view, lambda: self.volume.index_at(view, self.point))

    def count(self, view: str) -> int:
        return self.volume.count(view)

    def plane(self, view: str) -> Plane:
        return self._cached("plane", view, lambda: self._plane(view))

    def normal(self, view: str) -> np.ndarray:
        """The unit normal of ``view``'s plane (``Plane.normal`` computes it on every call: cached here)."""
        if not self.is_oblique(view):  # a straight plane's normal is the volume's axis: one for good
            n = self._normals.get(view)
            if n is None:
                n = self._normals[view] = self.volume.plane(view, 0).normal
            return n.copy()
        return self._cached("normal", view, lambda: self.plane(view).normal).copy()

    def image_key(self, view: str) -> tuple:
        """What identifies the image ``view`` shows: equal keys, equal pixels (so a view whose key
        did not change keeps its image: an axial step does not change the coronal and sagittal)."""
        if not self.is_oblique(view):
            return (view, self.index(view), self.slab_mm, self.mode)
        pl = self.plane(view)
        return (view, self.angle_deg, pl.origin.tobytes(), pl.u.tobytes(), pl.v.tobytes(), pl.spacing, pl.shape,
                self.slab_mm, self.mode)

    def _plane(self, view: str) -> Plane:
        if not self.is_oblique(view):
            return self.volume.plane(view, self.index(view))
        axial = self.volume.plane("axial", 0)
        base = self.volume.plane(view, 0)
        normal = _rotate(base.normal, axial.normal, math.radians(self.angle_deg))
        return self.volume.oblique_plane(self.point, normal, up=base.v, pixel_mm=min(base.spacing))

    def image(self, view: str) -> PlaneImage:
        """What ``view`` shows now: the plane (or slab) through the crosshair."""
        if not self.is_oblique(view):
            return self.volume.reslice(view, self.index(view), slab_mm=self.slab_mm, mode=self.mode)
        return self.volume.sample(self.plane(view), slab_mm=self.slab_mm, mode=self.mode)

    # -- crosshair -------------------------------------------------------------------------------
    def crosshair(self, view: str) -> tuple[float, float]:
        """The crosshair's pixel (col, row) in ``view``."""
        return self._cached("crosshair", view, lambda: self.plane(view).patient_to_pixel(self.point))

    def set_from_pixel(self, view: str, col: float, row: float) -> np.ndarray:
        """Click/drag at pixel (col, row) of ``view``: the point moves within that view's plane."""
        plane = self.plane(view)
        p = plane.pixel_to_patient(col, row)
        if not self.is_oblique(view):
            p = p + plane.distance(self.point) * plane.normal  # keep exactly the depth of this view
        self.point = self._place(p)
        return self.point

    def set_point(self, point) -> np.ndarray:
        self.point = self._place(point)
        return self.point

    def scroll(self, view: str, delta: int) -> np.ndarray:
        """Wheel / arrows in ``view``: move its plane ``delta`` voxels along its normal."""
        if not self.is_oblique(view):
            return self.set_slice(view, self.index(view) + int(delta))
        n = self.plane(view).normal
        self.point = self.volume.clamp(self.point + delta * float(self.volume.spacing.min()) * n)
        return self.point

    def set_slice(self, view: str, index: int) -> np.ndarray:
        """Put ``view``'s orthogonal plane at slice ``index`` (the crosshair follows)."""
        index = int(np.clip(index, 0, self.count(view) - 1))
        target = self.volume.plane(view, index)
        self.point = self._place(self.point - target.distance(self.point) * target.normal)
        return self.point

    # -- slab and rotation -------------------------------------------------------------------------
    def set_slab(self, slab_mm: float, mode: str | None = None) -> None:
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"slab mode must be one of {MODES}")
            self.mode = mode
        self.slab_mm = max(0.0, float(slab_mm))

    def step_slab(self, direction: int) -> float:
        """Next thicker (+1) / thinner (-1) slab from :data:`SLAB_STEPS`."""
        steps = SLAB_STEPS
        i = min(range(len(steps)), key=lambda j: abs(steps[j] - self.slab_mm))
        self.slab_mm = steps[int(np.clip(i + direction, 0, len(steps) - 1))]
        return self.slab_mm

    def cycle_mode(self) -> str:
        self.mode = MODES[(MODES.index(self.mode) + 1) % len(MODES)]
        return self.mode

    def rotate(self, degrees: float) -> None:
        self.angle_deg = (self.angle_deg + degrees) % 360.0
        self.point = self._place(self.point)

    # -- reference lines ----------------------------------------------------------------------------
    def reference_lines(self, view: str) -> list[RefLine]:
        """Where the two other planes cross ``view``, clipped to its image (pixels)."""
        return list(self._cached("reference_lines", view, lambda: self._reference_lines(view)))

    def _reference_lines(self, view: str) -> list[RefLine]:
        here = self.plane(view)
        here_n = self.normal(view)
        rows, cols = here.shape
        out = []
        for other in VIEWS:
            if other == view:
                continue
            there_n = self.normal(other)
            d = cross3(here_n, there_n)
            if math.sqrt(float(d @ d)) < 1e-9:
                continue  # parallel planes do not cross
            d = d / np.linalg.norm(d)
            seg = _line_in(here, self.point, d, rows, cols)
            if seg is None:
                continue
            edges = []
            if self.slab_mm > 0:
                half = self._slab_half(other)
                # the slab edges: the other plane moved ±half along its normal, seen in this plane
                m = there_n - (there_n @ here_n) * here_n
                if np.linalg.norm(m) > 1e-9:
                    shift = half / float(np.linalg.norm(m) ** 2) * m  # in-plane move that is `half` along its normal
                    for s in (-1.0, 1.0):
                        e = _line_in(here, self.point + s * shift, d, rows, cols)
                        if e is not None:
                            edges.append(e)
            out.append(RefLine(other, seg[0], seg[1], tuple(edges)))
        return out

    def _slab_half(self, view: str) -> float:
        img_mm = self.slab_mm
        if not self.is_oblique(view):
            from app.dicom.volume import slab_range

            n_sp = self.normal(view)
            sp = float(np.abs(self.volume.spacing @ np.abs(self.volume.direction.T @ n_sp)))
            lo, hi = slab_range(self.index(view), self.count(view), self.slab_mm, sp)
            img_mm = (hi - lo) * sp
        return img_mm / 2.0

    def describe(self, view: str) -> str:
        """One line for the view's corner: plane, slice, slab."""
        if self.is_oblique(view):
            where = f"oblique {self.angle_deg:.0f}°"
        else:
            where = f"{self.index(view) + 1}/{self.count(view)}"
        slab = f" · {self.mode.upper() if self.mode != 'mean' else 'Mean'} {self.slab_mm:g} mm" if self.slab_mm else ""
        return f"{view.capitalize()} {where}{slab}"


def _rotate(vec: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``vec`` about unit ``axis``."""
    k = axis / np.linalg.norm(axis)
    return vec * math.cos(angle) + np.cross(k, vec) * math.sin(angle) + k * (k @ vec) * (1 - math.cos(angle))


def _line_in(plane: Plane, through, direction, rows: int, cols: int):
    """The segment of the line (patient point ``through``, direction) inside the plane's image."""
    c0, r0 = plane.patient_to_pixel(through)
    dc = float(direction @ plane.u) / plane.spacing[1]
    dr = float(direction @ plane.v) / plane.spacing[0]
    return clip_line((c0, r0), (dc, dr), (-0.5, -0.5, cols - 0.5, rows - 0.5))


def clip_line(p, d, box):
    """Liang–Barsky: the part of the infinite line p + t·d inside box (x0, y0, x1, y1), or None."""
    x0, y0, x1, y1 = box
    t0, t1 = -math.inf, math.inf
    for pk, dk, lo, hi in ((p[0], d[0], x0, x1), (p[1], d[1], y0, y1)):
        if abs(dk) < 1e-12:
            if pk < lo or pk > hi:
                return None
            continue
        a, b = (lo - pk) / dk, (hi - pk) / dk
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    if t0 > t1:
        return None
    return (p[0] + t0 * d[0], p[1] + t0 * d[1]), (p[0] + t1 * d[0], p[1] + t1 * d[1])


# --- headless: `xmedgpt render --plane …` ---------------------------------------------------------


@dataclass
class RenderedPlane:
    image: np.ndarray  # uint8 (rows, cols) as the reader sees it
    plane_image: PlaneImage
    series: object  # app.dicom.model.Series
    index: int
    count: int
    window: object  # app.dicom.model.Window used


def render_plane(paths, series_key: str = "0", plane: str = "axial", number: str | int | None = None,
                 slab_mm: float = 0.0, mode: str = "mip", window_text: str = "default",
                 invert: bool = False) -> RenderedPlane:
    """Scan ``paths``, load the whole series, reslice ``plane`` at plane ``number`` (from 1, as the
    viewer numbers images; default: the middle), optionally as a slab, and window it exactly as the
    viewer's 2-D path does."""
    from app.core.errors import XMedError
    from app.dicom.display import VOI_LUT, auto_window_for, render
    from app.dicom.loader import load_series
    from app.dicom.scan import scan
    from app.dicom.slice_request import choose_window, pick_series, slice_index
    from app.dicom.volume import reslicable

    if plane not in VIEWS:
        raise XMedError(f"Unknown plane {plane!r}: choose axial, coronal or sagittal")
    if not math.isfinite(slab_mm) or slab_mm < 0 or slab_mm > 1000:
        raise XMedError("--slab is a thickness in mm from 0 to 1000")
    if mode not in MODES:
        raise XMedError("--mode is mip, minip or mean")
    result = scan(list(paths))
    series = pick_series(result.all_series(), series_key)
    window = choose_window(window_text, series.modality)
    volume = load_series(series)
    if volume.frame_problems:
        k, why = next(iter(volume.frame_problems.items()))
        raise XMedError(f"Image {k + 1} cannot be read ({why}): the volume cannot be resliced")
    rv = reslicable(volume)
    n = rv.count(plane)
    k = slice_index(number, n, f"--slice ({plane} planes)")
    k = n // 2 if k is None else k
    pimg = rv.reslice(plane, k, slab_mm=slab_mm, mode=mode)
    shown = pimg.as_volume(volume)
    if window is not None and window is not VOI_LUT and window.name == "auto":
        window = auto_window_for(shown, 0)
    image = render(shown, 0, window, invert=invert)
    return RenderedPlane(image, pimg, series, k, n, window or volume.default_window)


# --- AI boxes and pre-read lesions on every plane ---------------------------------------------------


@dataclass(frozen=True)
class Extent:
    """A lesion in the series as acquired: its box (image pixels, x = column, y = row, pixel c covering
    [c, c+1)) on each slice it spans. An assistant or report box is a lesion of one slice; a pre-read
    lesion has a box on each slice of its range."""

    id: str
    boxes: dict[int, tuple[float, float, float, float]]  # slice index → (x0, y0, x1, y1)
    label: str = ""
    source: str = "ai"

    @property
    def slices(self) -> tuple[int, int]:
        return min(self.boxes), max(self.boxes)


@dataclass(frozen=True)
class ProjectedBox:
    """An extent as seen in one MPR view: a rectangle in that view's image pixels (edges, as boxes)."""

    id: str
    x0: float
    y0: float
    x1: float
    y1: float
    label: str = ""
    source: str = "ai"


def _box_tuple(box) -> tuple[float, float, float, float]:
    if isinstance(box, dict):
        return tuple(float(box[k]) for k in ("x0", "y0", "x1", "y1"))
    if hasattr(box, "x0"):
        return float(box.x0), float(box.y0), float(box.x1), float(box.y1)
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0, y0, x1, y1


def extent_of_lesion(lesion, source: str = "ai", label: str | None = None) -> Extent:
    """An :class:`Extent` from a series pre-read lesion: an ``app.assistant.preread.Candidate``
    (``detections`` slice → detection with a ``box``) or its JSON form (``boxes`` {"slice": box})."""
    if isinstance(lesion, dict):
        boxes = {int(k): _box_tuple(b) for k, b in lesion["boxes"].items()}
        lid = str(lesion.get("id", ""))
        text = label if label is not None else f"L{lid} · {lesion.get('phrase') or 'lesion'}"
    else:
        boxes = {int(k): _box_tuple(d.box) for k, d in lesion.detections.items()}
        lid = str(lesion.id)
        text = label if label is not None else f"L{lid} · {getattr(lesion, 'phrase', '') or 'lesion'}"
    return Extent(f"lesion:{lid}", boxes, text, source)


def extents_from_boxes(rows) -> list[Extent]:
    """Boxes drawn on a series' slices, ``(box id, slice, box, label, source)`` each, as extents: boxes of
    one label and source on consecutive slices (one slice may be missing between two, as in a pre-read
    lesion) are one lesion (a pre-read lesion drawn slice by slice, a finding boxed on two neighbouring
    slices); every other box is a lesion of its own slice."""
    groups: dict[tuple[str, str], list[tuple[int, str, tuple]]] = {}
    singles: list[Extent] = []
    for box_id, frame, box, label, source in rows:
        if label:
            groups.setdefault((label, source), []).append((int(frame), str(box_id), _box_tuple(box)))
        else:
            singles.append(Extent(str(box_id), {int(frame): _box_tuple(box)}, "", source))
    out: list[Extent] = []
    for (label, source), items in groups.items():
        items.sort()
        run: list[tuple[int, str, tuple]] = []
        for item in items:
            if run and (item[0] - run[-1][0] > 2 or item[0] == run[-1][0]):
                out.append(Extent(run[0][1], {f: b for f, _, b in run}, label, source))
                run = []
            run.append(item)
        if run:
            out.append(Extent(run[0][1], {f: b for f, _, b in run}, label, source))
    return out + singles


def project_extent(state: MprState, geometry, extent: Extent, view: str) -> ProjectedBox | None:
    """The lesion's extent in ``view`` (the plane through the crosshair), or None where that plane
    (or its slab) does not pass through it.

    Each slice's box is a slab of voxels, as thick as the slices are apart, in patient space
    (``geometry``: the series' :class:`~app.dicom.model.Geometry`, slice by slice, so a series
    resampled for MPR still maps its own slices). The rectangle spans what the view's plane cuts:
    in a coronal view through the lesion, its columns are the boxes' column range and its rows the
    slices' range, edge to edge, so it lands on the voxels the lesion occupies.
    """
    from app.viewer.sync import slice_gap, unit_normal

    if geometry is None or not extent.boxes:
        return None
    plane = state.plane(view)
    half_slab = state.slab_mm / 2.0
    normal = unit_normal(geometry) * slice_gap(geometry) / 2.0
    cut: list[np.ndarray] = []
    for k, (x0, y0, x1, y1) in extent.boxes.items():
        if not 0 <= k < len(geometry.origins):
            continue
        # box edges → positions in the geometry's pixel-centre coordinates
        corners = [geometry.pixel_to_patient(k, x - 0.5, y - 0.5) for x in (x0, x1) for y in (y0, y1)]
        pts = np.array([c + s * normal for c in corners for s in (-1.0, 1.0)])
        d = (pts - plane.origin) @ plane.normal
        if d.min() - half_slab > 1e-6 or d.max() + half_slab < -1e-6:
            continue  # this slice's slab does not meet the plane
        cut.append(pts)
    if not cut:
        return None
    pts = np.concatenate(cut)
    rel = pts - plane.origin
    cols = rel @ plane.u / plane.spacing[1] + 0.5  # pixel-centre coordinates → edges as boxes are
    rows = rel @ plane.v / plane.spacing[0] + 0.5
    return ProjectedBox(extent.id, float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()),
                        extent.label, extent.source)
