"""The report editor: indication, technique, comparison, findings to accept, reject or edit, the
impression, undo/redo, sign-off and addenda.

Shows an :class:`app.report.draft.DraftReport` and turns clicks into its methods; all
rules (what can be signed, what an edit does) live there. Text typed into a
section, a finding, the impression or an addendum becomes one edit when the reader
pauses (``COMMIT_MS``), moves to another finding, or signs, so undo steps back a phrase,
not a keystroke.

Signing asks first: a confirmation names the reader who signs and how many findings go
into the signed report (:meth:`ReportPanel.confirm`; :attr:`ReportPanel.auto_answer` answers
it without a dialog, for tests). A signed report does not change; "Add addendum" opens a
text box for an addendum, signed on its own ("Sign addendum", confirmed the same way).

The impression the AI drafted is a list of proposals, one row per sentence ("AI impression"):
the reader accepts or rejects each (one click each, audited); only accepted sentences and the
reader's own impression text are signed. A sentence with a guardrail warning or from a red
answer shows a ⚠ caution, a negative sentence ("No focal lesion.") beside an accepted finding is
marked as contradicting it; sign waits until every AI sentence is decided. The panel never
raises itself: when an answer updates the draft, :attr:`ReportPanel.status_line` says so.

Findings rows carry their reliability tier as a background with a text colour that keeps
WCAG AA contrast (≥ 4.5:1, :data:`TIER_TINT` / :data:`TIER_TEXT`), wrap to the panel's
width and show their whole text as a tooltip.

Signals for the main window: ``finding_selected(finding_id, slice_index)`` to
jump to the finding's slice and highlight its box (slice -1: no box), and
``signed()`` after a successful sign-off, ``addendum_signed(addendum_id)`` after an
addendum is signed. ``problem(str)`` carries messages for the status bar.
``draw_finding(bool)``: the reader wants to (or no longer wants to) draw a box in the
viewport for a new finding; ``export_draft()``: write the draft's SR and PDF now.
"""

from __future__ import annotations

