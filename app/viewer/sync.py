"""Synchronised viewports without Qt: which viewports follow each other, and where.

Two viewports are linked

- **automatically** when their series share a Frame of Reference (FrameOfReferenceUID): the
  same patient coordinates, so scrolling one shows, in the other, the slice nearest the same
  position along the other's slice normal (not the same slice index: a 5 mm and a 1 mm series
  of one study stay on the same anatomy), and window/level and zoom follow;
- **by hand** ("Link viewports", for a prior study with its own frame of reference): at the
  moment of linking the reader has both on the same anatomy; from then on the offset between
  them (the vector between the two slice centres, in mm) is kept, so scrolling one moves the
  other by the same distance. Without geometry the slice-index offset is kept instead.

The linked cursor maps the patient point under the pointer (through the same offset for a
manual link) onto the other viewports' slices: a small cross where that point lies, when it
lies within a slice gap of the slice shown and inside the image.

Pan and zoom follow the same way (:meth:`SyncModel.map_pixel`): the patient point at the centre of
the view that moved (through the offset of a manual link) goes to the centre of each linked view,
at the same scale in mm per screen pixel, so series of different pixel spacing line up. A manual
link made while the reader shows the same anatomy at the centre of both views (panned to match)
keeps that in-plane offset too: the offset is taken between the points at the centres of the
views, which are the slice centres when both views are fitted.

Everything here works on :class:`Pane` (what a viewport shows: geometry, slice count, frame of
reference); ``ui.viewer.sync`` feeds it from the viewports and applies the answers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.dicom.model import Geometry, Volume

log = logging.getLogger(__name__)

#: Slice normals within this angle count as parallel (scroll sync needs parallel slices).
PARALLEL_DEG = 10.0


# ---- what a series is ------------------------------------------------------------------------

@dataclass(frozen=True)
class SeriesIdentity:
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference: str = ""


_identities: dict[tuple[str, str], SeriesIdentity] = {}


def series_identity(volume: Volume | None) -> SeriesIdentity:
    """Study, series and frame-of-reference UIDs of a loaded series (read once from its first file's
    header, then remembered); empty strings when the file cannot be read (a volume made in memory)."""
    if volume is None:
        return SeriesIdentity()
    series = volume.series
    series_uid = series.series_instance_uid or series.uid
    sources = getattr(volume, "frame_sources", None)
    path = str(sources[0][0]) if sources else (str(series.instances[0].path) if series.instances else "")
    key = (series_uid, path)
    if key in _identities:
        return _identities[key]
    study = frame = ""
    if path and Path(path).is_file():
        try:
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"])
            study = str(ds.get("StudyInstanceUID", "") or "")
            frame = str(ds.get("FrameOfReferenceUID", "") or "")
            series_uid = series_uid or str(ds.get("SeriesInstanceUID", "") or "")
        except Exception as exc:  # noqa: BLE001 - an unreadable header only means no sync / no saving
            log.info("no identity for %s: %s", path, exc)
    ident = SeriesIdentity(study, series_uid, frame)
    _identities[key] = ident
    return ident


# ---- geometry ------------------------------------------------------------------------------------

def unit_normal(geometry: Geometry) -> np.ndarray:
    n = np.cross(np.asarray(geometry.row_direction, float), np.asarray(geometry.col_direction, float))
    return n / np.linalg.norm(n)


def slice_centre(geometry: Geometry, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Patient position of the centre of slice ``k`` (an image of ``shape`` rows × cols)."""
    rows, cols = shape
    return geometry.pixel_to_patient(k, (cols - 1) / 2.0, (rows - 1) / 2.0)


def parallel(a: Geometry, b: Geometry, tolerance_deg: float = PARALLEL_DEG) -> bool:
    return abs(float(unit_normal(a) @ unit_normal(b))) >= math.cos(math.radians(tolerance_deg))


def nearest_slice(geometry: Geometry, point, count: int | None = None) -> int:
    """The slice whose plane is nearest ``point`` along the slice normal."""
    n = unit_normal(geometry)
    origins = np.asarray(geometry.origins, float)
    if count is not None:
        origins = origins[:count]
    return int(np.argmin(np.abs((origins - np.asarray(point, float)) @ n)))


def slice_gap(geometry: Geometry) -> float:
    """Typical distance between neighbouring slices (mm); 1 for a single slice."""
    origins = np.asarray(geometry.origins, float)
    if len(origins) < 2:
        return 1.0
    d = np.abs(np.diff(origins @ unit_normal(geometry)))
    d = d[d > 1e-6]
    return float(np.median(d)) if d.size else 1.0


@dataclass(frozen=True)
class Pane:
    """What one viewport shows, as the synchroniser needs it."""

    key: int
    geometry: Geometry | None
    count: int  # slices
    shape: tuple[int, int]  # (rows, cols)
    frame_of_reference: str = ""
    modality: str = ""

    def centre(self, k: int) -> np.ndarray:
        return slice_centre(self.geometry, k, self.shape)


@dataclass(frozen=True)
class ManualLink:
    """Pane ``a`` → pane ``b`` as the reader linked them: ``b``'s point = ``a``'s point + ``offset``."""

    a: int
    b: int
    offset: np.ndarray | None  # mm (None without geometry: ``slices`` is used)
    slices: int = 0


