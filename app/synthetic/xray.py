"""A radiograph-like frontal projection of the phantom of :mod:`app.synthetic.anatomy`.

Each pixel is the line integral of attenuation along the patient's antero-posterior
axis, computed analytically per shape (chord lengths through ellipses), so a 224²
image takes a few tens of milliseconds. Lesions add their ellipsoid's chord times
their attenuation above the lung's, which keeps their boxes exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from app.synthetic.anatomy import Anatomy, Blob, Lesion

#: Linear attenuation of water per millimetre (about 60 keV); μ(HU) = μw · (1 + HU/1000).
MU_WATER = 0.02


def _mu(hu: float) -> float:
    return MU_WATER * (1.0 + hu / 1000.0)


@dataclass
class XRayImage:
    """A frontal (PA-like) projection: ``values`` are line integrals of attenuation.

    Rows run head to feet over ``s``, columns over ``x`` (the patient's right on the
    image left, as a chest radiograph is read). ``boxes`` as in :class:`CTSlice`.
    """

    values: np.ndarray
    lung_mask: np.ndarray  # pixels whose ray crosses lung: where lung lesions can be placed
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    s_top: float = -25.0
    fov_mm: float = 400.0


def _sections(blob: Blob, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Vectorised :meth:`Blob.section` over depths ``s`` (1-D): cx, rx, ry (0 where absent), angle."""
    mid = blob.s_mid if blob.s_mid is not None else 0.5 * (blob.s0 + blob.s1)
    inside = (s >= blob.s0) & (s <= blob.s1)
    if blob.cylinder:
        k = inside.astype(np.float64)
    else:
        half = np.where(s < mid, mid - blob.s0, blob.s1 - mid)
        u = np.abs(s - mid) / np.maximum(half, 1e-9)
        k = np.where(inside & (u < 1.0), np.sqrt(np.clip(1.0 - u * u, 0.0, None)), 0.0)
    dx, dy = blob.drift
    cx = blob.cx + dx * (s - mid)
    rx, ry, angle = blob.rx * k, blob.ry * k, blob.angle
    if blob.cylinder and (dx or dy):
        rx, ry, angle = blob.rx * math.sqrt(1.0 + dx * dx + dy * dy) * k, blob.rx * k, math.atan2(dy, dx)
    return cx, rx, ry, angle


def _chord(x: np.ndarray, s: np.ndarray, blob: Blob) -> np.ndarray:
    """Length (mm) of the ray along ``y`` through ``blob`` at each (s, x)."""
    cx, rx, ry, angle = _sections(blob, s[:, 0].astype(np.float64))
    out = np.zeros((s.shape[0], x.shape[1]), dtype=np.float32)
    rows = np.flatnonzero(rx > 0.05)
    if len(rows) == 0:
        return out
    rx = rx[rows, None].astype(np.float32)
    ry = ry[rows, None].astype(np.float32)
    dx = x - cx[rows, None].astype(np.float32)
    if angle:
        c, sn = math.cos(angle), math.sin(angle)
        a = c * c / (rx * rx) + sn * sn / (ry * ry)
        b = 2.0 * c * sn * (1.0 / (rx * rx) - 1.0 / (ry * ry))
        cc = sn * sn / (rx * rx) + c * c / (ry * ry)
        disc = (b * dx) ** 2 - 4.0 * cc * (a * dx * dx - 1.0)
        out[rows] = np.sqrt(np.maximum(disc, 0.0)) / cc
    else:
        u = dx / rx
        out[rows] = 2.0 * ry * np.sqrt(np.maximum(1.0 - u * u, 0.0))
    return out


def _rib_bands(x: np.ndarray, s: np.ndarray, a: Anatomy) -> np.ndarray:
    """Bone path length of the posterior ribs and clavicles as seen front to back."""
    ax, _ = a.cavity
    out = np.zeros((s.shape[0], x.shape[1]), dtype=np.float32)
    u = np.abs(x) / ax  # 0 at the spine, 1 at the chest wall
    inside = (u > 0.08) & (u < 1.02)
    for k in range(10):
        s_k = 0.02 * a.extent_mm + k * 0.068 * a.extent_mm
        centre = s_k - 14.0 * u + 62.0 * u * u  # up from the spine, then down along the wall
        half = 4.5 + 1.5 * u
        d = np.abs(s - centre) / half
        out += np.where(inside & (d < 1.0), 9.0 * np.sqrt(np.maximum(1.0 - d * d, 0.0)), 0.0)
    # clavicles: from the sternal notch out and slightly up
    centre = 14.0 - 26.0 * np.clip(u, 0, 1) + 30.0 * np.clip(u - 0.6, 0, 1)
    d = np.abs(s - centre) / 6.0
    out += np.where((u < 0.85) & (u > 0.05) & (d < 1.0), 14.0 * np.sqrt(np.maximum(1.0 - d * d, 0.0)), 0.0)
    return out