from PySide6.QtCore import QSignalBlocker, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QTextCursor
from PySide6.QtWidgets import (
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name
from app.report.display import sentence_reliability, study_label
from app.report.draft import (
    SECTIONS,
    AiSentence,
    DraftReport,
    Edit,
    Finding,
    FindingStatus,
    Origin,
    SentenceStatus,
)
from app.report.export.text import render_text
from app.report.templates import heading, template_of

COMMIT_MS = 800

#: reliability tier → row background, and the text colour drawn on it: dark tints that sit in the
#: dark reading-room theme, light text on them, every pair at least 4.5:1 (WCAG AA; tests check it)
TIER_TINT = {"green": QColor(28, 74, 40), "amber": QColor(92, 62, 0), "red": QColor(96, 28, 28)}
TIER_TEXT = {"green": QColor(235, 247, 237), "amber": QColor(255, 243, 220), "red": QColor(253, 232, 232)}
#: a finding without a reliability (a reader's, or not assessed yet)
PLAIN_TINT, PLAIN_TEXT = QColor(37, 38, 42), QColor(224, 224, 224)
#: a rejected finding's text (struck out), on whichever background
REJECTED_TEXT = QColor(190, 190, 190)
STATUS_MARK = {
    FindingStatus.PROPOSED: "?",
    FindingStatus.ACCEPTED: "✓",
    FindingStatus.EDITED: "✎",
    FindingStatus.REJECTED: "✗",
}


SENTENCE_MARK = {SentenceStatus.PROPOSED: "?", SentenceStatus.ACCEPTED: "✓", SentenceStatus.REJECTED: "✗"}


def row_colours(f: Finding) -> tuple[QColor, QColor]:
    """(background, text) of a finding's row."""
    tier = f.reliability.tier.value if f.reliability is not None else None
    background = TIER_TINT.get(tier, PLAIN_TINT)
    text = REJECTED_TEXT if f.status is FindingStatus.REJECTED else TIER_TEXT.get(tier, PLAIN_TEXT)
    return background, text


def _short_editor(placeholder: str, lines: int) -> QPlainTextEdit:
    edit = QPlainTextEdit()
    edit.setPlaceholderText(placeholder)
    edit.setTabChangesFocus(True)
    edit.setMaximumHeight(edit.fontMetrics().lineSpacing() * lines + 14)
    return edit


class _VerticalScroll(QScrollArea):
    """Scrolls up and down only: as wide as its content needs (nothing cut off at the right in a narrow dock),
    as short as the dock allows."""

    def __init__(self) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is None:
            return hint
        return QSize(inner.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width(), hint.height())


class _ShortList(QListWidget):
    """A list that asks for the height of its rows, up to ``most`` px, and at least its minimum: inside the
    scrolling report the body is laid out at its preferred height, and a list's default (192 px, also when
    empty) made a 1600x1000 window's report scroll; the findings list takes whatever height is left (its
    stretch)."""

    def __init__(self, most: int = 0) -> None:
        super().__init__()
        self._most = most

    def sizeHint(self) -> QSize:
        least = self.minimumHeight()
        if self._most <= least:  # the findings list: its minimum whatever its rows (no need to measure them)
            return QSize(super().sizeHint().width(), least)
        rows = sum(self.sizeHintForRow(r) for r in range(self.count())) + 2 * self.frameWidth()
        return QSize(super().sizeHint().width(), max(least, min(rows, self._most)))


class ReportPanel(QWidget):
    finding_selected = Signal(str, int)
    signed = Signal()
    addendum_signed = Signal(str)
    problem = Signal(str)
    draw_finding = Signal(bool)
    export_draft = Signal()

    #: Test hook: True or False answers every confirmation (sign, sign addendum) without showing a
    #: dialog; None (the default) asks the reader.
    auto_answer: bool | None = None

    def __init__(self, report: DraftReport, reader_name: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.report = report
        self.reader_name = reader_name
        #: ("finding", id), ("impression", None), ("section", name) or ("addendum", id)
        self._pending: tuple[str, str | None] | None = None
        self.last_question = ""  # the text of the last confirmation asked (tests read it)
        self._commit_timer = QTimer(self, singleShot=True, interval=COMMIT_MS)
        self._commit_timer.timeout.connect(self.commit_pending)
        t = template_of(report)

        self.header = QLabel()
        self.header.setWordWrap(True)
        self.sections: dict[str, QPlainTextEdit] = {}
        for name in SECTIONS:
            edit = _short_editor(heading(t, name), 2)
            edit.setObjectName(f"section_{name}")
            edit.textChanged.connect(lambda name=name: self._typed("section", name))
            self.sections[name] = edit
        self.findings = _ShortList()
        self.findings.setWordWrap(True)  # long findings wrap to the panel's width ...
        self.findings.setResizeMode(QListView.ResizeMode.Adjust)  # ... again whenever it changes
        self.findings.setTextElideMode(Qt.TextElideMode.ElideRight)  # ... and a row taller than the list ends in "…"
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
        # the AI's impression: proposals, sentence by sentence
        self.ai_sentences_label = QLabel("AI impression — proposals: accept or reject each sentence")
        self.ai_sentences = _ShortList(most=150)
        self.ai_sentences.setObjectName("ai_sentences")
        self.ai_sentences.setWordWrap(True)
        self.ai_sentences.setResizeMode(QListView.ResizeMode.Adjust)
        self.ai_sentences.setMinimumHeight(72)
        self.ai_sentences.currentRowChanged.connect(lambda _row: self._show_current_sentence())
        self.accept_sentence_button = QPushButton("Accept sentence")
        self.reject_sentence_button = QPushButton("Reject sentence")
        self.accept_sentence_button.setToolTip("Take this AI sentence into the impression you sign")
        self.accept_sentence_button.clicked.connect(lambda: self._decide_sentence(self.report.accept_sentence))
        self.reject_sentence_button.clicked.connect(lambda: self._decide_sentence(self.report.reject_sentence))
        self.status_line = QLabel()
        self.status_line.setObjectName("draft_status")
        self.status_line.setWordWrap(True)
        self.impression = QPlainTextEdit()
        self.impression.setPlaceholderText("Impression (your own text)")
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
        # addenda: after signing
        self.addenda_view = QLabel()
        self.addenda_view.setObjectName("addenda")
        self.addenda_view.setWordWrap(True)
        self.addenda_view.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.addendum_button = QPushButton("Add addendum")
        self.addendum_button.setToolTip("The signed report stays as it is; the addendum is added to it and "
                                        "signed on its own")
        self.addendum_button.clicked.connect(self.add_addendum)
        self.addendum_text = _short_editor("Addendum: what is added to the signed report", 3)
        self.addendum_text.setObjectName("addendum_text")
        self.addendum_text.textChanged.connect(lambda: self._typed("addendum"))
        self.sign_addendum_button = QPushButton("Sign addendum")
        self.sign_addendum_button.clicked.connect(self.sign_addendum)

        sections = QFormLayout()
        sections.setContentsMargins(0, 0, 0, 0)
        for name, edit in self.sections.items():
            sections.addRow(heading(t, name), edit)
        decide = QHBoxLayout()
        for b in (self.accept_button, self.reject_button, self.add_button, self.draw_button):
            decide.addWidget(b)
        actions = QHBoxLayout()
        for b in (self.undo_button, self.redo_button, self.copy_button, self.sign_button):
            actions.addWidget(b)
        addendum = QHBoxLayout()
        addendum.addWidget(self.addendum_button)
        addendum.addWidget(self.sign_addendum_button)
        # the report scrolls inside its dock (on a 1366x768 screen it is taller than the dock: unscrolled, it made
        # the window 836 px high, its bottom off the screen); Sign and why it cannot be signed stay below it
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self.header)
        layout.addWidget(self.status_line)
        layout.addLayout(sections)
        layout.addWidget(QLabel(t.findings_heading))
        layout.addWidget(self.findings, 1)
        layout.addWidget(self.finding_text)
        layout.addLayout(decide)
        layout.addWidget(QLabel(t.impression_heading))
        layout.addWidget(self.ai_sentences_label)
        layout.addWidget(self.ai_sentences)
        decide_sentence = QHBoxLayout()
        decide_sentence.addWidget(self.accept_sentence_button)
        decide_sentence.addWidget(self.reject_sentence_button)
        layout.addLayout(decide_sentence)
        layout.addWidget(self.impression)
        layout.addWidget(self.export_button)
        layout.addWidget(self.addenda_view)
        layout.addWidget(self.addendum_text)
        layout.addLayout(addendum)
        self.scroll = _VerticalScroll()
        self.scroll.setWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll, 1)
        footer = QVBoxLayout()
        footer.setContentsMargins(9, 0, 9, 9)
        footer.addWidget(self.blockers)
        footer.addLayout(actions)
        outer.addLayout(footer)

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

    def select_sentence(self, sentence_id: str) -> None:
        for row, x in enumerate(self.report.ai_sentences):
            if x.id == sentence_id:
                self.ai_sentences.setCurrentRow(row)
                return

    def current_sentence(self) -> AiSentence | None:
        row = self.ai_sentences.currentRow()
        return self.report.ai_sentences[row] if 0 <= row < len(self.report.ai_sentences) else None

    def draft_updated(self, text: str = "Draft updated from the assistant's answer.") -> None:
        """Say that the draft changed in the background (the panel never raises itself)."""
        self.status_line.setText(text)

    def current_finding(self) -> Finding | None:
        row = self.findings.currentRow()
        return self.report.findings[row] if 0 <= row < len(self.report.findings) else None

    def commit_pending(self) -> None:
        """Turn text typed since the last pause into one edit."""
        self._commit_timer.stop()
        pending, self._pending = self._pending, None
        if pending is None:
            return
        kind, key = pending
        if kind == "addendum":
            a = self.report.pending_addendum()
            if a is not None and a.id == key:
                self._run(lambda: self.report.edit_addendum(a.id, self.addendum_text.toPlainText()))
            return
        if self.report.signed:
            return
        if kind == "impression":
            self._run(lambda: self.report.set_impression(self.impression.toPlainText()))
        elif kind == "section" and key in self.sections:
            self._run(lambda: self.report.set_section(key, self.sections[key].toPlainText()))
        elif kind == "finding" and key is not None and any(f.id == key for f in self.report.findings):
            self._run(lambda: self.report.edit_text(key, self.finding_text.toPlainText()))

    def confirm(self, title: str, question: str, yes: str) -> bool:
        """Ask the reader (``yes`` names the action); :attr:`auto_answer` answers without a dialog."""
        self.last_question = question
        if self.auto_answer is not None:
            return bool(self.auto_answer)
        box = QMessageBox(QMessageBox.Icon.Question, title, question, QMessageBox.StandardButton.Cancel, self)
        box.setObjectName("confirm")
        go = box.addButton(yes, QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is go

    def sign_question(self) -> str:
        r = self.report
        kept = len(r.included_findings())
        ai = sum(1 for x in r.ai_sentences if x.included)
        ai_line = (f"{ai} AI impression sentence{'s' if ai != 1 else ''} you accepted will be in it.\n"
                   if r.ai_sentences else "")
        rejected = sum(1 for f in r.findings if f.status is FindingStatus.REJECTED)
        left_out = f" ({rejected} rejected AI finding{'s' if rejected != 1 else ''} left out)" if rejected else ""
        empty = "" if r.impression_text().strip() else "The impression is empty: the report will say IMPRESSION: -.\n"
        return (f"Sign this report as {person_name(self.reader_name, NameStyle.FULL)}?\n\n"
                f"{kept} accepted finding{'s' if kept != 1 else ''} will be in the signed report{left_out}.\n"
                f"{_unconfirmed_line(r.included_findings())}"
                f"{ai_line}"
                f"{empty}"
                "A signed report cannot be changed; later corrections go into an addendum.")

    def sign(self) -> None:
        self.commit_pending()
        blockers = self.report.sign_blockers(self.reader_name)
        if blockers:
            self.problem.emit("Cannot sign yet: " + " ".join(blockers))
            return
        if not self.confirm("Sign the report", self.sign_question(), "Sign"):
            self.problem.emit("Not signed.")
            return
        if self._run(lambda: self.report.sign(self.reader_name)):
            self.signed.emit()

    def add_addendum(self) -> None:
        """Start an addendum to the signed report, with its text box ready to type."""
        if self._run(lambda: self.report.add_addendum("", self.reader_name)):
            self.addendum_text.setFocus()

    def sign_addendum(self) -> None:
        self.commit_pending()
        a = self.report.pending_addendum()
        if a is None:
            self.problem.emit("There is no addendum to sign; add one first.")
            return
        blockers = self.report.addendum_blockers(a.id, self.reader_name)
        if blockers:
            self.problem.emit("Cannot sign the addendum yet: " + " ".join(blockers))
            return
        n = len(self.report.signed_addenda()) + 1
        question = (f"Sign addendum {n} as {person_name(self.reader_name, NameStyle.FULL)}?\n\n"
                    "It is added to the signed report, which itself stays as it was signed.")
        if not self.confirm("Sign the addendum", question, "Sign addendum"):
            self.problem.emit("The addendum was not signed.")
            return
        if self._run(lambda: self.report.sign_addendum(a.id, self.reader_name)):
            self.addendum_signed.emit(a.id)

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

    def text_editors(self) -> list[QPlainTextEdit]:
        """Where dictated text can go, the fallback (impression, or the addendum once signed) last."""
        if self.report.signed:
            return [self.addendum_text] if self.report.pending_addendum() is not None else [self.impression]
        return [*self.sections.values(), self.finding_text, self.impression]

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
        self._show_sentences()
        if self._pending != ("impression", None) and self.impression.toPlainText() != r.impression:
            with QSignalBlocker(self.impression):
                self.impression.setPlainText(r.impression)
        for name, edit in self.sections.items():
            if self._pending != ("section", name) and edit.toPlainText() != r.section(name):
                with QSignalBlocker(edit):
                    edit.setPlainText(r.section(name))
            edit.setReadOnly(r.signed)
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
        self._show_addenda()

    def _show_sentences(self) -> None:
        r = self.report
        row = self.ai_sentences.currentRow()
        with QSignalBlocker(self.ai_sentences):
            self.ai_sentences.clear()
            for x in r.ai_sentences:
                self.ai_sentences.addItem(self._sentence_item(x))
            if r.ai_sentences:
                self.ai_sentences.setCurrentRow(min(max(row, 0), len(r.ai_sentences) - 1))
        self.ai_sentences.updateGeometry()  # its rows are its preferred height
        shown = bool(r.ai_sentences)
        for w in (self.ai_sentences_label, self.ai_sentences, self.accept_sentence_button,
                  self.reject_sentence_button):
            w.setVisible(shown)
        self._show_current_sentence()

    def _sentence_item(self, x: AiSentence) -> QListWidgetItem:
        r = self.report
        tier = r.sentence_tier(x)
        names = [f"{'AI' if f.origin is Origin.AI else 'You'} {n}" for n, f in enumerate(r.findings, 1)
                 if f.id in x.finding_ids]
        notes = ["AI sentence"]
        if names:
            notes.append("names " + ", ".join(names))
        if tier is not None:
            notes.append(f"reliability {tier.value}")
        if r.contradicts(x):
            notes.append("⚠ contradicts an accepted finding")
        if x.caution and x.status is not SentenceStatus.ACCEPTED:
            notes.append(f"⚠ {x.caution}")
        if x.status is SentenceStatus.ACCEPTED:
            notes.append("accepted by you")
        item = QListWidgetItem(f"{SENTENCE_MARK[x.status]}  {x.text}\n      " + " · ".join(notes))
        item.setToolTip(f"{x.text}\n" + " · ".join(notes) + f" · {x.status.value}")
        item.setData(Qt.ItemDataRole.UserRole, x.id)
        background = TIER_TINT.get(tier.value, PLAIN_TINT) if tier is not None else PLAIN_TINT
        foreground = (REJECTED_TEXT if x.status is SentenceStatus.REJECTED
                      else TIER_TEXT.get(tier.value, PLAIN_TEXT) if tier is not None else PLAIN_TEXT)
        item.setBackground(QBrush(background))
        item.setForeground(QBrush(foreground))
        if x.status is SentenceStatus.REJECTED:
            font = item.font()
            font.setStrikeOut(True)
            item.setFont(font)
        return item

    def _show_current_sentence(self) -> None:
        x = self.current_sentence()
        editable = x is not None and not self.report.signed
        self.accept_sentence_button.setEnabled(editable and x.status is not SentenceStatus.ACCEPTED)
        self.reject_sentence_button.setEnabled(editable and x.status is not SentenceStatus.REJECTED)

    def _decide_sentence(self, action) -> None:
        self.commit_pending()
        x = self.current_sentence()
        if x is not None:
            self._run(lambda: action(x.id))

    def _show_addenda(self) -> None:
        r = self.report
        done = r.signed_addenda()
        self.addenda_view.setText("\n\n".join(
            f"Addendum {n} (signed by {person_name(a.signature.reader_name, NameStyle.FULL)} at "
            f"{a.signature.signed_at}): {a.text}" for n, a in enumerate(done, 1)))
        self.addenda_view.setVisible(bool(done))
        pending = r.pending_addendum()
        self.addendum_button.setVisible(r.signed)
        self.addendum_button.setEnabled(r.signed and pending is None)
        self.addendum_text.setVisible(pending is not None)
        self.addendum_text.setReadOnly(pending is None)
        self.sign_addendum_button.setVisible(pending is not None)
        if pending is not None:
            self.sign_addendum_button.setEnabled(not r.addendum_blockers(pending.id, self.reader_name)
                                                 or self._pending == ("addendum", pending.id))
            if self._pending != ("addendum", pending.id) and self.addendum_text.toPlainText() != pending.text:
                with QSignalBlocker(self.addendum_text):
                    self.addendum_text.setPlainText(pending.text)
        elif self.addendum_text.toPlainText():
            with QSignalBlocker(self.addendum_text):
                self.addendum_text.clear()

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
            sel.format.setForeground(QBrush(TIER_TEXT[tier.value]))
            selections.append(sel)
        self.impression.setExtraSelections(selections)

    def _item(self, f: Finding) -> QListWidgetItem:
        who = "AI" if f.origin is Origin.AI else "You"
        rel = f" · reliability {f.reliability.tier.value} {f.reliability.score:.2f}" if f.reliability else ""
        if f.edited_by_reader:  # moved or rewritten: the reader's now, exported without the AI's certainty
            who = "AI · edited by you"
            rel = f" · AI reliability was {f.reliability.tier.value} (not exported)" if f.reliability else ""
        boxes = f" · {len(f.boxes)} box{'es' if len(f.boxes) != 1 else ''}" if f.boxes else ""
        text = f"{STATUS_MARK[f.status]}  {f.text}\n      {who}{boxes}{rel}"
        item = QListWidgetItem(text)
        item.setToolTip(f"{f.text}\n{who}{boxes}{rel} · {f.status.value}")
        item.setData(Qt.ItemDataRole.UserRole, f.id)
        background, foreground = row_colours(f)
        item.setBackground(QBrush(background))
        item.setForeground(QBrush(foreground))
        if f.status is FindingStatus.REJECTED:
            font = item.font()
            font.setStrikeOut(True)
            item.setFont(font)
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

    def _typed(self, kind: str, key: str | None = None) -> None:
        if kind == "finding":
            f = self.current_finding()
            if f is None:
                return
            key = f.id
        elif kind == "addendum":
            a = self.report.pending_addendum()
            if a is None:
                return
            key = a.id
        if self._pending and self._pending != (kind, key):
            self.commit_pending()
        self._pending = (kind, key)
        if kind == "impression":
            self._tint_impression()
        if kind == "addendum":
            self.sign_addendum_button.setEnabled(bool(self.addendum_text.toPlainText().strip()))
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
        self.status_line.clear()  # "Draft updated …" stays until the reader works on the draft
        self.refresh()


def _unconfirmed_line(findings) -> str:
    """The sign question's warning for AI findings going in as the AI wrote them although its reliability check
    did not confirm them (red or amber): the reader took them, so they are said by number and tier, not
    refused ("" when there are none)."""
    unsure = [(i, f.ai_certainty.tier.value) for i, f in enumerate(findings, start=1)
              if f.ai_certainty is not None and f.ai_certainty.tier.value in ("red", "amber")]
    if not unsure:
        return ""
    which = ", ".join(f"{i} ({tier})" for i, tier in unsure)
    one = len(unsure) == 1
    return (f"Not confirmed by the AI's reliability check, accepted as the AI wrote {'it' if one else 'them'}: "
            f"finding{'' if one else 's'} {which}.\n")
