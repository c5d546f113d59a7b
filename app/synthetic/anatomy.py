"""A Qt-free anatomical phantom: chest and upper abdomen in Hounsfield units.

Shared by the synthetic sample study (:mod:`app.synthetic.sample`) and the cases of the
training corpus (:mod:`app.synthetic.cases`). Anatomy is described in millimetres, in a body
frame that matches DICOM patient coordinates (LPS) of an axial slice:

- ``x`` grows towards the patient's left (image right in radiological view),
- ``y`` grows towards the patient's back (image down),
- ``s`` is the depth below the thoracic inlet (0 at the lung apices), growing
  towards the feet; DICOM ``z`` is ``-s``.

Every organ is a :class:`Blob`: an ellipse in the axial plane whose size
follows an ellipsoid-like profile along ``s`` (or a constant cylinder), painted
in order, optionally only over given tissues. Lesions are 3-D ellipsoids with
lobulated or spiculated margins and a soft one-pixel edge. Painting touches
only each shape's bounding box, so a 512² slice renders in a few milliseconds.

:mod:`app.synthetic.xray` projects the same anatomy into a radiograph-like image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property, lru_cache

import numpy as np


class Tissue(IntEnum):
    """Label values of :attr:`CTSlice.labels`. Lesion ``i`` is labelled ``LESION + i``."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    LUNG_RIGHT = 3
    LUNG_LEFT = 4
    HEART = 5
    VESSEL = 6
    LIVER = 7
    SPLEEN = 8
    BONE = 9
    AIRWAY = 10
    KIDNEY = 11
    STOMACH = 12
    SOFT = 13
    TABLE = 14
    LESION = 100


LUNGS = (Tissue.LUNG_RIGHT, Tissue.LUNG_LEFT)


@dataclass(frozen=True)
class Blob:
    """One structure: an axial ellipse of HU ``hu`` whose radii vary along ``s``.

    Between ``s0`` and ``s1`` the cross-section scales by
    ``sqrt(1 - u²)`` where ``u`` runs from 0 at ``s_mid`` to 1 at either end
    (``cylinder=True``: constant). The centre drifts by ``drift`` mm per mm of
    ``s`` away from ``s_mid`` (vessels, the aortic arch, bronchi).
    """

    name: str
    label: Tissue
    hu: float
    cx: float
    cy: float
    rx: float
    ry: float
    s0: float
    s1: float
    s_mid: float | None = None
    angle: float = 0.0  # radians, in-plane rotation
    cylinder: bool = False
    drift: tuple[float, float] = (0.0, 0.0)
    only_in: tuple[int, ...] = ()
    gradient: float = 0.0  # HU added at +ry (towards the back): dependent lung density
    relabel: bool = True

    def section(self, s: float) -> tuple[float, float, float, float, float] | None:
        """(cx, cy, rx, ry, angle) of the cross-section at depth ``s``, or None."""
        if s < self.s0 or s > self.s1:
            return None
        mid = self.s_mid if self.s_mid is not None else 0.5 * (self.s0 + self.s1)
        if self.cylinder:
            k = 1.0
        else:
            half = (mid - self.s0) if s < mid else (self.s1 - mid)
            u = abs(s - mid) / half if half > 0 else 0.0
            if u >= 1.0:
                return None
            k = math.sqrt(1.0 - u * u)
        d = s - mid
        rx, ry, angle = self.rx * k, self.ry * k, self.angle
        dx, dy = self.drift
        if self.cylinder and (dx or dy):
            # an oblique tube cuts an ellipse elongated along its drift
            rx = self.rx * math.sqrt(1.0 + dx * dx + dy * dy)
            ry = self.rx
            angle = math.atan2(dy, dx)
        return self.cx + dx * d, self.cy + dy * d, rx, ry, angle


