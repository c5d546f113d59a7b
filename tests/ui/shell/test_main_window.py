"""The main window as a reader meets it: open a study, browse series, layouts,
active viewport, tags, problems, help — all without a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt
from PySide6.QtGui import QDropEvent

from app.synthetic.sample import write_ct_study
from ui.shell.help_dialog import shortcuts_html
from ui.shell.main_window import MainWindow
from ui.shortcuts import SHORTCUTS, shortcuts_markdown
from ui.viewer.viewport import SERIES_MIME


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("studies")
    write_ct_study(root / "a", n_slices=8, size=96, seed=11)
    write_ct_study(root / "b", n_slices=6, size=96, seed=12)
    (root / "readme.txt").write_text("not an image")
    return root


@pytest.fixture
def win(qtbot, two_studies):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    qtbot.waitExposed(w)
    w.open_paths([two_studies])
    qtbot.waitUntil(lambda: not w.is_busy() and w.grid.viewports[0].volume is not None, timeout=30_000)
    yield w
    w.shutdown()


def test_opening_shows_tree_first_series_and_thumbnails(qtbot, win):
    assert win.browser.series_count() == 2
    vp = win.grid.active
    assert vp is win.grid.viewports[0]
    assert vp.volume is not None and len(vp.volume) == 8
    assert vp.image.image.std() > 5
    assert vp.corner_text()["top_left"], "patient name/ID in the top-left corner"
    qtbot.waitUntil(lambda: win.browser.has_thumbnail(0) and win.browser.has_thumbnail(1), timeout=10_000)


def test_unreadable_file_is_listed_not_raised(win):
    rows = win.problem_rows()
    assert any(Path(what).name == "readme.txt" for what, _ in rows)
    assert win.problems_button.isVisible() and "problem" in win.problems_button.text()


def test_page_down_goes_to_the_next_series(qtbot, win):
    vp = win.grid.active
    vp.setFocus()
    qtbot.keyClick(vp, Qt.Key.Key_PageDown)
    qtbot.waitUntil(lambda: vp.volume is not None and len(vp.volume) == 6 and not win.is_busy(), timeout=10_000)
    qtbot.keyClick(vp, Qt.Key.Key_PageUp)
    qtbot.waitUntil(lambda: vp.volume is not None and len(vp.volume) == 8, timeout=10_000)


def test_double_click_opens_series_in_active_viewport(qtbot, win):
    win.set_layout("1x2")
    right = win.grid.viewports[1]
    qtbot.waitUntil(lambda: right.volume is not None and not win.is_busy(), timeout=10_000)
    win.grid.set_active(right)
    item = win.browser.item_for(0)
    win.browser.itemDoubleClicked.emit(item, 0)
    qtbot.waitUntil(lambda: right.volume is not None and len(right.volume) == 8, timeout=10_000)
    assert win.grid.viewports[0].corner.active is False and right.corner.active is True


def test_drop_series_on_viewport(qtbot, win):
    vp = win.grid.viewports[0]
    mime = QMimeData()
    mime.setData(SERIES_MIME, b"1")
    ev = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    vp.dropEvent(ev)
    qtbot.waitUntil(lambda: vp.volume is not None and len(vp.volume) == 6, timeout=10_000)
    assert win.browser.item_for(1).font(0).bold() and not win.browser.item_for(0).font(0).bold()


def test_layouts_and_active_viewport(qtbot, win):
    win.set_layout("2x2")
    assert len(win.grid.visible()) == 4
    qtbot.waitUntil(lambda: all(v.volume is not None for v in win.grid.visible()) and not win.is_busy(), timeout=15_000)
    clicked = win.grid.viewports[3]
    qtbot.mouseClick(clicked.view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(20, 20))
    assert win.grid.active is clicked and clicked.corner.active
    assert sum(v.corner.active for v in win.grid.viewports) == 1
    win.grid.next_viewport()
    assert win.grid.active is win.grid.viewports[0]
    # keys go to the active viewport only
    qtbot.keyClick(win.grid.active, Qt.Key.Key_2)
    assert win.grid.viewports[0].window.width == 1500 and win.grid.viewports[1].window.width != 1500
    win.set_layout("1x1")
    assert win.grid.visible() == [win.grid.viewports[0]] and not win.grid.viewports[3].isVisible()


def test_menu_actions_run_on_the_active_viewport(win):
    vp = win.grid.active
    win.actions_by_name["preset_4"].trigger()
    assert vp.window.width == 2500
    win.actions_by_name["toggle_invert"].trigger()
    assert vp.inverted


def test_tag_browser_follows_the_slice_and_searches(qtbot, win):
    vp = win.grid.active
    qtbot.waitUntil(lambda: win.tags.path is not None, timeout=5000)
    first = win.tags.path
    vp.setFocus()
    qtbot.keyClick(vp, Qt.Key.Key_End)
    qtbot.waitUntil(lambda: win.tags.path != first, timeout=5000)
    win.tags.search.setText("patient's name")
    rows = win.tags.visible_rows()
    assert rows and all("patient's name" in name.lower() for _, name, _ in rows)
    win.tags.search.setText("0028,0030")  # Pixel Spacing by number
    assert [name for _, name, _ in win.tags.visible_rows()] == ["Pixel Spacing"]


def test_help_lists_every_shortcut_from_the_same_table():
    html = shortcuts_html()
    md = shortcuts_markdown()
    for sc in SHORTCUTS:
        assert sc.description.replace("'", "&#x27;") in html or sc.description in html
        assert sc.description in md
    assert "Right drag" in html


def test_empty_folder_says_so(qtbot, tmp_path):
    w = MainWindow()
    qtbot.addWidget(w)
    w.open_paths([tmp_path])
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=10_000)
    qtbot.wait(50)
    assert w.grid.active.volume is None
    assert w.statusBar().currentMessage().startswith("No DICOM images found")
    w.shutdown()


def test_cancel_keeps_what_arrived_and_says_so(qtbot, two_studies):
    import time as _time

    from app.dicom.loader import load_series

    def slow(series, on_frame=None, cancel=None):
        def frame(k, volume):
            on_frame(k, volume)
            _time.sleep(0.15)

        return load_series(series, on_frame=frame, cancel=cancel, workers=1)

    w = MainWindow()
    w.load_fn = slow
    qtbot.addWidget(w)
    w.show()
    w.open_paths([two_studies])
    vp = w.grid.active
    qtbot.waitUntil(lambda: vp.volume is not None, timeout=20_000)
    assert w.cancel_button.isVisible() and w.progress.isVisible()
    w.actions_by_name["cancel_load"].trigger()
    qtbot.waitUntil(lambda: "cancelled" in w.statusBar().currentMessage(), timeout=10_000)
    assert vp.volume.loaded < len(vp.volume)
    assert vp.image.image.max() > 0  # the first slice stays on screen
    qtbot.waitUntil(lambda: not w.cancel_button.isVisible(), timeout=5000)
    w.shutdown()


def test_status_bar_reads_hu_under_the_pointer(qtbot, win):
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QMouseEvent

    from ui.testing import image_to_widget

    vp = win.grid.active
    pos = image_to_widget(vp, 48, 48)
    ev = QMouseEvent(QEvent.Type.MouseMove, pos, QPointF(vp.view.mapToGlobal(pos.toPoint())),
                     Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    from PySide6.QtWidgets import QApplication

    QApplication.sendEvent(vp.view.viewport(), ev)
    qtbot.waitUntil(lambda: "HU" in win.cursor_label.text(), timeout=3000)
    text = win.cursor_label.text()
    words = text.split()
    col, row = int(words[1]), int(words[3])
    assert abs(col - 48) <= 1 and abs(row - 48) <= 1  # within a screen pixel of the pointer
    hu = float(text.split("·")[-1].replace("HU", ""))
    assert hu == pytest.approx(float(vp.volume.values(vp.slice_index)[row, col]))


def test_tab_moves_to_the_next_viewport(qtbot, win):
    win.set_layout("1x2")
    win.grid.viewports[0].setFocus()
    qtbot.keyClick(win.grid.viewports[0], Qt.Key.Key_Tab)
    assert win.grid.active is win.grid.viewports[1]


def test_tool_applies_to_every_viewport_and_toolbar_shows_it(qtbot, win):
    win.set_layout("2x2")
    vp = win.grid.active
    vp.setFocus()
    qtbot.keyClick(vp, Qt.Key.Key_L)
    assert all(v.tool == "length" for v in win.grid.viewports)
    assert win.tool_buttons["tool_length"].isChecked() and not win.tool_buttons["tool_pan"].isChecked()
    win.tool_buttons["tool_ellipse"].trigger()
    assert all(v.tool == "ellipse" for v in win.grid.viewports)
    qtbot.keyClick(win.grid.active, Qt.Key.Key_Escape)
    assert all(v.tool == "pan" for v in win.grid.viewports) and win.tool_buttons["tool_pan"].isChecked()


def test_double_click_maximises_and_restores_a_viewport(qtbot, win):
    win.set_layout("2x2")
    qtbot.waitUntil(lambda: not win.is_busy(), timeout=10_000)
    target = win.grid.viewports[2]
    quarter = target.size()
    qtbot.mouseDClick(target.view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(30, 30))
    assert win.grid.maximized is target and win.grid.active is target
    assert [v.isVisible() for v in win.grid.viewports] == [False, False, True, False]
    grid = win.grid.contentsRect().size()  # it fills the grid, not its quarter of it
    qtbot.waitUntil(lambda: target.width() > 0.9 * grid.width() and target.height() > 0.9 * grid.height(),
                    timeout=3000)
    qtbot.mouseDClick(target.view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(30, 30))
    assert win.grid.maximized is None and all(v.isVisible() for v in win.grid.viewports)
    qtbot.waitUntil(lambda: abs(target.width() - quarter.width()) <= 2 and abs(target.height() - quarter.height()) <= 2,
                    timeout=3000)


def test_a_maximised_viewport_of_a_side_by_side_layout_fills_the_grid(qtbot, win):
    win.set_layout("1x2")
    qtbot.waitUntil(lambda: not win.is_busy(), timeout=10_000)
    right = win.grid.viewports[1]
    half = right.width()
    qtbot.mouseDClick(right.view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(30, 30))
    assert win.grid.maximized is right
    qtbot.waitUntil(lambda: right.width() > 1.8 * half, timeout=3000)
    qtbot.mouseDClick(right.view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(30, 30))
    qtbot.waitUntil(lambda: abs(right.width() - half) <= 2, timeout=3000)


def test_page_down_with_one_series_keeps_the_view(qtbot, tmp_path):
    study = write_ct_study(tmp_path / "one", n_slices=4, size=64, seed=5)
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    w.open_paths([study])
    vp = w.grid.active
    qtbot.waitUntil(lambda: vp.volume is not None and not w.is_busy(), timeout=20_000)
    vp.add_measurement("length", (1, 1), (30, 1))
    vp.setFocus()
    qtbot.keyClick(vp, Qt.Key.Key_PageDown)
    assert len(vp.measurements.items) == 1
    assert "no other series" in w.statusBar().currentMessage()
    w.shutdown()
