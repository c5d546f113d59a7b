"""Measurement graphics: lengths, angles, Cobb angles and rectangle/ellipse ROIs drawn on a frame.

Items are children of the viewport's ImageItem, so their coordinates are image
pixels whatever the zoom, rotation or pixel aspect. The numbers come from
:mod:`app.viewer.measure`; this module only draws them, keeps them in step with
the handles, keeps their labels inside the visible view, and keeps the history
of adds and deletes for undo / redo.

Lengths and ROIs are one drag. An angle is a drag from one end to the vertex, then the
second arm follows the pointer until a click (or a second drag) fixes its end. A Cobb angle
is two drags, one line each (the two endplates). Until the last point is fixed the
measurement is *pending* (:attr:`Measurement.pending`): it is in no history yet, and
:meth:`MeasurementLayer.remove` takes it away when the reader gives up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF
from PySide6.QtGui import QPainter, QPainterPath

from app.viewer import measure
from app.viewer.measure_store import new_uid

LENGTH_COLOR = (80, 220, 255)
ROI_COLOR = (120, 255, 120)
ANGLE_COLOR = (255, 170, 60)

#: Supplies (values of the frame, spacing (row, col) or None, value unit) for stats.
ValuesFn = Callable[[int], tuple[np.ndarray, tuple[float, float] | None, str]]
#: Which handles each multi-point kind joins with a line.
SEGMENTS = {"angle": ((0, 1), (1, 2)), "cobb": ((0, 1), (2, 3))}


class _AxisEllipseROI(pg.EllipseROI):
    """Axis-aligned ellipse with corner scale handles (no rotation: stats stay exact)."""

    def _addHandles(self) -> None:  # noqa: N802 (pyqtgraph API)
        self.addScaleHandle([1, 1], [0, 0])
        self.addScaleHandle([0, 0], [1, 1])
        self.addScaleHandle([1, 0], [0, 1])
        self.addScaleHandle([0, 1], [1, 0])


class SegmentsROI(pg.ROI):
    """Free handles joined by line segments (an angle's two arms, a Cobb angle's two lines).

    ``placed`` handles are drawn; the others wait (hidden) until the drawing reaches them."""

    def __init__(self, points, segments, **args) -> None:
        super().__init__([0, 0], [1, 1], **args)
        self.segments = tuple(segments)
        self.placed = len(points)
        for p in points:
            self.addFreeHandle(p)

    def set_placed(self, n: int) -> None:
        self.placed = n
        for i, h in enumerate(self.getHandles()):
            h.setVisible(i < n)
        self.prepareGeometryChange()
        self.update()

    def _drawn(self):
        hs = self.getHandles()
        return [(hs[a].pos(), hs[b].pos()) for a, b in self.segments if a < self.placed and b < self.placed]

    def paint(self, p, *args) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, self._antialias)
        p.setPen(self.currentPen)
        for a, b in self._drawn():
            p.drawLine(a, b)

    def shape(self) -> QPainterPath:
        path = QPainterPath()
        for a, b in self._drawn():
            d = b - a
            if d.manhattanLength() == 0:
                continue
            pxv = self.pixelVectors(d)[1]
            if pxv is None:
                continue
            pxv = pxv * 4
            path.moveTo(a + pxv)
            path.lineTo(b + pxv)
            path.lineTo(b - pxv)
            path.lineTo(a - pxv)
            path.closeSubpath()
        return path

    def boundingRect(self) -> QRectF:
        return self.shape().boundingRect()


@dataclass
class Measurement:
    kind: str  # "length", "rect", "ellipse", "angle", "cobb"
    frame: int
    roi: pg.ROI
    label: pg.TextItem
    text: str = ""
    uid: str = field(default_factory=new_uid)  # names it in the saved workspace and the SR
    #: the handle the next drag moves (multi-point kinds); ``pending`` while points are missing
    active: int = 1
    pending: bool = False
    evaluation: measure.Evaluation | None = None

    def points(self) -> tuple[tuple[float, float], ...]:
        """The defining image points: line ends, opposite rectangle corners, or every handle
        (angle: end, vertex, end; Cobb: the two lines' ends)."""
        if self.kind in ("length", "angle", "cobb"):
            pts = (self.roi.mapToParent(h.pos()) for h in self.roi.getHandles())
            return tuple((p.x(), p.y()) for p in pts)
        pos, size = self.roi.pos(), self.roi.size()
        return (pos.x(), pos.y()), (pos.x() + size.x(), pos.y() + size.y())

    def set_visible(self, visible: bool) -> None:
        self.roi.setVisible(visible)
        self.label.setVisible(visible)


KIND_NAMES = {"length": "length", "rect": "rectangle ROI", "ellipse": "ellipse ROI", "angle": "angle",
              "cobb": "Cobb angle"}
#: Screen pixels kept between a label and the edge of the view.
LABEL_MARGIN = 4.0


@dataclass
class Change:
    """One step of the history: measurements added, or deleted (one, or all of them)."""

    what: str  # "add", "delete", "clear"
    items: list[tuple[int, Measurement]]  # (place in the list, measurement), in list order

    def describe(self) -> str:
        if self.what == "add":
            return f"add {KIND_NAMES.get(self.items[0][1].kind, 'measurement')}"
        if self.what == "clear":
            return f"delete all {len(self.items)} measurements" if len(self.items) > 1 else "delete all measurements"
        return "delete measurement"

    def frames(self) -> set[int]:
        return {m.frame for _, m in self.items}


class MeasurementLayer:
    """Creates, updates and removes measurements on one viewport's image, with undo / redo."""

    def __init__(self, parent_item: pg.GraphicsObject, values: ValuesFn) -> None:
        self._parent = parent_item
        self._values = values
        self.items: list[Measurement] = []
        self._frame = 0
        self._undo: list[Change] = []
        self._redo: list[Change] = []
        #: called after the reader moved a finished measurement's handle (the workspace saves it)
        self.on_edited: Callable[[Measurement], None] | None = None

    def begin(self, kind: str, frame: int, p: QPointF, uid: str | None = None) -> Measurement:
        """Start drawing at image point ``p``; :meth:`drag_to` follows the mouse."""
        if kind == "length":
            roi: pg.ROI = pg.LineSegmentROI(
                [[p.x(), p.y()], [p.x(), p.y()]], pen=pg.mkPen(LENGTH_COLOR, width=2), rotatable=False
            )
        elif kind == "rect":
            roi = pg.ROI([p.x(), p.y()], [0.01, 0.01], pen=pg.mkPen(ROI_COLOR, width=2), invertible=True, rotatable=False)
            for handle, centre in (([1, 1], [0, 0]), ([0, 0], [1, 1]), ([1, 0], [0, 1]), ([0, 1], [1, 0])):
                roi.addScaleHandle(handle, centre)
        elif kind == "ellipse":
            roi = _AxisEllipseROI(
                [p.x(), p.y()], [0.01, 0.01], pen=pg.mkPen(ROI_COLOR, width=2), invertible=True, rotatable=False
            )
        elif kind in SEGMENTS:
            n = measure.POINTS[kind]
            roi = SegmentsROI([[p.x(), p.y()]] * n, SEGMENTS[kind], pen=pg.mkPen(ANGLE_COLOR, width=2),
                              rotatable=False)
            roi.set_placed(2)  # the first line; the rest waits for the next stroke
        else:
            raise ValueError(f"unknown measurement kind {kind!r}")
        roi.setParentItem(self._parent)
        color = {"length": LENGTH_COLOR, "angle": ANGLE_COLOR, "cobb": ANGLE_COLOR}.get(kind, ROI_COLOR)
        label = pg.TextItem("", color=color, anchor=(0, 0), fill=pg.mkBrush(0, 0, 0, 150))
        label.setParentItem(self._parent)
        m = Measurement(kind, frame, roi, label, pending=kind in SEGMENTS)
        if uid:
            m.uid = uid
        self.items.append(m)
        roi.sigRegionChanged.connect(lambda *_: self.refresh(m))
        roi.sigRegionChangeFinished.connect(lambda *_: self._edited(m))
        return m

    def _edited(self, m: Measurement) -> None:
        if not m.pending and m in self.items and self.on_edited is not None:
            self.on_edited(m)

    def _handle(self, m: Measurement, i: int):
        return m.roi.getHandles()[i]

    def drag_to(self, m: Measurement, p: QPointF) -> None:
        if m.kind in ("length", "angle", "cobb"):
            m.roi.movePoint(self._handle(m, m.active), p, coords="parent", finish=False)
        else:
            (x0, y0), _ = m.points()
            m.roi.setSize([p.x() - x0, p.y() - y0], update=True, finish=False)
        self.refresh(m)

    def continue_at(self, m: Measurement, p: QPointF) -> None:
        """The next stroke of a pending angle / Cobb angle starts at image point ``p``."""
        if m.kind == "cobb":
            for i in (2, 3):
                m.roi.movePoint(self._handle(m, i), p, coords="parent", finish=False)
            m.roi.set_placed(4)
            m.active = 3
        elif m.kind == "angle":
            m.roi.movePoint(self._handle(m, 2), p, coords="parent", finish=False)
            m.active = 2
        self.refresh(m)

    def finish(self, m: Measurement) -> bool | None:
        """End of a stroke. True: the measurement is complete (and in the history); False: a click
        without a drag, dropped; None: an angle or Cobb angle waiting for its next stroke."""
        pts = m.points()
        if m.kind in SEGMENTS:
            a, b = pts[m.active - 1], pts[m.active]
            short = abs(b[0] - a[0]) < 0.5 and abs(b[1] - a[1]) < 0.5
            if m.active == 1:  # the first line
                if short:
                    self.remove(m)
                    return False
                if m.kind == "angle":  # the second arm starts at the vertex and follows the pointer
                    m.roi.movePoint(self._handle(m, 2), QPointF(*pts[1]), coords="parent", finish=False)
                    m.roi.set_placed(3)
                    m.active = 2
                else:
                    m.active = 2  # a Cobb angle's second line starts where the next drag starts
                self.refresh(m)
                return None
            if short:
                return None  # the second stroke has no length yet: keep waiting
            m.pending = False
            self.refresh(m)
            self._record(Change("add", [(self.items.index(m), m)]))
            return True
        (x0, y0), (x1, y1) = pts
        if abs(x1 - x0) < 0.5 and abs(y1 - y0) < 0.5:
            self.remove(m)
            return False
        if m.kind != "length":
            # normalise a rectangle drawn towards the top-left to positive size
            bx0, by0 = min(x0, x1), min(y0, y1)
            m.roi.setPos([bx0, by0], update=False, finish=False)
            m.roi.setSize([abs(x1 - x0), abs(y1 - y0)], finish=True)
        self.refresh(m)
        self._record(Change("add", [(self.items.index(m), m)]))
        return True

    def place(self, kind: str, frame: int, points, uid: str | None = None) -> Measurement | None:
        """Put a finished measurement back (a saved one when the study is opened again), outside the
        history: Undo does not take restored measurements away. None when it has no size."""
        pts = [QPointF(float(x), float(y)) for x, y in points]
        m = self.begin(kind, frame, pts[0], uid)
        if kind in SEGMENTS:
            for i, p in enumerate(pts[1:], start=1):
                m.roi.movePoint(self._handle(m, i), p, coords="parent", finish=False)
            m.roi.set_placed(len(pts))
            m.active = len(pts) - 1
            m.pending = False
        elif kind == "length":
            m.roi.movePoint(self._handle(m, 1), pts[1], coords="parent", finish=False)
        else:
            x0, y0, x1, y1 = pts[0].x(), pts[0].y(), pts[1].x(), pts[1].y()
            m.roi.setPos([min(x0, x1), min(y0, y1)], update=False, finish=False)
            m.roi.setSize([max(abs(x1 - x0), 0.01), max(abs(y1 - y0), 0.01)], finish=False)
        m.set_visible(m.frame == self._frame)
        self.refresh(m)
        return m

    def refresh(self, m: Measurement) -> None:
        """Recompute the numbers beside ``m`` from the frame's values."""
        values, spacing, unit = self._values(m.frame)
        pts = m.points()
        if m.kind == "cobb" and m.roi.placed < 4:
            pts = (pts[0], pts[1], pts[0], pts[0])  # one line so far: no angle yet
        ev = measure.evaluate(m.kind, pts, spacing, values if m.kind in ("rect", "ellipse") else None, unit)
        m.evaluation = ev
        m.text = ev.text
        if m.kind == "length":
            anchor = pts[1]
        elif m.kind == "angle":
            anchor = pts[1]  # the vertex
        elif m.kind == "cobb":
            anchor = pts[3] if m.roi.placed >= 4 else pts[1]
        else:
            (x0, y0), (x1, y1) = pts
            anchor = (max(x0, x1), max(y0, y1))
        m.label.setText(m.text)
        m.label.setPos(*anchor)
        self.keep_label_inside(m)

    def show_frame(self, frame: int) -> None:
        self._frame = frame
        for m in self.items:
            m.set_visible(m.frame == frame)
        self.keep_labels_inside()

    # -- labels inside the view -----------------------------------------------------------------

    def _visible_scene_rect(self) -> QRectF | None:
        scene = self._parent.scene()
        views = scene.views() if scene is not None else []
        if not views:
            return None
        view = views[0]
        return view.mapToScene(view.viewport().rect()).boundingRect()

    def keep_labels_inside(self) -> None:
        """Move the labels on screen back inside the view (after a zoom, pan, resize or rotation)."""
        rect = self._visible_scene_rect()
        for m in self.items:
            if m.frame == self._frame:
                self.keep_label_inside(m, rect)

    def keep_label_inside(self, m: Measurement, rect: QRectF | None = None) -> None:
        """Place ``m``'s label beside its anchor point, shifted so that all of it stays in the view.

        The label is drawn at screen size: its anchor (0..1 of its own box, ``(0, 0)`` = its top
        left at the point) moves by the overflow, so a label at the right edge turns to the left
        of its point, one at the bottom goes above it.
        """
        rect = rect if rect is not None else self._visible_scene_rect()
        label = m.label
        if rect is None or label.scene() is None or not rect.isValid():
            return
        label.setAnchor((0, 0))
        label.updateTransform(force=True)
        box = label.sceneBoundingRect()
        w, h = box.width(), box.height()
        if w <= 0 or h <= 0:
            return
        inner = rect.adjusted(LABEL_MARGIN, LABEL_MARGIN, -LABEL_MARGIN, -LABEL_MARGIN)
        dx = dy = 0.0
        if box.right() > inner.right():
            dx = box.right() - inner.right()
        if box.left() - dx < inner.left():
            dx = box.left() - inner.left()
        if box.bottom() > inner.bottom():
            dy = box.bottom() - inner.bottom()
        if box.top() - dy < inner.top():
            dy = box.top() - inner.top()
        if dx or dy:
            label.setAnchor((dx / w, dy / h))
            label.updateTransform(force=True)

    # -- removing, history ----------------------------------------------------------------------

    def _detach(self, m: Measurement) -> None:
        scene = m.roi.scene()
        for item in (m.roi, m.label):
            item.setParentItem(None)
            if scene is not None and item.scene() is scene:
                scene.removeItem(item)
        if m in self.items:
            self.items.remove(m)

    def _attach(self, index: int, m: Measurement) -> None:
        m.roi.setParentItem(self._parent)
        m.label.setParentItem(self._parent)
        self.items.insert(min(index, len(self.items)), m)
        m.set_visible(m.frame == self._frame)
        self.keep_label_inside(m)

    def _record(self, change: Change) -> None:
        self._undo.append(change)
        self._redo.clear()

    def remove(self, m: Measurement) -> None:
        """Take ``m`` away for good, outside the history (a click without a drag, a rectangle that
        became something else): no undo brings it back."""
        self._detach(m)
        for stack in (self._undo, self._redo):
            for change in stack:
                change.items = [(i, x) for i, x in change.items if x is not m]
            stack[:] = [c for c in stack if c.items]

    def remove_last(self, frame: int) -> bool:
        """Delete the newest measurement on ``frame`` (undoable)."""
        on_frame = [m for m in self.items if m.frame == frame and not m.pending]
        if not on_frame:
            return False
        m = on_frame[-1]
        change = Change("delete", [(self.items.index(m), m)])
        self._detach(m)
        self._record(change)
        return True

    def clear(self) -> int:
        """Delete every measurement (undoable as one step); how many there were."""
        for m in [m for m in self.items if m.pending]:
            self.remove(m)
        if not self.items:
            return 0
        change = Change("clear", list(enumerate(self.items)))
        for m in list(self.items):
            self._detach(m)
        self._record(change)
        return len(change.items)

    def reset(self) -> None:
        """Forget everything, history included (another series is shown)."""
        for m in list(self.items):
            self._detach(m)
        self._undo.clear()
        self._redo.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo_text(self) -> str:
        """What Undo would undo ("add length"), or "" when nothing."""
        return self._undo[-1].describe() if self._undo else ""

    def redo_text(self) -> str:
        return self._redo[-1].describe() if self._redo else ""

    def undo(self) -> Change | None:
        """Undo the newest add or delete; the change undone, or None when there is none."""
        if not self._undo:
            return None
        change = self._undo.pop()
        self._apply(change, forward=False)
        self._redo.append(change)
        return change

    def redo(self) -> Change | None:
        if not self._redo:
            return None
        change = self._redo.pop()
        self._apply(change, forward=True)
        self._undo.append(change)
        return change

    def _apply(self, change: Change, forward: bool) -> None:
        adds = (change.what == "add") == forward
        if adds:
            for index, m in change.items:  # ascending places: each lands where it was
                self._attach(index, m)
        else:
            for _, m in change.items:
                self._detach(m)

    def on_frame(self, frame: int) -> list[Measurement]:
        return [m for m in self.items if m.frame == frame]

    def finished(self) -> list[Measurement]:
        """Every measurement that is complete (not one being drawn)."""
        return [m for m in self.items if not m.pending]
