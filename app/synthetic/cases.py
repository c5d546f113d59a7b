"""The cases of the synthetic phantom corpus: one 2-D image with everything known about it.

:func:`make_case` draws case ``i`` of a corpus from ``(seed, i)`` alone: a CT slice of the
chest (lung window) or upper abdomen (soft tissue or liver window), or a frontal chest
radiograph, rasterised by :mod:`app.synthetic.anatomy` / :mod:`app.synthetic.xray` and
turned into 8-bit pixels by the viewer's own window pipeline (:mod:`app.dicom.display`),
with 0–3 lesions of varied size, density, margin and position, each described by the one
ground-truth record (:class:`app.synthetic.truth.LesionTruth`). :class:`CorpusConfig` is
what the cases are drawn from. Writing them out as a training corpus is
:mod:`training.phantoms`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from app.core.errors import XMedError
from app.dicom.display import to_uint8, window_to_unit
from app.dicom.model import Window
from app.dicom.presets import find_preset
from app.synthetic.anatomy import (
    Anatomy,
    Grid,
    Lesion,
    Tissue,
    add_noise,
    place_lesion,
    render_ct_slice,
)
from app.synthetic.truth import LesionTruth, density_of, side_of, to_1000
from app.synthetic.xray import add_xray_lesions, render_xray

KINDS = ("ct_chest", "ct_abdomen", "xray")
KIND_WEIGHTS = (0.45, 0.2, 0.35)
LESION_COUNT_WEIGHTS = (0.25, 0.35, 0.25, 0.15)  # 0, 1, 2, 3 lesions


@dataclass(frozen=True)
class CorpusConfig:
    """What a corpus's cases are drawn from: kinds, lesions per image, lesion diameters.

    Defaults: the mixture the demo model and eval use. :meth:`as_dict` is how a corpus
    manifest and a model card record it.
    """

    kinds: tuple[str, ...] = KINDS
    kind_weights: tuple[float, ...] = KIND_WEIGHTS
    lesion_count_weights: tuple[float, ...] = LESION_COUNT_WEIGHTS  # index = number of lesions
    lesion_mm: tuple[float, float] | None = None  # diameter range; None: per-organ defaults

    def __post_init__(self) -> None:
        if not self.kinds or any(k not in KINDS for k in self.kinds) or len(self.kind_weights) != len(self.kinds):
            raise XMedError(f"Phantom kinds must be among {', '.join(KINDS)}, each with a weight.")
        if not self.lesion_count_weights or sum(self.lesion_count_weights) <= 0:
            raise XMedError("Lesion count weights must hold at least one positive weight.")
        if self.lesion_mm is not None and not (3.0 <= self.lesion_mm[0] <= self.lesion_mm[1] <= 120.0):
            raise XMedError("Lesion diameters must satisfy 3 ≤ min ≤ max ≤ 120 mm.")

    @classmethod
    def restricted(cls, kinds: Sequence[str] | None = None, max_lesions: int | None = None,
                   lesion_mm: tuple[float, float] | None = None) -> "CorpusConfig":
        """Defaults narrowed to some kinds and/or at most ``max_lesions`` per image."""
        ks = tuple(kinds) if kinds else KINDS
        weights = tuple(KIND_WEIGHTS[KINDS.index(k)] if k in KINDS else 0.0 for k in ks)
        counts = LESION_COUNT_WEIGHTS if max_lesions is None else LESION_COUNT_WEIGHTS[:max_lesions + 1]
        return cls(ks, weights, counts, lesion_mm)

    def as_dict(self) -> dict:
        return {"kinds": list(self.kinds), "kind_weights": list(self.kind_weights),
                "lesion_count_weights": list(self.lesion_count_weights),
                "lesion_mm": list(self.lesion_mm) if self.lesion_mm else None}

    @classmethod
    def from_dict(cls, data: dict) -> "CorpusConfig":
        """The inverse of :meth:`as_dict` (e.g. a model card's corpus)."""
        mm = data.get("lesion_mm")
        return cls(tuple(data["kinds"]), tuple(data["kind_weights"]), tuple(data["lesion_count_weights"]),
                   (float(mm[0]), float(mm[1])) if mm else None)


@dataclass
class PhantomCase:
    """One generated image with everything known about it."""

    index: int
    kind: str  # ct_chest | ct_abdomen | xray
    image: np.ndarray  # uint8 (rows, cols)
    window: Window
    pixel_spacing_mm: float
    structures: list[str]
    lesions: list[LesionTruth] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.index:06d}"

    @property
    def modality(self) -> str:
        return "DX" if self.kind == "xray" else "CT"

    @property
    def description(self) -> str:
        if self.kind == "xray":
            return "frontal chest radiograph"
        region = "chest" if self.kind == "ct_chest" else "upper abdomen"
        return f"axial CT slice of the {region} in {self.window.name} window"


