"""A layout for reading (issue #20, items 2, 7 and 11): an Edit menu with measurement undo/redo,
every dock listed in the View menu, default docks that leave the images at least 60% of the
window, and a Reading mode (F11 / Ctrl+Shift+R) that gives the images the window and brings the
panels back on the second press.

Screenshots: test-output/reading_layout_docks.png, test-output/reading_mode.png."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from app.core.settings import Settings
from app.models.registry import ModelRegistry
from tests.app.assistant.test_ask import ScriptedEngine
from tests.app.report.test_session import ANSWER
from tests.ui.report.test_flow import settings_in
from ui.shell.app_setup import SAMPLE
from ui.shell.assistant_setup import install_assistant
from ui.shell.help_dialog import shortcuts_html
from ui.shell.main_window import MainWindow
from ui.shell.screenshot import grab, wait_until_idle
from ui.shortcuts import shortcuts_markdown


def menu(win: MainWindow, title: str):
    for act in win.menuBar().actions():
        if act.text().replace("&", "") == title:
            return act.menu()
    raise AssertionError(f"no {title} menu")


def entries(m) -> list[str]:
    return [a.text().split("\t")[0] for a in m.actions() if not a.isSeparator()]


@pytest.fixture
def full(qtbot, tmp_path):
    """The window as the launcher builds it: assistant (scripted engine), report, 1600 × 1000, 1×2."""
    win = MainWindow()
    qtbot.addWidget(win)
    install_assistant(win, settings=Settings(reliability_samples=3, reliability_questions=1),
                      registry=ModelRegistry(tmp_path / "registry.json"), engine=ScriptedEngine(ANSWER))
    win.attach_report(settings_in(tmp_path))
    win.resize(1600, 1000)
    win.show()
    qtbot.waitExposed(win)
    win.set_layout("1x2")
    win.open_paths([SAMPLE])
    assert wait_until_idle(win, 60)
    qtbot.wait(50)
    yield win
    win.shutdown()


def test_the_view_menu_lists_every_panel(full):
    view = entries(menu(full, "View"))
    for title in ("Series", "DICOM tags", "Assistant", "Report"):
        assert title in view, view
    assert [d.windowTitle() for d in full.docks] == ["Series", "DICOM tags", "Assistant", "Report"]


def test_a_closed_panel_comes_back_from_the_view_menu(full, qtbot):
    dock = full.assistant_panel.parentWidget()
    dock.close()
    qtbot.waitUntil(lambda: not dock.isVisible())
    toggle = next(a for a in menu(full, "View").actions() if a.text() == "Assistant")
    toggle.trigger()
    qtbot.waitUntil(dock.isVisible)


def test_a_panel_added_later_gets_its_toggle(full):
    dock = full.add_panel(QLabel("later"), "Key images")
    assert "Key images" in entries(menu(full, "View"))
    assert dock.toggleViewAction() in menu(full, "View").actions()


def test_default_docks_leave_the_images_at_least_60_percent(full, output_dir):
    share = full.grid.width() / full.width()
    grab(full, output_dir / "reading_layout_docks.png")
    assert share >= 0.60, f"the images get {share:.0%} of the window"
    assert all(vp.zoom > 0.85 for vp in full.grid.visible()), [vp.zoom for vp in full.grid.visible()]
    assert full.browser_dock.isVisible() and full.assistant_panel.isVisible()


def test_reading_mode_gives_the_images_the_window_and_comes_back(full, qtbot, output_dir):
    before = {d.windowTitle() for d in full.docks if d.isVisible()}
    zoom_before = full.grid.visible()[0].zoom
    qtbot.keyClick(full, Qt.Key.Key_F11)
    qtbot.waitUntil(lambda: not any(d.isVisible() for d in full.docks))
    assert full.reading_mode and not full.toolbar.isVisible()
    assert full.actions_by_name["reading_mode"].isChecked()
    qtbot.waitUntil(lambda: full.grid.width() >= 0.97 * full.width())
    for vp in full.grid.visible():
        vp.fit()
    assert full.grid.visible()[0].zoom > zoom_before * 1.3
    grab(full, output_dir / "reading_mode.png")
    assert "Reading mode" in entries(menu(full, "View"))

    qtbot.keyClick(full, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: {d.windowTitle() for d in full.docks if d.isVisible()} == before)
    assert not full.reading_mode and full.toolbar.isVisible()
    assert not full.actions_by_name["reading_mode"].isChecked()
    assert full.grid.width() / full.width() >= 0.60


def test_edit_menu_undoes_and_redoes_measurements(full):
    edit = menu(full, "Edit")
    assert entries(edit)[:2] == ["Undo", "Redo"]
    undo, redo = full.actions_by_name["undo_measurement"], full.actions_by_name["redo_measurement"]
    assert not undo.isEnabled() and not redo.isEnabled()
    vp = full.grid.active
    vp.add_measurement("length", (100, 100), (200, 100))
    assert undo.isEnabled() and undo.text() == "Undo add length\tCtrl+Z"
    undo.trigger()
    assert vp.measurements.items == []
    assert redo.isEnabled() and redo.text() == "Redo add length\tCtrl+Y / Ctrl+Shift+Z" and not undo.isEnabled()
    redo.trigger()
    assert len(vp.measurements.items) == 1
    # Edit follows the active viewport
    full.grid.set_active(full.grid.viewports[1])
    assert not undo.isEnabled()
    full.grid.set_active(vp)
    assert undo.isEnabled()
    vp.confirm = lambda *_: True
    full.actions_by_name["clear_measurements"].trigger()
    assert vp.measurements.items == [] and undo.text().startswith("Undo delete all measurements")


def test_help_readme_and_the_action_registry_list_the_new_keys(full):
    html, md = shortcuts_html(), shortcuts_markdown()
    for keys in ("Ctrl+Z", "Ctrl+Y / Ctrl+Shift+Z", "F11 / Ctrl+Shift+R"):
        assert keys in html and keys in md
    assert {"undo_measurement", "redo_measurement", "reading_mode", "clear_measurements"} <= set(full.actions.names())
    assert full.actions.run("reading_mode") and full.reading_mode
    assert full.actions.run("reading_mode") and not full.reading_mode
