"""Labelled, editable boxes on a viewport, in image pixel coordinates.

This is the layer the AI findings use: ``add_box(frame, Box(...), "nodule 8 mm",
source="ai")`` draws a rectangle on that frame only; when the reader moves or
resizes it, :attr:`BoxOverlayLayer.box_edited` carries the new box in pixel
coordinates (x = column, y = row, x1/y1 exclusive edges, as
:class:`inference.types.Box`). Colours follow the source of a box.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal

from inference.types import Box

log = logging.getLogger(__name__)

#: Box colours say who drew a box and whether it is in the report -- never how reliable it is: green, amber and red
#: are the reliability light's (a green box labelled "red" was read as "checked and right"), so no colour here is
#: near them; the tier is in the label.
SOURCE_COLORS: dict[str, tuple[int, int, int]] = {
    "ai": (255, 110, 220),  # magenta: the AI's proposal, awaiting the reader
    "accepted": (255, 255, 255),  # white: taken into the report by the reader
    "rejected": (150, 150, 150),
    "user": (0, 190, 255),
    "truth": (140, 255, 255),  # evaluation views only
    "preread": (185, 140, 255),  # violet: a lesion of the series pre-read, not in the report
}
DEFAULT_COLOR = (255, 255, 255)
HIGHLIGHT_WIDTH = 4
NORMAL_WIDTH = 2


def label_scene_rect(parent, text: pg.TextItem, corner: QPointF) -> QRectF:
    """Where a box's label is on screen (scene coordinates: the view's pixels), its box's top-left corner at
    ``corner`` in ``parent``'s coordinates and the label lifted as its anchor says."""
    at = parent.mapToScene(corner)
    size = text.textItem.boundingRect()
    return QRectF(at.x(), at.y() - size.height() * text.anchor.y(), size.width(), size.height())


def stack_labels(parent, labels: list[tuple[pg.TextItem, QPointF]]) -> None:
    """Box labels top to bottom: each above its box's top-left corner (``parent``'s coordinates), or as many
    lines higher as it takes not to cover a label placed before it (at most 8)."""
    placed: list[QRectF] = []
    for text, corner in sorted(labels, key=lambda tc: (tc[1].y(), tc[1].x())):
        for lift in range(9):
            text.setAnchor((0, 1 + lift))
            rect = label_scene_rect(parent, text, corner)
            if not any(rect.intersects(r) for r in placed):
                break
        placed.append(rect)


@dataclass
class _Entry:
    frame: int
    label: str
    source: str
    roi: pg.ROI
    text: pg.TextItem


