"""The frame as the reader sees it → the image the model is given, and back.

InternVL splits an image into ``tile_size`` squares on a grid whose aspect ratio
best matches the image (at most ``max_tiles`` tiles), stretching the whole image
onto that canvas, and adds a thumbnail of the whole image when there is more than
one tile. :func:`tile_grid` picks the grid exactly as transformers' GotOcr2 image
processor (``crop_to_patches``) and the original InternVL ``dynamic_preprocess``
do, including their tie-break.

:func:`prepare_model_image` builds the RGB image handed to an engine: corrected for
non-square pixels, optionally padded to a square, and resized to the tiled canvas
the processor would use anyway (so a remote engine is not sent more pixels than the
model looks at). It returns the exact affine map between the frame and that image.

Coordinates: boxes are in continuous pixel *edge* coordinates (pixel ``i`` spans
``[i, i+1)``; a box over the whole frame is ``(0, 0, cols, rows)``). The model's
0–1000 scale is relative to the full image it was given, padding included.
DICOM geometry puts ImagePositionPatient at the *centre* of the first pixel, so
an edge coordinate ``x`` is pixel index ``x - 0.5`` in patient space.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from inference.parsing import BOX_SCALE
from inference.types import Box

log = logging.getLogger(__name__)

#: Pixel spacings closer than this (relative) count as square pixels.
_SQUARE_PIXEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class ImageSpec:
    """How the model wants its image (InternVL-2 defaults: 448 px tiles, 1–12 tiles, thumbnail)."""

    tile_size: int = 448
    min_tiles: int = 1
    max_tiles: int = 12
    use_thumbnail: bool = True
    dynamic: bool = True  # the processor's ``crop_to_patches``
    pad_to_square: bool = False

    @classmethod
    def from_preprocessor_config(cls, source: Path | Mapping) -> "ImageSpec":
        """Read a model folder's ``preprocessor_config.json`` (a folder, the file, or its dict)."""
        if isinstance(source, Mapping):
            cfg = dict(source)
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "preprocessor_config.json"
            if not path.is_file():
                return cls()
            cfg = json.loads(path.read_text(encoding="utf-8"))
        size = cfg.get("size") or {}
        tile = int(size.get("height") or size.get("shortest_edge") or cfg.get("image_size") or 448)
        return cls(
            tile_size=tile,
            min_tiles=int(cfg.get("min_patches", cfg.get("min_dynamic_patch", 1))),
            max_tiles=int(cfg.get("max_patches", cfg.get("max_dynamic_patch", 12))),
            use_thumbnail=bool(cfg.get("use_thumbnail", True)),
            dynamic=bool(cfg.get("crop_to_patches", cfg.get("dynamic_image_size", True))),
        )

    @classmethod
    def from_image_processor(cls, processor: object) -> "ImageSpec":
        """From a loaded transformers image processor (GotOcr2 / InternVL style attributes)."""
        size = getattr(processor, "size", None) or {}
        tile = size.get("height") if isinstance(size, Mapping) else getattr(size, "height", None)
        return cls(
            tile_size=int(tile or 448),
            min_tiles=int(getattr(processor, "min_patches", 1) or 1),
            max_tiles=int(getattr(processor, "max_patches", 12) or 12),
            dynamic=bool(getattr(processor, "crop_to_patches", True)),
        )


# ----------------------------------------------------------------------------- tiling


