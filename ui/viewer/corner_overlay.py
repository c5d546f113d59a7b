"""Text painted over a viewport: the four corner blocks, orientation letters,
and the frame that marks the active viewport. Transparent to the mouse.

The overlay covers the image view only (never the slice bar beside it); which corner lines fit,
and in which form, is decided by :func:`app.viewer.viewport.fit_corner_lines`."""

from __future__ import annotations

from collections import OrderedDict

from PySide6.QtCore import QPoint, QPointF, QRect, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter
from PySide6.QtWidgets import QWidget

from app.viewer.viewport import CornerLine, fit_corner_lines

TEXT_COLOR = QColor(235, 235, 200)
MARKER_COLOR = QColor(255, 210, 90)
ACTIVE_COLOR = QColor(255, 170, 0)
IDLE_COLOR = QColor(40, 40, 40)
HALO_COLOR = QColor(0, 0, 0, 230)
HALO_OFFSETS = ((-1, 0), (1, 0), (0, -1), (0, 1), (1, 1))
MARGIN = 6
#: Outlined texts drawn once into small images and reused (see :func:`_sprite`); the least recently
#: used go beyond this many.
SPRITE_CACHE_SIZE = 512
_sprites: OrderedDict[tuple, tuple[QImage, int, int]] = OrderedDict()


def _sprite(font: QFont, text: str, color: QColor, dpr: float) -> tuple[QImage, int, int]:
    """``text`` with its halo in a transparent image, and where its baseline origin lies in it.

    Six text draws per line (five halo copies and the text) cost ~0.2 ms; the image of the same
    line is one blit. The corner text of an unchanged view is redrawn on every paint of the view
    underneath (a moving reference line, a scrolled neighbour grabbed with the panel), so almost
    every line is drawn from here."""
    key = (font.key(), text, color.rgba(), dpr)
    hit = _sprites.get(key)
    if hit is not None:
        _sprites.move_to_end(key)
        return hit
    fm = QFontMetrics(font)
    br = fm.boundingRect(text)
    pad = 3  # the halo (1 px) and antialiasing around it
    left = min(0, br.left())
    top = min(-fm.ascent(), br.top())
    right = max(fm.horizontalAdvance(text), br.right() + 1)
    bottom = max(fm.descent(), br.bottom() + 1)
    ox, oy = pad - left, pad - top
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    img = QImage(max(1, round(w * dpr)), max(1, round(h * dpr)), QImage.Format.Format_ARGB32_Premultiplied)
    img.setDevicePixelRatio(dpr)
    img.fill(0)
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    _draw_outlined(p, font, ox, oy, text, color)
    p.end()
    _sprites[key] = hit = (img, ox, oy)
    while len(_sprites) > SPRITE_CACHE_SIZE:
        _sprites.popitem(last=False)
    return hit


def _draw_outlined(p: QPainter, font: QFont, x: float, y: float, text: str, color: QColor) -> None:
    """Text with a dark halo so it reads on bright bone and dark air alike.

    Five offset copies in black make the halo: glyph-cached text is ~20× faster
    to draw than a stroked path."""
    p.setFont(font)
    p.setPen(HALO_COLOR)
    for dx, dy in HALO_OFFSETS:
        p.drawText(QPointF(x + dx, y + dy), text)
    p.setPen(color)
    p.drawText(QPointF(x, y), text)


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
        self._laid_out: tuple[tuple, list[tuple[QRect, QImage]]] | None = None  # see _pieces

    def set_content(self, corners: dict[str, list[CornerLine | str]], markers: dict[str, str]) -> None:
        corners = {
            k: [line if isinstance(line, CornerLine) else CornerLine(str(line)) for line in v] for k, v in corners.items()
        }
        if corners == self.corners and markers == self.markers:
            return  # nothing to repaint (a repaint here repaints the whole view underneath)
        self.corners = corners
        self.markers = dict(markers)
        self._laid_out = None
        self.update()

    def set_active(self, active: bool) -> None:
        if active != self.active:
            self.active = active
            self.update()

    def set_message(self, message: str) -> None:
        if message == self.message:
            return
        self.message = message
        self._laid_out = None
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

    def _pieces(self) -> list[tuple[QRect, QImage]]:
        """Every outlined text of the overlay as (where, its image): laid out once per content, size
        and font, then only blitted — the overlay is repainted whenever the view under it is (a
        reference line that moved, a grab of the whole panel), mostly with the same text."""
        key = (self.width(), self.height(), self.devicePixelRatioF(), self._font.pointSizeF(),
               self._marker_font.pointSizeF())
        if self._laid_out is not None and self._laid_out[0] == key:
            return self._laid_out[1]  # set_content / set_message drop it when the text changes
        fitted = self.shown_lines()
        dpr = key[2]
        pieces: list[tuple[QRect, QImage]] = []

        def put(font: QFont, x: float, y: float, text: str, color: QColor) -> None:
            img, ox, oy = _sprite(font, text, color, dpr)
            pieces.append((QRect(QPoint(round(x) - ox, round(y) - oy), img.deviceIndependentSize().toSize()), img))

        fm = QFontMetrics(self._font)
        line_h = fm.height()
        w, h = self.width(), self.height()
        for corner, lines in fitted.items():
            top = corner.startswith("top")
            left = corner.endswith("left")
            for i, line in enumerate(lines):
                if top:
                    y = MARGIN + fm.ascent() + i * line_h
                else:
                    y = h - MARGIN - fm.descent() - (len(lines) - 1 - i) * line_h
                x = MARGIN if left else w - MARGIN - fm.horizontalAdvance(line)
                put(self._font, x, y, line, TEXT_COLOR)
        mfm = QFontMetrics(self._marker_font)
        for side, text in self.markers.items():
            if not text:
                continue
            tw = mfm.horizontalAdvance(text)
            if side == "left":
                pos = QPoint(MARGIN, (h + mfm.ascent()) // 2)
            elif side == "right":
                pos = QPoint(w - MARGIN - tw, (h + mfm.ascent()) // 2)
            elif side == "top":
                pos = QPoint((w - tw) // 2, MARGIN + mfm.ascent())
            else:
                pos = QPoint((w - tw) // 2, h - MARGIN - mfm.descent())
            put(self._marker_font, pos.x(), pos.y(), text, MARKER_COLOR)
        if self.message:
            tw = fm.horizontalAdvance(self.message)
            put(self._font, (w - tw) / 2, h / 2, self.message, TEXT_COLOR)
        self._laid_out = (key, pieces)
        return pieces

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        small = self.width() < 520 or self.height() < 360
        self._font.setPointSizeF(8.0 if small else 9.5)
        self._marker_font.setPointSizeF(10.5 if small else 12.5)

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        pieces = self._pieces()
        if not pieces:
            return
        exposed = event.rect()
        p = QPainter(self)
        for rect, img in pieces:
            if rect.intersects(exposed):
                p.drawImage(rect.topLeft(), img)
        p.end()
