"""MPR widgets: three linked views (axial, coronal, sagittal) of one volume with a crosshair,
reference lines and thick slabs.

Each :class:`MprView` is a :class:`~ui.viewer.viewport.Viewport` (same windowing, zoom,
corner text, aspect from spacing, cursor readout) that shows a one-frame volume built from
the resliced plane; the crosshair, which slice each view shows, the slab and the reference
lines come from :class:`app.viewer.mpr.MprState`. Left click / drag sets the crosshair, the
wheel and arrow keys move the view's own plane, a window change applies to all three.

With a measuring tool chosen (length, ROI, angle, Cobb) the left button measures instead, on the
plane shown (the measurement stays with that slice of that plane; oblique planes are not measured).
The assistant's boxes, the report's boxes and pre-read lesions of the series are drawn in every
view as the lesion's extent (:func:`app.viewer.mpr.project_extent`): in the coronal view a
rectangle over the lesion's columns and slices, wherever the plane passes through it.
"""

from __future__ import annotations

import logging

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QLineF, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QGraphicsLineItem, QGraphicsRectItem, QGridLayout, QWidget

from app.core.errors import XMedError
from app.dicom.model import Volume, Window
from app.dicom.volume import reslicable
from app.viewer import measure
from app.viewer.mpr import (
    PLANE_COLORS,
    VIEWS,
    Cell,
    Extent,
    MprState,
    ProjectedBox,
    project_extent,
    three_plane_cells,
)
from app.viewer.viewport import CornerLine, StudyInfo, corner_lines
from ui.viewer.overlays import DEFAULT_COLOR, SOURCE_COLORS, stack_labels
from ui.viewer.viewport import Viewport, _ImageViewBox

log = logging.getLogger(__name__)

#: MPR layouts: view names in grid order, (rows, cols). "mpr2x2" repeats the axial in the fourth
#: pane as a thick-slab MIP overview (no 3-D rendering).
MPR_LAYOUTS = {"mpr": ((1, 3), VIEWS), "mpr2x2": ((2, 2), (*VIEWS, "axial"))}
#: Half the gap (mm) the reference lines leave around the crosshair point.
CROSS_GAP_MM = 8.0


class _MprViewBox(_ImageViewBox):
    """Left click / drag sets the crosshair (pan stays on the middle button, windowing on the right)."""

    def mouseClickEvent(self, ev):  # noqa: N802 (pyqtgraph API)
        if ev.button() == Qt.MouseButton.LeftButton and self._vp.tool == "pan":
            ev.accept()
            self._vp.crosshair_at_scene(ev.scenePos())
        else:
            super().mouseClickEvent(ev)

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802
        if ev.button() == Qt.MouseButton.LeftButton and self._vp.tool == "pan":
            ev.accept()
            self._vp.crosshair_at_scene(ev.scenePos())
        else:
            super().mouseDragEvent(ev, axis)


