"""The MPR's fast paths while scrolling (issue #17, 1×3 scrolling) change how much work a frame takes,
never what the reader sees: a view whose plane did not move keeps its image, but every image, text and
line still follows the crosshair, the window, the slab and the rotation; the corner text drawn from
cached images looks as drawn directly."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint
from PySide6.QtGui import QColor, QFont, QImage, QPainter

from app.dicom.display import render
from app.dicom.model import Window
from ui.testing import synthetic_volume
from ui.viewer import corner_overlay
from ui.viewer.mpr import MprPanel, pixel_of_line
from ui.viewer.viewport import SMOOTH_AFTER_MS


@pytest.fixture
def panel(qtbot):
    p = MprPanel()
    qtbot.addWidget(p)
    p.resize(1200, 480)
    p.show()
    qtbot.waitExposed(p)
    p.set_volume(synthetic_volume(n=24, rows=64, cols=80, spacing=(0.7, 0.7), thickness=1.5))
    qtbot.wait(20)
    return p


def _views(panel):
    return [panel.by_plane(n) for n in ("axial", "coronal", "sagittal")]


def _assert_shows_the_state(panel) -> None:
    """Each view shows exactly the plane (and slab) the state says, windowed as the view says."""
    st = panel.state
    for v in _views(panel):
        expected = st.image(v.plane_name).stored
        np.testing.assert_array_equal(v.volume.frames[0], expected, err_msg=v.plane_name)
        np.testing.assert_array_equal(v.image.image, render(v.volume, 0, v.window), err_msg=v.plane_name)
        assert st.describe(v.plane_name) in v.corner_text()["bottom_left"]


def test_an_axial_step_keeps_the_other_images_and_moves_their_lines(qtbot, panel):
    axial, coronal, sagittal = _views(panel)
    st = panel.state
    kept = {v.plane_name: (v.volume, v.image.image) for v in (coronal, sagittal)}
    text = coronal.corner_text()
    k = st.index("axial")
    row = st.crosshair("coronal")[1]
    axial.step(1)
    assert st.index("axial") == k + 1
    for v in (coronal, sagittal):  # the same plane: not resliced, not re-rendered
        assert v.volume is kept[v.plane_name][0] and v.image.image is kept[v.plane_name][1]
    assert coronal.corner_text() == text
    # ... but the axial plane's line moved with it (coronal rows run down from the head: one row)
    rows = [p[1] for it in coronal.reference_line_items()["axial"] for p in pixel_of_line(it)]
    assert rows and rows == pytest.approx([st.crosshair("coronal")[1]] * len(rows))
    assert abs(st.crosshair("coronal")[1] - row) == pytest.approx(1.0)
    _assert_shows_the_state(panel)
    # the scrolled view draws nearest-neighbour and settles smooth; the others stayed smooth
    assert not axial.is_settled and coronal.is_settled and sagittal.is_settled
    qtbot.waitUntil(lambda: axial.is_settled, timeout=SMOOTH_AFTER_MS * 10)


def test_a_click_in_the_sagittal_changes_the_coronal_image_and_text(panel):
    axial, coronal, sagittal = _views(panel)
    st = panel.state
    axial.step(2)  # the coronal and sagittal images are now the kept ones
    before = coronal.image.image
    r = st.index("coronal")
    c_sag, r_sag = st.crosshair("sagittal")
    sagittal.crosshair_at_pixel(c_sag + 9, r_sag)  # sagittal columns run along the rows of the axial
    assert st.index("coronal") == r + 9
    assert not np.array_equal(coronal.image.image, before)
    assert f"Coronal {r + 10}/{st.count('coronal')}" in coronal.corner_text()["bottom_left"]
    _assert_shows_the_state(panel)
    # and back: the image for the first row again (not a stale one)
    sagittal.crosshair_at_pixel(c_sag, r_sag)
    np.testing.assert_array_equal(coronal.image.image, before)
    _assert_shows_the_state(panel)


def test_window_invert_zoom_and_slab_reach_the_kept_views(panel):
    axial, coronal, sagittal = _views(panel)
    axial.step(1)
    axial.set_window(Window(1500, -600))  # the panel applies it to all three
    assert coronal.window == sagittal.window == Window(1500, -600)
    _assert_shows_the_state(panel)
    assert any("1500" in line for line in coronal.corner_text()["bottom_right"])
    coronal.set_inverted(True)
    np.testing.assert_array_equal(coronal.image.image, render(coronal.volume, 0, coronal.window, invert=True))
    assert any("INV" in line for line in coronal.corner_text()["bottom_right"])
    coronal.set_inverted(False)
    zoom = next(line for line in sagittal.corner_text()["bottom_right"] if line.startswith("Zoom"))
    sagittal.zoom_by(2.0)
    assert next(line for line in sagittal.corner_text()["bottom_right"] if line.startswith("Zoom")) != zoom
    panel.set_slab(5.0)
    _assert_shows_the_state(panel)
    assert "MIP 5 mm" in " ".join(coronal.corner_text()["bottom_left"])
    assert len(axial.reference_line_items()["coronal"]) == 4  # the plane in two pieces and two slab edges
    axial.step(1)
    _assert_shows_the_state(panel)
    panel.set_slab(0.0)
    _assert_shows_the_state(panel)


def test_oblique_planes_follow_their_own_scroll_and_keep_on_an_axial_step(panel):
    axial, coronal, _ = _views(panel)
    panel.rotate(30)
    assert panel.state.is_oblique("coronal")
    _assert_shows_the_state(panel)
    kept = coronal.image.image
    axial.step(1)  # the oblique coronal contains the axial normal: the same plane
    assert coronal.image.image is kept
    _assert_shows_the_state(panel)
    coronal.step(3)  # its own plane moves along its normal
    assert not np.array_equal(coronal.image.image, kept)
    _assert_shows_the_state(panel)
    panel.rotate(-30)
    _assert_shows_the_state(panel)


def _as_array(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB32)
    return np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[
        :, : img.width() * 4].reshape(img.height(), img.width(), 4).copy()


@pytest.mark.parametrize("background", [(0, 0, 0), (200, 200, 200)])
def test_cached_corner_text_looks_as_drawn_directly(qtbot, background):
    font = QFont()
    font.setPointSizeF(9.5)
    text = "Pos -75.0 mm  Th 1.00 mm ★"
    images = []
    for cached in (False, True):
        img = QImage(220, 40, QImage.Format.Format_RGB32)
        img.fill(QColor(*background))
        p = QPainter(img)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        if cached:
            sprite, ox, oy = corner_overlay._sprite(font, text, corner_overlay.TEXT_COLOR, 1.0)
            p.drawImage(QPoint(10 - ox, 25 - oy), sprite)
        else:
            corner_overlay._draw_outlined(p, font, 10, 25, text, corner_overlay.TEXT_COLOR)
        p.end()
        images.append(_as_array(img).astype(int))
    direct, cached = images
    assert (direct != np.array([*background[::-1], 255])).any(), "the text is drawn"
    assert np.abs(direct - cached).max() <= 3  # rounding of the halo's alpha, nothing more


def test_corner_overlay_repaints_only_when_its_content_changes(qtbot, panel):
    coronal = panel.by_plane("coronal")
    laid_out = coronal.corner._laid_out
    assert laid_out is not None  # painted once
    panel.by_plane("axial").step(1)
    qtbot.wait(10)
    assert coronal.corner._laid_out is laid_out  # the same text: not laid out again
    coronal.corner.set_message("MPR is not possible for this series")
    assert coronal.corner._laid_out is None
