"""The report editor: findings to accept, reject or edit, the impression, undo/redo and sign-off.

Shows an :class:`app.report.draft.DraftReport` and turns clicks into its methods; all
rules (what can be signed, what an edit does) live there. Text typed into a
finding or the impression becomes one edit when the reader pauses
(``COMMIT_MS``), moves to another finding, or signs, so undo steps back a phrase,
not a keystroke.

Signals for the main window: ``finding_selected(finding_id, slice_index)`` to
jump to the finding's slice and highlight its box (slice -1: no box), and
``signed()`` after a successful sign-off. ``problem(str)`` carries messages for
the status bar. ``draw_finding(bool)``: the reader wants to (or no longer wants to)
draw a box in the viewport for a new finding; ``export_draft()``: write the
draft's SR and PDF now.
"""

from __future__ import annotations

from PySide6.QtCore import QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QTextCursor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name
from app.report.display import sentence_reliability
from app.report.draft import (
    DraftReport,
    Edit,
    Finding,
    FindingStatus,
    Origin,
)
from app.report.export.text import render_text
from ui.report.pdf_export import study_label

COMMIT_MS = 800

#: reliability tier → row tint (light, so text stays readable)
TIER_TINT = {"green": QColor(220, 242, 220), "amber": QColor(252, 236, 204), "red": QColor(248, 215, 215)}
STATUS_MARK = {
    FindingStatus.PROPOSED: "?",
    FindingStatus.ACCEPTED: "✓",
    FindingStatus.EDITED: "✎",
    FindingStatus.REJECTED: "✗",
}