@dataclass(frozen=True)
class Lesion:
    """A 3-D lesion: ellipsoid at (x, y, s) mm with radii (rx, ry, rs) mm.

    ``margin`` is the relative amplitude of the radius modulation (0 smooth,
    ~0.15 lobulated, ~0.3 spiculated) with ``lobes`` bumps around it.
    """

    id: str
    organ: str  # "lung" or "liver"
    location: str  # e.g. "right upper lobe", "right hepatic lobe"
    side: str  # "right" or "left" (patient side)
    kind: str  # "solid nodule", "ground-glass nodule", "mass", "hypodense lesion", "cyst"
    x: float
    y: float
    s: float
    rx: float
    ry: float
    rs: float
    hu: float
    margin: float = 0.0
    lobes: int = 7
    phase: float = 0.0

    @property
    def diameter_mm(self) -> float:
        """Longest axial diameter in millimetres."""
        return 2.0 * max(self.rx, self.ry) * (1.0 + self.margin)

    @property
    def margin_name(self) -> str:
        return "smooth" if self.margin < 0.08 else ("lobulated" if self.margin < 0.22 else "spiculated")


@dataclass(frozen=True)
class Grid:
    """A square axial pixel grid: ``size`` pixels over ``fov_mm``, centred on the body."""

    size: int = 512
    fov_mm: float = 380.0

    @property
    def spacing(self) -> float:
        return self.fov_mm / self.size

    @cached_property
    def coords(self) -> np.ndarray:
        """Millimetre coordinate of each pixel centre along a row or column (float32)."""
        return ((np.arange(self.size, dtype=np.float32) + 0.5) - self.size / 2.0) * np.float32(self.spacing)

    def to_pixel(self, mm: float) -> float:
        """Continuous pixel coordinate (pixel centres at k + 0.5) of a body-frame mm value."""
        return mm / self.spacing + self.size / 2.0

    @cached_property
    def fov_mask(self) -> np.ndarray:
        """Pixels inside the circular reconstruction field of view."""
        c = self.coords
        r = self.fov_mm / 2.0
        return (c[None, :] ** 2 + c[:, None] ** 2) <= r * r


@dataclass
class CTSlice:
    """An axial slice: HU (float32), tissue labels (uint8) and lesion boxes.

    ``boxes`` maps lesion id to ``(x0, y0, x1, y1)`` in pixels (column, row;
    x1/y1 exclusive) of the lesion's painted pixels on this slice.
    """

    hu: np.ndarray
    labels: np.ndarray
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Anatomy:
    """Body proportions; :meth:`random` jitters them for a training corpus."""

    extent_mm: float = 330.0  # thoracic inlet to upper kidneys
    body_rx: float = 165.0
    body_ry: float = 115.0
    lung_scale: float = 1.0
    heart_scale: float = 1.0
    heart_shift: float = 0.0  # mm towards the patient's left
    liver_scale: float = 1.0
    dome_shift: float = 0.0  # mm: positive lowers both diaphragm domes
    contrast: bool = True  # portal-venous phase: enhanced vessels and organs
    vessel_seed: int = 0

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Anatomy":
        return cls(
            body_rx=float(rng.uniform(145, 175)),
            body_ry=float(rng.uniform(100, 125)),
            lung_scale=float(rng.uniform(0.9, 1.08)),
            heart_scale=float(rng.uniform(0.85, 1.15)),
            heart_shift=float(rng.uniform(-8, 10)),
            liver_scale=float(rng.uniform(0.9, 1.1)),
            dome_shift=float(rng.uniform(-15, 15)),
            contrast=bool(rng.random() < 0.7),
            vessel_seed=int(rng.integers(0, 2**31)),
        )

    # -- landmarks (mm) -------------------------------------------------------
    @property
    def cavity(self) -> tuple[float, float]:
        """Semi-axes of the thoracic/abdominal cavity inside the body wall."""
        return self.body_rx - 24.0, self.body_ry - 22.0

    @property
    def spine_y(self) -> float:
        return self.body_ry - 52.0

    @property
    def lung_bottom(self) -> float:
        return 0.80 * self.extent_mm + self.dome_shift

    def lung_centre(self, side: str) -> tuple[float, float]:
        ax, _ = self.cavity
        sign = -1.0 if side == "right" else 1.0
        return sign * 0.52 * ax, 2.0

    @cached_property
    def structures(self) -> tuple[Blob, ...]:
        return tuple(_build_structures(self))


