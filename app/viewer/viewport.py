"""Viewer logic without Qt: window/level drag, slice stepping, cine, zoom,
display rotation/flip and the orientation letters and corner texts they imply.

The Qt viewport (ui/viewer/viewport.py) only adapts these functions to mouse and
keyboard events, so everything a radiologist notices here is testable headless.

Conventions: image axes are (column, row) with rows increasing downwards, as on
screen. Patient axes are DICOM LPS: +x Left, +y Posterior, +z Head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name, window_name
from app.dicom.display import auto_window_for
from app.dicom.model import Geometry, Volume, Window
from app.dicom.presets import CT_PRESETS

# --- window / level -----------------------------------------------------------------

#: CT presets bound to the number keys 1..5 (0 restores the header window).
KEYED_PRESETS: tuple[Window, ...] = CT_PRESETS[:5]

MIN_WINDOW_WIDTH = 1.0
#: Width doubles for every this many pixels dragged to the right.
WIDTH_DOUBLING_PX = 150.0
#: Centre moves by this fraction of the current width per pixel dragged down.
CENTER_PER_PX = 1.0 / 250.0


def drag_window(start: Window, dx: float, dy: float) -> Window:
    """Window after a right-button drag of (dx, dy) screen pixels from ``start``.

    Right widens the window (less contrast), left narrows it; down raises the
    centre (image darker), up lowers it (brighter). Width changes
    multiplicatively so the same gesture works for a brain (80) and a bone
    (2500) window.
    """
    width = max(MIN_WINDOW_WIDTH, start.width * 2.0 ** (dx / WIDTH_DOUBLING_PX))
    center = start.center + dy * max(start.width, MIN_WINDOW_WIDTH) * CENTER_PER_PX
    return Window(width, center, "")


def default_window(volume: Volume) -> Window:
    """The header window, else one spanning the loaded frames (robust percentiles)."""
    if volume.default_window is not None:
        return volume.default_window
    n = max(1, min(volume.loaded or len(volume), len(volume)))
    return auto_window_for(volume, (n - 1) // 2)


def window_label(window: Window) -> str:
    name = f" ({window_name(window.name)})" if window.name else ""  # "Soft tissue", from a preset or a header
    return f"W {window.width:.0f}  L {window.center:.0f}{name}"


# --- slices and cine ---------------------------------------------------------------


def step_slice(k: int, delta: int, n: int) -> int:
    """Slice index after moving ``delta`` slices, clamped to the series."""
    if n <= 0:
        return 0
    return int(min(max(k + delta, 0), n - 1))


def cine_next(k: int, n: int, direction: int = 1) -> int:
    """Next frame while playing cine: loops at the ends."""
    if n <= 0:
        return 0
    return (k + direction) % n


def cine_interval_ms(fps: float) -> int:
    """Timer interval for a cine rate, clamped to 1–60 frames per second."""
    fps = min(max(fps, 1.0), 60.0)
    return max(1, round(1000.0 / fps))


# --- zoom ----------------------------------------------------------------------------

ZOOM_MIN = 0.05
ZOOM_MAX = 40.0


def wheel_zoom_factor(angle_delta_deg: float) -> float:
    """Zoom factor for a wheel turn (one notch = 15° = ×1.2)."""
    return 1.2 ** (angle_delta_deg / 15.0)


def clamp_zoom(zoom: float) -> float:
    return min(max(zoom, ZOOM_MIN), ZOOM_MAX)


# --- display rotation / flip and orientation letters -------------------------------

_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("F", "H"))  # (negative, positive) per LPS axis


def orientation_label(direction: np.ndarray | tuple[float, float, float], threshold: float = 0.25) -> str:
    """Letters for a patient-space direction, strongest axis first ("L", "LA", "HRP").

    Components weaker than ``threshold`` are left out, as Weasis and RadiAnt do for
    slightly oblique planes.
    """
    d = np.asarray(direction, dtype=float)
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        return ""
    d = d / norm
    order = np.argsort(-np.abs(d))
    letters = [
        _AXIS_LETTERS[axis][1 if d[axis] > 0 else 0] for axis in order if abs(d[axis]) >= threshold
    ]
    return "".join(letters)


@dataclass(frozen=True)
class DisplayTransform:
    """How the image is turned on screen: screen = M · image (2×2, entries 0/±1).

    ``m = (a, b, c, d)`` means screen_x = a·col + b·row, screen_y = c·col + d·row.
    """

    m: tuple[int, int, int, int] = (1, 0, 0, 1)

    def _compose(self, op: tuple[int, int, int, int]) -> DisplayTransform:
        a, b, c, d = self.m
        p, q, r, s = op
        return DisplayTransform((p * a + q * c, p * b + q * d, r * a + s * c, r * b + s * d))

    def rotated_cw(self) -> DisplayTransform:
        """Turn 90° clockwise on screen (what is on the right goes to the bottom)."""
        return self._compose((0, -1, 1, 0))

    def rotated_ccw(self) -> DisplayTransform:
        return self._compose((0, 1, -1, 0))

    def flipped_h(self) -> DisplayTransform:
        """Mirror left ↔ right on screen."""
        return self._compose((-1, 0, 0, 1))

    def flipped_v(self) -> DisplayTransform:
        """Mirror top ↔ bottom on screen."""
        return self._compose((1, 0, 0, -1))

    @property
    def swaps_axes(self) -> bool:
        return self.m[0] == 0

    def image_direction_of_screen(self, sx: int, sy: int) -> tuple[int, int]:
        """The image (col, row) axis vector that appears as screen vector (sx, sy)."""
        a, b, c, d = self.m  # orthogonal: inverse = transpose
        return (a * sx + c * sy, b * sx + d * sy)

    def screen_directions(self, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
        """Patient directions pointing to screen right and screen down."""
        out = []
        for sx, sy in ((1, 0), (0, 1)):
            ic, ir = self.image_direction_of_screen(sx, sy)
            out.append(ic * np.asarray(geometry.row_direction) + ir * np.asarray(geometry.col_direction))
        return out[0], out[1]

    def markers(self, geometry: Geometry | None) -> dict[str, str]:
        """Orientation letters at the screen edges: keys left/right/top/bottom."""
        if geometry is None:
            return {"left": "", "right": "", "top": "", "bottom": ""}
        right, down = self.screen_directions(geometry)
        return {
            "left": orientation_label(-right),
            "right": orientation_label(right),
            "top": orientation_label(-down),
            "bottom": orientation_label(down),
        }


# --- corner overlay texts ------------------------------------------------------------


@dataclass(frozen=True)
class StudyInfo:
    """Who and what is on screen (from the scan's Patient and StudyEntry)."""

    patient_name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""
    study_date: str = ""
    study_description: str = ""
    accession: str = ""


def slice_normal(geometry: Geometry) -> np.ndarray:
    return np.cross(np.asarray(geometry.row_direction, float), np.asarray(geometry.col_direction, float))


def slice_position_mm(geometry: Geometry | None, k: int) -> float | None:
    """Position of frame k along the slice normal (the "slice location" readers see)."""
    if geometry is None or k >= len(geometry.origins):
        return None
    return float(np.asarray(geometry.origins[k], float) @ slice_normal(geometry))


def slice_thickness_mm(volume: Volume, k: int) -> float | None:
    """Nominal thickness from the header, else the spacing to the neighbouring slice."""
    inst = _instance_for_frame(volume, k)
    if inst is not None and inst.slice_thickness:
        return float(inst.slice_thickness)
    g = volume.geometry
    if g is not None and len(g.origins) > 1:
        j = k + 1 if k + 1 < len(g.origins) else k - 1
        return float(abs((np.asarray(g.origins[j]) - np.asarray(g.origins[k])) @ slice_normal(g)))
    return None


def _instance_for_frame(volume: Volume, k: int):
    i = k
    for inst in volume.series.instances:
        if i < inst.number_of_frames:
            return inst
        i -= inst.number_of_frames
    return None


@dataclass(frozen=True)
class CornerLine:
    """One line of corner text, and how it gives way when the viewport is small.

    ``rank`` 0 is always shown; when lines do not fit, the highest ranks go first. ``shorter``
    forms are tried, in order, before a line is dropped or cut. Free text (``elide``: names,
    descriptions) may be cut with "…"; numbers are not cut while a line can still be dropped.
    """

    text: str
    rank: int = 0
    shorter: tuple[str, ...] = ()
    elide: bool = False

    def __str__(self) -> str:
        return self.text


def corner_lines(
    volume: Volume,
    k: int,
    window: Window,
    zoom: float,
    study: StudyInfo | None = None,
    inverted: bool = False,
) -> dict[str, list[CornerLine]]:
    """The four corner overlays with their priorities: keys top_left, top_right, bottom_left, bottom_right."""
    study = study or StudyInfo()
    s = volume.series
    n = len(volume)
    top_left = []
    name = person_name(study.patient_name, NameStyle.LIST)
    if name:
        top_left.append(CornerLine(name, 0, elide=True))
    if study.patient_id:
        top_left.append(CornerLine(study.patient_id, 2))
    if study.birth_date or study.sex:
        top_left.append(CornerLine(" ".join(x for x in (display_date(study.birth_date), study.sex) if x), 4))
    top_right = []
    if study.study_date:
        top_right.append(CornerLine(display_date(study.study_date), 4))
    if study.study_description:
        top_right.append(CornerLine(study.study_description, 5, elide=True))
    series_line = f"Se {s.number}" if s.number is not None else "Se"
    top_right.append(CornerLine(series_line + (f": {s.description}" if s.description else ""), 0,
                                shorter=(series_line,) if s.description else (), elide=True))
    if s.modality:
        top_right.append(CornerLine(s.modality, 3))

    bottom_left = [CornerLine(f"Im {k + 1}/{n}", 0)]
    pos = slice_position_mm(volume.geometry, k)
    th = slice_thickness_mm(volume, k)
    if pos is not None and th is not None:
        bottom_left.append(CornerLine(f"Pos {pos:.1f} mm  Th {th:.2f} mm", 1,
                                      shorter=(f"Pos {pos:.1f}  Th {th:.2f}", f"Th {th:.2f} mm")))
    elif pos is not None:
        bottom_left.append(CornerLine(f"Pos {pos:.1f} mm", 1))
    elif th is not None:
        bottom_left.append(CornerLine(f"Th {th:.2f} mm", 1))
    if volume.loaded and volume.loaded < n:
        bottom_left.append(CornerLine(f"Loading {volume.loaded}/{n}", 1))

    inv = "  INV" if inverted else ""
    if volume.is_color:  # colour has no window
        levels = CornerLine("RGB" + inv, 0)
    else:
        compact = f"W {window.width:.0f}  L {window.center:.0f}"  # the preset's name goes first
        tight = f"W{window.width:.0f} L{window.center:.0f}" + (" INV" if inverted else "")
        levels = CornerLine(window_label(window) + inv, 0, shorter=(compact + inv, tight))
    bottom_right = [levels, CornerLine(f"Zoom {zoom * 100:.0f}%", 2)]
    return {
        "top_left": top_left,
        "top_right": top_right,
        "bottom_left": bottom_left,
        "bottom_right": bottom_right,
    }


def corner_texts(
    volume: Volume,
    k: int,
    window: Window,
    zoom: float,
    study: StudyInfo | None = None,
    inverted: bool = False,
) -> dict[str, list[str]]:
    """The four corner overlays, as lines: keys top_left, top_right, bottom_left, bottom_right."""
    lines = corner_lines(volume, k, window, zoom, study, inverted)
    return {corner: [line.text for line in block] for corner, block in lines.items()}


#: A cut line keeps at least this many characters before "…", else it is dropped (when it may be).
MIN_ELIDED_CHARS = 6
ELLIPSIS = "…"


def _elide_by_width(text: str, room: float, text_width) -> str:
    if text_width(text) <= room:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # the longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if text_width(text[:mid].rstrip() + ELLIPSIS) <= room:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + ELLIPSIS if lo else ""


def fit_corner_lines(
    corners: dict[str, list[CornerLine]],
    width: float,
    height: float,
    text_width,
    line_height: float,
    marker_width: float = 0.0,
    gap: float = 8.0,
    elide=None,
) -> dict[str, list[str]]:
    """The corner lines that fit a ``width`` × ``height`` text area, ready to paint.

    ``text_width(text)`` measures a line in the same units; ``elide(text, room)`` cuts one with
    "…" (a measuring fallback is used without it). Each corner gets the rows above (below) the
    middle, where the left and right orientation letters sit; lines beyond those rows are
    dropped, highest rank first. Row by row, the left and right lines share the width (the first
    row on top and the last at the bottom leave ``marker_width`` in the middle to the top/bottom
    letter). A line too wide for its room takes its first shorter form that fits; else free text
    is cut if enough of it stays; else a line that may go (rank > 0) is dropped, before any
    essential line is cut.
    """
    elide = elide or (lambda text, room: _elide_by_width(text, room, text_width))
    rows = max(1, int((height / 2.0 - line_height / 2.0) // line_height)) if line_height > 0 else 1
    state: dict[str, list[list]] = {}  # corner -> [[CornerLine, shown text], ...]
    for corner in ("top_left", "top_right", "bottom_left", "bottom_right"):
        block = [[line if isinstance(line, CornerLine) else CornerLine(str(line)), None] for line in corners.get(corner, [])]
        for entry in block:
            entry[1] = entry[0].text
        while len(block) > rows:  # drop the least important (the later one of equal rank)
            worst = max(range(len(block)), key=lambda i: (block[i][0].rank, i))
            del block[worst]
        state[corner] = block

    def shrink(line: CornerLine, room: float) -> str | None:
        if line.elide:  # free text: a cut that keeps a fair part reads better than a terse form
            cut = elide(line.text, room)
            if len(cut.rstrip(ELLIPSIS)) >= MIN_ELIDED_CHARS:
                return cut
        for form in line.shorter:
            if text_width(form) <= room:
                return form
        if line.rank > 0:
            return None
        return elide(line.shorter[-1] if line.shorter else line.text, room)

    def rooms(wl: float | None, wr: float | None, marker_row: bool) -> tuple[float, float]:
        if marker_row and marker_width > 0:
            half = (width - marker_width) / 2.0 - gap
            return half, half
        if wl is None or wr is None:
            return width, width
        shared = width - gap
        if wl + wr <= shared:
            return wl, wr
        half = shared / 2.0
        if wl <= half:
            return wl, shared - wl
        if wr <= half:
            return shared - wr, wr
        return half, half

    for _ in range(200):  # every pass shortens or drops a line, so this ends; the cap is a guard
        changed = False
        for left_key, right_key, top in (("top_left", "top_right", True), ("bottom_left", "bottom_right", False)):
            left, right = state[left_key], state[right_key]
            for r in range(max(len(left), len(right))):
                li = r if top else len(left) - 1 - r
                ri = r if top else len(right) - 1 - r
                le = left[li] if 0 <= li < len(left) else None
                re = right[ri] if 0 <= ri < len(right) else None
                wl = text_width(le[1]) if le else None
                wr = text_width(re[1]) if re else None
                marker_row = r == 0 and marker_width > 0
                room_l, room_r = rooms(wl, wr, marker_row)
                for entry, w, room, block, partner, partner_block in (
                    (le, wl, room_l, left, re, right), (re, wr, room_r, right, le, left)
                ):
                    if entry is None or w is None or w <= room + 0.5:
                        continue
                    if partner is not None and not marker_row and partner[0].rank > entry[0].rank:
                        # the less important line beside it goes first: this one gets the whole row
                        partner_block.remove(partner)
                        changed = True
                        break
                    shorter = shrink(entry[0], room)
                    if shorter is None:
                        block.remove(entry)
                        changed = True
                        break
                    if shorter != entry[1] and text_width(shorter) < w:
                        entry[1] = shorter
                        changed = True
                if changed:
                    break
            if changed:
                break
        if not changed:
            break
    return {corner: [text for _, text in block] for corner, block in state.items()}


def pixel_aspect(geometry: Geometry | None) -> tuple[float, float]:
    """(column spacing, row spacing) in mm, the on-screen size of one pixel; 1×1 without geometry."""
    if geometry is None:
        return (1.0, 1.0)
    row_sp, col_sp = geometry.spacing
    if not (math.isfinite(row_sp) and math.isfinite(col_sp)) or row_sp <= 0 or col_sp <= 0:
        return (1.0, 1.0)
    return (float(col_sp), float(row_sp))



# --- thumbnails for the study browser -------------------------------------------------


def thumbnail(series, size: int = 64) -> np.ndarray:
    """The middle image of ``series`` as uint8 (header window), at most ``size`` pixels a side.

    Decodes that one image only. Raises :class:`~app.core.errors.XMedError` when it cannot be read.
    """
    import dataclasses

    from app.dicom.display import render
    from app.dicom.loader import load_series

    if not series.instances:
        raise XMedError("This series has no images")
    inst = series.instances[len(series.instances) // 2]
    one = dataclasses.replace(series, instances=[inst], warnings=[], problems=[])
    k = inst.number_of_frames // 2
    volume = load_series(one, only=[k], workers=1)
    if k in volume.frame_problems:
        raise XMedError(volume.frame_problems[k])
    img = render(volume, k, volume.default_window)
    step = max(1, int(math.ceil(max(img.shape[:2]) / size)))
    return np.ascontiguousarray(img[::step, ::step])


def pixel_readout(volume: Volume, k: int, x: float, y: float) -> str:
    """What the status bar shows under the pointer: pixel, patient position, value.

    ``x``/``y`` are image coordinates (column, row); empty outside the image.
    """
    rows, cols = volume.frames.shape[1:3]
    c, r = int(math.floor(x)), int(math.floor(y))
    if not (0 <= c < cols and 0 <= r < rows and 0 <= k < len(volume)):
        return ""
    parts = [f"x {c}  y {r}"]
    if volume.geometry is not None and k < len(volume.geometry.origins):
        p = volume.geometry.pixel_to_patient(k, c + 0.0, r + 0.0)
        parts.append(f"({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f}) mm")
    if volume.loaded and k >= volume.loaded:
        parts.append("not loaded")
    elif volume.is_color:
        parts.append("RGB " + " ".join(str(int(v)) for v in volume.frames[k, r, c]))
    else:
        value = float(volume.frames[k, r, c]) * float(volume.slopes[k]) + float(volume.intercepts[k])
        unit = " HU" if volume.series.modality.upper() == "CT" else ""
        parts.append(f"{value:.0f}{unit}" if float(value).is_integer() else f"{value:.2f}{unit}")
    return "  ·  ".join(parts)
