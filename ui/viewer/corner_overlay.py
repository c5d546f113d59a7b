"""Text painted over a viewport: the four corner blocks, orientation letters,
and the frame that marks the active viewport. Transparent to the mouse.

The overlay covers the image view only (never the slice bar beside it); which corner lines fit,
and in which form, is decided by :func:`app.viewer.viewport.fit_corner_lines`."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter
from PySide6.QtWidgets import QWidget

from app.viewer.viewport import CornerLine, fit_corner_lines

TEXT_COLOR = QColor(235, 235, 200)
MARKER_COLOR = QColor(255, 210, 90)
ACTIVE_COLOR = QColor(255, 170, 0)
IDLE_COLOR = QColor(40, 40, 40)
HALO_COLOR = QColor(0, 0, 0, 230)
HALO_OFFSETS = ((-1, 0), (1, 0), (0, -1), (0, 1), (1, 1))
MARGIN = 6


class CornerOverlay(QWidget):
    """Paints corner texts and orientation markers; the parent keeps it sized to the view.

    ``active`` is kept here for the viewport, which draws the active frame around itself.
    """

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.corners: dict[str, list[CornerLine]] = {}
        self.markers: dict[str, str] = {}
        self.message = ""  # centred, e.g. "Drop a series here"
        self.active = False
        self._font = QFont()
        self._font.setStyleHint(QFont.StyleHint.SansSerif)
        self._font.setPointSizeF(9.5)
        self._marker_font = QFont(self._font)
        self._marker_font.setPointSizeF(12.5)
        self._marker_font.setBold(True)
        self._fitted: tuple[tuple, dict[str, list[str]]] | None = None

    def set_content(self, corners: dict[str, list[CornerLine | str]], markers: dict[str, str]) -> None:
        self.corners = {
            k: [line if isinstance(line, CornerLine) else CornerLine(str(line)) for line in v] for k, v in corners.items()
        }
        self.markers = markers
        self.update()

    def set_active(self, active: bool) -> None:
        if active != self.active:
            self.active = active
            self.update()

    def set_message(self, message: str) -> None:
        self.message = message
        self.update()

    # -- layout ------------------------------------------------------------------------

    def shown_lines(self) -> dict[str, list[str]]:
        """The corner lines as painted at the present size (shortened, some dropped, some cut)."""
        fm = QFontMetrics(self._font)
        markers = QFontMetrics(self._marker_font)
        key = (
            tuple((k, tuple(v)) for k, v in self.corners.items()),
            self.width(), self.height(), self._font.pointSizeF(),
            max((markers.horizontalAdvance(self.markers.get(s, "")) for s in ("top", "bottom")), default=0),
        )
        if self._fitted is not None and self._fitted[0] == key:
            return self._fitted[1]
        marker_w = key[-1] + 2 * MARGIN if key[-1] else 0
        fitted = fit_corner_lines(
            self.corners,
            width=self.width() - 2 * MARGIN,
            height=self.height() - 2 * MARGIN,
            text_width=fm.horizontalAdvance,
            line_height=fm.height(),
            marker_width=marker_w,
            gap=2 * MARGIN,
            elide=lambda text, room: fm.elidedText(text, Qt.TextElideMode.ElideRight, int(room)),
        )
        self._fitted = (key, fitted)
        return fitted

    # -- painting ----------------------------------------------------------------------

    def _outlined_text(self, p: QPainter, font: QFont, x: float, y: float, text: str, color: QColor) -> None:
        """Text with a dark halo so it reads on bright bone and dark air alike.

        Four offset copies in black make the halo: glyph-cached text is ~20× faster
        to draw than a stroked path, which keeps scrolling under a frame time.
        """
        p.setFont(font)
        p.setPen(HALO_COLOR)
        for dx, dy in HALO_OFFSETS:
            p.drawText(QPointF(x + dx, y + dy), text)
        p.setPen(color)
        p.drawText(QPointF(x, y), text)

    def _block(self, p: QPainter, lines: list[str], corner: str) -> None:
        fm = QFontMetrics(self._font)
        h = fm.height()
        w, hgt = self.width(), self.height()
        top = corner.startswith("top")
        left = corner.endswith("left")
        for i, line in enumerate(lines):
            if top:
                y = MARGIN + fm.ascent() + i * h
            else:
                y = hgt - MARGIN - fm.descent() - (len(lines) - 1 - i) * h
            x = MARGIN if left else w - MARGIN - fm.horizontalAdvance(line)
            self._outlined_text(p, self._font, x, y, line, TEXT_COLOR)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        small = self.width() < 520 or self.height() < 360
        self._font.setPointSizeF(8.0 if small else 9.5)
        self._marker_font.setPointSizeF(10.5 if small else 12.5)

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        for corner, lines in self.shown_lines().items():
            if lines:
                self._block(p, lines, corner)
        fm = QFontMetrics(self._marker_font)
        w, h = self.width(), self.height()
        for side, text in self.markers.items():
            if not text:
                continue
            tw = fm.horizontalAdvance(text)
            if side == "left":
                pos = QPoint(MARGIN, (h + fm.ascent()) // 2)
            elif side == "right":
                pos = QPoint(w - MARGIN - tw, (h + fm.ascent()) // 2)
            elif side == "top":
                pos = QPoint((w - tw) // 2, MARGIN + fm.ascent())
            else:
                pos = QPoint((w - tw) // 2, h - MARGIN - fm.descent())
            self._outlined_text(p, self._marker_font, pos.x(), pos.y(), text, MARKER_COLOR)
        if self.message:
            fm = QFontMetrics(self._font)
            tw = fm.horizontalAdvance(self.message)
            self._outlined_text(p, self._font, (w - tw) / 2, h / 2, self.message, TEXT_COLOR)
        p.end()
