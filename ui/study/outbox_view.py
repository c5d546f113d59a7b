"""The outbox, visible: what signed results wait to go to the PACS, what went, what failed and why.

A table of the outbox's items (newest first: file, kind, node, state, attempts, last error, when)
that follows the database, and "Retry failed", which puts failed items back for the background
sender (:class:`app.studies.outbox.OutboxSender`) at once. The same list is ``xmedgpt pacs outbox``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

COLUMNS = ("File", "Kind", "Node", "State", "Tries", "Last error", "Updated")
STATE_COLOR = {"sent": QColor(39, 174, 96), "failed": QColor(214, 48, 49), "pending": QColor(240, 165, 0),
               "sending": QColor(90, 160, 230)}
POLL_MS = 1000


class OutboxView(QWidget):
    def __init__(self, outbox: Any, parent: QWidget | None = None, *, limit: int = 200) -> None:
        super().__init__(parent)
        self.outbox = outbox
        self.limit = limit
        self.summary = QLabel(objectName="outbox_summary")
        self.table = QTableWidget(0, len(COLUMNS), self, objectName="outbox_table")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setColumnWidth(0, 220)
        self.retry_button = QPushButton("Retry failed", objectName="outbox_retry")
        self.retry_button.setToolTip("Send the failed and waiting items again now")
        buttons = QHBoxLayout()
        buttons.addWidget(self.summary, 1)
        buttons.addWidget(self.retry_button)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table, 1)
        lay.addLayout(buttons)
        self.retry_button.clicked.connect(self.retry)
        self._stamp: object = None
        self._timer = QTimer(self, interval=POLL_MS)
        self._timer.timeout.connect(self._poll)
        self._timer.start()
        self.refresh()

    def _poll(self) -> None:
        try:
            stamp = self.outbox.db.change_stamp()
        except Exception:  # noqa: BLE001 - closed while shutting down
            return
        if stamp != self._stamp:
            self.refresh()

    def refresh(self) -> None:
        self._stamp = self.outbox.db.change_stamp()
        items = self.outbox.items(limit=self.limit)
        counts = self.outbox.counts()
        self.summary.setText(", ".join(f"{n} {state}" for state, n in counts.items() if n) or "Nothing to send.")
        self.retry_button.setEnabled(bool(counts.get("failed") or counts.get("pending")))
        self.table.setRowCount(len(items))
        for r, it in enumerate(items):
            state = it.state
            if state == "pending" and it.attempts:
                wait = max(0, round(it.next_attempt - time.time()))
                state = f"pending (again in {wait} s)" if wait else "pending"
            cells = (Path(it.path).name, it.kind, f"{it.node} ({'STOW' if it.via == 'dicomweb' else 'C-STORE'})",
                     state, str(it.attempts), it.last_error if it.state != "sent" else "",
                     (it.sent_at or it.updated_at).replace("T", " ")[:19])
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, it.id)
                if c == 3:
                    item.setForeground(QBrush(STATE_COLOR.get(it.state, QColor(200, 200, 200))))
                if c in (0, 5):
                    item.setToolTip(it.path if c == 0 else it.last_error)
                self.table.setItem(r, c, item)

    def retry(self) -> int:
        n = self.outbox.retry()
        self.refresh()
        return n

    def states(self) -> dict[int, str]:
        """Item id → state as shown (tests)."""
        return {int(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole)): self.table.item(r, 3).text()
                for r in range(self.table.rowCount())}
