"""The tag browser reads like DICOM and shows whole values (issue #20, item 3): multi-values in
backslash form (ORIGINAL\\PRIMARY\\AXIAL, 40\\-60), not Python lists; a value too long for its
column is cut with "…" and whole in its tooltip; Ctrl+C and the context menu copy it whole.

Screenshot: test-output/tag_browser.png."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QTreeWidgetItem

from ui.shell.app_setup import SAMPLE
from ui.study.tag_browser import NAME, TAG, VALUE, VR, TagBrowser

LONG_COMMENT = "Reconstructed with a soft kernel; contrast 90 s after injection; " * 4


@pytest.fixture
def dicom_file(tmp_path) -> Path:
    """A sample slice with a window stored as the scanner writes it ("40\\-60") and a long comment."""
    ds = pydicom.dcmread(sorted(SAMPLE.glob("*.dcm"))[0])
    ds.WindowCenter = ["40", "-60"]
    ds.WindowWidth = ["400", "1500"]
    ds.ImageComments = LONG_COMMENT.strip()
    path = tmp_path / "slice.dcm"
    ds.save_as(path)
    return path


@pytest.fixture
def browser(qtbot, dicom_file) -> TagBrowser:
    tb = TagBrowser()
    qtbot.addWidget(tb)
    tb.resize(423, 640)  # the width of the right-hand column it shares with the assistant
    tb.show()
    qtbot.waitExposed(tb)
    tb.show_instance(dicom_file, immediately=True)
    return tb


def row(tb: TagBrowser, name: str) -> QTreeWidgetItem:
    items = tb.tree.findItems(name, Qt.MatchFlag.MatchExactly, NAME)
    assert items, name
    return items[0]


def test_multi_values_read_as_dicom_writes_them(browser):
    assert row(browser, "Image Type").text(VALUE) == "ORIGINAL\\PRIMARY\\AXIAL"
    assert row(browser, "Window Center").text(VALUE) == "40\\-60"
    assert row(browser, "Window Width").text(VALUE) == "400\\1500"
    assert row(browser, "Pixel Spacing").text(VALUE) == "0.742188\\0.742188"
    assert row(browser, "Patient's Name").text(VALUE) == "PHANTOM^CHEST"
    assert not any(r[2].startswith("[") for r in browser.visible_rows()), "no Python list form"


def test_the_value_column_gets_the_room_and_long_values_their_tooltip(browser, output_dir):
    tree = browser.tree
    widths = [tree.columnWidth(c) for c in (TAG, NAME, VR, VALUE)]
    assert widths[VALUE] == max(widths) and widths[VALUE] >= 150, widths  # the reader's "about five characters"
    comment = row(browser, "Image Comments")
    assert comment.toolTip(VALUE).replace("&#x27;", "'").removeprefix("<qt>").removesuffix("</qt>") \
        == LONG_COMMENT.strip(), "the whole value in the tooltip"
    assert browser.value_of(comment) == LONG_COMMENT.strip()
    tree.scrollToItem(row(browser, "Window Center"))
    path = output_dir / "tag_browser.png"
    assert browser.grab().save(str(path))


def test_a_narrow_panel_shows_name_and_value(browser, qtbot):
    browser.resize(220, 640)
    qtbot.wait(10)
    assert browser.tree.isColumnHidden(TAG) and browser.tree.isColumnHidden(VR)
    assert "(0008,0008)" in row(browser, "Image Type").toolTip(NAME), "the tag number stays in the tooltip"
    browser.resize(423, 640)
    qtbot.wait(10)
    assert not browser.tree.isColumnHidden(TAG) and not browser.tree.isColumnHidden(VR)


def test_ctrl_c_copies_the_whole_value(browser, qtbot):
    clipboard = QGuiApplication.clipboard()
    clipboard.setText("")
    browser.tree.setCurrentItem(row(browser, "Image Comments"))
    browser.tree.setFocus()
    qtbot.keyClick(browser.tree, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert clipboard.text() == LONG_COMMENT.strip()


def test_the_context_menu_copies_a_value_or_the_row(browser):
    clipboard = QGuiApplication.clipboard()
    item = row(browser, "Image Type")
    menu = browser.context_menu(item)
    actions = {a.text(): a for a in menu.actions()}
    assert set(actions) == {"Copy value", "Copy tag, name and value"}
    actions["Copy value"].trigger()
    assert clipboard.text() == "ORIGINAL\\PRIMARY\\AXIAL"
    actions["Copy tag, name and value"].trigger()
    assert clipboard.text() == "(0008,0008)\tImage Type\tCS\tORIGINAL\\PRIMARY\\AXIAL"
    assert not any(a.isEnabled() for a in browser.context_menu(None).actions())


def test_right_click_selects_the_row_it_copies(browser, qtbot, monkeypatch):
    item = row(browser, "Window Center")
    rect = browser.tree.visualItemRect(item)
    opened = []
    monkeypatch.setattr(TagBrowser, "context_menu", lambda self, it: opened.append(it) or _Shown())
    browser.tree.customContextMenuRequested.emit(QPoint(rect.center()))
    assert opened == [item] and browser.tree.currentItem() is item


class _Shown:
    def exec(self, *_):
        return None