# ----------------------------------------------------------------------------- geometry


def _lesion_diameter(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _margin(rng: np.random.Generator) -> float:
    return float(rng.choice([0.0, 0.0, 0.12, 0.28]))


def _separate(x: float, y: float, s: float, r: float, placed: Sequence[Lesion]) -> bool:
    return all(math.dist((x, y, s), (o.x, o.y, o.s)) > r + max(o.rx, o.ry) * (1 + o.margin) + 6.0 for o in placed)


# ----------------------------------------------------------------------------- CT cases


def _ct_lung_lesion(rng: np.random.Generator, anatomy: Anatomy, s: float, i: int,
                    placed: list[Lesion], mm: tuple[float, float] | None = None) -> Lesion | None:
    side = "right" if rng.random() < 0.5 else "left"
    label = Tissue.LUNG_RIGHT if side == "right" else Tissue.LUNG_LEFT
    diameter = _lesion_diameter(rng, *(mm or (6.0, 45.0)))
    margin = _margin(rng) if diameter < 30 else float(rng.choice([0.12, 0.28]))
    ground_glass = diameter < 30 and rng.random() < 0.25
    r = diameter / 2.0 / (1.0 + margin)
    for _ in range(4):
        spot = place_lesion(anatomy, (label,), s, r + 2.0, rng)
        if spot is not None and _separate(spot[0], spot[1], s, r, placed):
            break
    else:
        return None
    kind = "ground-glass nodule" if ground_glass else ("mass" if diameter >= 30 else "solid nodule")
    hu = float(rng.uniform(-650, -400)) if ground_glass else float(rng.uniform(0, 60))
    return Lesion(id=f"L{i + 1}", organ="lung", location="", side=side, kind=kind, x=spot[0], y=spot[1], s=s,
                  rx=r, ry=r * float(rng.uniform(0.8, 1.0)), rs=r * float(rng.uniform(0.8, 1.1)), hu=hu,
                  margin=margin, lobes=int(rng.integers(5, 10)), phase=float(rng.uniform(0, 2 * math.pi)))


def _ct_liver_lesion(rng: np.random.Generator, anatomy: Anatomy, s: float, i: int,
                     placed: list[Lesion], mm: tuple[float, float] | None = None) -> Lesion | None:
    diameter = _lesion_diameter(rng, *(mm or (8.0, 50.0)))
    margin = float(rng.choice([0.0, 0.0, 0.1]))
    r = diameter / 2.0 / (1.0 + margin)
    for _ in range(4):
        spot = place_lesion(anatomy, (Tissue.LIVER,), s, r + 2.0, rng)
        if spot is not None and _separate(spot[0], spot[1], s, r, placed):
            break
    else:
        return None
    liver_hu = next(b.hu for b in anatomy.structures if b.name == "liver")
    roll = rng.random()
    if roll < 0.25:
        kind, hu, margin = "cyst", float(rng.uniform(0, 12)), 0.0
    elif roll < 0.75:
        kind, hu = "hypodense lesion", liver_hu - float(rng.uniform(35, 80))
    else:
        kind, hu = "hyperdense lesion", liver_hu + float(rng.uniform(45, 90))
    side = side_of(spot[0])  # LPS: +x is the patient's left
    return Lesion(id=f"L{i + 1}", organ="liver", location=f"{side} hepatic lobe", side=side, kind=kind,
                  x=spot[0], y=spot[1], s=s, rx=r, ry=r * float(rng.uniform(0.8, 1.0)), rs=r, hu=hu,
                  margin=margin, lobes=int(rng.integers(4, 8)), phase=float(rng.uniform(0, 2 * math.pi)))


def _lung_lobe(lesion: Lesion, heart_level: bool, lung_cy: float) -> str:
    if not heart_level:
        return f"{lesion.side} upper lobe"
    if lesion.side == "right" and lesion.y < lung_cy - 10.0:
        return "right middle lobe"
    return f"{lesion.side} lower lobe"


_CT_STRUCTURES = (
    ((Tissue.LUNG_RIGHT,), "right lung"), ((Tissue.LUNG_LEFT,), "left lung"), ((Tissue.HEART,), "heart"),
    ((Tissue.AIRWAY,), "airway"), ((Tissue.LIVER,), "liver"), ((Tissue.SPLEEN,), "spleen"),
    ((Tissue.STOMACH,), "stomach"), ((Tissue.KIDNEY,), "kidneys"), ((Tissue.BONE,), "spine and ribs"),
)


def _ct_case(index: int, rng: np.random.Generator, kind: str, size: int, n_lesions: int,
             lesion_mm: tuple[float, float] | None) -> PhantomCase:
    anatomy = Anatomy.random(rng)
    E = anatomy.extent_mm
    grid = Grid(size, float(rng.uniform(360.0, 400.0)))
    chest = kind == "ct_chest"
    s = float(rng.uniform(0.22, 0.58) * E) if chest else float(rng.uniform(0.74, 0.92) * E + anatomy.dome_shift)
    make = _ct_lung_lesion if chest else _ct_liver_lesion
    lesions: list[Lesion] = []
    for i in range(n_lesions):
        lesion = make(rng, anatomy, s, len(lesions), lesions, lesion_mm)
        if lesion is not None:
            lesions.append(lesion)
    sl = render_ct_slice(anatomy, s, grid, lesions)
    add_noise(sl.hu, rng, float(rng.uniform(6.0, 18.0)))
    sl.hu[~grid.fov_mask] = -1024.0
    if chest:
        window = find_preset("lung")
    else:
        window = find_preset("liver") if rng.random() < 0.3 else find_preset("soft tissue")
    assert window is not None
    image = to_uint8(window_to_unit(sl.hu, window))
    present = {int(v) for v in np.unique(sl.labels)}
    structures = [name for labels, name in _CT_STRUCTURES if any(int(t) in present for t in labels)]
    heart_level = int(Tissue.HEART) in present
    truths = []
    for lesion in lesions:
        box = sl.boxes.get(lesion.id)
        if box is None:
            continue
        location = lesion.location or _lung_lobe(lesion, heart_level, anatomy.lung_centre(lesion.side)[1])
        truths.append(_truth(lesion, location, box, size, size))
    return PhantomCase(index, kind, image, window, grid.spacing, structures, _renumber(truths))


# ----------------------------------------------------------------------------- radiographs


def _xray_case(index: int, rng: np.random.Generator, size: int, n_lesions: int,
               lesion_mm: tuple[float, float] | None) -> PhantomCase:
    anatomy = Anatomy.random(rng)
    fov = float(rng.uniform(380.0, 420.0))
    sp = fov / size
    base = render_xray(anatomy, size, fov_mm=fov)
    lung_rows = np.flatnonzero(base.lung_mask.any(axis=1))
    top, bottom = float(lung_rows[0]), float(lung_rows[-1])
    lesions: list[Lesion] = []
    for _ in range(n_lesions):
        diameter = _lesion_diameter(rng, *(lesion_mm or (8.0, 50.0)))
        margin = _margin(rng)
        r = diameter / 2.0 / (1.0 + margin)
        rp = int(math.ceil(r / sp)) + 1
        inner = _erode(base.lung_mask, rp)
        rows, cols = np.nonzero(inner)
        if len(rows) == 0:
            continue
        for _ in range(20):
            k = int(rng.integers(len(rows)))
            x = (cols[k] + 0.5 - size / 2.0) * sp
            s = base.s_top + (rows[k] + 0.5) * sp
            if _separate(x, 0.0, s, r, lesions):
                break
        else:
            continue
        side = side_of(x)
        third = (rows[k] - top) / max(bottom - top, 1.0)
        zone = "upper" if third < 1 / 3 else ("middle" if third < 2 / 3 else "lower")
        lesions.append(Lesion(
            id=f"L{len(lesions) + 1}", organ="lung", location=f"{side} {zone} zone", side=side,
            kind="mass" if diameter >= 30 else "nodule", x=x, y=0.0, s=s, rx=r, ry=r, rs=r * float(rng.uniform(0.85, 1.1)),
            hu=float(rng.uniform(-100, 60)), margin=margin, lobes=int(rng.integers(5, 10)),
            phase=float(rng.uniform(0, 2 * math.pi))))
    xr = add_xray_lesions(base, lesions)
    values = xr.values
    body = values > 0.1 * float(values.max())
    lo, hi = np.percentile(values[body], [1.0, 99.7])
    values = values + rng.standard_normal(values.shape).astype(np.float32) * np.float32((hi - lo) * 0.012)
    window = Window(width=float(hi - lo), center=float(hi + lo) / 2.0, name="radiograph")
    image = to_uint8(window_to_unit(values, window))
    truths = [_truth(les, les.location, xr.boxes[les.id], size, size) for les in lesions if les.id in xr.boxes]
    structures = ["right lung", "left lung", "cardiac silhouette", "mediastinum", "diaphragm", "ribs", "clavicles"]
    return PhantomCase(index, "xray", image, window, sp, structures, _renumber(truths))


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose (2r+1)-square neighbourhood is all inside ``mask``."""
    out = mask.copy()
    for axis in (0, 1):
        acc = out.copy()
        for d in range(1, r + 1):
            acc &= np.roll(out, d, axis=axis) & np.roll(out, -d, axis=axis)
        out = acc
    out[:r], out[-r:], out[:, :r], out[:, -r:] = False, False, False, False
    return out


# ----------------------------------------------------------------------------- truth


def _truth(lesion: Lesion, location: str, box: tuple[int, int, int, int], width: int, height: int) -> LesionTruth:
    return LesionTruth(
        id=lesion.id, organ=lesion.organ, side=lesion.side, location=location, kind=lesion.kind,
        density=density_of(lesion.organ, lesion.kind), margin=lesion.margin_name,
        size_mm=round(lesion.diameter_mm, 1), box=tuple(int(v) for v in box),  # type: ignore[arg-type]
        box_1000=to_1000(box, width, height),
    )


def _renumber(truths: list[LesionTruth]) -> list[LesionTruth]:
    """Lesions from the patient's right to left, then top to bottom, numbered L1…"""
    ordered = sorted(truths, key=lambda t: (t.box[0], t.box[1]))
    for i, t in enumerate(ordered):
        t.id = f"L{i + 1}"
    return ordered


def make_case(seed: int, index: int, size: int = 224, config: CorpusConfig = CorpusConfig()) -> PhantomCase:
    """Case ``index`` of the corpus with ``seed``: the same arguments always give the same case."""
    rng = np.random.default_rng([seed, index])
    kw = np.asarray(config.kind_weights, dtype=float)
    cw = np.asarray(config.lesion_count_weights, dtype=float)
    kind = str(rng.choice(config.kinds, p=kw / kw.sum()))
    n_lesions = int(rng.choice(len(cw), p=cw / cw.sum()))
    if kind == "xray":
        return _xray_case(index, rng, size, n_lesions, config.lesion_mm)
    return _ct_case(index, rng, kind, size, n_lesions, config.lesion_mm)
