"""The status bar's pointer readout in the real window with the bundled sample (issue #20, item 1):
on image 18 it must say image 18's z and HU, not image 1's; opening another study must not leave
the old study's value there."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from app.synthetic.sample import write_ct_study
from ui.shell.app_setup import SAMPLE
from ui.shell.main_window import MainWindow
from ui.shell.screenshot import wait_until_idle
from ui.testing import image_to_widget, wheel


def test_status_bar_readout_follows_scrolling_and_a_new_study(qtbot, tmp_path):
    other = write_ct_study(tmp_path / "other", n_slices=4, size=64, seed=3)
    win = MainWindow()
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    win.open_paths([SAMPLE])
    assert wait_until_idle(win, 60)
    vp = win.grid.active
    pos = image_to_widget(vp, 256.5, 300.5)
    ev = QMouseEvent(QEvent.Type.MouseMove, pos, QPointF(vp.view.mapToGlobal(pos.toPoint())),
                     Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(vp.view.viewport(), ev)
    qtbot.waitUntil(lambda: "HU" in win.cursor_label.text(), timeout=3000)
    first = win.cursor_label.text()
    geometry = vp.volume.geometry

    def expected(k: int) -> tuple[float, str]:
        z = float(geometry.pixel_to_patient(k, 256.0, 300.0)[2])
        hu = float(vp.volume.values(k)[300, 256])
        return z, f"{hu:.0f} HU"

    def shown() -> tuple[float, str]:
        parts = [p.strip() for p in win.cursor_label.text().split("·")]
        return float(parts[1].strip("() mm").split(",")[2]), parts[2]

    assert shown()[0] == round(expected(0)[0], 1)
    wheel(vp.view.viewport(), pos.toPoint(), -10)
    vp.setFocus()
    for _ in range(7):
        qtbot.keyClick(vp, Qt.Key.Key_Down)
    assert vp.slice_index == 17  # image 18, where the reader still read image 1's numbers
    z, hu = expected(17)
    assert shown() == (round(z, 1), hu), (win.cursor_label.text(), first)
    assert win.cursor_label.text() != first

    win.open_paths([other])
    assert wait_until_idle(win, 60)
    qtbot.waitUntil(lambda: vp.volume is not None and len(vp.volume) == 4)
    # the pointer is still over the (new, smaller) image: its pixel and value, not the old ones
    p = vp.image.mapFromScene(vp.view.mapToScene(pos.toPoint()))
    col, row = int(np.floor(p.x())), int(np.floor(p.y()))
    value = float(vp.volume.values(0)[row, col])
    assert win.cursor_label.text().startswith(f"x {col}  y {row}")
    assert win.cursor_label.text().endswith(f"{value:.0f} HU")
    win.shutdown()
