"""The assistant panel (right-hand dock): ask about the slice in the active viewport.

A query box (Enter asks) with preset questions, Ask and Cancel; the model
indicator ("demo model · CPU", "XMedGPT-8B · 4-bit · RTX A4000", or "No model
configured — …" with Ask disabled) and the model's loading progress; the five
reasoning steps as they stream, each collapsible, their grounded phrases links
that highlight the phrase's box and bring its slice back; guardrail warnings in
a red band; the boxes drawn as labelled, editable "ai" overlays on the slice and
in the viewport that was asked about; the findings tinted by their reliability;
the reliability traffic light; and which model wrote the answer.

The panel shows what :class:`ui.assistant.controller.AssistantController` says;
how steps become links and what is checked lives in :mod:`app.assistant.session`.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.assistant.ask import AssistantUpdate, Finding
from app.assistant.session import (
    PRESET_QUESTIONS,
    AnswerResult,
    AskContext,
    ReliabilityResult,
    Segment,
    step_segments,
    text_segments,
)
from app.core.names import box_label
from inference.parsing import ParsedAnswer
from inference.phrases import phrase_key
from inference.reliability.scoring import Reliability, State, Tier
from inference.types import STEP_NAMES
from ui.actions import append_text
from ui.assistant.controller import AssistantController
from ui.assistant.reliability_panel import ReliabilityPanel
from ui.flow_layout import FlowLayout
from ui.viewer.viewport import Viewport

#: reliability tier → row tint in the findings list (light, text stays readable)
TIER_TINT = {Tier.GREEN: QColor(205, 238, 210), Tier.AMBER: QColor(252, 230, 190), Tier.RED: QColor(246, 200, 200)}
TIER_WORD = {Tier.GREEN: "consistent", Tier.AMBER: "check", Tier.RED: "unreliable", Tier.NONE: "reliability not assessed"}
#: colours readable on the dark reading-room theme and on a light one
_STATE_STYLE = {
    "ready": "color: #2ea043;",
    "loading": "color: #d29922;",
    "none": "color: #d29922; font-weight: bold;",
    "failed": "color: #f85149; font-weight: bold;",
}
LINK_COLOR = "#3b8eea"
MUTED = "color: #8b949e;"
ERROR = "color: #f85149; font-weight: bold;"
TINTED_TEXT = QColor(25, 25, 25)

#: What the panel asks about: (viewport, context) for the active viewport, or None when nothing is shown.
Target = Callable[[str], "tuple[Viewport, AskContext] | None"]


def link(grounding: int, text: str) -> str:
    return f'<a href="g:{grounding}" style="color: {LINK_COLOR};">{text}</a>'


def segments_html(segments: list[Segment]) -> str:
    out = []
    for s in segments:
        text = html.escape(s.text).replace("\n", "<br>")
        out.append(text if s.grounding is None else link(s.grounding, text))
    return "".join(out)


def _same_box(a, b, tol: float = 0.75) -> bool:
    return all(abs(getattr(a, k) - getattr(b, k)) <= tol for k in ("x0", "y0", "x1", "y1"))


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("x") else f"{n} {word}s"


class StepView(QFrame):
    """One reasoning step: a header that folds the text away, and the text with phrase links."""

    link_clicked = Signal(int)  # index into the answer's groundings

    def __init__(self, index: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.index = index
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.header = QToolButton()
        self.header.setText(f"{index} · {STEP_NAMES[index - 1]}")
        self.header.setCheckable(True)
        self.header.setChecked(True)
        self.header.setArrowType(Qt.ArrowType.DownArrow)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setStyleSheet("QToolButton { border: none; font-weight: bold; background: transparent; }"
                                  "QToolButton:hover { background: rgba(128, 128, 128, 60); }")
        self.header.toggled.connect(self.set_expanded)
        self.body = QLabel()
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.LinksAccessibleByMouse
                                          | Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.linkActivated.connect(lambda href: self.link_clicked.emit(int(href.split(":", 1)[1])))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 4)
        layout.setSpacing(2)
        layout.addWidget(self.header, alignment=Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.body)
        self.segments: list[Segment] = []

    def set_segments(self, segments: list[Segment]) -> None:
        if segments == self.segments:
            return
        self.segments = segments
        self.body.setText(segments_html(segments) or "<i>…</i>")

    def links(self) -> list[tuple[str, int]]:
        return [(s.text, s.grounding) for s in self.segments if s.grounding is not None]

    def set_expanded(self, expanded: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        if self.header.isChecked() != expanded:
            self.header.setChecked(expanded)
        self.body.setVisible(expanded)


class AssistantPanel(QWidget):
    settings_requested = Signal()
    message = Signal(str)  # status-bar text

    def __init__(self, controller: AssistantController, target: Target | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.target = target
        self.last_problem = ""  # why the last question could not be asked or answered
        self.viewport: Viewport | None = None  # the viewport the current answer is about
        self._next_viewport: Viewport | None = None  # the one the question being sent is about
        self.context: AskContext | None = None
        self.parsed: ParsedAnswer | None = None
        self.step_views: dict[int, StepView] = {}
        self.findings: list[Finding] = []
        self.box_ids: dict[tuple[str, object], str] = {}  # (phrase key, box on 0–1000) → overlay id
        self._own: set[str] = set()  # overlay ids this panel drew (others: e.g. the report's, after hand-over)
        self._answers = itertools.count(1)
        self._answer_no = 0
        self.tiers: dict[str, tuple[float | None, Tier]] = {}
        self._build()
        c = controller
        c.model_changed.connect(self._model_changed)
        c.model_progress.connect(self._model_progress)
        c.asking.connect(self._asking)
        c.update.connect(self._update)
        c.answer_ready.connect(self._answered)
        c.answer_failed.connect(self._failed)
        c.reliability_started.connect(lambda _r: self.reliability.set_running())
        c.reliability_progress.connect(lambda m, _f: self.reliability.meaning.setText(f"{m}…"))
        c.reliability_ready.connect(self._reliability)
        c.busy_changed.connect(lambda _b: self._sync_buttons())
        self._model_changed(c.state, c.indicator)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        # a disabled Ask must look disabled in any theme
        self.setStyleSheet("QPushButton:disabled { color: #6e7681; border-color: rgba(128, 128, 128, 60); }")
        self.indicator = QLabel()
        self.indicator.setObjectName("modelIndicator")
        self.indicator.setWordWrap(True)
        self.settings_button = QPushButton("Settings…")
        self.settings_button.clicked.connect(self.settings_requested)
        self.load_bar = QProgressBar()
        self.load_bar.setRange(0, 100)
        self.load_bar.setMaximumHeight(14)
        self.load_bar.hide()
        self.query = QLineEdit()
        self.query.setPlaceholderText("Ask about this slice, e.g. \"locate the nodule\"")
        self.query.returnPressed.connect(self.ask)
        self.ask_button = QPushButton("Ask")
        self.ask_button.setDefault(True)
        self.ask_button.clicked.connect(self.ask)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.controller.cancel)
        self.presets: list[QPushButton] = []
        presets = FlowLayout(spacing=4)  # wraps onto a second row in a narrow dock instead of widening it
        for label, question in PRESET_QUESTIONS:
            b = QPushButton(label)
            b.setToolTip(question)
            b.setSizePolicy(QSizePolicy.Policy.Minimum, QSizePolicy.Policy.Fixed)
            b.clicked.connect(lambda _=False, q=question: self.ask(q))
            presets.addWidget(b)
            self.presets.append(b)
        self.warning = QLabel()
        self.warning.setObjectName("guardrailWarning")
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("QLabel { background: #b3261e; color: white; font-weight: bold; "
                                   "padding: 6px; border-radius: 4px; }")
        self.warning.hide()
        self.status = QLabel("Type a question about the slice on screen and press Enter, or pick a preset. "
                             "The five reasoning steps appear here as the model writes them.")
        self.status.setWordWrap(True)
        self.steps_box = QWidget()
        self.steps_layout = QVBoxLayout(self.steps_box)
        self.steps_layout.setContentsMargins(0, 0, 0, 0)
        self.steps_layout.setSpacing(4)
        self.steps_layout.addWidget(self.status)  # inside the scroll area: long messages never clip
        self.answer_text = QLabel()  # an answer without steps (a direct reply), or the text before step 1
        self.answer_text.setObjectName("answerText")
        self.answer_text.setWordWrap(True)
        self.answer_text.setTextFormat(Qt.TextFormat.RichText)
        self.answer_text.setTextInteractionFlags(Qt.TextInteractionFlag.LinksAccessibleByMouse
                                                 | Qt.TextInteractionFlag.TextSelectableByMouse)
        self.answer_text.linkActivated.connect(lambda href: self.show_grounding(int(href.split(":", 1)[1])))
        self.answer_text.hide()
        self.steps_layout.addWidget(self.answer_text)
        self.steps_layout.addStretch(1)
        self.steps_scroll = QScrollArea()
        self.steps_scroll.setWidgetResizable(True)
        self.steps_scroll.setWidget(self.steps_box)
        self.steps_scroll.setMinimumHeight(120)
        self.findings_list = QListWidget()
        self.findings_list.setMaximumHeight(90)
        self.findings_list.setWordWrap(True)  # a long row wraps instead of being cut mid-word ...
        self.findings_list.setResizeMode(QListView.ResizeMode.Adjust)  # ... at the panel's width now
        self.findings_list.setTextElideMode(Qt.TextElideMode.ElideRight)  # and its tooltip has it all
        self.findings_list.itemClicked.connect(lambda item: self.show_finding(self.findings_list.row(item)))
        self.provenance = QLabel("")
        self.provenance.setObjectName("answerProvenance")
        self.provenance.setWordWrap(True)
        self.provenance.setStyleSheet(MUTED)
        self.reliability = ReliabilityPanel()

        top = QHBoxLayout()
        top.addWidget(self.indicator, stretch=1)
        top.addWidget(self.settings_button)
        ask = QHBoxLayout()
        ask.addWidget(self.query, stretch=1)
        ask.addWidget(self.ask_button)
        ask.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.load_bar)
        layout.addLayout(ask)
        layout.addLayout(presets)
        layout.addWidget(self.warning)
        layout.addWidget(self.steps_scroll, stretch=3)
        layout.addWidget(QLabel("<b>Findings</b> (click to show the box)"))
        layout.addWidget(self.findings_list)
        layout.addWidget(self.provenance)
        layout.addWidget(self.reliability, stretch=1)
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        c = self.controller
        can_ask = c.ready and not c.busy
        self.ask_button.setEnabled(can_ask)
        for b in self.presets:
            b.setEnabled(can_ask)
        self.cancel_button.setEnabled(c.busy or c.checking)

    # ------------------------------------------------------------------ model
    def _model_changed(self, state: str, text: str) -> None:
        self.indicator.setText(text)
        self.indicator.setStyleSheet(_STATE_STYLE.get(state, ""))
        self.indicator.setToolTip(f"{text}\nModel: {self.controller.choice.source or 'none'}")
        self.load_bar.setVisible(state == "loading")
        if state == "loading":
            self.load_bar.setValue(0)
        if state == "failed":
            self.message.emit(text)
        self._sync_buttons()

    def _model_progress(self, message: str, fraction: float) -> None:
        self.load_bar.setValue(round(100 * fraction))
        self.load_bar.setFormat(f"{message} %p%")

    # ------------------------------------------------------------------ asking
    def add_to_query(self, text: str) -> None:
        """Dictated text (``DictationWidget.text_ready`` with target "query") goes into the query box."""
        append_text(self.query, text)

    def ask(self, question: str | None = None) -> bool:
        """Ask ``question`` (default: the query box) about the active viewport's slice."""
        if question is not None and not isinstance(question, str):
            question = None  # clicked(bool) from the button
        if question is not None:
            self.query.setText(question)
        text = self.query.text().strip()
        target = self.target(text) if self.target is not None else None
        if target is None:
            self._failed("Open a study first: the assistant answers about the slice on screen.")
            return False
        self._next_viewport, context = target
        return self.controller.ask(context)

    # ---- named actions (ui.actions) ---------------------------------------------------------------
    def named_actions(self) -> dict:
        """``ask_assistant``: send the query box, as Enter or the Ask button do."""
        return {"ask_assistant": lambda: None if self.ask() else (self.last_problem or "The assistant cannot ask now.")}

    def text_targets(self) -> dict:
        """Dictated questions go into the query box."""
        return {"query": lambda: [self.query]}

    def _asking(self, context: AskContext) -> None:
        self._clear_answer()  # the previous answer's boxes, in the viewport they were drawn in
        self.viewport, self._next_viewport = self._next_viewport, None
        self.context = context
        self._answer_no = next(self._answers)
        desc = context.volume.series.description or "this series"
        self.status.setText(f"Asking {self.controller.indicator} about slice {context.frame + 1} of {desc}…")
        self.status.setStyleSheet("")
        self.reliability.show_reliability(
            Reliability(state=State.PENDING, message="Reliability is checked once the answer is complete."))
        self.reliability.spinner.hide()
        self._sync_buttons()

    def _clear_answer(self) -> None:
        if self.viewport is not None:
            for box_id in self._own:
                self.viewport.overlays.remove(box_id)
        self._own.clear()
        self.box_ids.clear()
        self.findings.clear()
        self.findings_list.clear()
        self.tiers = {}
        for view in self.step_views.values():
            self.steps_layout.removeWidget(view)
            view.deleteLater()
        self.step_views.clear()
        self.warning.hide()
        self.answer_text.hide()
        self.answer_text.setText("")
        self.provenance.setText("")
        self.parsed = None

    def _update(self, update: AssistantUpdate) -> None:
        self._show_parsed(update.parsed)
        for f in update.new_findings:
            self._add_finding(f)

    def _show_parsed(self, parsed: ParsedAnswer) -> None:
        self.parsed = parsed
        for step in parsed.steps:
            view = self.step_views.get(step.index)
            if view is None:
                view = StepView(step.index)
                view.link_clicked.connect(self.show_grounding)
                self.step_views[step.index] = view
                position = 2 + sorted(self.step_views).index(step.index)  # after the status and answer text
                self.steps_layout.insertWidget(position, view)
            view.set_segments(step_segments(step, parsed.groundings))
        preamble = text_segments(parsed.preamble, parsed.groundings, None) if parsed.preamble.strip() else []
        self.answer_text.setText(segments_html(preamble))
        self.answer_text.setVisible(bool(preamble))

    def _asked_series_shown(self) -> bool:
        """Whether the viewport asked about still shows the volume the answer is about."""
        return self.viewport is not None and self.context is not None and self.viewport.volume is self.context.volume

    def _add_finding(self, f: Finding) -> None:
        box_id = f"ai{self._answer_no}-{len(self.findings) + 1}"
        if self._asked_series_shown():  # never draw on a series the reader switched to meanwhile
            self.viewport.overlays.add_box(f.frame, f.box_px, self._box_label(len(self.findings), f), source="ai",
                                           box_id=box_id)
            self._own.add(box_id)
        self.box_ids[(phrase_key(f.phrase), f.box_norm)] = box_id
        self.findings.append(f)
        item = QListWidgetItem(self._finding_text(f))
        item.setToolTip(self._finding_text(f) + (f"\n⚠ {f.warning}" if f.warning else ""))
        self.findings_list.addItem(item)

    def _box_label(self, i: int, f: Finding) -> str:
        """The box's label as the report labels its boxes: "AI 1 · mass · green" (i: 0-based)."""
        tier = self.tiers.get(phrase_key(f.phrase), (None, Tier.NONE))[1]
        label = box_label("AI", i + 1, f.label, tier.value if tier is not Tier.NONE else "")
        return label + " · ⚠ not in this series?" if f.warning else label

    def _finding_text(self, f: Finding) -> str:
        score, tier = self.tiers.get(phrase_key(f.phrase), (None, Tier.NONE))
        rel = f"reliability {score:.2f} ({tier.value})" if score is not None else TIER_WORD[tier]
        warn = " ⚠" if f.warning else ""
        return f"{f.label}{warn} — slice {f.frame + 1} · {rel}"

    def _answered(self, result: AnswerResult) -> None:
        a = result.answer
        self._show_parsed(a.parsed)
        if a.warnings:
            self.warning.setText("⚠ " + "\n⚠ ".join(a.warnings))
            self.warning.show()
        n = len(a.findings)
        if a.finish_reason == "cancelled":
            self.status.setText(f"Cancelled: what arrived before the stop is kept ({_count(len(a.steps), 'step')}, "
                                f"{_count(n, 'box')}).")
            self.status.setStyleSheet(_STATE_STYLE["loading"])
        else:
            missing = f"; missing steps: {', '.join(map(str, a.parsed.missing_steps))}" if a.parsed.missing_steps else ""
            self.status.setText(f"Answered about slice {a.frame + 1}: {_count(len(a.steps), 'step')}, "
                                f"{_count(n, 'box')}{missing}.")
        who = a.engine if a.engine.startswith(a.model_id) else f"{a.engine} (model {a.model_id})"
        self.provenance.setText(f"Answer by {who} in {a.timing.total_s:.1f} s, {a.timing.started}. "
                                "AI suggestion: confirm against the image.")
        QTimer.singleShot(0, self.hand_over_boxes)  # after the other answer_ready slots (the report) ran
        self._sync_buttons()

    def _failed(self, message: str) -> None:
        self.last_problem = message
        self.status.setText(message)
        self.status.setStyleSheet(ERROR)
        self.message.emit(message)
        self._sync_buttons()

    def _reliability(self, result: ReliabilityResult) -> None:
        if result.context is not self.context:
            return  # the check of an earlier question, stopped when this one was asked
        self.reliability.show_reliability(result.reliability)
        self.tiers = result.by_phrase
        for i, f in enumerate(self.findings):
            item = self.findings_list.item(i)
            item.setText(self._finding_text(f))
            item.setToolTip(self._finding_text(f) + (f"\n⚠ {f.warning}" if f.warning else ""))
            box_id = self.box_ids.get((phrase_key(f.phrase), f.box_norm))
            if box_id in self._own and self.viewport is not None and box_id in self.viewport.overlays.ids():
                self.viewport.overlays.set_label(box_id, self._box_label(i, f))
            tier = self.tiers.get(phrase_key(f.phrase), (None, Tier.NONE))[1]
            tinted = tier in TIER_TINT
            item.setBackground(QBrush(TIER_TINT[tier]) if tinted else QBrush())
            item.setForeground(QBrush(TINTED_TEXT) if tinted else QBrush())  # dark text on the light tint
        self._sync_buttons()

    # ------------------------------------------------------------------ links
    def show_grounding(self, index: int) -> str | None:
        """A phrase link was clicked: highlight its (first) box and show its slice."""
        if self.parsed is None or not 0 <= index < len(self.parsed.groundings):
            return None
        g = self.parsed.groundings[index]
        key = phrase_key(g.phrase.phrase)
        for box in g.phrase.boxes:
            box_id = self.box_ids.get((key, box))
            if box_id is not None:
                self.show_box(box_id)
                return box_id
        return None

    def show_finding(self, row: int) -> None:
        f = self.findings[row]
        box_id = self.box_ids.get((phrase_key(f.phrase), f.box_norm))
        if box_id is not None:
            self.show_box(box_id)

    def hand_over_boxes(self) -> int:
        """Where another part of the window (the report) now draws the same box on the same
        slice, remove ours so that each box is drawn once; links then show the other one."""
        vp = self.viewport
        if vp is None:
            return 0
        ov = vp.overlays
        present = ov.ids()
        others = [i for i in present if i not in self._own]
        handed = 0
        for key, mine in list(self.box_ids.items()):
            if mine not in self._own or mine not in present:
                continue
            box, frame = ov.box(mine), ov.frame_of(mine)
            twin = next((o for o in others if ov.frame_of(o) == frame and _same_box(ov.box(o), box)), None)
            if twin is not None:
                ov.remove(mine)
                self._own.discard(mine)
                self.box_ids[key] = twin
                handed += 1
        return handed

    def show_box(self, box_id: str) -> None:
        vp = self.viewport
        if vp is None or not self._asked_series_shown() or box_id not in vp.overlays.ids():
            self.message.emit("That box is no longer on screen: the series it was drawn on is not shown "
                              "in that viewport any more.")
            return
        vp.set_slice(vp.overlays.frame_of(box_id))
        vp.overlays.highlight(box_id)