class BoxOverlayLayer(QObject):
    """Boxes per frame on one image; the viewport shows only the current frame's."""

    #: (box id, frame, new Box) after the reader moved or resized a box.
    box_edited = Signal(str, int, object)
    #: box id the reader clicked.
    box_clicked = Signal(str)
    #: a box was added, removed, moved, relabelled or recoloured (what other views of the boxes follow,
    #: e.g. the MPR's lesion extents); emitted once per change, so listeners should coalesce
    changed = Signal()

    def __init__(self, parent_item: pg.GraphicsObject, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._parent = parent_item
        self._entries: dict[str, _Entry] = {}
        self._ids = itertools.count(1)
        self._frame = 0
        self._highlighted: str | None = None
        self._watching_view = False

    # -- API ---------------------------------------------------------------------------

    def add_box(
        self,
        frame: int,
        box: Box,
        label: str = "",
        source: str = "ai",
        box_id: str | None = None,
        editable: bool = True,
    ) -> str:
        """Draw ``box`` on ``frame``; returns its id (``box_id`` if given)."""
        box_id = box_id or f"box{next(self._ids)}"
        if box_id in self._entries:
            self.remove(box_id)
        color = SOURCE_COLORS.get(source, DEFAULT_COLOR)
        x0, y0 = min(box.x0, box.x1), min(box.y0, box.y1)
        roi = pg.ROI(
            [x0, y0],
            [max(abs(box.width), 1.0), max(abs(box.height), 1.0)],
            pen=pg.mkPen(color, width=NORMAL_WIDTH),
            hoverPen=pg.mkPen(color, width=HIGHLIGHT_WIDTH),
            movable=editable,
            resizable=editable,
            rotatable=False,
        )
        if editable:
            for handle, centre in (([1, 1], [0, 0]), ([0, 0], [1, 1]), ([1, 0], [0, 1]), ([0, 1], [1, 0])):
                roi.addScaleHandle(handle, centre)
        roi.setParentItem(self._parent)
        roi.setZValue(20)
        text = pg.TextItem(label, color=color, anchor=(0, 1), fill=pg.mkBrush(0, 0, 0, 160))
        text.setParentItem(self._parent)
        text.setZValue(21)
        entry = _Entry(frame, label, source, roi, text)
        self._entries[box_id] = entry
        roi.sigRegionChanged.connect(lambda *_: self._place_label(entry))
        roi.sigRegionChangeFinished.connect(lambda *_: self._finished(box_id))
        roi.sigClicked.connect(lambda *_: self.box_clicked.emit(box_id))
        roi.setAcceptedMouseButtons(Qt.MouseButton.LeftButton)
        self._place_label(entry)  # and lays out this frame's labels
        self._show(entry)
        self.changed.emit()
        return box_id

    def remove(self, box_id: str) -> None:
        entry = self._entries.pop(box_id, None)
        if entry is None:
            return
        if self._highlighted == box_id:
            self._highlighted = None
        for item in (entry.roi, entry.text):
            scene = item.scene()
            item.setParentItem(None)
            if scene is not None:
                scene.removeItem(item)
        self.layout_labels()
        self.changed.emit()

    def clear(self, frame: int | None = None, source: str | None = None) -> None:
        """Remove all boxes, or those of one frame and/or one source."""
        for box_id, e in list(self._entries.items()):
            if (frame is None or e.frame == frame) and (source is None or e.source == source):
                self.remove(box_id)

    def box(self, box_id: str) -> Box:
        roi = self._entries[box_id].roi
        pos, size = roi.pos(), roi.size()
        return Box(float(pos.x()), float(pos.y()), float(pos.x() + size.x()), float(pos.y() + size.y()))

    def frame_of(self, box_id: str) -> int:
        return self._entries[box_id].frame

    def label_of(self, box_id: str) -> str:
        return self._entries[box_id].label

    def ids(self, frame: int | None = None) -> list[str]:
        return [i for i, e in self._entries.items() if frame is None or e.frame == frame]

    def visible_ids(self) -> list[str]:
        return [i for i, e in self._entries.items() if e.roi.isVisible()]

    def set_label(self, box_id: str, label: str) -> None:
        e = self._entries[box_id]
        e.label = label
        e.text.setText(label)
        self._show(e)
        self.layout_labels()
        self.changed.emit()

    def set_source(self, box_id: str, source: str) -> None:
        """Recolour a box, e.g. from "ai" to "accepted" once the reader accepts it."""
        e = self._entries[box_id]
        e.source = source
        self._style(box_id)
        self.changed.emit()

    def highlight(self, box_id: str | None) -> None:
        """Draw one box thicker (e.g. the finding selected in the report); None clears."""
        previous, self._highlighted = self._highlighted, box_id
        for i in (previous, box_id):
            if i in self._entries:
                self._style(i)

    @property
    def highlighted(self) -> str | None:
        return self._highlighted

    def is_highlighted(self, box_id: str) -> bool:
        return self._highlighted == box_id

    def color_of(self, box_id: str) -> tuple[int, int, int]:
        return SOURCE_COLORS.get(self._entries[box_id].source, DEFAULT_COLOR)

    # -- viewport side -------------------------------------------------------------------

    def show_frame(self, frame: int) -> None:
        self._frame = frame
        for e in self._entries.values():
            self._show(e)
        self.layout_labels()

    def _show(self, e: _Entry) -> None:
        visible = e.frame == self._frame
        e.roi.setVisible(visible)
        e.text.setVisible(visible and bool(e.label))

    def _style(self, box_id: str) -> None:
        e = self._entries[box_id]
        color = SOURCE_COLORS.get(e.source, DEFAULT_COLOR)
        width = HIGHLIGHT_WIDTH if box_id == self._highlighted else NORMAL_WIDTH
        e.roi.setPen(pg.mkPen(color, width=width))
        e.text.setColor(color)

    def _place_label(self, e: _Entry) -> None:
        pos = e.roi.pos()
        e.text.setPos(pos.x(), pos.y())
        self.layout_labels()

    def label_rect(self, box_id: str) -> QRectF:
        """Where the label of ``box_id`` is on screen (scene coordinates: the view's pixels)."""
        e = self._entries[box_id]
        return label_scene_rect(self._parent, e.text, e.roi.pos())

    def layout_labels(self) -> None:
        """Labels of this frame's boxes (:func:`stack_labels`). Labels keep their screen size at any zoom, so
        this runs again when the view is zoomed or panned."""
        self._watch_view()
        stack_labels(self._parent, [(e.text, e.roi.pos()) for e in self._entries.values()
                                    if e.frame == self._frame and e.label])

    def _watch_view(self) -> None:
        if self._watching_view:
            return
        view = self._parent.getViewBox() if hasattr(self._parent, "getViewBox") else None
        if view is not None:
            view.sigTransformChanged.connect(lambda *_: self.layout_labels())
            self._watching_view = True

    def _finished(self, box_id: str) -> None:
        if box_id in self._entries:
            box = self.box(box_id)
            log.debug("box %s edited: %s", box_id, box)
            self.box_edited.emit(box_id, self._entries[box_id].frame, box)
            self.changed.emit()
