"""Measurements can be undone and redone, and deleting all of them asks first
(issue #20, item 2): Ctrl+Z / Ctrl+Y / Ctrl+Shift+Z in the viewport, Shift+Del with a question."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox

from ui.testing import image_to_widget, mouse_drag, synthetic_volume
from ui.viewer.viewport import Viewport

CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


@pytest.fixture
def vp(qtbot):
    w = Viewport()
    qtbot.addWidget(w)
    w.resize(600, 500)
    w.show()
    qtbot.waitExposed(w)
    w.set_volume(synthetic_volume())
    w.setFocus()
    return w


def texts(vp: Viewport) -> list[str]:
    return [m.text for m in vp.measurements.items]


def test_ctrl_z_undoes_a_drawn_measurement_and_ctrl_y_redoes_it(qtbot, vp):
    changed: list[int] = []
    vp.measurements_changed.connect(lambda: changed.append(1))
    qtbot.keyClick(vp, Qt.Key.Key_L)
    mouse_drag(vp.view.viewport(), image_to_widget(vp, 20, 200), image_to_widget(vp, 120, 200))
    assert len(vp.measurements.items) == 1 and changed
    m = vp.measurements.items[0]
    assert vp.measurements.undo_text() == "add length"
    qtbot.keyClick(vp, Qt.Key.Key_Z, CTRL)
    assert vp.measurements.items == [] and m.roi.scene() is None, "the line is gone from the image"
    qtbot.keyClick(vp, Qt.Key.Key_Y, CTRL)
    assert vp.measurements.items == [m] and m.roi.scene() is vp.view.scene() and m.roi.isVisible()
    qtbot.keyClick(vp, Qt.Key.Key_Z, CTRL)
    qtbot.keyClick(vp, Qt.Key.Key_Z, CTRL | SHIFT)  # the other redo key
    assert vp.measurements.items == [m]


def test_delete_and_its_undo_keep_the_order_and_the_slice(qtbot, vp):
    a = vp.add_measurement("length", (10, 10), (10, 110))
    b = vp.add_measurement("rect", (64, 64), (128, 128))
    vp.set_slice(5)
    c = vp.add_measurement("ellipse", (40, 40), (90, 90))
    vp.set_slice(0)
    qtbot.keyClick(vp, Qt.Key.Key_Delete)  # the newest on this slice: the rectangle
    assert vp.measurements.items == [a, c]
    vp.set_slice(7)
    qtbot.keyClick(vp, Qt.Key.Key_Z, CTRL)
    assert vp.measurements.items == [a, b, c], "back in its place"
    assert vp.slice_index == 0 and b.roi.isVisible(), "undo shows the slice where it happened"
    assert not c.roi.isVisible()
    assert b.text.splitlines()[0] == "Mean 100.0 HU  SD 0.0"


def test_shift_del_asks_first_and_cancel_keeps_everything(qtbot, vp):
    asked: list[str] = []

    def no(parent, title, question, yes):
        asked.append(question)
        return False

    vp.confirm = no
    vp.add_measurement("length", (10, 10), (10, 110))
    vp.set_slice(3)
    vp.add_measurement("length", (20, 10), (20, 110))
    qtbot.keyClick(vp, Qt.Key.Key_Delete, SHIFT)
    assert asked and "all 2 measurements on 2 images" in asked[0]
    assert len(vp.measurements.items) == 2


def test_delete_all_is_one_undoable_step(qtbot, vp):
    vp.confirm = lambda *_: True
    ms = [vp.add_measurement("length", (10 + 10 * i, 10), (10 + 10 * i, 110)) for i in range(3)]
    assert vp.trigger("clear_measurements") and vp.measurements.items == []
    assert vp.measurements.undo_text() == "delete all 3 measurements"
    assert vp.trigger("undo_measurement")
    assert vp.measurements.items == ms and all(m.roi.isVisible() for m in ms)
    assert vp.trigger("redo_measurement") and vp.measurements.items == []
    assert not vp.redo_measurement(), "nothing left to redo"


def test_the_real_question_box_can_be_answered(qtbot, vp):
    """Without a hook the reader gets a QMessageBox named "confirm"; Cancel is the default."""
    vp.add_measurement("length", (10, 10), (10, 110))
    seen: dict[str, str] = {}

    def answer(button_text: str) -> None:
        box = QApplication.activeModalWidget()
        assert isinstance(box, QMessageBox) and box.objectName() == "confirm"
        seen["text"] = box.text()
        seen["default"] = box.defaultButton().text()
        next(b for b in box.buttons() if b.text().replace("&", "") == button_text).click()

    QTimer.singleShot(50, lambda: answer("Cancel"))
    assert not vp.clear_measurements()
    assert len(vp.measurements.items) == 1 and "Delete the measurement of this series?" in seen["text"]
    assert seen["default"].replace("&", "") == "Cancel"
    QTimer.singleShot(50, lambda: answer("Delete all"))
    assert vp.clear_measurements() and vp.measurements.items == []


def test_another_series_starts_a_fresh_history(qtbot, vp):
    vp.add_measurement("length", (10, 10), (10, 110))
    vp.set_volume(synthetic_volume(n=4))
    assert vp.measurements.items == [] and not vp.measurements.can_undo
    assert not vp.undo_measurement() and vp.measurements.items == []


def test_a_measurement_taken_away_for_good_leaves_no_undo_step(qtbot, vp):
    """The report turns a drawn rectangle into a finding: undo must not bring the rectangle back."""
    a = vp.add_measurement("length", (10, 10), (10, 110))
    r = vp.add_measurement("rect", (64, 64), (128, 128))
    vp.measurements.remove(r)
    assert vp.measurements.undo_text() == "add length"
    vp.trigger("undo_measurement")
    assert vp.measurements.items == [] and r.roi.scene() is None and a.roi.scene() is None
