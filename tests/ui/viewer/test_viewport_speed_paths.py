"""The viewport's fast paths change how quickly a frame is drawn, never what the reader ends up
seeing: nearest-neighbour while slices change, the smooth image once they stop, and the RGB32
buffer draws the same pixels as pyqtgraph's own Grayscale8 image."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import pytest
from PySide6.QtGui import QImage

import ui.viewer.viewport as viewport_module
from ui.testing import synthetic_volume
from ui.viewer.viewport import SMOOTH_AFTER_MS, Viewport


def _array(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB32)
    ptr = img.constBits()
    return np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())[:, : img.width() * 4].copy()


def _grab(vp: Viewport) -> np.ndarray:
    return _array(vp.view.grab().toImage())


@pytest.fixture
def make_vp(qtbot):
    def make(volume=None) -> Viewport:
        w = Viewport()
        qtbot.addWidget(w)
        w.resize(600, 500)  # 256² image shown ~1.9× enlarged: smoothing visibly matters
        w.show()
        qtbot.waitExposed(w)
        w.set_volume(volume if volume is not None else synthetic_volume())
        return w

    return make


def test_scrolling_draws_nearest_then_settles_smooth(qtbot, make_vp):
    vp = make_vp()
    assert vp.is_settled  # a freshly shown series is drawn smooth
    vp.set_slice(5)
    assert not vp.is_settled and not vp.image.smooth
    scrolled = _grab(vp)
    qtbot.waitUntil(lambda: vp.is_settled, timeout=SMOOTH_AFTER_MS * 10)
    settled = _grab(vp)
    assert not np.array_equal(scrolled, settled), "the settled frame must be redrawn with smoothing"
    assert vp.slice_index == 5


def test_settled_image_equals_the_smooth_render(qtbot, make_vp):
    scrolled = make_vp()
    for k in range(1, 8):
        scrolled.set_slice(k)
    qtbot.waitUntil(lambda: scrolled.is_settled, timeout=SMOOTH_AFTER_MS * 10)

    direct = make_vp()
    direct.set_slice(7)
    direct.settle()  # what a still image is drawn with
    assert np.array_equal(_grab(scrolled), _grab(direct))


def test_each_new_slice_restarts_the_wait(qtbot, make_vp):
    vp = make_vp()
    vp.set_slice(1)
    qtbot.wait(SMOOTH_AFTER_MS // 2)
    vp.set_slice(2)
    qtbot.wait(SMOOTH_AFTER_MS * 2 // 3)
    assert not vp.is_settled  # 100 ms after the last change: still scrolling
    qtbot.waitUntil(lambda: vp.is_settled, timeout=SMOOTH_AFTER_MS * 10)


def test_rgb32_buffer_draws_the_pixels_of_pyqtgraphs_grey_image(qtbot, make_vp, monkeypatch):
    ours = make_vp()
    ours.set_slice(3)
    ours.settle()
    mine = _grab(ours)
    assert ours.image.qimage.format() == QImage.Format.Format_RGB32

    with monkeypatch.context() as m:
        m.setattr(viewport_module._FrameImage, "render", pg.ImageItem.render)
        ref = make_vp()
        ref.set_slice(3)
        ref.settle()
        ref.image.render()
        assert ref.image.qimage.format() == QImage.Format.Format_Grayscale8
        ref.image.update()
        theirs = _grab(ref)
    diff = np.abs(mine.astype(int) - theirs.astype(int))
    assert diff.max() <= 1, diff.max()  # same image; at most rounding in Qt's bilinear filter


def test_frame_buffer_is_the_rendered_frame(make_vp):
    vp = make_vp()
    vp.set_slice(4)
    vp.image.render()
    buf = vp.image._rgb32
    grey = vp.image.image
    assert np.array_equal(buf & 0xFF, grey) and np.array_equal((buf >> 16) & 0xFF, grey)
    assert np.all(buf >> 24 == 0xFF)


def test_colour_volumes_keep_pyqtgraphs_path(qtbot, make_vp):
    vol = synthetic_volume(n=3, rows=32, cols=40)
    rgb = np.repeat((vol.frames // 16).clip(0, 255).astype(np.uint8)[..., None], 3, axis=3)
    rgb[..., 0] = 200
    vol.frames = rgb
    vp = make_vp(vol)
    vp.set_slice(1)
    qtbot.waitUntil(lambda: vp.is_settled, timeout=SMOOTH_AFTER_MS * 10)
    assert vp.image.image.shape == (32, 40, 3)
    centre = vp.view.grab().toImage()
    c = centre.pixelColor(centre.width() // 2, centre.height() // 2)
    assert c.red() > 150  # the red channel really is shown


def test_cine_plays_nearest_and_settles_when_stopped(qtbot, make_vp):
    vp = make_vp()
    vp.set_fps(60)
    vp.toggle_cine()
    qtbot.waitUntil(lambda: vp.slice_index >= 3, timeout=3000)
    assert not vp.is_settled
    vp.stop_cine()
    qtbot.waitUntil(lambda: vp.is_settled, timeout=SMOOTH_AFTER_MS * 10)


def test_new_volume_is_shown_smooth_at_once(qtbot, make_vp):
    vp = make_vp()
    vp.set_slice(6)
    assert not vp.is_settled
    vp.set_volume(synthetic_volume(n=4))
    assert vp.is_settled and vp.slice_index == 0


def test_frame_size_change_gets_a_new_buffer_and_old_images_stay_valid(make_vp):
    vp = make_vp()
    vp.image.render()
    old = vp.image.qimage
    old_pixels = _array(old)
    vp.set_volume(synthetic_volume(n=3, rows=64, cols=80))
    vp.image.render()
    assert (vp.image.qimage.width(), vp.image.qimage.height()) == (80, 64)
    assert vp.image._rgb32.shape == (64, 80)
    assert np.array_equal(_array(old), old_pixels)  # the old QImage kept its own buffer alive
