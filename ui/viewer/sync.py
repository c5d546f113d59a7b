"""Synchronised viewports: scroll, window/level, zoom and pan follow between linked viewports, and a
linked cursor marks the patient point under the pointer in the others.

Zoom and pan follow as one view: after the reader zooms, pans, fits or resets one viewport, each
linked viewport takes the same scale in mm per screen pixel (view units are mm: the image is
scaled by its pixel spacing) and puts the patient point at the centre of the one that moved
(through a manual link's offset) at its own centre, so the same anatomy sits at the same place in
each. When viewports are resized (the window, a layout, maximising one, the slice bar appearing)
the views are matched again once the resizes of that moment are done: of the viewports resized, the
one the reader last zoomed, panned or fitted (else the first on screen) keeps the view the resize
gave it, as an unlinked viewport would, and its linked viewports follow it.

Which viewports are linked and where each goes is decided by :class:`app.viewer.sync.SyncModel`
(a shared Frame of Reference links automatically; "Link viewports" links a prior study by hand,
keeping the offset between them as it is at that moment); this class only listens to the
viewports' signals and applies the answers, with a guard so a change made here does not come
back as a new change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from PySide6.QtCore import QObject, QPointF, QRectF, QTimer, Signal
from PySide6.QtGui import QColor, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem

from app.viewer.sync import Pane, SyncModel, series_identity
from app.viewer.viewport import clamp_zoom
from ui.viewer.viewport import Viewport

log = logging.getLogger(__name__)

CURSOR_COLOR = (255, 235, 60)
CURSOR_HALF_PX = 7.0  # half the cross's arm, screen pixels


def _cross() -> QGraphicsPathItem:
    path = QPainterPath()
    h = CURSOR_HALF_PX
    path.moveTo(-h, 0)
    path.lineTo(-2, 0)
    path.moveTo(2, 0)
    path.lineTo(h, 0)
    path.moveTo(0, -h)
    path.lineTo(0, -2)
    path.moveTo(0, 2)
    path.lineTo(0, h)
    item = QGraphicsPathItem(path)
    pen = QPen(QColor(*CURSOR_COLOR))
    pen.setCosmetic(True)
    pen.setWidthF(1.5)
    item.setPen(pen)
    item.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)  # screen size at any zoom
    item.setZValue(30)
    return item


class ViewportSync(QObject):
    """Links a set of viewports; ``visible()`` says which of them are on screen now."""

    message = Signal(str)
    link_changed = Signal(bool)  # the manual link was made (True) or undone (False)

    def __init__(self, viewports: list[Viewport], visible: Callable[[], list[Viewport]],
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.viewports = list(viewports)
        self._visible = visible
        self.model = SyncModel()
        self.enabled = True
        self._busy = False
        self._cursor_source: Viewport | None = None
        self._cursor_point = None
        self._leader: Viewport | None = None  # the viewport the reader last zoomed, panned or fitted
        self._resized_now: list[Viewport] = []  # resized since the last match (one burst of resizes)
        self._resize_timer = QTimer(self, singleShot=True, interval=0)
        self._resize_timer.timeout.connect(self._match_after_resize)
        self.crosses: dict[int, QGraphicsPathItem] = {}
        self._joined: dict[int, object] = {}  # viewport → the volume it has joined its linked viewports with
        for vp in self.viewports:
            vp.slice_changed.connect(lambda k, vp=vp: self._slice(vp, k))
            vp.window_changed.connect(lambda w, vp=vp: self._window(vp, w))
            vp.zoom_changed.connect(lambda vp=vp: self._view(vp))
            vp.panned.connect(lambda vp=vp: self._view(vp))
            vp.fitted.connect(lambda vp=vp: self._view(vp))
            vp.vb.sigResized.connect(lambda _vb, vp=vp: self._resized(vp))
            vp.pointer_moved.connect(lambda p, vp=vp: self._pointer(vp, p))
            vp.shown.connect(lambda vp=vp: self._shown(vp))

    # -- panes -------------------------------------------------------------------------------------
    @staticmethod
    def pane(vp: Viewport) -> Pane | None:
        v = vp.volume
        if v is None:
            return None
        return Pane(id(vp), v.geometry, len(v), tuple(v.frames.shape[1:3]),
                    series_identity(v).frame_of_reference, v.series.modality)

    def linked(self, vp: Viewport) -> list[tuple[Viewport, Pane, Pane, str]]:
        """The other visible viewports that follow ``vp``: (viewport, vp's pane, its pane, link kind)."""
        src = self.pane(vp)
        if src is None or not self.enabled:
            return []
        out = []
        for other in self._visible():
            if other is vp or other not in self.viewports:
                continue
            dst = self.pane(other)
            kind = self.model.link_kind(src, dst) if dst is not None else None
            if kind is not None:
                out.append((other, src, dst, kind))
        return out

    def _guarded(self, fn) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            fn()
        finally:
            self._busy = False

    # -- scroll, window, zoom ------------------------------------------------------------------------
    def _arriving(self, vp: Viewport) -> bool:
        """Its series is arriving: the viewport reports its first slice and header window before ``shown``, and
        those are no reader's scroll or window -- it joins its linked viewports' place in :meth:`_shown`
        instead of moving them to image 1."""
        return self._joined.get(id(vp)) is not vp.volume

    def _slice(self, vp: Viewport, k: int) -> None:
        def go():
            if self._arriving(vp):
                return
            for other, src, dst, _kind in self.linked(vp):
                target = self.model.target_slice(src, k, dst)
                if target is not None and target != other.slice_index:
                    other.set_slice(target)
        self._guarded(go)
        if self._cursor_source is not None and self._cursor_point is not None:
            self._pointer(self._cursor_source, self._cursor_point)  # the crosses follow the new slices

    def _window(self, vp: Viewport, window) -> None:
        def go():
            if self._arriving(vp):
                return
            for other, src, dst, _kind in self.linked(vp):
                if src.modality == dst.modality and other.window != window:
                    other.set_window(window)
        self._guarded(go)

    @staticmethod
    def mm_per_screen_pixel(vp: Viewport) -> float:
        """Viewport scale: its view units are mm (the image is scaled by its pixel spacing)."""
        px, py = vp.vb.viewPixelSize()
        return math.sqrt(px * py) if px > 0 and py > 0 else 0.0

    @staticmethod
    def view_centre(vp: Viewport) -> tuple[float, float]:
        """The image point at the centre of ``vp``'s view (pixel (col, row), pixel centres at integers)."""
        p = vp.vb.mapFromViewToItem(vp.image, vp.vb.viewRect().center())
        return p.x() - 0.5, p.y() - 0.5

    def _match(self, leader: Viewport, src: Pane, other: Viewport, dst: Pane) -> bool:
        """``other`` takes ``leader``'s scale (mm per screen pixel) and, where the model can map it,
        puts the patient point at ``leader``'s centre at its own centre; True when it moved."""
        want = self.mm_per_screen_pixel(leader)
        have = self.mm_per_screen_pixel(other)
        size = other.vb.rect().size()  # screen pixels
        if not (0 < want < math.inf and 0 < have < math.inf) or size.isEmpty():
            return False  # a view with no size yet (never laid out)
        rect = other.vb.viewRect()
        centre = rect.center()
        hit = self.model.map_pixel(src, leader.slice_index, *self.view_centre(leader), dst, other.slice_index)
        if hit is not None:
            centre = other.vb.mapFromItemToView(other.image, QPointF(hit[0] + 0.5, hit[1] + 0.5))
        shift = centre - rect.center()
        zoom = other.zoom * have / want  # the follower's zoom at the leader's scale: kept within the zoom limits
        if zoom != clamp_zoom(zoom):  # (a follower with other pixel spacing could be taken past them)
            want = have * other.zoom / clamp_zoom(zoom)
        if abs(want / have - 1.0) <= 1e-3 and math.hypot(shift.x(), shift.y()) <= 0.05 * want:
            return False  # already there (within a twentieth of a screen pixel)
        w, h = size.width() * want, size.height() * want
        other.vb.setRange(QRectF(centre.x() - w / 2, centre.y() - h / 2, w, h), padding=0.0)
        return True

    def _view(self, vp: Viewport) -> None:
        """The reader zoomed, panned or fitted ``vp``: the linked viewports take its scale and centre."""
        def go():
            self._leader = vp
            for other, src, dst, _kind in self.linked(vp):
                self._match(vp, src, other, dst)
        self._guarded(go)

    def _resized(self, vp: Viewport) -> None:
        """``vp`` changed size: the linked views are matched again once this burst of resizes is over."""
        if vp not in self._resized_now:
            self._resized_now.append(vp)
        self._resize_timer.start()

    def _match_after_resize(self) -> None:
        """Of the viewports just resized (on screen, with linked ones), the one the reader last zoomed,
        panned or fitted, else the first, keeps the view the resize gave it; its linked viewports follow."""
        resized, self._resized_now = self._resized_now, []
        visible = self._visible()
        candidates = [vp for vp in visible if vp in resized and vp.isVisible() and self.linked(vp)]
        if not candidates:
            return
        leader = self._leader if self._leader in candidates else candidates[0]

        def go():
            for other, src, dst, _kind in self.linked(leader):
                self._match(leader, src, other, dst)
        self._guarded(go)

    def _shown(self, vp: Viewport) -> None:
        """A series arrived: its manual links are void; it joins a linked series at the same place
        (slice, and scale and centre when it is on screen)."""
        self.model.forget(id(vp))
        self.hide_cursor(vp)
        self._joined[id(vp)] = vp.volume
        links = self.linked(vp)
        if not links:
            return
        other, mine, theirs, _kind = links[0]
        self._slice(other, other.slice_index)
        self._window(other, other.window)
        if vp in self._visible():
            self._guarded(lambda: self._match(other, theirs, vp, mine))

    # -- manual link ----------------------------------------------------------------------------------
    @property
    def is_linked(self) -> bool:
        return self.model.linked_by_hand

    def toggle_link(self) -> str:
        """"Link viewports": link the visible series as they are now (again: unlink); the sentence to show."""
        if self.model.linked_by_hand:
            self.model.unlink()
            self.link_changed.emit(False)
            return "Viewports unlinked: series of other studies scroll on their own again"
        shown = [vp for vp in self._visible() if vp in self.viewports and vp.volume is not None]
        if len(shown) < 2:
            self.link_changed.emit(False)
            return "Show two series side by side first (layout 1×2), bring them to the same anatomy, then link"
        panes = [self.pane(vp) for vp in shown]
        n = self.model.link(panes, {id(vp): vp.slice_index for vp in shown},
                            {id(vp): self.view_centre(vp) for vp in shown})
        if n == 0:
            self.link_changed.emit(False)
            return "These series share a frame of reference: they already scroll together"
        self.link_changed.emit(True)
        return "Viewports linked: scrolling, zooming or panning one moves the others the same way"

    # -- linked cursor --------------------------------------------------------------------------------
    def _pointer(self, vp: Viewport, point) -> None:
        if point is None:
            if self._cursor_source is vp:
                self._cursor_source = self._cursor_point = None
                for other in self.viewports:
                    self.hide_cursor(other)
            return
        self._cursor_source, self._cursor_point = vp, point
        self.hide_cursor(vp)
        col, row = point[0] - 0.5, point[1] - 0.5  # pixel-centre coordinates
        targets = {id(o): (o, s, d) for o, s, d, _ in self.linked(vp)}
        for other in self.viewports:
            hit = None
            if id(other) in targets:
                _, src, dst = targets[id(other)]
                hit = self.model.cursor(src, vp.slice_index, col, row, dst, other.slice_index)
            if hit is None:
                self.hide_cursor(other)
            else:
                self.show_cursor(other, hit)

    def show_cursor(self, vp: Viewport, pixel: tuple[float, float]) -> None:
        item = self.crosses.get(id(vp))
        if item is None or item.parentItem() is not vp.image:
            item = _cross()
            item.setParentItem(vp.image)
            self.crosses[id(vp)] = item
        item.setPos(QPointF(pixel[0] + 0.5, pixel[1] + 0.5))
        item.setVisible(True)

    def hide_cursor(self, vp: Viewport) -> None:
        item = self.crosses.get(id(vp))
        if item is not None:
            item.setVisible(False)

    def cursor_at(self, vp: Viewport) -> tuple[float, float] | None:
        """Where the linked cursor is drawn on ``vp`` (pixel centres at integers), or None (tests)."""
        item = self.crosses.get(id(vp))
        if item is None or not item.isVisible():
            return None
        return item.pos().x() - 0.5, item.pos().y() - 0.5
