"""Angle and Cobb angle tools in the viewport (issue #17, item 4): chosen by key, toolbar or Tools menu like
the length tool, drawn with the mouse, numbers from the anisotropic pixel spacing, undo / redo like the other
measurements."""

from __future__ import annotations

import math

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app.viewer.measure import angle, cobb
from ui.testing import image_to_widget, mouse_drag, synthetic_volume
from ui.viewer.viewport import Viewport

CTRL = Qt.KeyboardModifier.ControlModifier
SPACING = (0.5, 0.8)  # synthetic_volume's (row, column) spacing


@pytest.fixture
def vp(qtbot):
    w = Viewport()
    qtbot.addWidget(w)
    w.resize(700, 600)
    w.show()
    qtbot.waitExposed(w)
    w.set_volume(synthetic_volume(spacing=SPACING))
    w.setFocus()
    return w


def _at(vp, x, y):
    return image_to_widget(vp, x, y).toPoint()


def test_angle_is_a_drag_then_a_click_and_reads_the_patients_angle(qtbot, vp):
    qtbot.keyClick(vp, Qt.Key.Key_A)
    assert vp.tool == "angle"
    target = vp.view.viewport()
    # first arm: from (150, 60) to the vertex (50, 60)
    mouse_drag(target, _at(vp, 150, 60), _at(vp, 50, 60))
    assert len(vp.measurements.items) == 1 and vp.measurements.items[0].pending
    assert not vp.measurements.can_undo, "half an angle is not in the history"
    # the second arm follows the pointer, a click fixes its end at (150, 160)
    QTest.mouseMove(target, _at(vp, 120, 120))
    qtbot.wait(30)
    QTest.mouseMove(target, _at(vp, 150, 160))
    qtbot.wait(30)
    QTest.mouseClick(target, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, _at(vp, 150, 160))
    (m,) = vp.measurements.items
    assert not m.pending and vp.measurements.undo_text() == "add angle"
    pts = m.points()
    assert len(pts) == 3
    assert pts[1] == pytest.approx((50, 60), abs=1.0)
    # the number is the angle in mm at the points the mouse left: (100, 0) px = (80, 0) mm and (100, 100) px =
    # (80, 50) mm → atan(50/80) = 32.0°, not the 45° of the pixel grid
    assert m.evaluation.values["angle"] == pytest.approx(angle(*pts, SPACING).value)
    assert m.evaluation.values["angle"] == pytest.approx(math.degrees(math.atan(50 / 80)), abs=0.6)
    assert m.text.endswith("°")
    qtbot.keyClick(vp, Qt.Key.Key_Z, CTRL)
    assert vp.measurements.items == []
    qtbot.keyClick(vp, Qt.Key.Key_Y, CTRL)
    assert vp.measurements.items == [m] and m.roi.isVisible()


def test_cobb_is_two_drawn_lines(qtbot, vp):
    qtbot.keyClick(vp, Qt.Key.Key_C)
    assert vp.tool == "cobb"
    target = vp.view.viewport()
    mouse_drag(target, _at(vp, 40, 40), _at(vp, 140, 40))
    assert vp.measurements.items[0].pending
    mouse_drag(target, _at(vp, 40, 120), _at(vp, 140, 280))
    (m,) = vp.measurements.items
    assert not m.pending and vp.measurements.undo_text() == "add Cobb angle"
    pts = m.points()
    # (100, 0) px = (80, 0) mm against (100, 160) px = (80, 80) mm: 45°
    assert m.evaluation.values["angle"] == pytest.approx(cobb(*pts, SPACING).value)
    assert m.evaluation.values["angle"] == pytest.approx(45.0, abs=1.0)
    assert m.text.startswith("Cobb ")


def test_programmatic_angles_and_cobb_match_hand_computed_values(vp):
    a = vp.add_measurement("angle", (10, 0), (0, 0), (10, 10))
    assert a.evaluation.values["angle"] == pytest.approx(32.00538, abs=1e-4)
    c = vp.add_measurement("cobb", (0, 0), (10, 0), (0, 0), (10, 16))
    assert c.evaluation.values["angle"] == pytest.approx(45.0, abs=1e-6)
    assert [m.kind for m in vp.measurements.items] == ["angle", "cobb"]
    assert vp.measurements.undo_text() == "add Cobb angle"
    vp.delete_measurement()
    assert [m.kind for m in vp.measurements.items] == ["angle"]
    vp.undo_measurement()
    assert [m.kind for m in vp.measurements.items] == ["angle", "cobb"]


def test_a_half_drawn_angle_goes_when_the_reader_moves_on(qtbot, vp):
    vp.set_tool("angle")
    mouse_drag(vp.view.viewport(), _at(vp, 150, 60), _at(vp, 50, 60))
    assert vp.measurements.items and vp.measurements.items[0].pending
    vp.step(1)  # another slice
    assert vp.measurements.items == []
    vp.set_tool("cobb")
    mouse_drag(vp.view.viewport(), _at(vp, 40, 40), _at(vp, 140, 40))
    qtbot.keyClick(vp, Qt.Key.Key_Escape)  # the pan tool
    assert vp.tool == "pan" and vp.measurements.items == []
    # a click without a drag draws nothing
    vp.set_tool("angle")
    QTest.mouseClick(vp.view.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, _at(vp, 30, 30))
    assert vp.measurements.items == []


def test_tools_menu_and_toolbar_offer_angle_and_cobb(qtbot):
    from ui.shell.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    try:
        tools = next(a.menu() for a in win.menuBar().actions() if a.text() == "&Tools")
        names = [a.text().split("\t")[0] for a in tools.actions()]
        assert any(n.startswith("Angle") for n in names) and any(n.startswith("Cobb angle") for n in names)
        assert "tool_angle" in win.tool_buttons and "tool_cobb" in win.tool_buttons
        win.tool_buttons["tool_cobb"].trigger()
        assert all(vp.tool == "cobb" for vp in win.grid.viewports)
        assert win.tool_buttons["tool_cobb"].isChecked() and not win.tool_buttons["tool_length"].isChecked()
        assert "link_viewports" in win.actions and win.actions_by_name["link_viewports"].isCheckable()
    finally:
        win.shutdown()
