"""Files that could not be read, and what was noticed about series, in a table."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from app.dicom.model import ScanResult


def problem_rows(result: ScanResult | None, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(what, reason) rows: unreadable files, then series warnings and per-series file problems."""
    rows: list[tuple[str, str]] = []
    if result is not None:
        rows += [(str(p.path), p.reason) for p in result.problems]
        for s in result.all_series():
            name = f"Series {s.number}: {s.description}" if s.number is not None else f"Series {s.description}"
            rows += [(name, w) for w in s.warnings]
            rows += [(str(p.path), p.reason) for p in s.problems]
    rows += extra or []
    return rows


class ProblemsDialog(QDialog):
    def __init__(self, rows: list[tuple[str, str]], parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Problems found in this study")
        self.resize(820, 420)
        table = QTableWidget(len(rows), 2)
        table.setHorizontalHeaderLabels(["File or series", "Reason"])
        for r, (what, why) in enumerate(rows):
            table.setItem(r, 0, QTableWidgetItem(what))
            table.setItem(r, 1, QTableWidgetItem(why))
        table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        table.setColumnWidth(0, 380)
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table = table
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        summary = "Nothing to report." if not rows else f"{len(rows)} problem(s). The rest of the study opened normally."
        layout.addWidget(QLabel(summary))
        layout.addWidget(table)
        layout.addWidget(buttons)
