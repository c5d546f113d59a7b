"""Measurement graphics: length lines and rectangle/ellipse ROIs drawn on a frame.

Items are children of the viewport's ImageItem, so their coordinates are image
pixels whatever the zoom, rotation or pixel aspect. The numbers come from
:mod:`app.viewer.measure`; this module only draws them and keeps them in step with
the handles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF

from app.viewer import measure

LENGTH_COLOR = (80, 220, 255)
ROI_COLOR = (120, 255, 120)

#: Supplies (values of the frame, spacing (row, col) or None, value unit) for stats.
ValuesFn = Callable[[int], tuple[np.ndarray, tuple[float, float] | None, str]]


class _AxisEllipseROI(pg.EllipseROI):
    """Axis-aligned ellipse with corner scale handles (no rotation: stats stay exact)."""

    def _addHandles(self) -> None:  # noqa: N802 (pyqtgraph API)
        self.addScaleHandle([1, 1], [0, 0])
        self.addScaleHandle([0, 0], [1, 1])
        self.addScaleHandle([1, 0], [0, 1])
        self.addScaleHandle([0, 1], [1, 0])


@dataclass
class Measurement:
    kind: str  # "length", "rect", "ellipse"
    frame: int
    roi: pg.ROI
    label: pg.TextItem
    text: str = ""

    def points(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The two defining image points: line ends, or opposite rectangle corners."""
        if self.kind == "length":
            a, b = (self.roi.mapToParent(h.pos()) for h in self.roi.getHandles())
            return (a.x(), a.y()), (b.x(), b.y())
        pos, size = self.roi.pos(), self.roi.size()
        return (pos.x(), pos.y()), (pos.x() + size.x(), pos.y() + size.y())

    def set_visible(self, visible: bool) -> None:
        self.roi.setVisible(visible)
        self.label.setVisible(visible)


class MeasurementLayer:
    """Creates, updates and removes measurements on one viewport's image."""

    def __init__(self, parent_item: pg.GraphicsObject, values: ValuesFn) -> None:
        self._parent = parent_item
        self._values = values
        self.items: list[Measurement] = []
        self._frame = 0

    def begin(self, kind: str, frame: int, p: QPointF) -> Measurement:
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
        else:
            raise ValueError(f"unknown measurement kind {kind!r}")
        roi.setParentItem(self._parent)
        color = LENGTH_COLOR if kind == "length" else ROI_COLOR
        label = pg.TextItem("", color=color, anchor=(0, 0), fill=pg.mkBrush(0, 0, 0, 150))
        label.setParentItem(self._parent)
        m = Measurement(kind, frame, roi, label)
        self.items.append(m)
        roi.sigRegionChanged.connect(lambda *_: self.refresh(m))
        return m

    def drag_to(self, m: Measurement, p: QPointF) -> None:
        if m.kind == "length":
            m.roi.movePoint(m.roi.getHandles()[1], p, coords="parent", finish=False)
        else:
            (x0, y0), _ = m.points()
            m.roi.setSize([p.x() - x0, p.y() - y0], update=True, finish=False)
        self.refresh(m)

    def finish(self, m: Measurement) -> bool:
        """Keep the measurement if it has a size; drop a click without a drag."""
        (x0, y0), (x1, y1) = m.points()
        if abs(x1 - x0) < 0.5 and abs(y1 - y0) < 0.5:
            self.remove(m)
            return False
        if m.kind != "length":
            # normalise a rectangle drawn towards the top-left to positive size
            bx0, by0 = min(x0, x1), min(y0, y1)
            m.roi.setPos([bx0, by0], update=False, finish=False)
            m.roi.setSize([abs(x1 - x0), abs(y1 - y0)], finish=True)
        self.refresh(m)
        return True

    def refresh(self, m: Measurement) -> None:
        """Recompute the numbers beside ``m`` from the frame's values."""
        values, spacing, unit = self._values(m.frame)
        (x0, y0), (x1, y1) = m.points()
        if m.kind == "length":
            m.text = str(measure.length((x0, y0), (x1, y1), spacing))
            anchor = (x1, y1)
        else:
            fn = measure.rect_stats if m.kind == "rect" else measure.ellipse_stats
            m.text = "\n".join(fn(values, x0, y0, x1, y1, spacing, unit).lines())
            anchor = (max(x0, x1), max(y0, y1))
        m.label.setText(m.text)
        m.label.setPos(*anchor)

    def show_frame(self, frame: int) -> None:
        self._frame = frame
        for m in self.items:
            m.set_visible(m.frame == frame)

    def remove(self, m: Measurement) -> None:
        scene = m.roi.scene()
        for item in (m.roi, m.label):
            item.setParentItem(None)
            if scene is not None:
                scene.removeItem(item)
        self.items.remove(m)

    def remove_last(self, frame: int) -> bool:
        on_frame = [m for m in self.items if m.frame == frame]
        if not on_frame:
            return False
        self.remove(on_frame[-1])
        return True

    def clear(self) -> None:
        for m in list(self.items):
            self.remove(m)

    def on_frame(self, frame: int) -> list[Measurement]:
        return [m for m in self.items if m.frame == frame]
