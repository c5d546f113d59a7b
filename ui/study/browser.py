"""Study browser: Patient → Study → Series tree with thumbnails.

Series are identified by their index in ``ScanResult.all_series()``; a
double-click or a drag onto a viewport opens one.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QByteArray, QMimeData, QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QTreeWidget, QTreeWidgetItem

from app.dicom.model import ScanResult, Series
from app.core.names import NameStyle, display_date, person_name
from ui.viewer.viewport import SERIES_MIME

THUMB = 64
_INDEX_ROLE = Qt.ItemDataRole.UserRole + 1


def array_to_pixmap(img: np.ndarray) -> QPixmap:
    """uint8 grey (rows, cols) or RGB (rows, cols, 3) → QPixmap (copies the data)."""
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    if img.ndim == 2:
        qimg = QImage(img.data, w, h, img.strides[0], QImage.Format.Format_Grayscale8)
    else:
        qimg = QImage(img.data, w, h, img.strides[0], QImage.Format.Format_RGB888)
    return QPixmap.fromImage(qimg.copy())


def series_title(s: Series) -> str:
    number = f"{s.number}: " if s.number is not None else ""
    desc = s.description or "(no description)"
    return f"{number}{desc}"


def series_detail(s: Series) -> str:
    n = s.frame_count
    parts = [s.modality or "?", f"{n} image{'s' if n != 1 else ''}"]
    if s.warnings:
        parts.append(f"⚠ {len(s.warnings)}")
    return "  ·  ".join(parts)


class StudyBrowser(QTreeWidget):
    series_activated = Signal(int)  # index in ScanResult.all_series()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setHeaderHidden(True)
        self.setColumnCount(1)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setUniformRowHeights(False)
        self.setIndentation(12)
        self.itemActivated.connect(self._activated)
        self.itemDoubleClicked.connect(self._activated)
        self._series_items: list[QTreeWidgetItem] = []
        self._current: int | None = None

    def set_result(self, result: ScanResult) -> None:
        self.clear()
        self._series_items = []
        index = 0
        placeholder = QPixmap(THUMB, THUMB)
        placeholder.fill(QColor(30, 30, 30))
        for patient in result.patients:
            name = person_name(patient.name, NameStyle.LIST) or "(no name)"
            p_item = QTreeWidgetItem([f"{name}  ·  {patient.id}" if patient.id else name])
            p_item.setToolTip(0, f"Patient {name}\nID {patient.id}\nBorn {display_date(patient.birth_date)} {patient.sex}")
            self.addTopLevelItem(p_item)
            for study in patient.studies:
                label = "  ".join(x for x in (display_date(study.date), study.description or "(no description)") if x)
                st_item = QTreeWidgetItem([label])
                st_item.setToolTip(0, f"Study {study.description}\nAccession {study.accession}\nUID {study.uid}")
                p_item.addChild(st_item)
                for s in study.series:
                    item = QTreeWidgetItem([f"{series_title(s)}\n{series_detail(s)}"])
                    item.setData(0, _INDEX_ROLE, index)
                    item.setIcon(0, QIcon(placeholder))
                    tip = [series_title(s), series_detail(s), *s.warnings]
                    tip += [f"{p.path.name}: {p.reason}" for p in s.problems]
                    item.setToolTip(0, "\n".join(tip))
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsDragEnabled)
                    st_item.addChild(item)
                    self._series_items.append(item)
                    index += 1
        self.expandAll()

    def set_thumbnail(self, index: int, img: np.ndarray) -> None:
        if 0 <= index < len(self._series_items):
            pix = array_to_pixmap(img).scaled(
                THUMB, THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
            self._series_items[index].setIcon(0, QIcon(pix))

    def has_thumbnail(self, index: int) -> bool:
        icon = self._series_items[index].icon(0)
        img = icon.pixmap(THUMB, THUMB).toImage()
        return img.pixelColor(img.width() // 2, img.height() // 2) != QColor(30, 30, 30)

    def mark_current(self, index: int | None) -> None:
        """Bold the series shown in the active viewport."""
        for i, item in enumerate(self._series_items):
            font = item.font(0)
            font.setBold(i == index)
            item.setFont(0, font)
        self._current = index
        if index is not None and 0 <= index < len(self._series_items):
            self.setCurrentItem(self._series_items[index])

    def series_count(self) -> int:
        return len(self._series_items)

    def item_for(self, index: int) -> QTreeWidgetItem:
        return self._series_items[index]

    def _activated(self, item: QTreeWidgetItem, _column: int = 0) -> None:
        index = item.data(0, _INDEX_ROLE)
        if index is not None:
            self.series_activated.emit(int(index))

    def mimeData(self, items) -> QMimeData:  # noqa: N802 (Qt API)
        data = QMimeData()
        for item in items:
            index = item.data(0, _INDEX_ROLE)
            if index is not None:
                data.setData(SERIES_MIME, QByteArray(str(int(index)).encode()))
                data.setText(item.text(0).split("\n")[0])
                break
        return data

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return [SERIES_MIME]
