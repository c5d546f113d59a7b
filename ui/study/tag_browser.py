"""DICOM tag browser: the header of the image on screen, searchable.

Sequences are shown as expandable rows. The header is re-read (pixels
skipped) only when the image changes and the panel is visible, a short moment
after scrolling stops, so scrolling never waits on it.

Values read as DICOM writes them (multiple values joined by a backslash:
``ORIGINAL\\PRIMARY\\AXIAL``, ``40\\-60``); a value too long for its column is cut with "…"
and shown whole in its tooltip, and Ctrl+C or the context menu copies it whole.
"""

from __future__ import annotations

import html
import logging
import warnings
from pathlib import Path

import pydicom
from pydicom.multival import MultiValue
from PySide6.QtCore import QEvent, QPoint, Qt, QTimer
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)

#: Longest value text put in the tree itself (the tooltip and a copy hold all of it).
MAX_VALUE_CHARS = 200
#: Longest value shown in a tooltip.
MAX_TOOLTIP_CHARS = 4000
TAG, NAME, VR, VALUE = range(4)
#: The whole value of a row (its column text may be cut).
FULL_VALUE = Qt.ItemDataRole.UserRole + 1
#: Narrower than this (px), the tree shows Name and Value only (the tag and VR are in the name's tooltip).
NARROW = 330


def _one_value(v) -> str:
    text = getattr(v, "original_string", None)  # DS / IS as the file wrote them ("40", not 40.0)
    if isinstance(text, str) and text:
        return text.strip()
    if isinstance(v, bytes):
        return v.decode("ascii", "replace")
    return str(v)


def value_text(elem: pydicom.DataElement) -> str:
    """The whole value as DICOM writes it: several values joined by backslashes."""
    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") and elem.tag != 0x00020010:
        try:
            return f"<{len(elem.value)} bytes>"
        except TypeError:
            return "<binary>"
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(_one_value(v) for v in value)
    return _one_value(value)


