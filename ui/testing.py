"""Helpers for tests and benchmarks of the viewer: synthetic volumes with known
values, and mouse gestures sent the way a real mouse sends them."""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication, QWidget

from app.dicom.model import Geometry, Instance, Series, Volume, Window


def synthetic_volume(
    n: int = 20,
    rows: int = 256,
    cols: int = 256,
    spacing: tuple[float, float] = (0.5, 0.8),
    thickness: float = 2.0,
    modality: str = "CT",
    window: Window | None = Window(400, 40, "header"),
) -> Volume:
    """An axial CT-like stack with known values (HU = stored − 1024).

    Background −1000 HU; a block of +100 HU in rows [rows/4, rows/2), columns
    [cols/4, cols/2); slice k adds a 2-pixel bright (1000 HU) marker line at row
    k (so each slice looks different); a gradient ramp fills the bottom half so
    a screenshot has many grey levels.
    """
    frames = np.full((n, rows, cols), 24, dtype=np.int16)  # −1000 HU
    r0, r1, c0, c1 = rows // 4, rows // 2, cols // 4, cols // 2
    frames[:, r0:r1, c0:c1] = 1124  # +100 HU
    ramp = np.linspace(1024 - 200, 1024 + 200, cols, dtype=np.float32).astype(np.int16)
    frames[:, rows * 3 // 4 :, :] = ramp[None, None, :]
    for k in range(n):
        frames[k, k % rows, :] = 2024
    instances = [
        Instance(
            path=f"/synthetic/{k:04d}.dcm",
            sop_instance_uid=f"1.2.3.{k}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            rows=rows,
            columns=cols,
            image_position=(0.0, 0.0, k * thickness),
            image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            pixel_spacing=spacing,
            slice_thickness=thickness,
        )
        for k in range(n)
    ]
    series = Series(uid="1.2.3", number=3, description="Synthetic", modality=modality, instances=instances)
    geometry = Geometry(
        origins=np.array([[0.0, 0.0, k * thickness] for k in range(n)]),
        row_direction=np.array([1.0, 0.0, 0.0]),
        col_direction=np.array([0.0, 1.0, 0.0]),
        spacing=spacing,
    )
    return Volume(series, frames, np.ones(n), np.full(n, -1024.0), geometry, window, loaded=n)


MOVE_INTERVAL_S = 0.02


def _send(widget: QWidget, etype: QEvent.Type, pos: QPointF, button, buttons, modifiers=Qt.KeyboardModifier.NoModifier):
    global_pos = QPointF(widget.mapToGlobal(pos.toPoint()))
    ev = QMouseEvent(etype, pos, global_pos, button, buttons, modifiers)
    QApplication.sendEvent(widget, ev)


def mouse_drag(
    widget: QWidget,
    start: QPointF | QPoint,
    end: QPointF | QPoint,
    button: Qt.MouseButton = Qt.MouseButton.LeftButton,
    steps: int = 6,
    modifiers=Qt.KeyboardModifier.NoModifier,
) -> None:
    """Press at ``start``, move in steps, release at ``end`` (widget coordinates).

    Moves are spaced like a real mouse's: pyqtgraph drops move events that come
    faster than the screen refreshes.
    """
    start, end = QPointF(start), QPointF(end)
    _send(widget, QEvent.Type.MouseButtonPress, start, button, button, modifiers)
    for i in range(1, steps + 1):
        p = start + (end - start) * (i / steps)
        time.sleep(MOVE_INTERVAL_S)
        _send(widget, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, button, modifiers)
        QApplication.processEvents()
    _send(widget, QEvent.Type.MouseButtonRelease, end, button, Qt.MouseButton.NoButton, modifiers)
    QApplication.processEvents()


def wheel(widget: QWidget, pos: QPointF | QPoint, notches: int, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    """Turn the wheel ``notches`` clicks (positive = away from the user)."""
    pos = QPointF(pos)
    ev = QWheelEvent(
        pos,
        QPointF(widget.mapToGlobal(pos.toPoint())),
        QPoint(0, 0),
        QPoint(0, 120 * notches),
        Qt.MouseButton.NoButton,
        modifiers,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(widget, ev)
    QApplication.processEvents()


def settle_view(viewport, timeout_s: float = 5.0) -> None:
    """Wait until the image stops moving in the widget (a dock that appears, a slice jump or a fit can still
    resize or re-range the view for a few event-loop turns on a loaded machine): positions computed with
    :func:`image_to_widget` before that land elsewhere."""
    deadline = time.monotonic() + timeout_s
    last, same = None, 0
    while time.monotonic() < deadline and same < 3:
        QApplication.processEvents()
        here = image_to_widget(viewport, 0.0, 0.0), image_to_widget(viewport, 100.0, 100.0)
        same = same + 1 if here == last else 0
        last = here
        time.sleep(0.03)


def image_to_widget(viewport, x: float, y: float) -> QPointF:
    """Where image pixel point (x = column, y = row) appears in the viewport's view widget."""
    scene = viewport.image.mapToScene(QPointF(x, y))
    return QPointF(viewport.view.mapFromScene(scene))
