"""The pointer readout (pixel, position, value) follows what is under a still pointer
(issue #20, item 1): the reader scrolled to image 18 with the wheel and still read image 1's
z and HU; after opening an MR the bar still said "−1024 HU"."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from ui.testing import image_to_widget, synthetic_volume, wheel
from ui.viewer.viewport import Viewport


@pytest.fixture
def vp(qtbot):
    w = Viewport()
    qtbot.addWidget(w)
    w.resize(600, 500)
    w.show()
    qtbot.waitExposed(w)
    w.set_volume(synthetic_volume(n=40))
    w.setFocus()
    return w


def move_pointer(vp: Viewport, pos: QPointF) -> None:
    """A real mouse move over the view, as the hand makes it."""
    ev = QMouseEvent(QEvent.Type.MouseMove, pos, QPointF(vp.view.mapToGlobal(pos.toPoint())),
                     Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp.view.viewport(), ev)
    QApplication.processEvents()


def readout_parts(text: str) -> tuple[str, float, str]:
    """(pixel, z in mm, value) of a readout "x 20  y 10  ·  (x, y, z) mm  ·  1000 HU"."""
    pixel, position, value = (p.strip() for p in text.split("·"))
    z = float(position.strip("() mm").split(",")[2])
    return pixel, z, value


def test_the_readout_follows_the_slice_under_a_still_pointer(qtbot, vp):
    texts: list[str] = []
    vp.cursor_text.connect(texts.append)
    # row 10 carries slice 10's bright marker line (1000 HU); elsewhere in that row: background
    move_pointer(vp, image_to_widget(vp, 20.5, 10.5))
    pixel, z, value = readout_parts(vp.cursor_readout())
    assert pixel == "x 20  y 10" and z == 0.0 and value == "-1000 HU"

    wheel(vp.view.viewport(), image_to_widget(vp, 20.5, 10.5).toPoint(), -3)  # three notches on
    assert vp.slice_index == 3
    pixel, z, value = readout_parts(vp.cursor_readout())
    assert (pixel, z, value) == ("x 20  y 10", 6.0, "-1000 HU"), "z of image 4, not image 1"
    assert texts[-1] == vp.cursor_readout(), "the status bar got the new text"

    for _ in range(7):
        qtbot.keyClick(vp, Qt.Key.Key_Down)
    assert vp.slice_index == 10
    assert readout_parts(vp.cursor_readout())[1:] == (20.0, "1000 HU"), "the value of image 11 at the pointer"
    assert readout_parts(texts[-1])[1:] == (20.0, "1000 HU")


def test_the_readout_follows_zoom_and_pan_under_a_still_pointer(qtbot, vp):
    at = image_to_widget(vp, 20.5, 10.5)
    move_pointer(vp, at)
    before = vp.cursor_readout()
    vp.zoom_by(2.0)
    after = vp.cursor_readout()
    assert before != after and after.startswith("x "), "another pixel is under the pointer after zooming"


def test_another_series_recomputes_or_clears_the_readout(qtbot, vp):
    move_pointer(vp, image_to_widget(vp, 100.5, 100.5))  # inside the +100 HU block
    assert vp.cursor_readout().endswith("100 HU")
    mr = synthetic_volume(n=5, modality="MR", window=None)
    vp.set_volume(mr)
    text = vp.cursor_readout()
    assert text and "HU" not in text, "an MR value has no HU (the reader saw '-1024 HU' on an MR)"
    assert text.split("·")[-1].strip() == f"{float(mr.values(0)[100, 100]):.0f}"
    vp.set_volume(None)
    assert vp.cursor_readout() == ""


def test_the_readout_clears_when_the_pointer_leaves(qtbot, vp):
    seen: list[str] = []
    vp.cursor_text.connect(seen.append)
    move_pointer(vp, image_to_widget(vp, 20.5, 10.5))
    assert vp.cursor_readout()
    QApplication.sendEvent(vp.view.viewport(), QEvent(QEvent.Type.Leave))
    assert vp.cursor_readout() == "" and seen[-1] == ""
    vp.step(1)  # scrolling with the keys while the pointer is elsewhere says nothing about a pixel
    assert vp.cursor_readout() == "" and seen[-1] == ""