def _short(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def _tooltip(text: str) -> str:
    """Rich text, so Qt wraps a long value instead of drawing one line across the screen."""
    if len(text) > MAX_TOOLTIP_CHARS:
        text = text[:MAX_TOOLTIP_CHARS] + "…"
    return f"<qt>{html.escape(text)}</qt>" if text else ""


def _row(values: list[str], full: str) -> QTreeWidgetItem:
    item = QTreeWidgetItem(values)
    item.setData(VALUE, FULL_VALUE, full)
    item.setToolTip(VALUE, _tooltip(full))
    item.setToolTip(NAME, "  ".join(x for x in (values[TAG], values[NAME], values[VR]) if x))
    return item


def _add_elements(parent, dataset) -> None:
    for elem in dataset:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            count = f"{len(elem.value)} item(s)"
            item = _row([tag, elem.name, "SQ", count], count)
            for i, sub in enumerate(elem.value):
                sub_item = QTreeWidgetItem(["", f"Item {i + 1}", "", ""])
                _add_elements(sub_item, sub)
                item.addChild(sub_item)
        else:
            full = value_text(elem)
            item = _row([tag, elem.name, str(elem.VR), _short(full)], full)
        _append(parent, item)


def _append(parent, item: QTreeWidgetItem) -> None:
    if isinstance(parent, QTreeWidget):
        parent.addTopLevelItem(item)
    else:
        parent.addChild(item)


class TagBrowser(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search tags (name, number or value)…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._filter)
        self.source = QLabel("")
        self.source.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.tree = QTreeWidget()
        self.tree.setColumnCount(4)
        self.tree.setHeaderLabels(["Tag", "Name", "VR", "Value"])
        self.tree.setUniformRowHeights(True)
        self.tree.setIndentation(12)  # room for the value: sequences still get their arrows
        self.tree.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.tree.header().setStretchLastSection(True)
        self.tree.header().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        fm = self.tree.fontMetrics()
        self.tree.setColumnWidth(TAG, fm.horizontalAdvance("(0000,0000)") + 2 * self.tree.indentation())
        self.tree.setColumnWidth(VR, fm.horizontalAdvance("VRW") + 6)
        self._name_width = fm.horizontalAdvance("Referring Physician's Name") + 8
        self.tree.installEventFilter(self)
        self._fit_columns()
        self.copy_action = QAction("Copy value", self.tree)
        self.copy_action.setShortcut(QKeySequence.StandardKey.Copy)
        self.copy_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.copy_action.triggered.connect(lambda: self.copy_value())
        self.tree.addAction(self.copy_action)
        self.copy_row_action = QAction("Copy tag, name and value", self.tree)
        self.copy_row_action.triggered.connect(lambda: self.copy_value(whole_row=True))
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.search)
        layout.addWidget(self.source)
        layout.addWidget(self.tree)
        self._path: Path | None = None
        self._frame = 0
        self._pending: tuple[Path, int] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(120)
        self._timer.timeout.connect(self._load_pending)

    @property
    def path(self) -> Path | None:
        return self._path

    # -- columns, copying ----------------------------------------------------------------------

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if obj is self.tree and event.type() == QEvent.Type.Resize:
            self._fit_columns()
        return False

    def _fit_columns(self) -> None:
        """The value gets the room: tag and VR keep their width (hidden in a narrow panel), the name
        takes at most 40% of what is left, the value the rest (cut with "…", whole in its tooltip)."""
        width = self.tree.width() - self.tree.verticalScrollBar().sizeHint().width() - 2 * self.tree.frameWidth()
        narrow = width < NARROW
        self.tree.setColumnHidden(TAG, narrow)
        self.tree.setColumnHidden(VR, narrow)
        self.tree.setTreePosition(NAME if narrow else TAG)  # the expand arrows of sequences stay visible
        avail = width - (0 if narrow else self.tree.columnWidth(TAG) + self.tree.columnWidth(VR))
        self.tree.setColumnWidth(NAME, max(60, min(self._name_width, int(avail * 0.4))))

    def value_of(self, item: QTreeWidgetItem | None) -> str:
        """The whole value of a row (its column may show it cut)."""
        if item is None:
            return ""
        full = item.data(VALUE, FULL_VALUE)
        return str(full) if full is not None else item.text(VALUE)

    def copy_value(self, item: QTreeWidgetItem | None = None, whole_row: bool = False) -> str:
        """Put the value of ``item`` (default: the current row) on the clipboard; the text copied."""
        item = item if item is not None else self.tree.currentItem()
        if item is None:
            return ""
        text = self.value_of(item)
        if whole_row:
            text = "\t".join(x for x in (item.text(TAG), item.text(NAME), item.text(VR), text) if x)
        QGuiApplication.clipboard().setText(text)
        return text

    def context_menu(self, item: QTreeWidgetItem | None) -> QMenu:
        """The menu a right click on ``item`` opens (copy its value, or the whole row)."""
        menu = QMenu(self.tree)
        copy = menu.addAction("Copy value", lambda: self.copy_value(item))
        copy.setShortcut(QKeySequence.StandardKey.Copy)
        menu.addAction("Copy tag, name and value", lambda: self.copy_value(item, whole_row=True))
        for act in menu.actions():
            act.setEnabled(item is not None)
        return menu

    def _context_menu(self, pos: QPoint) -> None:
        item = self.tree.itemAt(pos)
        if item is not None:
            self.tree.setCurrentItem(item)
        self.context_menu(item).exec(self.tree.viewport().mapToGlobal(pos))

    def show_instance(self, path: Path | None, frame: int = 0, immediately: bool = False) -> None:
        """Show the header of ``path`` (``frame``: index inside a multi-frame file)."""
        if path is None:
            self.tree.clear()
            self.source.setText("")
            self._path = None
            return
        self._pending = (Path(path), frame)
        if immediately:
            self._load_pending()
        else:
            self._timer.start()

    def flush(self) -> None:
        """Show a pending header now instead of after the scroll pause (screenshots)."""
        self._timer.stop()
        self._load_pending()

    def _load_pending(self) -> None:
        if self._pending is None:
            return
        path, frame = self._pending
        self._pending = None
        self.source.setText(f"{path.name}" + (f"  ·  frame {frame + 1}" if frame else ""))
        if path == self._path:
            return
        self._path = path
        self.tree.clear()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception as exc:  # noqa: BLE001 - shown as a line, not raised
            log.info("tag browser: cannot read %s: %s", path, exc)
            self.tree.addTopLevelItem(_row(["", "Header could not be read", "", str(exc)[:120]], str(exc)))
            return
        if getattr(ds, "file_meta", None) is not None:
            _add_elements(self.tree, ds.file_meta)
        _add_elements(self.tree, ds)
        self._filter(self.search.text())

    def _filter(self, text: str) -> None:
        needle = text.strip().lower()

        def visit(item: QTreeWidgetItem) -> bool:
            own = not needle or any(needle in item.text(c).lower() for c in range(4))
            child_match = False
            for i in range(item.childCount()):
                child_match |= visit(item.child(i))
            visible = own or child_match
            item.setHidden(not visible)
            if needle and child_match:
                item.setExpanded(True)
            return visible

        for i in range(self.tree.topLevelItemCount()):
            visit(self.tree.topLevelItem(i))

    def visible_rows(self) -> list[tuple[str, str, str]]:
        """(tag, name, value) of the top-level rows now shown (for tests)."""
        out = []
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if not item.isHidden():
                out.append((item.text(0), item.text(1), item.text(3)))
        return out