class ReportPanel(QWidget):
    finding_selected = Signal(str, int)
    signed = Signal()
    problem = Signal(str)
    draw_finding = Signal(bool)
    export_draft = Signal()

    def __init__(self, report: DraftReport, reader_name: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.report = report
        self.reader_name = reader_name
        self._pending: tuple[str, str | None] | None = None  # ("finding", id) or ("impression", None)
        self._commit_timer = QTimer(self, singleShot=True, interval=COMMIT_MS)
        self._commit_timer.timeout.connect(self.commit_pending)

        self.header = QLabel()
        self.header.setWordWrap(True)
        self.findings = QListWidget()
        self.findings.setWordWrap(True)
        self.findings.setMinimumHeight(120)  # about four findings, also when docked under the assistant
        self.findings.currentRowChanged.connect(self._on_row)
        self.finding_text = QPlainTextEdit()
        self.finding_text.setPlaceholderText("Select a finding to edit its text.")
        self.finding_text.setMaximumHeight(64)
        self.finding_text.textChanged.connect(lambda: self._typed("finding"))
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        self.add_button = QPushButton("Add finding")
        self.accept_button.clicked.connect(lambda: self._decide(self.report.accept))
        self.reject_button.clicked.connect(lambda: self._decide(self.report.reject))
        self.add_button.clicked.connect(self._add)
        self.draw_button = QPushButton("Draw finding")
        self.draw_button.setCheckable(True)
        self.draw_button.setToolTip("Draw a box on the image, then type the finding")
        self.draw_button.toggled.connect(self.draw_finding.emit)
        self.export_button = QPushButton("Export draft SR/PDF")
        self.export_button.clicked.connect(lambda: (self.commit_pending(), self.export_draft.emit()))
        self.impression = QPlainTextEdit()
        self.impression.setPlaceholderText("Impression")
        self.impression.setMaximumHeight(84)
        self.impression.textChanged.connect(lambda: self._typed("impression"))
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self.copy_button = QPushButton("Copy as text")
        self.sign_button = QPushButton("Sign")
        self.undo_button.clicked.connect(lambda: self._run(self.report.undo))
        self.redo_button.clicked.connect(lambda: self._run(self.report.redo))
        self.copy_button.clicked.connect(self.copy_to_clipboard)
        self.sign_button.clicked.connect(self.sign)
        self.blockers = QLabel()
        self.blockers.setWordWrap(True)

        decide = QHBoxLayout()
        for b in (self.accept_button, self.reject_button, self.add_button, self.draw_button):
            decide.addWidget(b)
        actions = QHBoxLayout()
        for b in (self.undo_button, self.redo_button, self.copy_button, self.sign_button):
            actions.addWidget(b)
        layout = QVBoxLayout(self)
        layout.addWidget(self.header)
        layout.addWidget(QLabel("Findings"))
        layout.addWidget(self.findings, 1)
        layout.addWidget(self.finding_text)
        layout.addLayout(decide)
        layout.addWidget(QLabel("Impression"))
        layout.addWidget(self.impression)
        layout.addLayout(actions)
        layout.addWidget(self.export_button)
        layout.addWidget(self.blockers)

        self._unsubscribe = report.subscribe(self._on_edit)
        self.destroyed.connect(lambda *_: self._unsubscribe())
        self.refresh()

    # ---- what the reader does ---------------------------------------------------------
    def select_finding(self, finding_id: str) -> None:
        """Select a finding (e.g. when its box is clicked in the viewport)."""
        for row, f in enumerate(self.report.findings):
            if f.id == finding_id:
                self.findings.setCurrentRow(row)
                return

    def current_finding(self) -> Finding | None:
        row = self.findings.currentRow()
        return self.report.findings[row] if 0 <= row < len(self.report.findings) else None

    def commit_pending(self) -> None:
        """Turn text typed since the last pause into one edit."""
        self._commit_timer.stop()
        pending, self._pending = self._pending, None
        if pending is None or self.report.signed:
            return
        kind, fid = pending
        if kind == "impression":
            self._run(lambda: self.report.set_impression(self.impression.toPlainText()))
        elif fid is not None and any(f.id == fid for f in self.report.findings):
            self._run(lambda: self.report.edit_text(fid, self.finding_text.toPlainText()))

    def sign(self) -> None:
        self.commit_pending()
        if self._run(lambda: self.report.sign(self.reader_name)):
            self.signed.emit()

    def copy_to_clipboard(self) -> str:
        self.commit_pending()
        text = render_text(self.report)
        QGuiApplication.clipboard().setText(text)
        return text

    def edit_new_finding(self, finding_id: str) -> None:
        """Select a finding just added (e.g. drawn in the viewport) with its text ready to type over."""
        self.select_finding(finding_id)
        self.finding_text.setFocus()
        self.finding_text.selectAll()

    # ---- display ----------------------------------------------------------------------
    def refresh(self) -> None:
        r = self.report
        s = r.study
        self.header.setText(" · ".join(x for x in (person_name(s.patient_name, NameStyle.FULL), s.patient_id,
                                                 study_label(s.modality, s.study_description),
                                                 display_date(s.study_date)) if x))
        row = self.findings.currentRow()
        with QSignalBlocker(self.findings):
            self.findings.clear()
            for f in r.findings:
                self.findings.addItem(self._item(f))
            self.findings.setCurrentRow(min(row, len(r.findings) - 1))
        self._show_current()
        if self._pending != ("impression", None) and self.impression.toPlainText() != r.impression:
            with QSignalBlocker(self.impression):
                self.impression.setPlainText(r.impression)
        self._tint_impression()
        editable = not r.signed
        self.impression.setReadOnly(not editable)
        self.add_button.setEnabled(editable)
        self.draw_button.setEnabled(editable)
        self.export_button.setEnabled(not r.signed)
        self.undo_button.setEnabled(r.can_undo)
        self.redo_button.setEnabled(r.can_redo)
        blockers = r.sign_blockers(self.reader_name)
        self.sign_button.setEnabled(not blockers)
        if r.signed:
            self.blockers.setText(f"Signed by {person_name(r.signature.reader_name, NameStyle.FULL)} at {r.signature.signed_at}.")
        else:
            self.blockers.setText(" ".join(blockers) if blockers else "Ready to sign.")

    def _tint_impression(self) -> None:
        """Tint each impression sentence that names a finding by that finding's reliability."""
        selections = []
        for start, end, tier in sentence_reliability(self.impression.toPlainText(), self.report.findings):
            sel = QTextEdit.ExtraSelection()
            cursor = QTextCursor(self.impression.document())
            cursor.setPosition(start)
            cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
            sel.cursor = cursor
            sel.format.setBackground(QBrush(TIER_TINT[tier.value]))
            sel.format.setForeground(QBrush(QColor(20, 20, 20)))
            selections.append(sel)
        self.impression.setExtraSelections(selections)

    def _item(self, f: Finding) -> QListWidgetItem:
        who = "AI" if f.origin is Origin.AI else "You"
        rel = f" · reliability {f.reliability.tier.value} {f.reliability.score:.2f}" if f.reliability else ""
        boxes = f" · {len(f.boxes)} box{'es' if len(f.boxes) != 1 else ''}" if f.boxes else ""
        item = QListWidgetItem(f"{STATUS_MARK[f.status]}  {f.text}\n      {who}{boxes}{rel}")
        item.setData(Qt.ItemDataRole.UserRole, f.id)
        if f.reliability is not None:
            item.setBackground(QBrush(TIER_TINT[f.reliability.tier.value]))
        if f.status is FindingStatus.REJECTED:
            font = item.font()
            font.setStrikeOut(True)
            item.setFont(font)
            item.setForeground(QBrush(QColor(120, 120, 120)))
        return item

    def _show_current(self) -> None:
        f = self.current_finding()
        editable = f is not None and not self.report.signed
        if not (self._pending and self._pending[0] == "finding"):
            with QSignalBlocker(self.finding_text):
                self.finding_text.setPlainText(f.text if f else "")
        self.finding_text.setReadOnly(not editable)
        self.accept_button.setEnabled(editable and f.status not in (FindingStatus.ACCEPTED, FindingStatus.EDITED))
        self.reject_button.setEnabled(editable and f.origin is Origin.AI and f.status is not FindingStatus.REJECTED)

    # ---- plumbing ---------------------------------------------------------------------
    def _on_row(self, row: int) -> None:
        if self._pending and self._pending[0] == "finding":
            self.commit_pending()
        self._show_current()
        f = self.current_finding()
        if f is not None:
            self.finding_selected.emit(f.id, f.boxes[0].slice_index if f.boxes else -1)

    def _typed(self, kind: str) -> None:
        if kind == "finding":
            f = self.current_finding()
            if f is None:
                return
            if self._pending and self._pending != ("finding", f.id):
                self.commit_pending()
            self._pending = ("finding", f.id)
        else:
            if self._pending and self._pending[0] == "finding":
                self.commit_pending()
            self._pending = ("impression", None)
            self._tint_impression()
        self._commit_timer.start()

    def _decide(self, action) -> None:
        self.commit_pending()
        f = self.current_finding()
        if f is not None:
            self._run(lambda: action(f.id))

    def _add(self) -> None:
        self.commit_pending()
        if self._run(lambda: self.report.add_finding("New finding")):
            self.findings.setCurrentRow(len(self.report.findings) - 1)
            self.finding_text.setFocus()
            self.finding_text.selectAll()

    def _run(self, fn) -> bool:
        try:
            fn()
        except XMedError as exc:
            self.problem.emit(str(exc))
            return False
        return True

    def _on_edit(self, report: DraftReport, edit: Edit) -> None:
        self.refresh()