class MprView(Viewport):
    """One plane of the MPR: a Viewport over the resliced plane, with crosshair and reference lines."""

    crosshair_moved = Signal()
    series_for_mpr = Signal(object, object)  # Volume, StudyInfo: a series given to this view while in MPR

    def __init__(self, plane: str, parent: QWidget | None = None, overview: bool = False) -> None:
        super().__init__(parent)
        self.plane_name = plane
        self.overview = overview  # the 2×2's fourth pane: a fixed thick MIP of the whole volume, no crosshair
        self.state: MprState | None = None
        self._source: Volume | None = None
        self._shape: tuple[int, int] | None = None
        # the crosshair replaces the pan tool on the left button
        self.vb.removeItem(self.image)
        self.vb = _MprViewBox(self)
        self.view.setCentralItem(self.vb)
        self.vb.addItem(self.image)
        self.vb.sigRangeChanged.connect(lambda *_: self._view_moved())
        self.lines: dict[str, list[QGraphicsLineItem]] = {}
        self._line_pool: list[QGraphicsLineItem] = []  # every line item this view owns (shown or hidden)
        self.cross_color = QColor(*PLANE_COLORS[plane])
        self._internal = False  # set while this view puts its own plane volume on screen
        self._pending: Volume | None = None  # a series given from outside, still loading
        self._overview: Volume | None = None  # the 2×2's whole-volume MIP, computed once per volume
        self._plane_image = None  # the PlaneImage on screen (app.dicom.volume)
        self.extent_items: dict[str, tuple[QGraphicsRectItem, pg.TextItem]] = {}
        self.projected: list[ProjectedBox] = []
        self._watching_extent_labels = False
        self._image_key: tuple | None = None  # MprState.image_key of the plane on screen
        self._text_key: tuple | None = None  # what the corner text was made from (see _update_text)
        self._text_rest: tuple | None = None  # (key, corners, orientation letters) besides the plane's own lines
        self._lines_key: tuple | None = None  # what the reference lines were drawn from (see _draw_lines)
        self._pens: dict[tuple[str, Qt.PenStyle], QPen] = {}

    # -- a series given from outside (double-click / drop in the study browser while in MPR) -----------
    def set_volume(self, volume: Volume | None, study: StudyInfo | None = None, complete: bool = True) -> None:
        if self._internal or self.state is None:
            return super().set_volume(volume, study, complete)
        if volume is None:
            return  # the main window clears a view before loading into it: keep the MPR until it lands
        self._pending, self._pending_study = volume, study
        if complete:
            self._adopt_pending()

    def frames_loaded(self, count: int) -> None:
        if self._pending is None and self.state is None:
            super().frames_loaded(count)

    def load_finished(self) -> None:
        if self._pending is not None:
            self._adopt_pending()
        elif self.state is None:
            super().load_finished()

    def _adopt_pending(self) -> None:
        volume, study = self._pending, self._pending_study
        self._pending = None
        self.series_for_mpr.emit(volume, study)

    def _own(self, volume: Volume | None, study: StudyInfo | None) -> None:
        self._internal = True
        try:
            super().set_volume(volume, study)
        finally:
            self._internal = False

    # -- content -------------------------------------------------------------------------------
    def show_state(self, state: MprState | None, source: Volume | None, study: StudyInfo | None,
                   window: Window | None = None) -> None:
        self.state, self._source, self._shape, self._overview = state, source, None, None
        self._image_key = self._text_key = self._text_rest = self._lines_key = None
        if state is None:
            self._own(None, None)
            self._clear_lines()
            self.show_extents([])
            return
        self.refresh(study=study, window=window)

    def plane_volume(self) -> Volume:
        st = self.state
        if self.overview:
            if self._overview is None:
                n = st.count(self.plane_name)
                self._overview = st.volume.reslice(self.plane_name, n // 2, slab_mm=1e6, mode="mip").as_volume(
                    self._source)
            return self._overview
        self._plane_image = st.image(self.plane_name)
        return self._plane_image.as_volume(self._source)

    def refresh(self, study: StudyInfo | None = None, window: Window | None = None) -> None:
        """Reslice for the current crosshair/slab and redraw (first time: fit and header window).

        A view whose plane did not change (:meth:`MprState.image_key`: the coronal and sagittal
        while the axial scrolls) keeps its image, and only its text and lines follow."""
        if self.state is None or (self.overview and self._shape is not None):
            return  # the overview does not follow the crosshair
        key = None if self.overview else self.state.image_key(self.plane_name)
        if self._shape is not None and self._volume is not None and key == self._image_key:
            self._update_text()
            self._draw_lines()
            return
        vol = self.plane_volume()
        shape = vol.frames.shape[1:3]
        if self._shape is None:
            self._own(vol, study or self._study)
            self._shape = shape
            if window is not None:
                self.set_window(window)
        elif self._shape != shape:  # straight ↔ oblique: a new grid, fitted again, same window
            keep = self._window
            self._own(vol, study or self._study)
            self._shape = shape
            self.set_window(keep)
        else:
            self._volume = vol
            # the plane moves (scrolling, a dragged crosshair): nearest-neighbour now, smooth once it stops
            self.image.smooth = False
            self._smooth_timer.start()
            self._render()
            self._update_text()
            self._refresh_cursor()
        self._image_key = key
        pending = self._pending_measurement()
        if pending is not None and pending.frame != self._measure_frame():
            self._cancel_pending()  # the plane moved under a half-drawn angle
        self.measurements.show_frame(self._measure_frame())
        self._draw_lines()

    def _update_text(self) -> None:
        v = self._volume
        if v is None or self.state is None:
            self._text_key = None
            return super()._update_text()
        what = "Axial MIP (whole volume)" if self.overview else self.state.describe(self.plane_name)
        # the header's slice thickness means nothing for a reformatted plane: Th is the slab, or the
        # voxel size along the plane's normal
        st = self.state
        normal = st.normal(self.plane_name)
        if self.overview or (st.is_oblique(self.plane_name) and not st.slab_mm):
            th = None  # a trilinear oblique plane has no slice thickness to state
        elif st.slab_mm:
            th = self._plane_image.slab_mm if self._plane_image is not None else st.slab_mm
        else:
            th = float(abs(st.volume.spacing @ abs(st.volume.direction.T @ normal)))
        pos = float(st.point @ normal)
        # the same plane volume, window, zoom, study, invert, rotation and plane text: the same corners
        # (``v`` itself is kept in the key: compared by identity, and alive so its id is not reused)
        zoom = self.zoom
        key = (v, self._window, zoom, self._study, self._inverted, self._transform, what, th, pos)
        old = self._text_key
        if old is not None and old[0] is v and old[1:] == key[1:]:
            return
        self._text_key = key
        # the other corners and the orientation letters follow neither the slice nor the crosshair: made
        # once per series, study, window, zoom, invert, rotation and plane orientation
        g = v.geometry
        rest_key = (v.series, self._study, self._window, zoom, self._inverted, v.is_color, self._transform,
                    np.asarray(g.row_direction, float).tobytes(), np.asarray(g.col_direction, float).tobytes())
        rest = self._text_rest
        if rest is None or rest[0][0] is not v.series or rest[0][1:] != rest_key[1:]:
            corners = corner_lines(v, 0, self._window, zoom, self._study, self._inverted)
            rest = self._text_rest = (rest_key, corners, self._transform.markers(g))
        corners = {k: list(lines) for k, lines in rest[1].items()}
        bottom = [CornerLine(what, 0)]
        if th is None and not self.overview:
            bottom.append(CornerLine(f"Pos {pos:.1f} mm", 1))
        elif th is not None:
            bottom.append(CornerLine(f"Pos {pos:.1f} mm  Th {th:.2f} mm", 1,
                                     shorter=(f"Pos {pos:.1f}  Th {th:.2f}", f"Th {th:.2f} mm")))
        corners["bottom_left"] = bottom
        self.corner.set_content(corners, dict(rest[2]))

    # -- crosshair -------------------------------------------------------------------------------
    def crosshair_at_scene(self, scene_pos) -> None:
        if self.state is None or self.overview:
            return
        p = self.image.mapFromScene(scene_pos)
        self.crosshair_at_pixel(p.x() - 0.5, p.y() - 0.5)

    def crosshair_at_pixel(self, col: float, row: float) -> None:
        """Set the crosshair at pixel (col, row) of this view (pixel centres at integers)."""
        if self.state is None:
            return
        self.state.set_from_pixel(self.plane_name, col, row)
        self.crosshair_moved.emit()

    def step(self, delta: int) -> None:
        if self.state is None or self.overview:
            return
        self.state.scroll(self.plane_name, delta)
        self.crosshair_moved.emit()

    def set_slice(self, k: int) -> None:
        if self.state is None or self.overview:
            return super().set_slice(k)
        self.state.set_slice(self.plane_name, k)
        self.crosshair_moved.emit()

    @property
    def slice_index(self) -> int:
        return self.state.index(self.plane_name) if self.state is not None else 0

    def trigger(self, action: str) -> bool:
        if self.state is not None and action in ("first_slice", "last_slice"):
            self.set_slice(0 if action == "first_slice" else self.state.count(self.plane_name) - 1)
            return True
        if action == "toggle_cine":
            return True  # no cine on reformatted planes: swallow the key
        return super().trigger(action)

    # -- measurements on the plane shown ------------------------------------------------------------
    def _measure_frame(self) -> int:
        """Measurements belong to the slice of this view's orientation that is shown (−1: oblique)."""
        if self.state is None or self.overview:
            return super()._measure_frame()
        if self.state.is_oblique(self.plane_name):
            return -1
        return self.state.index(self.plane_name)

    def _measurable(self) -> bool:
        if self.overview or (self.state is not None and self.state.is_oblique(self.plane_name)):
            self.message.emit("Measure on straight planes: turn the crosshair back to 0° (Alt+Shift+R)")
            return False
        return True

    def measure_drag(self, ev) -> None:
        if ev.isStart() and not self._measurable():
            return
        super().measure_drag(ev)

    def add_measurement(self, kind: str, *points):
        return super().add_measurement(kind, *points) if self._measurable() else None

    def _frame_values(self, frame: int):
        """The plane on screen: its values and pixel spacing (measurements refresh on the plane shown)."""
        v = self._volume
        if v is None or self.state is None:
            return super()._frame_values(frame)
        return v.values(0), measure.spacing_of(v.geometry), measure.value_unit_for(v.series.modality)

    # -- lesions' extents -----------------------------------------------------------------------------
    def show_extents(self, boxes: list[ProjectedBox]) -> None:
        """Draw these projected lesion boxes (image pixels of this view); the others go."""
        self.projected = list(boxes)
        for rect, text in self.extent_items.values():
            for it in (rect, text):
                it.setParentItem(None)
                if it.scene() is not None:
                    it.scene().removeItem(it)
        self.extent_items = {}
        for b in boxes:
            rgb = SOURCE_COLORS.get(b.source, DEFAULT_COLOR)
            pen = QPen(QColor(*rgb))
            pen.setCosmetic(True)
            pen.setWidthF(2.0)
            pen.setStyle(Qt.PenStyle.DashLine)
            rect = QGraphicsRectItem(QRectF(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0), self.image)
            rect.setPen(pen)
            rect.setZValue(15)
            text = pg.TextItem(b.label, color=rgb, anchor=(0, 1), fill=pg.mkBrush(0, 0, 0, 160))
            text.setParentItem(self.image)
            text.setPos(b.x0, b.y0)
            text.setZValue(16)
            text.setVisible(bool(b.label))
            self.extent_items[b.id] = (rect, text)
        self.layout_extent_labels()

    def layout_extent_labels(self) -> None:
        """The extents' labels stacked so that none covers another (a lesion accepted into the report has its
        pre-read label and its finding's at one corner); again when the view is zoomed or panned."""
        if not self._watching_extent_labels:
            self.vb.sigTransformChanged.connect(lambda *_: self.layout_extent_labels())
            self._watching_extent_labels = True
        stack_labels(self.image, [(self.extent_items[b.id][1], QPointF(b.x0, b.y0)) for b in self.projected
                                  if b.id in self.extent_items and b.label])

    def reference_line_items(self) -> dict[str, list[QGraphicsLineItem]]:
        return self.lines

    def _clear_lines(self) -> None:
        for it in self._line_pool:
            it.setParentItem(None)
            if it.scene() is not None:
                it.scene().removeItem(it)
        self._line_pool = []
        self.lines = {}
        self._lines_key = None

    def _pen(self, of: str, style: Qt.PenStyle) -> QPen:
        pen = self._pens.get((of, style))
        if pen is None:
            pen = self._pens[of, style] = QPen(QColor(*PLANE_COLORS[of]))
            pen.setCosmetic(True)
            pen.setWidthF(1.0)
            pen.setStyle(style)
        return pen

    def _draw_lines(self) -> None:
        """The other planes' lines (solid) and slab edges (dashed), in image pixels: they follow
        zoom, pan, rotation and the spacing aspect with the image item. The line items are kept and
        moved from frame to frame (creating and removing them cost ~10 ms a frame while scrolling)."""
        if self.state is None or self.overview:
            self._clear_lines()
            return
        refs = self.state.reference_lines(self.plane_name)
        key = (tuple(refs), self.state.crosshair(self.plane_name), self.state.plane(self.plane_name).spacing)
        if key == self._lines_key and all(it.parentItem() is self.image for its in self.lines.values() for it in its):
            return  # the same lines where they are
        self._lines_key = key
        pool = self._line_pool
        used = 0
        lines: dict[str, list[QGraphicsLineItem]] = {}
        for ref in refs:
            items = []
            segs = [(a, b, Qt.PenStyle.SolidLine) for a, b in self._gapped(ref.p0, ref.p1)]
            segs += [(a, b, Qt.PenStyle.DashLine) for a, b in ref.edges]
            for a, b, style in segs:
                if used < len(pool):
                    it = pool[used]
                    if it.parentItem() is not self.image:
                        it.setParentItem(self.image)
                else:
                    it = QGraphicsLineItem(self.image)
                    pool.append(it)
                used += 1
                pen = self._pen(ref.of, style)
                if it.pen() != pen:
                    it.setPen(pen)
                it.setLine(QLineF(a[0] + 0.5, a[1] + 0.5, b[0] + 0.5, b[1] + 0.5))
                it.setVisible(True)
                items.append(it)
            lines[ref.of] = items
        for it in pool[used:]:
            it.setVisible(False)
        self.lines = lines

    def _gapped(self, p0, p1):
        """The line in two pieces that leave :data:`CROSS_GAP_MM` free around the crosshair, so the
        lines never cover what the reader is pointing at."""
        cx, cy = self.state.crosshair(self.plane_name)  # (cached by the state)
        dx, dy = p1[0] - p0[0], p1[1] - p0[1]
        length = (dx * dx + dy * dy) ** 0.5
        if length < 1e-9:
            return [(p0, p1)]
        ux, uy = dx / length, dy / length
        row_sp, col_sp = self.state.plane(self.plane_name).spacing
        mm_per_px = ((ux * col_sp) ** 2 + (uy * row_sp) ** 2) ** 0.5
        gap = CROSS_GAP_MM / mm_per_px
        t = (cx - p0[0]) * ux + (cy - p0[1]) * uy  # where the crosshair is along the line
        out = []
        if t - gap > 0:
            out.append((p0, (p0[0] + ux * (t - gap), p0[1] + uy * (t - gap))))
        if t + gap < length:
            out.append(((p0[0] + ux * (t + gap), p0[1] + uy * (t + gap)), p1))
        return out

    def paintEvent(self, event) -> None:  # noqa: N802
        super().paintEvent(event)
        # a strip of the plane's colour along the top edge says which plane this is
        from PySide6.QtGui import QPainter

        p = QPainter(self)
        p.fillRect(0, 0, self.width(), 3, self.cross_color)
        p.end()


