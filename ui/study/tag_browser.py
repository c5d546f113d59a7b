"""DICOM tag browser: the header of the image on screen, searchable.

Sequences are shown as expandable rows. The header is re-read (pixels
skipped) only when the image changes and the panel is visible, a short moment
after scrolling stops, so scrolling never waits on it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QLabel,
    QLineEdit,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)

MAX_VALUE_CHARS = 200


def _value_text(elem: pydicom.DataElement) -> str:
    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") and elem.tag != 0x00020010:
        try:
            return f"<{len(elem.value)} bytes>"
        except TypeError:
            return "<binary>"
    text = str(elem.value) if elem.value is not None else ""
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + "…"


def _add_elements(parent, dataset) -> None:
    for elem in dataset:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            item = QTreeWidgetItem([tag, elem.name, "SQ", f"{len(elem.value)} item(s)"])
            for i, sub in enumerate(elem.value):
                sub_item = QTreeWidgetItem(["", f"Item {i + 1}", "", ""])
                _add_elements(sub_item, sub)
                item.addChild(sub_item)
        else:
            item = QTreeWidgetItem([tag, elem.name, str(elem.VR), _value_text(elem)])
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
        fm = self.tree.fontMetrics()
        self.tree.setColumnWidth(0, fm.horizontalAdvance("(0000,0000)") + 2 * self.tree.indentation())
        self.tree.setColumnWidth(1, fm.horizontalAdvance("Referring Physician's Name") + 8)
        self.tree.setColumnWidth(2, fm.horizontalAdvance("VRW") + 6)
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
            self.tree.addTopLevelItem(QTreeWidgetItem(["", "Header could not be read", "", str(exc)[:120]]))
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
