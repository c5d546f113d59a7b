"""One image viewport: a pyqtgraph ImageItem showing a frame of a Volume with
window/level, zoom/pan/fit, rotate/flip, cine, measurements, AI boxes and the
corner overlays a reader expects.

All decisions (how far a drag moves the window, which letters sit at the
edges, what the corners say, the numbers of a measurement) are made by
app.viewer.viewport / app.viewer.measure / app.dicom.display; this widget adapts them to
mouse and keyboard.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QPoint, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QImage, QKeyEvent, QKeySequence, QPainter, QTransform
from PySide6.QtWidgets import QHBoxLayout, QMessageBox, QScrollBar, QWidget

from app.dicom.display import render
from app.dicom.model import Volume, Window
from app.viewer import measure
from app.viewer.viewport import (
    KEYED_PRESETS,
    CornerLine,
    DisplayTransform,
    StudyInfo,
    cine_interval_ms,
    cine_next,
    clamp_zoom,
    corner_lines,
    default_window,
    drag_window,
    pixel_aspect,
    pixel_readout,
    step_slice,
)
from ui.shortcuts import key_map
from ui.viewer.corner_overlay import ACTIVE_COLOR, IDLE_COLOR, CornerOverlay
from ui.viewer.measurements import MeasurementLayer
from ui.viewer.overlays import BoxOverlayLayer

log = logging.getLogger(__name__)

pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)

SERIES_MIME = "application/x-xmedgpt-series"
TOOLS = ("pan", "length", "rect", "ellipse", "angle", "cobb")
FRAME = 2  # px of frame around the image, coloured when the viewport is active
CINE_FPS_STEPS = (1, 2, 4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60)
#: While slices change faster than this the image is drawn nearest-neighbour; this long after the
#: last change it is redrawn with bilinear smoothing (as RadiAnt does while scrolling).
SMOOTH_AFTER_MS = 150


class _FrameImage(pg.ImageItem):
    """The frame on screen: ``image`` stays the uint8 frame (row-major) the viewport rendered.

    Grey uint8 frames are expanded into an RGB32 buffer reused from frame to frame (Qt scales
    RGB32 several times faster than Grayscale8, which it converts span by span), and
    ``smooth`` picks bilinear or nearest-neighbour scaling for the next paint.
    """

    def __init__(self) -> None:
        super().__init__(axisOrder="row-major")
        self.smooth = True
        self._rgb32: np.ndarray | None = None

    def render(self) -> None:
        img = self.image
        if (
            img is None or img.dtype != np.uint8 or img.ndim != 2 or img.size == 0
            or self.lut is not None or self.levels is not None or self.autoDownsample
        ):
            self._rgb32 = None
            super().render()
            return
        h, w = img.shape
        if self._rgb32 is None or self._rgb32.shape != (h, w):
            self._rgb32 = np.empty((h, w), dtype=np.uint32)
        buf = self._rgb32
        np.multiply(img, np.uint32(0x010101), out=buf, dtype=np.uint32)  # grey into R, G and B
        np.bitwise_or(buf, np.uint32(0xFF000000), out=buf)
        # A new QImage per frame over the same buffer: a fresh cacheKey, so no paint engine can
        # reuse a texture of the previous frame.
        qimage = QImage(buf, w, h, w * 4, QImage.Format.Format_RGB32)
        qimage._frame_buffer = buf  # the QImage does not own its pixels: keep them alive with it
        self.qimage = qimage
        self._renderRequired = False
        self._unrenderable = False

    def paint(self, painter: QPainter, *args) -> None:
        if self.image is None:
            return
        if self._renderRequired:
            self.render()
            if self._unrenderable:
                return
        if self.paintMode is not None:
            painter.setCompositionMode(self.paintMode)
        hint = QPainter.RenderHint.SmoothPixmapTransform
        before = bool(painter.renderHints() & hint)
        painter.setRenderHint(hint, self.smooth)
        h, w = self.image.shape[:2]
        painter.drawImage(QRectF(0, 0, w, h), self.qimage)
        painter.setRenderHint(hint, before)
        if self.border is not None:
            painter.setPen(self.border)
            painter.drawRect(self.boundingRect())


class _ImageViewBox(pg.ViewBox):
    """ViewBox with viewer mouse semantics: wheel scrolls, right drag windows."""

    def __init__(self, viewport: Viewport) -> None:
        super().__init__(lockAspect=True, invertY=True, enableMenu=False, defaultPadding=0.0)
        self._vp = viewport
        self.setMouseMode(pg.ViewBox.PanMode)

    def wheelEvent(self, ev, axis=None):  # noqa: N802 (pyqtgraph API)
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(ev, axis)
            self._vp.keep_zoom_in_limits()
            self._vp.zoom_changed.emit()
            return
        ev.accept()
        self._vp.scroll_wheel(ev.delta())

    def mouseClickEvent(self, ev):  # noqa: N802
        ev.accept()
        if ev.button() == Qt.MouseButton.LeftButton and self._vp.tool != "pan":
            self._vp.measure_click(ev)

    def mouseDragEvent(self, ev, axis=None):  # noqa: N802
        button = ev.button()
        if button == Qt.MouseButton.RightButton:
            ev.accept()
            self._vp.window_drag(ev)
        elif button == Qt.MouseButton.LeftButton and self._vp.tool != "pan":
            ev.accept()
            self._vp.measure_drag(ev)
        elif button in (Qt.MouseButton.LeftButton, Qt.MouseButton.MiddleButton):
            super().mouseDragEvent(ev, axis)
            self._vp.panned.emit()
        else:
            ev.ignore()


def ask_yes_no(parent: QWidget, title: str, question: str, yes: str) -> bool:
    """A modal question with ``yes`` and Cancel (the default); True when the reader chose ``yes``.

    The box is named ``confirm`` so a test can find it (``QApplication.activeModalWidget()``) and
    press a button; or a test replaces :attr:`Viewport.confirm` altogether.
    """
    box = QMessageBox(QMessageBox.Icon.Question, title, question, QMessageBox.StandardButton.Cancel, parent)
    box.setObjectName("confirm")
    go = box.addButton(yes, QMessageBox.ButtonRole.DestructiveRole)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is go


class Viewport(QWidget):
    """Shows one series; emits what changed so the main window can follow."""

    #: Asks before a destructive step: ``confirm(parent, title, question, yes_button_text) -> bool``.
    confirm = staticmethod(ask_yes_no)

    slice_changed = Signal(int)
    window_changed = Signal(object)  # Window
    activated = Signal(object)  # self, on click or focus
    series_step_requested = Signal(int)  # -1 / +1: Page Up / Page Down
    series_dropped = Signal(str)  # series UID dragged from the study browser
    measurement_added = Signal(str)  # the text beside it
    tool_changed = Signal(str)
    message = Signal(str)  # short status-bar text
    cursor_text = Signal(str)  # pixel, position and value under the pointer ("" when there is none)
    measurements_changed = Signal()  # added, deleted, undone, redone, moved: what Undo / Redo would do changed
    double_clicked = Signal(object)  # self: the grid maximises / restores it
    shown = Signal()  # a whole series is on screen (set_volume complete, or its load finished)
    pointer_moved = Signal(object)  # (x, y) image point under the pointer (pixel c covers [c, c+1)), or None
    view_changed = Signal()  # zoom, pan, fit, rotation or resize
    zoom_changed = Signal()  # the reader zoomed (Ctrl+wheel, zoom keys): linked viewports follow
    panned = Signal()  # the reader dragged the image (pan tool, middle button): linked viewports follow
    fitted = Signal()  # the reader fitted the image (fit, reset, rotate / flip): linked viewports follow
    key_image_requested = Signal()  # K: mark / unmark the image on screen as a key image (the grid's keeper does it)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAcceptDrops(True)
        self.setMinimumSize(160, 160)
        layout = QHBoxLayout(self)
        layout.setSpacing(0)
        layout.setContentsMargins(FRAME, FRAME, FRAME, FRAME)  # room for the active frame
        self.view = pg.GraphicsView(background="k")
        # bilinear when zoomed, as RadiAnt and Weasis show by default (no blocky pixels)
        self.view.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        self.view.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.view.setAcceptDrops(False)
        self.view.viewport().setAcceptDrops(False)
        self.view.viewport().installEventFilter(self)
        self.view.installEventFilter(self)  # its geometry: the corner text covers the view, not the slice bar
        layout.addWidget(self.view)
        # slice position bar (drag it to move through the series, as in OHIF/Weasis)
        self.scrollbar = QScrollBar(Qt.Orientation.Vertical)
        self.scrollbar.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.scrollbar.setFixedWidth(12)
        self.scrollbar.valueChanged.connect(self.set_slice)
        self.scrollbar.hide()
        layout.addWidget(self.scrollbar)
        self.vb = _ImageViewBox(self)
        self.view.setCentralItem(self.vb)
        self.image = _FrameImage()
        self.vb.addItem(self.image)
        self._smooth_timer = QTimer(self)
        self._smooth_timer.setSingleShot(True)
        self._smooth_timer.setInterval(SMOOTH_AFTER_MS)
        self._smooth_timer.timeout.connect(self._settle)
        self.corner = CornerOverlay(self)
        self.overlays = BoxOverlayLayer(self.image, self)
        self.measurements = MeasurementLayer(self.image, self._frame_values)
        self.measurements.on_edited = lambda _m: self.measurements_changed.emit()

        self._volume: Volume | None = None
        self._study: StudyInfo | None = None
        self._k = 0
        self._window = Window(400, 40)
        self._inverted = False
        self._transform = DisplayTransform()
        self._arrived: np.ndarray | None = None
        self._wl_start: Window | None = None
        self._drawing = None
        self._wheel_rest = 0
        self._cursor: QPointF | None = None  # last pointer position over the view (view coordinates)
        self._cursor_shown = ""
        self.tool = "pan"
        self.fps = 10
        self.key_frames: set[int] = set()  # slices the reader marked as key images (ui.viewer.key_images)
        self._cine = QTimer(self)
        self._cine.timeout.connect(self._cine_tick)
        self._keys = key_map("viewport")
        self.vb.sigRangeChanged.connect(lambda *_: self._view_moved())
        self.view.scene().sigMouseMoved.connect(self._mouse_moved)
        self.corner.set_message("Double-click or drag a series here")

    # -- state -------------------------------------------------------------------------

    @property
    def volume(self) -> Volume | None:
        return self._volume

    @property
    def slice_index(self) -> int:
        return self._k

    @property
    def window(self) -> Window:
        return self._window

    @property
    def inverted(self) -> bool:
        return self._inverted

    @property
    def transform(self) -> DisplayTransform:
        return self._transform

    @property
    def is_playing(self) -> bool:
        return self._cine.isActive()

    @property
    def zoom(self) -> float:
        """Screen pixels per image pixel (geometric mean over both axes)."""
        sx, sy = pixel_aspect(self._volume.geometry if self._volume else None)
        px, py = self.vb.viewPixelSize()
        if px <= 0 or py <= 0 or not (math.isfinite(px) and math.isfinite(py)):
            return 1.0
        return math.sqrt(sx * sy / (px * py))

    def markers(self) -> dict[str, str]:
        return dict(self.corner.markers)

    def corner_text(self) -> dict[str, list[str]]:
        """Every corner line in full (what fits on screen: ``self.corner.shown_lines()``)."""
        return {k: [line.text for line in v] for k, v in self.corner.corners.items()}

    def cursor_readout(self) -> str:
        """What the status bar says about the pixel under the pointer now ("" when none)."""
        return self._cursor_shown

    # -- volume and slices ----------------------------------------------------------------

    def set_volume(self, volume: Volume | None, study: StudyInfo | None = None, complete: bool = True) -> None:
        """Show ``volume`` from its first frame with the header window.

        ``complete=False`` during a progressive load: call :meth:`frames_loaded`
        as frames land (frames not yet there show black, "not loaded yet").
        """
        self.stop_cine()
        self._settle()
        self.measurements.reset()
        self.measurements_changed.emit()
        self.overlays.clear()
        self.key_frames = set()
        self._volume = volume
        self._study = study
        self._transform = DisplayTransform()
        self._inverted = False
        self._k = 0
        self._sync_scrollbar()
        if volume is None:
            self.image.clear()
            self.corner.set_content({}, {})
            self.corner.set_message("Double-click or drag a series here")
            self._refresh_cursor()
            return
        n = len(volume)
        self._arrived = np.ones(n, dtype=bool) if complete else np.zeros(n, dtype=bool)
        if complete and volume.loaded == 0:
            volume.loaded = n
        self._window = default_window(volume)
        self.corner.set_message("")
        self._apply_transform()
        self._render()
        self._fit()  # a series arriving is no reader's fit: it joins the linked viewports once shown
        self._after_slice_change()
        self.window_changed.emit(self._window)
        if complete:
            self.shown.emit()

    def frames_loaded(self, count: int) -> None:
        """Frames ``0..count-1`` have landed; redraw if the one on screen is among them."""
        if self._volume is None or self._arrived is None:
            return
        was = bool(self._arrived[self._k])
        self._arrived[: max(0, count)] = True
        if not was and self._arrived[self._k]:
            self._render()
            self._refresh_cursor()  # "not loaded" under the pointer becomes a value
        self._update_text()

    def load_finished(self) -> None:
        if self._arrived is not None:
            self._arrived[:] = True
            self._render()
            self._update_text()
            self._refresh_cursor()
            self.shown.emit()

    def set_slice(self, k: int) -> None:
        if self._volume is None:
            return
        k = step_slice(int(k), 0, len(self._volume))
        if k == self._k and self.image.image is not None:
            return
        self._k = k
        # Scrolling or cine: draw nearest-neighbour now, smooth once the slices stop changing.
        self.image.smooth = False
        self._smooth_timer.start()
        self._render()
        self._after_slice_change()

    @property
    def is_settled(self) -> bool:
        """True once the frame on screen is drawn with smoothing (no slice change pending)."""
        return self.image.smooth

    def settle(self) -> None:
        """Redraw the current frame smoothed now, as happens ``SMOOTH_AFTER_MS`` after the last
        slice change (tests and benchmarks; a no-op when already settled)."""
        self._settle()

    def _settle(self) -> None:
        """The slices stopped changing: redraw the same frame with bilinear smoothing."""
        self._smooth_timer.stop()
        if not self.image.smooth:
            self.image.smooth = True
            self.image.update()

    def step(self, delta: int) -> None:
        if self._volume is not None:
            self.set_slice(step_slice(self._k, delta, len(self._volume)))

    def scroll_wheel(self, angle_delta: int) -> None:
        """One slice per wheel notch (120 units); touchpad fractions accumulate."""
        self._wheel_rest += angle_delta
        notches = int(self._wheel_rest / 120)
        self._wheel_rest -= notches * 120
        if notches:
            self.step(-notches)

    def _sync_scrollbar(self) -> None:
        n = len(self._volume) if self._volume is not None else 0
        self.scrollbar.blockSignals(True)
        self.scrollbar.setRange(0, max(0, n - 1))
        self.scrollbar.setPageStep(max(1, n // 10))
        self.scrollbar.setValue(self._k)
        self.scrollbar.blockSignals(False)
        self.scrollbar.setVisible(n > 1)

    def _after_slice_change(self) -> None:
        self._cancel_pending()
        if self.scrollbar.value() != self._k:
            self.scrollbar.blockSignals(True)
            self.scrollbar.setValue(self._k)
            self.scrollbar.blockSignals(False)
        self.overlays.show_frame(self._k)
        self.measurements.show_frame(self._k)
        self._update_text()
        self._refresh_cursor()
        self.slice_changed.emit(self._k)

    def _render(self) -> None:
        v = self._volume
        if v is None:
            return
        img = render(v, self._k, self._window, self._inverted)
        if self._arrived is not None and not self._arrived[self._k]:
            img = np.zeros_like(img)
        # levels=None keeps uint8 as a Grayscale8/RGB888 QImage: no colour table, no
        # per-paint conversion (4× faster to draw than the Indexed8 that levels make)
        self.image.setImage(img, autoLevels=False, levels=None)

    # -- window / level ---------------------------------------------------------------------

    def set_window(self, window: Window) -> None:
        self._window = window
        self._render()
        self._update_text()
        self.window_changed.emit(window)

    def apply_preset(self, number: int) -> None:
        """Number keys: 1..5 CT presets, 0 the header window."""
        if self._volume is None:
            return
        if number == 0:
            self.set_window(default_window(self._volume))
        elif 1 <= number <= len(KEYED_PRESETS):
            self.set_window(KEYED_PRESETS[number - 1])

    def set_inverted(self, inverted: bool) -> None:
        self._inverted = inverted
        self._render()
        self._update_text()

    def window_drag(self, ev) -> None:
        if self._volume is None:
            return
        if ev.isStart() or self._wl_start is None:
            self._wl_start = self._window
        d = ev.screenPos() - ev.buttonDownScreenPos()
        self.set_window(drag_window(self._wl_start, d.x(), d.y()))
        if ev.isFinish():
            self._wl_start = None

    # -- zoom, pan, rotate, flip ---------------------------------------------------------------

    def fit(self) -> None:
        """Fit to window (F, reset, a rotation or flip); linked viewports take the same scale and centre."""
        if self._fit():
            self.fitted.emit()

    def _fit(self) -> bool:
        if self.image.image is None:
            return False
        self.vb.autoRange(items=[self.image], padding=0.0)
        return True

    def keep_zoom_in_limits(self) -> None:
        """Back within ZOOM_MIN..ZOOM_MAX after a zoom that did not go through :meth:`zoom_by` (Ctrl+wheel)."""
        z = self.zoom
        if z != clamp_zoom(z):
            s = z / clamp_zoom(z)
            self.vb.scaleBy((s, s))

    def zoom_by(self, factor: float) -> None:
        target = clamp_zoom(self.zoom * factor)
        s = self.zoom / target
        self.vb.scaleBy((s, s))
        self.zoom_changed.emit()

    def set_transform(self, transform: DisplayTransform) -> None:
        self._transform = transform
        self._apply_transform()
        self.fit()
        self._update_text()

    def _apply_transform(self) -> None:
        sx, sy = pixel_aspect(self._volume.geometry if self._volume else None)
        a, b, c, d = self._transform.m
        self.image.setTransform(QTransform(a * sx, c * sx, b * sy, d * sy, 0.0, 0.0))

    def reset(self) -> None:
        """R: header window, no invert, no rotation/flip, fit."""
        if self._volume is None:
            return
        self._inverted = False
        self._transform = DisplayTransform()
        self._apply_transform()
        self.set_window(default_window(self._volume))
        self.fit()

    # -- cine ----------------------------------------------------------------------------------

    def toggle_cine(self) -> None:
        if self._cine.isActive():
            self.stop_cine()
        elif self._volume is not None and len(self._volume) > 1:
            self._cine.start(cine_interval_ms(self.fps))
            self.message.emit(f"Cine {self.fps} fps")
        self._update_text()

    def stop_cine(self) -> None:
        if self._cine.isActive():
            self._cine.stop()
            self._update_text()

    def set_fps(self, fps: float) -> None:
        self.fps = int(min(max(fps, 1), 60))
        if self._cine.isActive():
            self._cine.setInterval(cine_interval_ms(self.fps))
        self.message.emit(f"Cine {self.fps} fps")
        self._update_text()

    def _change_fps(self, direction: int) -> None:
        steps = CINE_FPS_STEPS
        i = min(range(len(steps)), key=lambda j: abs(steps[j] - self.fps))
        self.set_fps(steps[min(max(i + direction, 0), len(steps) - 1)])

    def _cine_tick(self) -> None:
        if self._volume is None:
            self.stop_cine()
            return
        self.set_slice(cine_next(self._k, len(self._volume)))

    # -- measurements -----------------------------------------------------------------------------

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(tool)
        self._cancel_pending()
        self.tool = tool
        self.view.setCursor(Qt.CursorShape.OpenHandCursor if tool == "pan" else Qt.CursorShape.CrossCursor)
        self.tool_changed.emit(tool)

    def _measure_frame(self) -> int:
        """The frame new measurements belong to (the slice shown)."""
        return self._k

    def _pending_measurement(self):
        """The angle or Cobb angle being drawn (waiting for its next stroke), or None."""
        m = self._drawing
        return m if m is not None and m.pending and m in self.measurements.items else None

    def _cancel_pending(self) -> None:
        """An angle or Cobb angle left half-drawn (another slice, another tool, Esc) is dropped."""
        m, self._drawing = self._drawing, None
        if m is not None and m.pending:
            self.measurements.remove(m)

    def measure_drag(self, ev) -> None:
        if self._volume is None:
            return
        p = self.image.mapFromScene(ev.buttonDownScenePos())
        if ev.isStart():
            m = self._pending_measurement()
            if m is not None and m.kind == self.tool:
                self.measurements.continue_at(m, p)  # the next stroke of an angle / Cobb angle
            else:
                self._cancel_pending()
                self._drawing = self.measurements.begin(self.tool, self._measure_frame(), p)
        if self._drawing is None:
            return
        self.measurements.drag_to(self._drawing, self.image.mapFromScene(ev.scenePos()))
        if ev.isFinish():
            self._stroke_done()

    def measure_click(self, ev) -> None:
        """A left click with a measuring tool: fixes the end of an angle's second arm."""
        m = self._pending_measurement()
        if self._volume is None or m is None or m.kind != "angle" or m.active != 2:
            return
        self.measurements.drag_to(m, self.image.mapFromScene(ev.scenePos()))
        self._stroke_done()

    def _stroke_done(self) -> None:
        m = self._drawing
        done = self.measurements.finish(m)
        if done is None:
            if m.kind == "angle":
                self.message.emit("Angle: move to the end of the second arm and click")
            else:
                self.message.emit("Cobb angle: now draw the second line")
            return
        self._drawing = None
        if done:
            self.measurement_added.emit(m.text.replace("\n", "  "))
            self.measurements_changed.emit()  # after: a listener may have taken it (a report finding)

    def _hover_pending(self, scene_pos) -> None:
        """The second arm of an angle follows the pointer until a click fixes it."""
        m = self._pending_measurement()
        if m is not None and m.kind == "angle" and m.active == 2:
            self.measurements.drag_to(m, self.image.mapFromScene(scene_pos))

    def add_measurement(self, kind: str, *points: tuple[float, float]):
        """Place a measurement programmatically (image pixel points: two for a length or an ROI,
        three for an angle (end, vertex, end), four for a Cobb angle (two lines)); returns it."""
        self._cancel_pending()
        m = self.measurements.begin(kind, self._measure_frame(), QPointF(*points[0]))
        if kind in ("angle", "cobb"):
            self.measurements.drag_to(m, QPointF(*points[1]))
            self.measurements.finish(m)
            if m.pending and m in self.measurements.items:
                if kind == "cobb":
                    self.measurements.continue_at(m, QPointF(*points[2]))
                self.measurements.drag_to(m, QPointF(*points[-1]))
                self.measurements.finish(m)
            if m.pending:
                self.measurements.remove(m)
            elif m in self.measurements.items:
                self.measurements_changed.emit()
            return m
        self.measurements.drag_to(m, QPointF(*points[1]))
        if self.measurements.finish(m):
            self.measurements_changed.emit()
        return m

    def delete_measurement(self) -> bool:
        """Delete / Backspace: the newest measurement on this slice (Ctrl+Z brings it back)."""
        done = self.measurements.remove_last(self._measure_frame())
        if done:
            self.measurements_changed.emit()
            self.message.emit("Measurement deleted (Ctrl+Z brings it back)")
        return done

    def clear_measurements(self) -> bool:
        """Shift+Del: every measurement of the series, after the reader confirms; undoable."""
        n = len(self.measurements.items)
        if n == 0:
            self.message.emit("There are no measurements to delete")
            return False
        frames = len({m.frame for m in self.measurements.items})
        what = f"all {n} measurements" if n > 1 else "the measurement"
        where = f" on {frames} images" if frames > 1 else ""
        if not self.confirm(self, "Delete all measurements",
                            f"Delete {what}{where} of this series?\n\nEdit > Undo (Ctrl+Z) brings them back.",
                            "Delete all"):
            return False
        self.measurements.clear()
        self.measurements_changed.emit()
        self.message.emit(f"Deleted {what} (Ctrl+Z brings them back)")
        return True

    def undo_measurement(self) -> bool:
        return self._history_step(undo=True)

    def redo_measurement(self) -> bool:
        return self._history_step(undo=False)

    def _history_step(self, undo: bool) -> bool:
        layer = self.measurements
        change = layer.undo() if undo else layer.redo()
        verb = "Undo" if undo else "Redo"
        if change is None:
            self.message.emit(f"Nothing to {verb.lower()}")
            return False
        frames = change.frames()
        if len(frames) == 1 and self._measure_frame() not in frames:
            self.set_slice(frames.pop())  # show what changed
        self.measurements_changed.emit()
        self.message.emit(f"{verb}: {change.describe()}")
        return True

    def _frame_values(self, frame: int):
        v = self._volume
        if v is None:
            return np.zeros((1, 1), np.float32), None, ""
        values = v.values(frame)
        if v.is_color:
            values = values.astype(np.float32).mean(axis=-1)
        return values, measure.spacing_of(v.geometry), measure.value_unit_for(v.series.modality)

    # -- overlay text -------------------------------------------------------------------------------

    def set_key_frames(self, frames) -> None:
        """The slices of the series shown that the reader marked as key images (a star in the corner text)."""
        frames = set(frames)
        if frames != self.key_frames:
            self.key_frames = frames
            self._update_text()

    def set_study_info(self, study: StudyInfo | None) -> None:
        self._study = study
        self._update_text()

    def _update_text(self) -> None:
        v = self._volume
        if v is None:
            return
        corners = corner_lines(v, self._k, self._window, self.zoom, self._study, self._inverted)
        if self._arrived is not None and not self._arrived[self._k]:
            corners["bottom_left"].append(CornerLine("(not loaded yet)", 0))
        if self._cine.isActive():
            corners["bottom_left"].append(CornerLine(f"Cine {self.fps} fps", 1))
        if self._k in self.key_frames:
            corners["bottom_left"].append(CornerLine("★ Key image", 0, shorter=("★ Key",)))
        self.corner.set_content(corners, self._transform.markers(v.geometry))

    def _view_moved(self) -> None:
        """Zoom, pan, fit, rotation or a resize: texts, labels and the pointer's pixel follow."""
        self._update_text()
        self.measurements.keep_labels_inside()
        self._refresh_cursor()
        self.view_changed.emit()

    def set_active(self, active: bool) -> None:
        self.corner.set_active(active)
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        """The frame around the whole viewport: orange when active (keys go here).

        Only the border strips: the view and the slice bar cover the inside, and filling it
        too would cost a full-size fill under every scrolled frame.
        """
        p = QPainter(self)
        color = ACTIVE_COLOR if self.corner.active else IDLE_COLOR
        r = self.rect()
        w, h = r.width(), r.height()
        for strip in ((0, 0, w, FRAME), (0, h - FRAME, w, FRAME), (0, 0, FRAME, h), (w - FRAME, 0, FRAME, h)):
            p.fillRect(*strip, color)
        p.end()

    def _mouse_moved(self, scene_pos) -> None:
        self._cursor = QPointF(self.view.mapFromScene(scene_pos))
        self._hover_pending(scene_pos)
        self._refresh_cursor()

    def _refresh_cursor(self) -> None:
        """The readout of the pixel under the pointer, for the slice and series shown now.

        Recomputed whenever what is under a still pointer changes (slice, series, zoom, frames
        arriving); empty when the pointer is outside the view or the image, or no series is shown.
        """
        text = ""
        point = None
        if self._cursor is not None and self._volume is not None:
            p = self.image.mapFromScene(self.view.mapToScene(self._cursor.toPoint()))
            text = pixel_readout(self._volume, self._k, p.x(), p.y())
            point = (p.x(), p.y()) if text else None
        self.pointer_moved.emit(point)
        if text != self._cursor_shown:
            self._cursor_shown = text
            self.cursor_text.emit(text)

    def pointer_at(self, pos: QPointF | QPoint | None) -> None:
        """Where the pointer is over the view (view coordinates), or None when it left (tests, tools)."""
        self._cursor = None if pos is None else QPointF(pos)
        self._refresh_cursor()

    # -- Qt events -------------------------------------------------------------------------------------

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._sync_corner()

    def _sync_corner(self) -> None:
        """The corner text covers the image view exactly: not the slice bar, whether shown or not."""
        if self.corner.geometry() != self.view.geometry():
            self.corner.setGeometry(self.view.geometry())
        self.corner.raise_()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if obj is self.view:
            if event.type() in (QEvent.Type.Resize, QEvent.Type.Move):
                self._sync_corner()
            return False
        if event.type() == QEvent.Type.Leave:
            self.pointer_at(None)
        elif event.type() == QEvent.Type.MouseButtonPress:
            self.setFocus(Qt.FocusReason.MouseFocusReason)
            self.activated.emit(self)
        elif event.type() == QEvent.Type.MouseButtonDblClick:
            self.double_clicked.emit(self)
        return False

    def focusInEvent(self, event) -> None:  # noqa: N802
        super().focusInEvent(event)
        self.activated.emit(self)

    def focusNextPrevChild(self, next: bool) -> bool:  # noqa: N802, A002
        return False  # Tab goes to the main window's "next viewport" shortcut

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        action = self._action_for(event)
        if action is None or not self.trigger(action):
            event.ignore()
            return
        event.accept()

    def _action_for(self, event: QKeyEvent) -> str | None:
        combo = QKeySequence(event.keyCombination()).toString(QKeySequence.SequenceFormat.PortableText)
        if combo in self._keys:
            return self._keys[combo]
        mods = event.modifiers() & ~(Qt.KeyboardModifier.KeypadModifier | Qt.KeyboardModifier.ShiftModifier)
        text = event.text()
        if not mods and text and text in self._keys:  # "+" typed with Shift, keypad digits
            return self._keys[text]
        return None

    def trigger(self, action: str) -> bool:
        """Run a viewport action by name (the names of ui.shortcuts.SHORTCUTS)."""
        actions = {
            "previous_slice": lambda: self.step(-1),
            "next_slice": lambda: self.step(1),
            "first_slice": lambda: self.set_slice(0),
            "last_slice": lambda: self.set_slice(len(self._volume) - 1 if self._volume else 0),
            "previous_series": lambda: self.series_step_requested.emit(-1),
            "next_series": lambda: self.series_step_requested.emit(1),
            "toggle_cine": self.toggle_cine,
            "cine_faster": lambda: self._change_fps(1),
            "cine_slower": lambda: self._change_fps(-1),
            "toggle_invert": lambda: self.set_inverted(not self._inverted),
            "zoom_in": lambda: self.zoom_by(1.25),
            "zoom_out": lambda: self.zoom_by(0.8),
            "fit": self.fit,
            "rotate_cw": lambda: self.set_transform(self._transform.rotated_cw()),
            "rotate_ccw": lambda: self.set_transform(self._transform.rotated_ccw()),
            "flip_h": lambda: self.set_transform(self._transform.flipped_h()),
            "flip_v": lambda: self.set_transform(self._transform.flipped_v()),
            "reset": self.reset,
            "tool_pan": lambda: self.set_tool("pan"),
            "tool_length": lambda: self.set_tool("length"),
            "tool_rect": lambda: self.set_tool("rect"),
            "tool_ellipse": lambda: self.set_tool("ellipse"),
            "tool_angle": lambda: self.set_tool("angle"),
            "tool_cobb": lambda: self.set_tool("cobb"),
            "delete_measurement": self.delete_measurement,
            "clear_measurements": self.clear_measurements,
            "undo_measurement": self.undo_measurement,
            "redo_measurement": self.redo_measurement,
            "toggle_key_image": self.key_image_requested.emit,
        }
        if action.startswith("preset_"):
            self.apply_preset(int(action.split("_")[1]))
            return True
        fn = actions.get(action)
        if fn is None:
            return False
        fn()
        return True

    # -- drag and drop of series from the browser --------------------------------------------------

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasFormat(SERIES_MIME):
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasFormat(SERIES_MIME):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasFormat(SERIES_MIME):
            uid = bytes(event.mimeData().data(SERIES_MIME)).decode()
            event.acceptProposedAction()
            self.activated.emit(self)
            self.series_dropped.emit(uid)


def time_set_slice(viewport: Viewport, k: int) -> float:
    """Seconds to show slice ``k`` including the repaint (used by benchmarks)."""
    t0 = time.perf_counter()
    viewport.set_slice(k)
    viewport.view.viewport().repaint()
    return time.perf_counter() - t0
