"""Which part of the body does this slice show? An estimate from the pixels themselves.

The guardrail (:mod:`app.assistant.guardrail`) reads the body region from the DICOM
header; many series name none (no BodyPartExamined, a description such as "Series 3"),
so a question about the right kidney on a head MR went unchecked (issue #13). This module
looks at the image instead, with a few robust measurements and no model:

CT (Hounsfield units):

* the body is the largest connected region above −500 HU, its holes filled; its width
  and height in mm come from the pixel spacing (a head is about 150–200 mm wide, a
  chest or abdomen 280–450 mm);
* **head**: a closed ring of bone (> 250 HU) around brain-like tissue (most of it
  0–60 HU, median 15–50 HU) filling most of the section;
* **chest**: air-filled lung (−950…−500 HU) makes up at least 15 % of the body's convex
  hull, on both sides of the midline;
* **abdomen / pelvis**: a torso-sized section with (almost) no lung, mostly soft tissue;
  large bone masses on both flanks (iliac wings, femoral heads) make it pelvis. Either
  may be the other at the level where they meet, so both are kept as possible;
* **neck / extremity**: two separate limb-sized sections side by side, each with its own
  bone, are legs. A single small section (under 200 mm) that is not a head is a neck
  when it has an air passage and a limb when it has bone and no air — said with
  confidence 0.45 only, below what the guardrail acts on, because a child's abdomen is
  that small too;
* a slice cut by the field of view is judged by its lung only (lung fills a chest even in
  a zoomed view); without lung it cannot be told.

MR (no Hounsfield units) only gives what is robust: the body outline (Otsu threshold),
and a whole, round, head-sized section (120–210 × 140–240 mm) reads as a head with
moderate confidence (0.55; a thigh can be that size, so limbs stay possible). A section
cut by the field of view, or without pixel spacing, is ``None`` — "could not check" —
and so is anything else: never a guess.

:class:`RegionEstimate` says which region, how sure, and in one sentence why;
``possible`` lists every region the slice may belong to (the guardrail warns only about
structures found in none of them).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: regions the estimate can name (ids of ``resources/anatomy.yaml``; "extremity" covers both limbs)
REGIONS = ("head", "neck", "chest", "abdomen", "pelvis", "extremity")
#: the image is worked on at most this many pixels a side
WORK_SIZE = 128

LUNG_HU = (-950.0, -500.0)
BODY_HU = -500.0
BONE_HU = 250.0
BRAIN_HU = (0.0, 60.0)


@dataclass(frozen=True)
class RegionEstimate:
    region: str | None  # "head", "neck", "chest", "abdomen", "pelvis", "extremity", or None (unknown)
    confidence: float  # 0..1
    evidence: str  # one sentence: what in the image said so ("38% of the body is air-filled lung")
    possible: tuple[str, ...] = ()  # every region the slice may show, ``region`` first; () when unknown

    @property
    def known(self) -> bool:
        return self.region is not None

    def regions(self) -> tuple[str, ...]:
        """The regions the slice may show (``possible``, else ``region``)."""
        if self.possible:
            return self.possible
        return (self.region,) if self.region else ()


def unknown(evidence: str) -> RegionEstimate:
    return RegionEstimate(None, 0.0, evidence)


def estimate_region(pixels: np.ndarray, modality: str, spacing_mm: tuple[float, float] | None = None,
                    rescaled: bool = True) -> RegionEstimate:
    """The body region one frame shows.

    ``pixels`` is the frame (rows, cols) after the modality LUT (``rescaled``: HU for CT);
    ``spacing_mm`` the (row, column) pixel spacing. Never raises on image content.
    """
    mod = (modality or "").strip().upper()
    try:
        img = np.asarray(pixels)
    except Exception:  # noqa: BLE001 - whatever came in, the answer is "could not check"
        return unknown("The image could not be read.")
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        return unknown("The image is a colour image; its body region is not estimated.")
    if img.ndim != 2 or min(img.shape) < 8:
        return unknown("The image is not a single grey slice.")
    img = img.astype(np.float32, copy=False)
    finite = np.isfinite(img)
    if not finite.all():
        if not finite.any():
            return unknown("The image holds no values.")
        img = np.where(finite, img, np.float32(np.nanmin(np.where(finite, img, np.nan))))
    lo, hi = float(img.min()), float(img.max())
    if hi - lo < 1e-6 or float(np.std(img)) < 1e-3 * max(1.0, abs(hi)):
        return unknown("The image is blank.")
    spacing = _spacing(spacing_mm)
    small, factor = _downsample(img)
    work_spacing = None if spacing is None else (spacing[0] * factor[0], spacing[1] * factor[1])
    if mod not in ("CT", "MR"):
        return unknown(f"The body region is only estimated from CT and MR images, not {mod or 'this modality'}.")
    try:
        if mod == "CT" and rescaled:
            return _ct(small, work_spacing)
        return _shape_only(small, work_spacing, "MR" if mod == "MR" else "CT without Hounsfield units")
    except Exception:  # noqa: BLE001 - a check before the question must never stop the question
        log.exception("body region estimate failed")
        return unknown("The image could not be analysed.")


# ----------------------------------------------------------------------------- CT


@dataclass
class _Body:
    mask: np.ndarray  # the body, holes filled
    hull: np.ndarray  # its convex hull
    cropped: bool  # the body runs out of the image
    width_mm: float | None
    height_mm: float | None
    parts: list[np.ndarray]  # separate body sections (legs), largest first
    spacing: tuple[float, float] | None = None


def _ct(img: np.ndarray, spacing: tuple[float, float] | None) -> RegionEstimate:
    body = _body(img > BODY_HU, spacing)
    if body is None:
        return unknown("No body could be found in the image (nothing above -500 HU).")
    lung_hu = (img >= LUNG_HU[0]) & (img <= LUNG_HU[1])
    if body.cropped:
        return _cropped_ct(img, lung_hu)
    hull_area = float(body.hull.sum())
    lung = lung_hu & body.hull
    lung_frac = float(lung.sum()) / hull_area
    left, right = _halves(body.hull)
    lung_sides = (float((lung & left).sum()) / hull_area, float((lung & right).sum()) / hull_area)
    pct = f"{lung_frac:.0%}"

    head = _skull(img, body)
    if head is not None:
        brain_frac, median_hu = head
        sized = body.width_mm is not None and 110.0 <= body.width_mm <= 230.0
        conf = 0.9 if sized else (0.75 if body.width_mm is None else 0.55)
        return RegionEstimate("head", conf, f"A closed ring of bone encloses brain-like tissue (median "
                              f"{median_hu:.0f} HU) over {brain_frac:.0%} of the section{_size_words(body)}.",
                              ("head",))

    if lung_frac >= 0.15:
        if min(lung_sides) >= 0.03:
            conf = 0.9 if lung_frac >= 0.2 else 0.8
            if _torso_sized(body) is False:
                conf = 0.6
            return RegionEstimate("chest", conf, f"{pct} of the body is air-filled lung, on both sides"
                                  f"{_size_words(body)}.", ("chest",))
        return RegionEstimate("chest", 0.6, f"{pct} of the body is air-filled lung, on one side only"
                              f"{_size_words(body)}: the chest, perhaps at its base.", ("chest", "abdomen"))
    if lung_frac >= 0.04 and min(lung_sides) >= 0.01:
        return RegionEstimate("chest", 0.5, f"Only {pct} of the body is lung, on both sides{_size_words(body)}: the "
                              "slice lies at the top or the bottom of the chest.", ("chest", "abdomen", "neck"))

    torso = _torso_sized(body)
    legs = _legs(img, body)
    if legs is not None:
        return legs
    if torso is False:
        return _small_section(img, body)
    soft = _soft_fraction(img, body.mask)
    if soft < 0.6:
        return unknown(f"Only {soft:.0%} of the section is soft tissue and {pct} is lung: the region cannot be told.")
    conf = 0.7 if torso else 0.5
    section = f"A torso-sized section{_size_words(body, '')}" if torso else "A section of unknown size"
    flanks = _flank_bone(img, body)
    if flanks >= 0.025:
        return RegionEstimate("pelvis", round(conf * 0.9, 2), f"{section} without lung, with large bone on both "
                              f"flanks ({flanks:.1%} of the section on each side), as the pelvis has.",
                              ("pelvis", "abdomen"))
    return RegionEstimate("abdomen", conf, f"{section} with {pct} lung and {soft:.0%} soft tissue, as the abdomen "
                          "has.", ("abdomen", "pelvis"))


def _cropped_ct(img: np.ndarray, lung: np.ndarray) -> RegionEstimate:
    """A zoomed view that cuts the body: only lung filling the field says chest."""
    field = float(lung.size)
    frac = float(lung.sum()) / field
    left, right = _halves(np.ones_like(lung))
    sides = (float((lung & left).sum()) / field, float((lung & right).sum()) / field)
    if frac >= 0.15 and min(sides) >= 0.04:
        return RegionEstimate("chest", 0.7, f"{frac:.0%} of the zoomed field of view is air-filled lung, on both "
                              "sides.", ("chest",))
    if frac >= 0.08 and float(_largest(lung).sum()) >= 0.04 * field:
        return RegionEstimate("chest", 0.55, f"{frac:.0%} of the zoomed field of view is air-filled lung.",
                              ("chest", "abdomen"))
    return unknown(f"The field of view cuts the body and shows {frac:.0%} lung: the region cannot be told.")


def _legs(img: np.ndarray, body: _Body) -> RegionEstimate | None:
    """Two separate sections side by side, each limb-sized with its own bone: both legs."""
    if len(body.parts) < 2:
        return None
    bone = img > BONE_HU
    a, b = body.parts[:2]
    if not ((bone & a).sum() >= 0.01 * a.sum() and (bone & b).sum() >= 0.01 * b.sum()):
        return None
    widths = [None if body.spacing is None else _extent_px(p, 1) * body.spacing[1] for p in (a, b)]
    if any(w is not None and w > 200.0 for w in widths):
        return None
    rows_a, rows_b = np.flatnonzero(a.any(axis=1)), np.flatnonzero(b.any(axis=1))
    if rows_a[-1] < rows_b[0] or rows_b[-1] < rows_a[0]:
        return None  # one above the other: not side by side
    size = "" if widths[0] is None else f" ({widths[0]:.0f} and {widths[1]:.0f} mm wide)"
    return RegionEstimate("extremity", 0.55 if widths[0] is not None else 0.5,
                          f"Two separate sections side by side{size}, each with its own bone, as both legs show.",
                          ("extremity",))


def _small_section(img: np.ndarray, body: _Body) -> RegionEstimate:
    """A section under 200 mm that is not a head: a neck or a limb."""
    size = _size_words(body)
    bone = img > BONE_HU
    air = (img < -900.0) & body.mask
    air_px = int(_largest(air).sum()) if air.any() else 0
    has_bone = bool((bone & body.mask).sum() >= 0.01 * body.mask.sum())
    # a child's abdomen is this small too (with gas in its bowel, or none): below the guardrail's
    # threshold, these say what the section looks like but never warn on their own
    if air_px >= 3 and has_bone:
        return RegionEstimate("neck", 0.45, f"A small section{size} with bone and an air passage inside, as the neck "
                              "has.", ("neck", "head"))
    if has_bone and air_px == 0:
        return RegionEstimate("extremity", 0.45, f"A small section{size} with bone and no air inside, as a limb has.",
                              ("extremity",))
    return unknown(f"A small section{size} that is neither clearly a head nor a limb.")


def _skull(img: np.ndarray, body: _Body) -> tuple[float, float] | None:
    """(share of the section inside the bone ring, median HU inside) when a closed bone
    ring holds brain-like tissue, else None."""
    bone = (img > BONE_HU) & body.mask
    if bone.sum() < 0.02 * body.mask.sum():
        return None
    inside = _holes(bone) & body.mask
    if not inside.any():
        return None
    cavity = _largest(inside)
    share = float(cavity.sum()) / float(body.mask.sum())
    if share < 0.35:
        return None
    values = img[cavity]
    brainlike = float(((values >= BRAIN_HU[0]) & (values <= BRAIN_HU[1])).mean())
    median = float(np.median(values))
    if brainlike < 0.7 or not 15.0 <= median <= 50.0:
        return None
    return share, median


def _soft_fraction(img: np.ndarray, mask: np.ndarray) -> float:
    values = img[mask]
    return float(((values >= -150.0) & (values <= 250.0)).mean()) if values.size else 0.0


def _flank_bone(img: np.ndarray, body: _Body) -> float:
    """Bone in the outer thirds of the body on each side (the smaller side), as a share of the body."""
    cols = np.flatnonzero(body.mask.any(axis=0))
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    third = (c1 - c0) / 3.0
    bone = (img > BONE_HU) & body.mask
    total = float(body.mask.sum())
    left = float(bone[:, c0: int(c0 + third)].sum()) / total
    right = float(bone[:, int(c1 - third): c1].sum()) / total
    return min(left, right)


def _torso_sized(body: _Body) -> bool | None:
    """True for a chest/abdomen-sized section, False for a small one, None when the size is unknown."""
    if body.width_mm is None or body.cropped:
        return None
    if body.width_mm >= 230.0:
        return True
    if body.width_mm < 200.0:
        return False
    return None


def _size_words(body: _Body, prefix: str = "section ") -> str:
    if body.width_mm is None or body.height_mm is None:
        return ""
    return f" ({prefix}{body.width_mm:.0f} × {body.height_mm:.0f} mm)"


# ----------------------------------------------------------------------------- shape only (MR)


def _shape_only(img: np.ndarray, spacing: tuple[float, float] | None, what: str) -> RegionEstimate:
    threshold = max(_otsu(img), float(img.min()) + 0.05 * (float(np.percentile(img, 99.5)) - float(img.min())))
    body = _body(img > threshold, spacing)
    if body is None:
        return unknown(f"No body outline could be found in this {what} image.")
    if spacing is None or body.width_mm is None or body.height_mm is None:
        return unknown(f"The {what} image has no pixel spacing, so the size of the section cannot be measured.")
    size = f"{body.width_mm:.0f} × {body.height_mm:.0f} mm"
    if body.cropped:
        fov = f"{img.shape[1] * spacing[1]:.0f} × {img.shape[0] * spacing[0]:.0f} mm"
        return unknown(f"The body runs out of the {fov} field of view, so the size and shape of the section cannot "
                       "tell the body region.")
    fill = float(body.mask.sum()) / (math.pi / 4.0 * _extent_px(body.mask, 0) * _extent_px(body.mask, 1))
    w, h = sorted((body.width_mm, body.height_mm))
    if len(body.parts) == 1 and fill >= 0.85 and 120.0 <= w <= 210.0 and 140.0 <= h <= 240.0 and h / w <= 1.45:
        # a round section of this size may also be a thigh: a question about a limb is not warned
        return RegionEstimate("head", 0.55, f"One round section of {size}, the size and shape of a head.",
                              ("head", "neck", "extremity"))
    return unknown(f"A section of {size} whose size and shape alone do not tell the body region.")


def _otsu(img: np.ndarray) -> float:
    hist, edges = np.histogram(img, bins=256)
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


# ----------------------------------------------------------------------------- masks


def _spacing(spacing_mm) -> tuple[float, float] | None:
    if spacing_mm is None:
        return None
    try:
        r, c = (float(v) for v in spacing_mm)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(r) and math.isfinite(c)) or r <= 0 or c <= 0:
        return None
    return r, c


def _downsample(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Block means down to at most :data:`WORK_SIZE` pixels a side; the factor per axis."""
    fr = max(1, math.ceil(img.shape[0] / WORK_SIZE))
    fc = max(1, math.ceil(img.shape[1] / WORK_SIZE))
    if fr == fc == 1:
        return img, (1, 1)
    rows, cols = (img.shape[0] // fr) * fr, (img.shape[1] // fc) * fc
    small = img[:rows, :cols].reshape(rows // fr, fr, cols // fc, fc).mean(axis=(1, 3))
    return small.astype(np.float32), (fr, fc)


def _body(mask: np.ndarray, spacing: tuple[float, float] | None) -> _Body | None:
    labels, sizes = _label(mask)
    if not sizes:
        return None
    order = np.argsort(sizes)[::-1]
    largest = int(order[0]) + 1
    if sizes[largest - 1] < 0.02 * mask.size:
        return None
    # separate sections of similar size (two legs) count as the body together
    parts = [labels == k + 1 for k in order[:2] if sizes[k] >= 0.3 * sizes[largest - 1]]
    body = np.zeros_like(mask)
    for p in parts:
        body |= p
    filled = body | _holes(body)
    parts = [p | (_holes(p) & filled) for p in parts]
    border = np.concatenate([filled[0], filled[-1], filled[:, 0], filled[:, -1]])
    cropped = float(border.mean()) > 0.04
    w_px, h_px = _extent_px(filled, 1), _extent_px(filled, 0)
    width = None if spacing is None else w_px * spacing[1]
    height = None if spacing is None else h_px * spacing[0]
    return _Body(filled, _hull(filled), cropped, width, height, parts, spacing)


def _extent_px(mask: np.ndarray, axis: int) -> int:
    """Extent of the mask in pixels along rows (axis 0) or columns (axis 1)."""
    idx = np.flatnonzero(mask.any(axis=1 - axis))
    return int(idx[-1] - idx[0] + 1) if idx.size else 0


def _halves(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cols = np.flatnonzero(mask.any(axis=0))
    mid = (int(cols[0]) + int(cols[-1]) + 1) / 2.0 if cols.size else mask.shape[1] / 2.0
    grid = np.arange(mask.shape[1])[None, :]
    return mask & (grid < mid), mask & (grid >= mid)


def _label(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """4-connected components: a label image (0 = background) and each component's size.

    Runs of each row are joined with the overlapping runs of the row above (union-find),
    so the work grows with the number of runs, not of pixels.
    """
    rows, cols = mask.shape
    padded = np.zeros((rows, cols + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    run_row, run_start = np.nonzero(edges == 1)
    _, run_end = np.nonzero(edges == -1)
    n = len(run_row)
    if n == 0:
        return np.zeros(mask.shape, dtype=np.int32), []
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(run_row, np.arange(rows + 1))
    for r in range(1, rows):
        a, a_end = int(row_first[r - 1]), int(row_first[r])
        b, b_end = a_end, int(row_first[r + 1])
        while a < a_end and b < b_end:
            if run_start[a] < run_end[b] and run_start[b] < run_end[a]:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if run_end[a] < run_end[b]:
                a += 1
            else:
                b += 1
    roots = [find(i) for i in range(n)]
    ids: dict[int, int] = {}
    sizes: list[int] = []
    labels = np.zeros(mask.shape, dtype=np.int32)
    for i in range(n):
        label = ids.get(roots[i])
        if label is None:
            label = ids[roots[i]] = len(sizes) + 1
            sizes.append(0)
        r, c0, c1 = int(run_row[i]), int(run_start[i]), int(run_end[i])
        labels[r, c0:c1] = label
        sizes[label - 1] += c1 - c0
    return labels, sizes


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, sizes = _label(mask)
    if not sizes:
        return mask & False
    return labels == int(np.argmax(sizes)) + 1


def _holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels the mask encloses (not connected to the image border)."""
    labels, sizes = _label(~mask)
    if not sizes:
        return np.zeros_like(mask)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    enclosed = np.ones(len(sizes) + 1, dtype=bool)
    enclosed[edge] = False
    enclosed[0] = False
    return enclosed[labels]


def _hull(mask: np.ndarray) -> np.ndarray:
    """The convex hull of a mask, as a mask (pixel corners as hull points)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask.copy()
    pts: list[tuple[float, float]] = []
    for r in rows:
        cs = np.flatnonzero(mask[r])
        for c in (cs[0], cs[-1] + 1):
            pts.extend(((float(c), float(r)), (float(c), float(r + 1))))
    pts = sorted(set(pts))
    if len(pts) < 3:
        return mask.copy()

    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    poly = lower[:-1] + upper[:-1]
    edges = list(zip(poly, poly[1:] + poly[:1]))
    orientation = 1.0 if sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges) >= 0 else -1.0
    yy, xx = np.mgrid[0: mask.shape[0], 0: mask.shape[1]]
    px, py = xx + 0.5, yy + 0.5
    inside = np.ones(mask.shape, dtype=bool)
    for (x0, y0), (x1, y1) in edges:
        inside &= orientation * ((x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)) >= -1e-9
    return inside | mask