@lru_cache(maxsize=32)
def _grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """(columns, rows) grids with min..max tiles, ordered by tile count (stable)."""
    grids = [
        (c, r)
        for c in range(1, max_tiles + 1)
        for r in range(1, max_tiles + 1)
        if min_tiles <= c * r <= max_tiles
    ]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def tile_grid(height: int, width: int, spec: ImageSpec = ImageSpec()) -> tuple[int, int]:
    """(columns, rows) of tiles for an image, as InternVL's processor chooses them.

    The grid whose columns/rows ratio is closest to width/height wins; on a tie the
    grid with more tiles wins while the image's area exceeds half of the canvas area.
    """
    if not spec.dynamic or spec.max_tiles <= 1:
        return (1, 1)
    aspect = width / height
    area = width * height
    t = spec.tile_size
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in _grids(spec.min_tiles, spec.max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * t * t * cols * rows:
            best = (cols, rows)
    return best


@dataclass(frozen=True)
class TilePlan:
    """The tiles the model sees: a cols × rows grid over the whole image, then a thumbnail."""

    cols: int
    rows: int
    tile_size: int
    thumbnail: bool

    @property
    def canvas_size(self) -> tuple[int, int]:
        """(width, height) the image is stretched to before it is cut."""
        return self.cols * self.tile_size, self.rows * self.tile_size

    @property
    def count(self) -> int:
        return self.cols * self.rows + (1 if self.thumbnail else 0)

    def regions(self, width: float, height: float) -> list[Box]:
        """The part of a ``width`` × ``height`` image each tile shows, in that image's pixels
        (processor order: row by row, then the thumbnail covering everything)."""
        out = []
        for i in range(self.cols * self.rows):
            c, r = i % self.cols, i // self.cols
            out.append(
                Box(c * width / self.cols, r * height / self.rows,
                    (c + 1) * width / self.cols, (r + 1) * height / self.rows)
            )
        if self.thumbnail:
            out.append(Box(0.0, 0.0, float(width), float(height)))
        return out

    def tile_point_to_image(self, tile: int, u: float, v: float, width: float, height: float) -> tuple[float, float]:
        """A point (u, v) in tile pixels → the same point in the ``width`` × ``height`` image."""
        region = self.regions(width, height)[tile]
        return (
            region.x0 + u * region.width / self.tile_size,
            region.y0 + v * region.height / self.tile_size,
        )


def plan_tiles(height: int, width: int, spec: ImageSpec = ImageSpec()) -> TilePlan:
    cols, rows = tile_grid(height, width, spec)
    return TilePlan(cols, rows, spec.tile_size, spec.use_thumbnail and cols * rows != 1)


def tile_image(rgb: np.ndarray, spec: ImageSpec = ImageSpec()) -> list[np.ndarray]:
    """Cut an RGB image into the model's tiles (bicubic, like the processor's PIL path)."""
    h, w = rgb.shape[:2]
    plan = plan_tiles(h, w, spec)
    canvas = _resize(rgb, plan.canvas_size)
    t = spec.tile_size
    tiles = [
        canvas[r * t : (r + 1) * t, c * t : (c + 1) * t]
        for r in range(plan.rows)
        for c in range(plan.cols)
    ]
    if plan.thumbnail:
        tiles.append(_resize(rgb, (t, t)))
    return tiles


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a uint8 grey (rows, cols) or RGB image; each channel is resampled alike, so
    resizing a grey frame and then repeating it gives the bytes of resizing its RGB copy."""
    w, h = size
    if pixels.shape[1] == w and pixels.shape[0] == h:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------- frame ↔ model image


@dataclass(frozen=True)
class ImageTransform:
    """Frame pixels ↔ model-image pixels: ``u = x * scale_x + offset_x`` (edge coordinates)."""

    source_size: tuple[int, int]  # frame (cols, rows)
    model_size: tuple[int, int]  # model image (width, height)
    scale: tuple[float, float]
    offset: tuple[float, float]

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale[0] + self.offset[0], y * self.scale[1] + self.offset[1]

    def to_source(self, u: float, v: float) -> tuple[float, float]:
        return (u - self.offset[0]) / self.scale[0], (v - self.offset[1]) / self.scale[1]

    def norm_to_source(self, box: Box) -> Box | None:
        """A 0–1000 box (of the model image) → frame pixels, clipped to the frame;
        None when it lies entirely in padding."""
        mw, mh = self.model_size
        x0, y0 = self.to_source(box.x0 * mw / BOX_SCALE, box.y0 * mh / BOX_SCALE)
        x1, y1 = self.to_source(box.x1 * mw / BOX_SCALE, box.y1 * mh / BOX_SCALE)
        w, h = self.source_size
        x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
        y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(x0, y0, x1, y1)

    def source_to_norm(self, box: Box) -> Box:
        """Frame pixels → the model's 0–1000 scale (unrounded)."""
        mw, mh = self.model_size
        u0, v0 = self.to_model(box.x0, box.y0)
        u1, v1 = self.to_model(box.x1, box.y1)
        return Box(u0 * BOX_SCALE / mw, v0 * BOX_SCALE / mh, u1 * BOX_SCALE / mw, v1 * BOX_SCALE / mh)


@dataclass(frozen=True)
class ModelImage:
    """The RGB image an engine is given, how it maps to the frame, and its tiles."""

    rgb: np.ndarray  # uint8 (height, width, 3)
    transform: ImageTransform
    plan: TilePlan


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """A rendered frame (uint8 grey (rows, cols) or RGB (rows, cols, 3)) as RGB."""
    a = np.asarray(frame)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a rendered uint8 frame, got {a.dtype}")
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 3:
        return np.ascontiguousarray(a)
    if a.ndim == 3 and a.shape[2] == 4:
        return np.ascontiguousarray(a[:, :, :3])
    raise ValueError(f"expected a grey or RGB frame, got shape {a.shape}")


def prepare_model_image(
    frame: np.ndarray,
    spec: ImageSpec = ImageSpec(),
    pixel_spacing: Sequence[float] | None = None,
    resize: bool = True,
) -> ModelImage:
    """The displayed frame → the RGB image the model is given, with the exact map back.

    ``pixel_spacing`` is DICOM's (row spacing, column spacing): non-square pixels are
    stretched so anatomy keeps its shape, as the viewer shows it. With ``resize`` the
    image is resampled to the tiled canvas the processor would use.
    """
    a = np.asarray(frame)
    grey = a.ndim == 2 and a.dtype == np.uint8
    pixels = a if grey else to_rgb(a)  # a grey frame is resized as grey (the same bytes, half the work)
    h, w = pixels.shape[:2]
    if h < 1 or w < 1:
        raise ValueError("empty frame")
    lw, lh = float(w), float(h)  # logical (square-pixel) size
    if pixel_spacing is not None:
        rs, cs = (float(pixel_spacing[0]), float(pixel_spacing[1]))
        if rs > 0 and cs > 0 and abs(rs - cs) > _SQUARE_PIXEL_TOLERANCE * min(rs, cs):
            m = min(rs, cs)
            lw, lh = w * cs / m, h * rs / m
    sw, sh = (max(lw, lh), max(lw, lh)) if spec.pad_to_square else (lw, lh)
    plan = plan_tiles(max(1, round(sh)), max(1, round(sw)), spec)
    if resize:
        cw_, ch_ = plan.canvas_size if spec.dynamic else (spec.tile_size, spec.tile_size)
    else:
        cw_, ch_ = max(1, round(sw)), max(1, round(sh))
    content_w = max(1, round(lw * cw_ / sw))
    content_h = max(1, round(lh * ch_ / sh))
    ox, oy = (cw_ - content_w) // 2, (ch_ - content_h) // 2
    content = _resize(pixels, (content_w, content_h))
    if grey:
        content = to_rgb(content)
    if (content_w, content_h) == (cw_, ch_):
        out = content
    else:
        out = np.zeros((ch_, cw_, 3), dtype=np.uint8)
        out[oy : oy + content_h, ox : ox + content_w] = content
    transform = ImageTransform(
        source_size=(w, h),
        model_size=(cw_, ch_),
        scale=(content_w / w, content_h / h),
        offset=(float(ox), float(oy)),
    )
    if not resize:
        plan = plan_tiles(ch_, cw_, spec)
    log.debug("model image %dx%d from frame %dx%d, %d tiles", cw_, ch_, w, h, plan.count)
    return ModelImage(rgb=np.ascontiguousarray(out), transform=transform, plan=plan)


# ----------------------------------------------------------------------------- patient space


@dataclass(frozen=True)
class PatientBox:
    """A pixel box on one frame in patient coordinates (LPS, mm).

    ``corners``: top-left, top-right, bottom-right, bottom-left of the box's outer edges.
    """

    corners: np.ndarray  # (4, 3)
    center: np.ndarray  # (3,)
    width_mm: float  # along the row direction
    height_mm: float  # along the column direction

    def to_json(self) -> dict:
        return {
            "corners": [[round(float(v), 4) for v in c] for c in self.corners],
            "center": [round(float(v), 4) for v in self.center],
            "width_mm": round(self.width_mm, 4),
            "height_mm": round(self.height_mm, 4),
        }


def pixel_box_to_patient(
    box: Box,
    origin: Sequence[float],
    row_direction: Sequence[float],
    col_direction: Sequence[float],
    spacing: Sequence[float],
) -> PatientBox:
    """Map a box in pixel edge coordinates to patient mm for a frame whose first pixel
    centre is ``origin`` (ImagePositionPatient), ``row_direction`` the direction of
    increasing column, ``col_direction`` of increasing row, ``spacing`` (row, column) mm."""
    o = np.asarray(origin, dtype=float)
    rd = np.asarray(row_direction, dtype=float)
    cd = np.asarray(col_direction, dtype=float)
    rs, cs = float(spacing[0]), float(spacing[1])

    def at(x: float, y: float) -> np.ndarray:
        return o + (x - 0.5) * cs * rd + (y - 0.5) * rs * cd

    corners = np.stack([at(box.x0, box.y0), at(box.x1, box.y0), at(box.x1, box.y1), at(box.x0, box.y1)])
    center = at((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2)
    return PatientBox(
        corners=corners,
        center=center,
        width_mm=float(box.width * cs * np.linalg.norm(rd)),
        height_mm=float(box.height * rs * np.linalg.norm(cd)),
    )