def _by_name(a: Anatomy, *names: str) -> list[Blob]:
    return [b for b in a.structures if b.name in names]


def render_xray(anatomy: Anatomy, size: int = 224, lesions: tuple[Lesion, ...] | list[Lesion] = (),
                fov_mm: float = 400.0) -> XRayImage:
    """Frontal projection of the phantom (noise-free), lesions included.

    Soft tissue fills the body; lungs, heart, great vessels, liver and spleen
    change the air path; spine, ribs and clavicles add bone. Each lesion adds
    its ellipsoid's chord times its attenuation above the lung's.
    """
    sp = fov_mm / size
    s_top = -25.0
    cols = ((np.arange(size, dtype=np.float32) + 0.5) - size / 2.0) * np.float32(sp)
    rows = s_top + (np.arange(size, dtype=np.float32) + 0.5) * np.float32(sp)
    x, s = cols[None, :], rows[:, None]
    mu_soft, mu_fat = _mu(40.0), _mu(-90.0)
    body = _by_name(anatomy, "body")[0]
    u = x / body.rx
    body_chord = 2.0 * body.ry * np.sqrt(np.maximum(1.0 - u * u, 0.0))
    # above the apices: thin shoulders either side of the neck
    shoulders = np.clip((-s - 2.0) / 12.0, 0.0, 1.0)
    un = x / 55.0
    neck_chord = 2.0 * 55.0 * np.sqrt(np.maximum(1.0 - un * un, 0.0))
    body_chord = body_chord * (1.0 - 0.55 * shoulders) + np.maximum(neck_chord - 0.45 * body_chord, 0) * shoulders
    values = (0.8 * mu_soft + 0.2 * mu_fat) * body_chord
    mu_lung = _mu(-860.0)
    lung_total = np.zeros_like(values)
    occluders = sum(_chord(x, s, b) for b in _by_name(
        anatomy, "pericardial fat", "aortic arch", "ascending aorta", "descending aorta", "liver", "spleen",
        "stomach", "vertebral body"))
    for blob in _by_name(anatomy, "right lung", "left lung"):
        lung_total += _chord(x, s, blob)
    lung_path = np.clip(lung_total - occluders, 0.0, None)
    values -= (mu_soft - mu_lung) * lung_path
    gas = _by_name(anatomy, "gastric air", "trachea")
    for blob in gas:
        values -= (mu_soft - _mu(-990.0)) * 0.8 * _chord(x, s, blob)
    mu_bone = _mu(700.0)
    for blob in _by_name(anatomy, "vertebral body", "posterior arch"):
        values += (mu_bone - mu_soft) * 0.3 * _chord(x, s, blob)
    values += (mu_bone - mu_soft) * _rib_bands(x, s, anatomy)
    # lung markings: vessels fanning out from the hila, seen end-on as tapering lines
    lung_mask = lung_path > 20.0
    for blob in anatomy.structures:
        if blob.name != "lung vessel":
            continue
        mid = blob.s_mid if blob.s_mid is not None else 0.5 * (blob.s0 + blob.s1)
        x0, x1 = blob.cx + blob.drift[0] * (blob.s0 - mid), blob.cx + blob.drift[0] * (blob.s1 - mid)
        _add_segment(values, cols, rows, (x0, blob.s0), (x1, blob.s1), blob.rx * 1.2,
                     (_mu(blob.hu) - mu_lung) * 2.0 * blob.rx, lung_mask)
    img = XRayImage(values.astype(np.float32), lung_mask, boxes={}, s_top=s_top, fov_mm=fov_mm)
    return add_xray_lesions(img, lesions) if lesions else img


