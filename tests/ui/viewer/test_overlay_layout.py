"""Overlay text stays inside what the reader can see (issue #20, item 4): corner text never runs
under the slice bar, small viewports shorten it gracefully instead of cutting numbers
("Th 10.3…", "W 400 L 40 (SOFT TISS…"), and measurement labels stay inside the view.

Screenshots go to test-output/ (viewer_corners_2x2_small.png, viewer_labels_inside.png)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QRectF
from PySide6.QtGui import QFontMetrics, QImage

from app.viewer.viewport import StudyInfo
from ui.testing import synthetic_volume
from ui.viewer.corner_overlay import MARGIN, TEXT_COLOR
from ui.viewer.grid import ViewportGrid
from ui.viewer.viewport import Viewport

SAMPLE_STUDY = StudyInfo("PHANTOM^CHEST", "XMED-PHANTOM-0000", "19600101", "O", "20250101",
                         "CT CHEST ABDOMEN WITH CONTRAST (SYNTHETIC PHANTOM)")


def sample_like_volume(n: int = 32):
    v = synthetic_volume(n=n, rows=256, cols=256, spacing=(0.74, 0.74), thickness=10.31)
    v.series.number = 2
    v.series.description = "Axial 10.31 mm portal venous"
    return v


def as_array(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h = img.width(), img.height()
    raw = np.frombuffer(img.constBits(), dtype=np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return raw[:, : w * 3].reshape(h, w, 3).copy()


def text_pixels(area: np.ndarray) -> np.ndarray:
    """Where the overlay's text colour is (pale yellow: not grey, so never an image pixel)."""
    target = np.array([TEXT_COLOR.red(), TEXT_COLOR.green(), TEXT_COLOR.blue()])
    return (np.abs(area.astype(int) - target).max(axis=-1) < 12)


def test_corner_text_stays_off_the_slice_bar(qtbot, output_dir):
    vp = Viewport()
    qtbot.addWidget(vp)
    vp.resize(520, 420)
    vp.show()
    qtbot.waitExposed(vp)
    # the slice bar appears only now, after the viewport got its size (the reader's case)
    vp.set_volume(sample_like_volume(), SAMPLE_STUDY)
    qtbot.waitUntil(lambda: vp.scrollbar.isVisible())
    qtbot.wait(20)
    bar = vp.scrollbar.geometry()
    assert vp.corner.geometry() == vp.view.geometry()
    assert vp.corner.geometry().right() < bar.left(), "the text area ends where the slice bar begins"
    img = vp.grab().toImage()
    ratio = img.width() / vp.width()
    pixels = as_array(img)
    strip = pixels[:, int(bar.left() * ratio): int((bar.right() + 1) * ratio)]
    assert not text_pixels(strip).any(), "no corner text painted over the slice bar"
    assert text_pixels(pixels).sum() > 200, "the corners are painted"


def test_2x2_corners_shorten_gracefully(qtbot, output_dir):
    grid = ViewportGrid()
    qtbot.addWidget(grid)
    grid.resize(640, 560)  # each viewport about 320 × 280: a 2×2 beside the side panels
    grid.show()
    grid.set_layout("2x2")
    qtbot.waitExposed(grid)
    for vp, (k, window) in zip(grid.visible(), ((16, 1), (16, 2), (5, 4), (30, 3))):
        vp.set_volume(sample_like_volume(), SAMPLE_STUDY)
        vp.set_slice(k)
        vp.apply_preset(window)
        vp.settle()
    qtbot.wait(30)
    path = output_dir / "viewer_corners_2x2_small.png"
    assert grid.grab().save(str(path))
    for vp in grid.visible():
        shown = vp.corner.shown_lines()
        every = [line for block in shown.values() for line in block]
        numbers = [line for line in every if line.startswith(("Im ", "Pos", "Th ", "W", "Zoom"))]
        assert not any(line.endswith("…") for line in numbers), numbers
        assert any("10.31" in line for line in shown["bottom_left"]), "the slice thickness, whole"
        assert shown["bottom_right"] and shown["bottom_right"][0].startswith("W"), shown["bottom_right"]
        fm = QFontMetrics(vp.corner._font)
        w = vp.corner.width()
        for left_key, right_key in (("top_left", "top_right"), ("bottom_left", "bottom_right")):
            left, right = shown[left_key], shown[right_key]
            for i in range(max(len(left), len(right))):
                lt = left[i] if i < len(left) else ""
                rt = right[i] if i < len(right) else ""
                if left_key.startswith("bottom"):
                    lt = left[len(left) - 1 - i] if i < len(left) else ""
                    rt = right[len(right) - 1 - i] if i < len(right) else ""
                used = fm.horizontalAdvance(lt) + fm.horizontalAdvance(rt) + 2 * MARGIN
                assert used <= w, (lt, rt, used, w)


def test_measurement_labels_stay_inside_the_view(qtbot, output_dir):
    vp = Viewport()
    qtbot.addWidget(vp)
    vp.resize(460, 420)
    vp.show()
    qtbot.waitExposed(vp)
    vp.set_volume(synthetic_volume(n=3))
    vp.settle()
    # at the right edge: the label beside the ROI's bottom-right corner would run off the view
    roi = vp.add_measurement("rect", (196, 150), (254, 190))
    # near the bottom: the length's label under its end point would fall off the bottom
    line = vp.add_measurement("length", (40, 200), (120, 254))
    qtbot.wait(20)

    def visible() -> QRectF:
        return vp.view.mapToScene(vp.view.viewport().rect()).boundingRect()

    for m in (roi, line):
        box = m.label.sceneBoundingRect()
        assert visible().contains(box), (m.kind, box, visible())
    path = output_dir / "viewer_labels_inside.png"
    assert vp.grab().save(str(path))
    # zoomed in, a label whose point is on screen is still wholly on screen
    vp.zoom_by(1.6)
    qtbot.wait(20)
    for m in (roi, line):
        (x1, y1) = m.points()[1]
        if m.kind == "rect":
            x1, y1 = max(m.points()[0][0], x1), max(m.points()[0][1], y1)
        point = vp.image.mapToScene(x1, y1)
        if visible().contains(point):
            assert visible().contains(m.label.sceneBoundingRect()), m.kind


@pytest.mark.parametrize("size", [(160, 160), (240, 200)])
def test_tiny_viewports_keep_the_image_number(qtbot, size):
    vp = Viewport()
    qtbot.addWidget(vp)
    vp.resize(*size)
    vp.show()
    qtbot.waitExposed(vp)
    vp.set_volume(sample_like_volume(), SAMPLE_STUDY)
    qtbot.wait(10)
    shown = vp.corner.shown_lines()
    assert shown["bottom_left"][0].startswith("Im 1/32")
    fm = QFontMetrics(vp.corner._font)
    assert all(fm.horizontalAdvance(line) <= vp.corner.width() - 2 * MARGIN for b in shown.values() for line in b)