def _build_structures(a: Anatomy) -> list[Blob]:  # noqa: PLR0915 - one recipe, read top to bottom
    E = a.extent_mm
    ax, ay = a.cavity
    enh = a.contrast
    blood = 170.0 if enh else 40.0
    out: list[Blob] = []
    add = out.append
    top, bot = -5.0, E + 5.0

    # body wall: fat, then muscle, then the cavity (mediastinal / abdominal fat)
    add(Blob("body", Tissue.FAT, -100, 0, 0, a.body_rx, a.body_ry, top, bot, cylinder=True))
    add(Blob("muscle wall", Tissue.MUSCLE, 45, 0, 0, a.body_rx - 12, a.body_ry - 11, top, bot, cylinder=True))
    add(Blob("cavity", Tissue.FAT, -85, 0, 0, ax, ay, top, bot, cylinder=True))
    sy = a.spine_y
    for side in (-1, 1):
        add(Blob("paraspinal", Tissue.MUSCLE, 50, side * 30, ay + 5, 26, 14, top, bot, cylinder=True))
    # scapulae in the upper chest, behind the ribs
    for side in (-1, 1):
        add(Blob("scapula", Tissue.BONE, 600, side * 0.53 * ax, ay + 2, 0.23 * ax, 4.5, top, 0.42 * E,
                 s_mid=0.12 * E, angle=-side * 0.35))
    # lungs: an apex at s=0, widest low in the chest, cut from below by liver and spleen
    for side in ("right", "left"):
        cx, cy = a.lung_centre(side)
        label = Tissue.LUNG_RIGHT if side == "right" else Tissue.LUNG_LEFT
        rx = 0.47 * ax * a.lung_scale
        ry = 0.90 * ay * a.lung_scale
        bottom = a.lung_bottom + (0.0 if side == "left" else -6.0)
        add(Blob(f"{side} lung", label, -860, cx, cy, rx, ry, -2.0, bottom, s_mid=0.62 * E,
                 gradient=70.0))
    # great vessels and heart
    add(Blob("esophagus", Tissue.SOFT, 35, 8, sy - 22, 8, 7, top, 0.80 * E, cylinder=True))
    add(Blob("descending aorta", Tissue.VESSEL, blood, 24, sy - 20, 12, 12, 0.25 * E, bot, cylinder=True))
    add(Blob("aortic arch", Tissue.VESSEL, blood, 6, -5, 34, 11, 0.20 * E, 0.29 * E, angle=1.05))
    add(Blob("ascending aorta", Tissue.VESSEL, blood, -12, -22, 15, 15, 0.25 * E, 0.46 * E, cylinder=True))
    add(Blob("pulmonary trunk", Tissue.VESSEL, blood - 10, 18, -28, 14, 13, 0.32 * E, 0.44 * E, cylinder=True))
    add(Blob("superior vena cava", Tissue.VESSEL, blood + 40, -30, -18, 9, 9, top + 10, 0.45 * E, cylinder=True))
    # airway (over the great vessels): trachea to the carina, then the main bronchi
    carina = 0.30 * E
    add(Blob("tracheal wall", Tissue.SOFT, 40, -4, 10, 11, 10, top, carina, cylinder=True))
    add(Blob("trachea", Tissue.AIRWAY, -990, -4, 10, 8.5, 7.5, top, carina, cylinder=True))
    for side in (-1, 1):
        add(Blob("bronchus", Tissue.AIRWAY, -980, side * 16 - 4, 14, 5.5, 5.5, carina, carina + 0.10 * E,
                 s_mid=carina, cylinder=True, drift=(side * 0.5, 0.15)))
    hs = a.heart_scale
    hx, hy, hc = 20.0 + a.heart_shift, -26.0, 0.60 * E + a.dome_shift * 0.5
    add(Blob("pericardial fat", Tissue.FAT, -90, hx, hy, 72 * hs, 56 * hs, hc - 68 * hs, hc + 60 * hs,
             s_mid=hc, angle=-0.55))
    add(Blob("myocardium", Tissue.HEART, 110 if enh else 45, hx, hy, 64 * hs, 49 * hs, hc - 60 * hs,
             hc + 52 * hs, s_mid=hc, angle=-0.55))
    add(Blob("cardiac chambers", Tissue.HEART, blood + 20, hx - 4, hy + 2, 48 * hs, 35 * hs, hc - 45 * hs,
             hc + 38 * hs, s_mid=hc, angle=-0.55))
    # abdomen below the domes
    ls = a.liver_scale
    dome = 0.66 * E + a.dome_shift
    add(Blob("liver", Tissue.LIVER, 105 if enh else 60, -0.32 * ax, 6, 0.72 * ax * ls, 0.80 * ay * ls,
             dome, E + 80, s_mid=dome + 0.18 * E))
    add(Blob("spleen", Tissue.SPLEEN, 115 if enh else 50, 0.62 * ax, 0.45 * ay, 0.22 * ax, 0.35 * ay,
             dome + 18, dome + 0.32 * E, angle=0.5))
    add(Blob("stomach", Tissue.STOMACH, 25, 0.36 * ax, -0.25 * ay, 0.30 * ax, 0.32 * ay,
             dome + 8, dome + 0.36 * E))
    add(Blob("gastric air", Tissue.STOMACH, -980, 0.36 * ax, -0.48 * ay, 0.20 * ax, 0.09 * ay,
             dome + 12, dome + 0.18 * E, only_in=(Tissue.STOMACH,)))
    for side in (-1, 1):
        add(Blob("kidney", Tissue.KIDNEY, 160 if enh else 35, side * 0.46 * ax, sy - 8, 24, 34,
                 0.88 * E, E + 60, angle=side * 0.35))
    add(Blob("ivc", Tissue.VESSEL, blood - 30, -22, sy - 22, 11, 10, 0.66 * E, bot, cylinder=True,
             only_in=(Tissue.LIVER, Tissue.FAT, Tissue.SOFT)))
    # sternum and ribs: the ribs show as short oval cuts that move around the wall with depth
    add(Blob("sternum", Tissue.BONE, 380, 0, -ay - 6, 15, 7, 0.10 * E, 0.62 * E, cylinder=True))
    rib_ring = (ax + 4, ay + 3)
    for k in range(14):
        theta = -math.pi / 2 + (k + 0.5) * (2 * math.pi / 14)
        if abs(math.sin(theta)) > 0.97:
            continue  # no ribs exactly at the sternum or the spine
        for level in range(11):
            s_c = 0.04 * E + level * 0.072 * E + 0.02 * E * math.cos(theta)
            rx, ry = rib_ring
            add(Blob("rib", Tissue.BONE, 650, rx * math.cos(theta), ry * math.sin(theta), 10, 5,
                     s_c - 8, s_c + 8, angle=theta + math.pi / 2))
    # spine: vertebral body (discs between), posterior elements, canal
    add(Blob("vertebral body", Tissue.BONE, 260, 0, sy, 19, 17, top, bot, cylinder=True))
    add(Blob("posterior arch", Tissue.BONE, 450, 0, sy + 27, 23, 9, top, bot, cylinder=True))
    add(Blob("spinous process", Tissue.BONE, 500, 0, sy + 42, 5, 11, top, bot, cylinder=True))
    add(Blob("spinal canal", Tissue.SOFT, 15, 0, sy + 25, 9, 8, top, bot, cylinder=True))
    # lung vessels: tubes fanning out from each hilum, painted over lung only
    vr = np.random.default_rng(a.vessel_seed)
    for side in ("right", "left"):
        lx, ly = a.lung_centre(side)
        hilum_x = lx * 0.45
        for _ in range(56):
            s_h = float(vr.uniform(0.30, 0.55) * E)
            length = float(vr.uniform(0.12, 0.35) * E)
            direction = -1.0 if vr.random() < 0.5 else 1.0
            s0, s1 = (s_h - length, s_h) if direction < 0 else (s_h, s_h + length)
            dx = float(vr.uniform(0.1, 0.9)) * (1 if side == "left" else -1) * direction
            dy = float(vr.uniform(-0.6, 0.6)) * direction
            r = float(vr.uniform(0.9, 2.6))
            add(Blob("lung vessel", Tissue.VESSEL, blood * 0.6 + 20, hilum_x, ly + float(vr.uniform(-25, 25)),
                     r, r, s0, s1, s_mid=s_h, cylinder=True, drift=(dx, dy), only_in=LUNGS, relabel=False))
    return out


