"""Synchronised viewports: scroll, window/level and zoom follow between linked viewports, and a
linked cursor marks the patient point under the pointer in the others.

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

from PySide6.QtCore import QObject, QPointF, Signal
from PySide6.QtGui import QColor, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem

from app.viewer.sync import Pane, SyncModel, series_identity
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
        self.crosses: dict[int, QGraphicsPathItem] = {}
        for vp in self.viewports:
            vp.slice_changed.connect(lambda k, vp=vp: self._slice(vp, k))
            vp.window_changed.connect(lambda w, vp=vp: self._window(vp, w))
            vp.zoom_changed.connect(lambda vp=vp: self._zoom(vp))
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
    def _slice(self, vp: Viewport, k: int) -> None:
        def go():
            for other, src, dst, _kind in self.linked(vp):
                target = self.model.target_slice(src, k, dst)
                if target is not None and target != other.slice_index:
                    other.set_slice(target)
        self._guarded(go)
        if self._cursor_source is not None and self._cursor_point is not None:
            self._pointer(self._cursor_source, self._cursor_point)  # the crosses follow the new slices

    def _window(self, vp: Viewport, window) -> None:
        def go():
            for other, src, dst, _kind in self.linked(vp):
                if src.modality == dst.modality and other.window != window:
                    other.set_window(window)
        self._guarded(go)

    @staticmethod
    def mm_per_screen_pixel(vp: Viewport) -> float:
        """Viewport scale: its view units are mm (the image is scaled by its pixel spacing)."""
        px, py = vp.vb.viewPixelSize()
        return math.sqrt(px * py) if px > 0 and py > 0 else 0.0

    def _zoom(self, vp: Viewport) -> None:
        def go():
            want = self.mm_per_screen_pixel(vp)
            if want <= 0:
                return
            for other, *_ in self.linked(vp):
                have = self.mm_per_screen_pixel(other)
                if have > 0 and abs(want / have - 1.0) > 1e-3:
                    other.vb.scaleBy((want / have, want / have))
        self._guarded(go)

    def _shown(self, vp: Viewport) -> None:
        """A series arrived: its manual links are void; it joins a linked series at the same place."""
        self.model.forget(id(vp))
        self.hide_cursor(vp)
        for other, *_ in self.linked(vp):
            self._slice(other, other.slice_index)
            break

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
        n = self.model.link(panes, {id(vp): vp.slice_index for vp in shown})
        if n == 0:
            self.link_changed.emit(False)
            return "These series share a frame of reference: they already scroll together"
        self.link_changed.emit(True)
        return "Viewports linked: scrolling one moves the others by the same distance"

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