def add_xray_lesions(base: XRayImage, lesions: tuple[Lesion, ...] | list[Lesion]) -> XRayImage:
    """A copy of ``base`` with the lesions' projections added (attenuation adds along a ray)."""
    size = base.values.shape[1]
    sp = base.fov_mm / size
    cols = ((np.arange(size, dtype=np.float32) + 0.5) - size / 2.0) * np.float32(sp)
    rows = base.s_top + (np.arange(base.values.shape[0], dtype=np.float32) + 0.5) * np.float32(sp)
    img = XRayImage(base.values.copy(), base.lung_mask, s_top=base.s_top, fov_mm=base.fov_mm)
    mu_lung = _mu(-860.0)
    for lesion in lesions:
        _project_lesion(img, cols, rows, lesion, mu_lung)
    return img


def _add_segment(values: np.ndarray, cols: np.ndarray, rows: np.ndarray, p0: tuple[float, float],
                 p1: tuple[float, float], width: float, amount: float, where: np.ndarray) -> None:
    sp = float(cols[1] - cols[0])
    lo_x, hi_x = min(p0[0], p1[0]) - width, max(p0[0], p1[0]) + width
    lo_s, hi_s = min(p0[1], p1[1]) - width, max(p0[1], p1[1]) + width
    c0 = max(0, int((lo_x - cols[0]) / sp))
    c1 = min(len(cols), int((hi_x - cols[0]) / sp) + 2)
    r0 = max(0, int((lo_s - rows[0]) / sp))
    r1 = min(len(rows), int((hi_s - rows[0]) / sp) + 2)
    if c1 <= c0 or r1 <= r0:
        return
    px = cols[c0:c1][None, :] - p0[0]
    ps = rows[r0:r1][:, None] - p0[1]
    dx, ds = p1[0] - p0[0], p1[1] - p0[1]
    length2 = dx * dx + ds * ds or 1e-6
    t = np.clip((px * dx + ps * ds) / length2, 0.0, 1.0)
    dist = np.hypot(px - t * dx, ps - t * ds)
    taper = 1.0 - 0.7 * t  # vessels thin towards the periphery
    prof = np.clip(1.0 - dist / (width * taper), 0.0, 1.0)
    values[r0:r1, c0:c1] += (amount * taper * prof * where[r0:r1, c0:c1]).astype(np.float32)


def _project_lesion(img: XRayImage, cols: np.ndarray, rows: np.ndarray, lesion: Lesion, mu_lung: float) -> None:
    grow = 1.0 + lesion.margin
    sp = float(cols[1] - cols[0])
    c = (cols >= lesion.x - lesion.rx * grow - sp) & (cols <= lesion.x + lesion.rx * grow + sp)
    r = (rows >= lesion.s - lesion.rs * grow - sp) & (rows <= lesion.s + lesion.rs * grow + sp)
    ci, ri = np.flatnonzero(c), np.flatnonzero(r)
    if len(ci) == 0 or len(ri) == 0:
        return
    u = (cols[ci][None, :] - lesion.x) / lesion.rx
    v = (rows[ri][:, None] - lesion.s) / lesion.rs
    d = np.sqrt(u * u + v * v)
    if lesion.margin:
        wobble = 1.0 + lesion.margin * np.sin(lesion.lobes * np.arctan2(v, u) + lesion.phase)
        d = d / wobble
    chord = 2.0 * lesion.ry * np.sqrt(np.maximum(1.0 - d * d, 0.0))
    # soft edge over one pixel, as in the CT rasteriser
    edge = sp / max(min(lesion.rx, lesion.rs), 1e-3)
    alpha = np.clip((1.0 - d) / edge + 0.5, 0.0, 1.0)
    chord = np.maximum(chord, alpha * 2.0 * lesion.ry * 0.25 * (alpha > 0))
    img.values[ri[0]:ri[-1] + 1, ci[0]:ci[-1] + 1] += ((_mu(lesion.hu) - mu_lung) * chord).astype(np.float32)
    core = alpha >= 0.5
    if core.any():
        rr, cc = np.flatnonzero(core.any(axis=1)), np.flatnonzero(core.any(axis=0))
        img.boxes[lesion.id] = (int(ci[0] + cc[0]), int(ri[0] + rr[0]), int(ci[0] + cc[-1]) + 1,
                                int(ri[0] + rr[-1]) + 1)