# -- painting -----------------------------------------------------------------------

def _window_of(grid: Grid, cx: float, cy: float, hx: float, hy: float) -> tuple[slice, slice] | None:
    sp = grid.spacing
    n = grid.size
    c0 = max(0, int(math.floor(grid.to_pixel(cx - hx) - 0.5)))
    c1 = min(n, int(math.ceil(grid.to_pixel(cx + hx) + 0.5)))
    r0 = max(0, int(math.floor(grid.to_pixel(cy - hy) - 0.5)))
    r1 = min(n, int(math.ceil(grid.to_pixel(cy + hy) + 0.5)))
    if c1 <= c0 or r1 <= r0 or sp <= 0:
        return None
    return slice(r0, r1), slice(c0, c1)


def _ellipse_q(grid: Grid, rows: slice, cols: slice, cx: float, cy: float, rx: float, ry: float,
               angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised squared radius q (<1 inside) over the window, and the local rotated u, v."""
    xs = grid.coords[cols][None, :] - np.float32(cx)
    ys = grid.coords[rows][:, None] - np.float32(cy)
    if angle:
        c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        u = xs * c + ys * s
        v = ys * c - xs * s
    else:
        u, v = np.broadcast_to(xs, (ys.shape[0], xs.shape[1])), np.broadcast_to(ys, (ys.shape[0], xs.shape[1]))
    q = (u / np.float32(rx)) ** 2 + (v / np.float32(ry)) ** 2
    return q, u, v


def _half_extent(rx: float, ry: float, angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return math.hypot(rx * c, ry * s), math.hypot(rx * s, ry * c)


@lru_cache(maxsize=64)
def _allowed(labels: tuple[int, ...]) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(labels)] = True
    return table


def _paint_blob(hu: np.ndarray, labels: np.ndarray, grid: Grid, blob: Blob, s: float) -> None:
    sec = blob.section(s)
    if sec is None:
        return
    cx, cy, rx, ry, angle = sec
    if rx < 0.05 or ry < 0.05:
        return
    hx, hy = _half_extent(rx, ry, angle)
    win = _window_of(grid, cx, cy, hx, hy)
    if win is None:
        return
    rows, cols = win
    q, _, v = _ellipse_q(grid, rows, cols, cx, cy, rx, ry, angle)
    mask = q <= 1.0
    lab = labels[rows, cols]
    if blob.only_in:
        mask &= _allowed(blob.only_in)[lab]
    if not mask.any():
        return
    region = hu[rows, cols]
    if blob.gradient:
        ys = grid.coords[rows][:, None] - np.float32(cy)
        value = np.float32(blob.hu) + np.float32(blob.gradient) * (ys / np.float32(ry))
        region[mask] = np.broadcast_to(value, mask.shape)[mask]
    else:
        region[mask] = blob.hu
    if blob.relabel:
        lab[mask] = blob.label


def lesion_section(lesion: Lesion, s: float) -> tuple[float, float] | None:
    """Axial radii (rx, ry) in mm of the lesion at depth ``s``, or None if it misses the slice."""
    u = (s - lesion.s) / lesion.rs
    if abs(u) >= 1.0:
        return None
    k = math.sqrt(1.0 - u * u)
    return lesion.rx * k, lesion.ry * k


def _paint_lesion(sl: CTSlice, grid: Grid, lesion: Lesion, index: int, s: float) -> None:
    radii = lesion_section(lesion, s)
    if radii is None:
        return
    rx, ry = radii
    grow = 1.0 + lesion.margin
    win = _window_of(grid, lesion.x, lesion.y, rx * grow + grid.spacing, ry * grow + grid.spacing)
    if win is None:
        return
    rows, cols = win
    q, u, v = _ellipse_q(grid, rows, cols, lesion.x, lesion.y, rx, ry, 0.0)
    d = np.sqrt(q)
    if lesion.margin:
        theta = np.arctan2(v * np.float32(rx), u * np.float32(ry))
        wobble = np.float32(1.0) + np.float32(lesion.margin) * np.sin(np.float32(lesion.lobes) * theta
                                                                      + np.float32(lesion.phase))
        d = d / wobble
    # soft edge one pixel wide: partial volume at the boundary
    edge = np.float32(grid.spacing / max(min(rx, ry), 1e-3))
    alpha = np.clip((1.0 - d) / edge + 0.5, 0.0, 1.0).astype(np.float32)
    inside = alpha > 0.0
    if not inside.any():
        return
    region = sl.hu[rows, cols]
    region[inside] = region[inside] * (1.0 - alpha[inside]) + np.float32(lesion.hu) * alpha[inside]
    core = alpha >= 0.5
    if not core.any():
        return
    sl.labels[rows, cols][core] = Tissue.LESION + index
    rr = np.flatnonzero(core.any(axis=1))
    cc = np.flatnonzero(core.any(axis=0))
    sl.boxes[lesion.id] = (cols.start + int(cc[0]), rows.start + int(rr[0]),
                           cols.start + int(cc[-1]) + 1, rows.start + int(rr[-1]) + 1)


def _paint_table(hu: np.ndarray, labels: np.ndarray, grid: Grid, anatomy: Anatomy) -> None:
    """The scanner couch: two thin curved shells below the patient's back."""
    c = grid.coords
    for y_top, thick, value in ((anatomy.body_ry + 12.0, 3.0, 180.0), (anatomy.body_ry + 34.0, 4.0, 120.0)):
        curve = y_top - 0.0016 * c**2  # rises towards the sides like a cradle
        rows = c[:, None]
        mask = (rows >= curve[None, :]) & (rows <= curve[None, :] + thick) & (np.abs(c)[None, :] < 0.55 * grid.fov_mm)
        hu[mask] = value
        labels[mask] = Tissue.TABLE


def render_ct_slice(anatomy: Anatomy, s: float, grid: Grid, lesions: tuple[Lesion, ...] | list[Lesion] = (),
                    table: bool = True) -> CTSlice:
    """Noise-free axial slice at depth ``s`` mm: HU, labels and per-lesion boxes."""
    hu = np.full((grid.size, grid.size), -1000.0, dtype=np.float32)
    labels = np.zeros((grid.size, grid.size), dtype=np.uint8)
    if table:
        _paint_table(hu, labels, grid, anatomy)
    for blob in anatomy.structures:
        _paint_blob(hu, labels, grid, blob, s)
    sl = CTSlice(hu, labels)
    for i, lesion in enumerate(lesions):
        _paint_lesion(sl, grid, lesion, i, s)
    return sl


def add_noise(hu: np.ndarray, rng: np.random.Generator, sigma: float = 12.0) -> np.ndarray:
    """Add quantum-like Gaussian noise (HU) in place and return the array."""
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(sigma)
    return hu



def place_lesion(anatomy: Anatomy, organ_labels: tuple[int, ...], s: float, radius_mm: float,
                 rng: np.random.Generator, tries: int = 400, fov_mm: float = 380.0) -> tuple[float, float] | None:
    """A centre (x, y) mm at depth ``s`` where a disc of ``radius_mm`` lies inside the organ.

    Checked on a coarse label render at ``s`` and half a radius above and below,
    so the lesion sits in the organ instead of straddling the pleura or a vessel
    wall. Returns None when the organ is too small there.
    """
    grid = Grid(128, fov_mm)
    levels = (s, s - 0.5 * radius_mm, s + 0.5 * radius_mm)
    allowed = _allowed(tuple(int(v) for v in organ_labels))
    ok = np.ones((grid.size, grid.size), dtype=bool)
    for level in levels:
        ok &= allowed[_coarse_labels(anatomy, round(level, 3), fov_mm)]
    ys, xs = np.nonzero(ok)
    if len(xs) == 0:
        return None
    c = grid.coords
    reach = int(math.ceil((radius_mm + 1.5 * grid.spacing) / grid.spacing))
    offsets = np.arange(-reach, reach + 1)
    disc = (offsets[None, :] ** 2 + offsets[:, None] ** 2) * grid.spacing**2 <= (radius_mm + 1.5 * grid.spacing) ** 2
    for _ in range(tries):
        i = int(rng.integers(len(xs)))
        r, col = int(ys[i]), int(xs[i])
        if r - reach < 0 or col - reach < 0 or r + reach >= grid.size or col + reach >= grid.size:
            continue
        if ok[r - reach:r + reach + 1, col - reach:col + reach + 1][disc].all():
            return float(c[col]), float(c[r])
    return None


@lru_cache(maxsize=32)
def _coarse_labels(anatomy: Anatomy, s: float, fov_mm: float) -> np.ndarray:
    labels = render_ct_slice(anatomy, s, Grid(128, fov_mm), table=False).labels
    labels.setflags(write=False)
    return labels