@dataclass
class SyncModel:
    """Which panes follow which, and where a pane goes when another one moves."""

    manual: dict[frozenset, ManualLink] = field(default_factory=dict)

    # -- who follows whom -------------------------------------------------------------------------
    @staticmethod
    def same_frame(a: Pane, b: Pane) -> bool:
        return bool(a.frame_of_reference) and a.frame_of_reference == b.frame_of_reference

    def link_kind(self, a: Pane, b: Pane) -> str | None:
        """"frame" (shared frame of reference), "manual" (linked by the reader) or None."""
        if a.key == b.key:
            return None
        if self.same_frame(a, b):
            return "frame"
        if frozenset((a.key, b.key)) in self.manual:
            return "manual"
        return None

    @property
    def linked_by_hand(self) -> bool:
        return bool(self.manual)

    def link(self, panes: list[Pane], slices: dict[int, int],
             centres: dict[int, tuple[float, float]] | None = None) -> int:
        """Link every pair of ``panes`` that does not share a frame of reference, at the slices they
        show now (``slices``: pane key → slice index); returns how many pairs were linked.

        ``centres`` (pane key → pixel (col, row), pixel centres at integers) is the image point at
        the centre of each view: the reader has the same anatomy there, so the offset is taken
        between those points; without it, between the centres of the slices."""
        self.manual.clear()
        centres = centres or {}
        for i, a in enumerate(panes):
            for b in panes[i + 1:]:
                if self.same_frame(a, b):
                    continue
                ka, kb = slices.get(a.key, 0), slices.get(b.key, 0)
                if a.geometry is not None and b.geometry is not None:
                    pa = a.geometry.pixel_to_patient(ka, *centres[a.key]) if a.key in centres else a.centre(ka)
                    pb = b.geometry.pixel_to_patient(kb, *centres[b.key]) if b.key in centres else b.centre(kb)
                    offset = pb - pa
                    self.manual[frozenset((a.key, b.key))] = ManualLink(a.key, b.key, offset)
                else:
                    self.manual[frozenset((a.key, b.key))] = ManualLink(a.key, b.key, None, kb - ka)
        return len(self.manual)

    def unlink(self) -> None:
        self.manual.clear()

    def forget(self, key: int) -> None:
        """A pane shows another series now: its manual links no longer hold."""
        for pair in [p for p in self.manual if key in p]:
            del self.manual[pair]

    def _offset(self, src: Pane, dst: Pane) -> tuple[np.ndarray | None, int]:
        """(mm offset from src's patient point to dst's, slice offset) for a linked pair."""
        if self.same_frame(src, dst):
            return np.zeros(3), 0
        link = self.manual[frozenset((src.key, dst.key))]
        sign = 1 if link.a == src.key else -1
        return (None if link.offset is None else sign * link.offset), sign * link.slices

    # -- where to go --------------------------------------------------------------------------------
    def target_slice(self, src: Pane, k: int, dst: Pane) -> int | None:
        """The slice ``dst`` shows when ``src`` shows slice ``k`` (None: it does not follow)."""
        kind = self.link_kind(src, dst)
        if kind is None or dst.count < 1:
            return None
        offset, slices = self._offset(src, dst)
        if offset is None or src.geometry is None or dst.geometry is None:
            if kind == "frame":
                return None  # a shared frame of reference without geometry says nothing about position
            return int(np.clip(k + slices, 0, dst.count - 1))
        if not parallel(src.geometry, dst.geometry):
            return None  # an axial and a sagittal series: scrolling one does not move the other
        return nearest_slice(dst.geometry, src.centre(k) + offset, dst.count)

    def _point(self, src: Pane, k: int, col: float, row: float, dst: Pane) -> np.ndarray | None:
        """The patient point of ``dst``'s series that pixel (col, row) of ``src``'s slice ``k`` stands for
        (through a manual link's offset), or None: not linked, or no geometry to say."""
        if self.link_kind(src, dst) is None or src.geometry is None or dst.geometry is None:
            return None
        offset, _ = self._offset(src, dst)
        if offset is None:
            return None
        return src.geometry.pixel_to_patient(k, col, row) + offset

    def map_pixel(self, src: Pane, k: int, col: float, row: float, dst: Pane, k_dst: int) -> tuple[float, float] | None:
        """Pan sync: where the patient point at pixel (col, row) of ``src``'s slice ``k`` lies in the
        plane of ``dst``'s slice ``k_dst`` (pixel centres at integers; anywhere in that plane, inside
        the image or not), or None: not linked, no geometry (a manual link by slice offset), or slices
        that are not parallel (an axial and a sagittal series do not pan together, as they do not
        scroll together)."""
        p = self._point(src, k, col, row, dst)
        if p is None or not parallel(src.geometry, dst.geometry):
            return None
        return dst.geometry.patient_to_pixel(k_dst, p)

    def cursor(self, src: Pane, k: int, col: float, row: float, dst: Pane, k_dst: int) -> tuple[float, float] | None:
        """Where the patient point at pixel (col, row) of ``src``'s slice ``k`` lies on ``dst``'s slice
        ``k_dst`` (pixel centres at integers), or None: not linked, not near that slice, or outside."""
        p = self._point(src, k, col, row, dst)
        if p is None:
            return None
        gap = max(slice_gap(dst.geometry), slice_gap(src.geometry) if src.count > 1 else 0.0)
        distance = float((p - np.asarray(dst.geometry.origins[k_dst], float)) @ unit_normal(dst.geometry))
        if abs(distance) > gap * 0.5 + 1e-6 and abs(distance) > 1.0:
            return None
        c, r = dst.geometry.patient_to_pixel(k_dst, p)
        rows, cols = dst.shape
        if not (-0.5 <= c <= cols - 0.5 and -0.5 <= r <= rows - 0.5):
            return None
        return c, r