class MprPanel(QWidget):
    """Three (or four) linked MPR views of one volume."""

    state_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        #: returns the lesions to draw in every view (the grid gathers the boxes of the series shown)
        self.extents_provider = None
        #: lesions given directly (a series pre-read), drawn with those of the provider
        self.extra_extents: list[Extent] = []
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(2)
        self.views = [MprView(name, self) for name in VIEWS] + [MprView("axial", self, overview=True)]
        for v in self.views:
            v.crosshair_moved.connect(self.refresh)
            v.window_changed.connect(lambda w, src=v: self._window_from(src, w))
            v.series_for_mpr.connect(self._series_given)
            v.tool_changed.connect(self._tool_from)
        self.state: MprState | None = None
        self.source: Volume | None = None
        self.layout_name = ""
        self._placed: tuple[Cell, ...] = ()
        self._syncing = False
        self.set_layout("mpr")

    def by_plane(self, name: str) -> MprView:
        return next(v for v in self.views if v.plane_name == name and not v.overview)

    def visible(self) -> list[MprView]:
        (rows, cols), _ = MPR_LAYOUTS[self.layout_name]
        return self.views[: rows * cols]

    def cells(self, name: str | None = None) -> tuple[Cell, ...]:
        """Where each visible view goes for layout ``name`` (default: the current one) at the panel's size;
        "mpr" follows :func:`app.viewer.mpr.three_plane_cells`."""
        name = name or self.layout_name
        if name == "mpr":
            return three_plane_cells(self.width(), self.height())
        (rows, cols), _ = MPR_LAYOUTS[name]
        return tuple((i // cols, i % cols, 1, 1) for i in range(rows * cols))

    def set_layout(self, name: str) -> None:
        self._place(self.cells(name))
        self.layout_name = name
        for v in self.visible():
            if v.state is not None and v.volume is None:
                v.refresh()
        QTimer.singleShot(50, self.fit_all)  # again once the views surely have their new sizes

    def _place(self, cells: tuple[Cell, ...]) -> None:
        for v in self.views:
            self._grid.removeWidget(v)
            v.hide()
        for v, (r, c, rs, cs) in zip(self.views, cells):
            self._grid.addWidget(v, r, c, rs, cs)
            v.show()
        rows = max(r + rs for r, _c, rs, _cs in cells)
        cols = max(c + cs for _r, c, _rs, cs in cells)
        for r in range(3):
            self._grid.setRowStretch(r, 1 if r < rows else 0)
        for c in range(3):
            self._grid.setColumnStretch(c, 1 if c < cols else 0)
        self._placed = cells

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        if self.layout_name and self.cells() != self._placed:  # a dock closed or opened: fit the views again
            self._place(self.cells())
            QTimer.singleShot(50, self.fit_all)

    def fit_all(self) -> None:
        for v in self.visible():
            if v.volume is not None:
                v.fit()

    def set_volume(self, volume: Volume | None, study: StudyInfo | None = None, window: Window | None = None) -> str | None:
        """Show ``volume`` in MPR; returns the warning to show (resampled, …) or raises XMedError."""
        if volume is None:
            self.state = self.source = None
            for v in self.views:
                v.show_state(None, None, None)
            return None
        if len(volume) < 2:
            raise XMedError("MPR needs a stack of slices; this series has one image")
        rv = reslicable(volume)
        self.state, self.source = MprState(rv), volume
        for v in self.views:
            v.show_state(self.state, volume, study, window)
        self.draw_extents()
        self.state_changed.emit()
        return "; ".join(rv.warnings) or None

    def refresh(self) -> None:
        for v in self.views:
            if v.isVisibleTo(self) or not self.isVisible():
                v.refresh()
        self.draw_extents()
        self.state_changed.emit()

    # -- lesions on every plane ---------------------------------------------------------------------
    def extents(self) -> list[Extent]:
        provided = list(self.extents_provider()) if self.extents_provider is not None else []
        return provided + list(self.extra_extents)

    def set_extents(self, extents: list[Extent]) -> None:
        """Lesions to draw besides the boxes of the viewports (a series pre-read's lesions)."""
        self.extra_extents = list(extents)
        self.draw_extents()

    def draw_extents(self) -> None:
        st = self.state
        geometry = self.source.geometry if self.source is not None else None
        extents = self.extents() if st is not None else []
        for v in self.views:
            if v.overview or st is None or v.volume is None:
                v.show_extents([])
                continue
            boxes = [project_extent(st, geometry, e, v.plane_name) for e in extents]
            v.show_extents([b for b in boxes if b is not None])

    def _tool_from(self, tool: str) -> None:
        """A tool chosen in one view applies to all of them."""
        for v in self.views:
            if v.tool != tool:
                v.set_tool(tool)

    def _series_given(self, volume: Volume, study: StudyInfo | None) -> None:
        """A series was opened into one of the views while in MPR: reslice that one instead."""
        window = self.views[0].window if self.views[0].volume is not None else None
        try:
            self.set_volume(volume, study, window if self.source is not None
                            and volume.series.modality == self.source.series.modality else None)
        except XMedError as exc:
            for v in self.visible():
                v.corner.set_message(f"MPR is not possible for this series: {exc}")

    def _window_from(self, src: MprView, window: Window) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            for v in self.views:
                if v is not src and v.volume is not None and v.window != window:
                    v.set_window(window)
        finally:
            self._syncing = False

    # -- slab --------------------------------------------------------------------------------------
    def set_slab(self, slab_mm: float, mode: str | None = None) -> None:
        if self.state is None:
            return
        self.state.set_slab(slab_mm, mode)
        self.refresh()

    def step_slab(self, direction: int) -> str:
        if self.state is None:
            return "Open a series in MPR first"
        self.state.step_slab(direction)
        self.refresh()
        return self.slab_text()

    def cycle_mode(self) -> str:
        if self.state is None:
            return "Open a series in MPR first"
        self.state.cycle_mode()
        self.refresh()
        return self.slab_text()

    def rotate(self, degrees: float) -> str:
        if self.state is None:
            return "Open a series in MPR first"
        self.state.rotate(degrees)
        self.refresh()
        angle = self.state.angle_deg
        return f"Crosshair turned {angle:.0f}°: oblique coronal and sagittal" if angle else "Crosshair straight: true planes"

    def slab_text(self) -> str:
        st = self.state
        if st is None:
            return ""
        return f"Slab {st.slab_mm:g} mm {st.mode.upper() if st.mode != 'mean' else 'mean'}" if st.slab_mm else "Slab off"


def pixel_of_line(item: QGraphicsLineItem) -> tuple[tuple[float, float], tuple[float, float]]:
    """A reference line's ends in image pixels (pixel centres at integers) — for tests."""
    ln = item.line()
    return (ln.x1() - 0.5, ln.y1() - 0.5), (ln.x2() - 0.5, ln.y2() - 0.5)

