"""The reliability indicator: a traffic light with its score and meaning, and the reasons behind it.

Shows an :class:`inference.reliability.scoring.Reliability`; every number and
word comes from there (this widget decides nothing). While the check runs the
light is dark and a busy bar turns; a finished check lights one lamp (none when
something could not be checked: green means checked and right). The details
list the answer's own checks (its reasoning steps, contradictions, a negative
answer's re-readings), then per finding its checks (box re-read, size, side,
density, inside the body, body region) with what each compared, then each
question with its sampled answers, its entropy, and a pyqtgraph bar chart of
the answers grouped by meaning (the draft's own answer's group drawn darker).
"""

from __future__ import annotations

import html

import pyqtgraph as pg
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from inference.reliability.checks import Check
from inference.reliability.scoring import (
    FindingResult,
    QuestionResult,
    Reliability,
    State,
    Tier,
)

LAMP_ON = {Tier.RED: QColor(214, 48, 49), Tier.AMBER: QColor(240, 165, 0), Tier.GREEN: QColor(39, 174, 96)}
LAMP_OFF = QColor(70, 70, 70)
BAR = QColor(120, 144, 170)
BAR_DRAFT = QColor(52, 84, 122)
_LABEL_CHARS = 18


class TrafficLight(QWidget):
    """Three lamps, red / amber / green; ``tier`` NONE leaves all dark."""

    ORDER = (Tier.RED, Tier.AMBER, Tier.GREEN)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tier = Tier.NONE
        self.setFixedSize(self.sizeHint())
        self.setAccessibleName("reliability traffic light")

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        return QSize(30, 82)

    def set_tier(self, tier: Tier) -> None:
        self.tier = tier
        self.setToolTip(f"reliability: {tier.value}")
        self.update()

    def lit(self) -> list[Tier]:
        return [t for t in self.ORDER if t is self.tier]

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setBrush(QColor(30, 30, 30))
        p.setPen(QPen(QColor(110, 110, 110), 1))  # the housing stays visible on a dark theme
        p.drawRoundedRect(QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5), 6, 6)
        d = 20.0
        for i, tier in enumerate(self.ORDER):
            p.setBrush(LAMP_ON[tier] if tier is self.tier else LAMP_OFF)
            p.setPen(QPen(QColor(15, 15, 15), 1))
            p.drawEllipse(QRectF(5, 5 + i * (d + 6), d, d))
        p.end()


def _short(text: str) -> str:
    text = " ".join(text.split()) or "(empty)"
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


CHECK_MARK = {True: "✓", False: "✗", None: "–"}
CHECK_WORD = {True: "passed", False: "failed", None: "not checked"}


def check_line(check: Check) -> str:
    """"✗ size failed: the text says 42 mm but the box measures 24 × 24 mm"."""
    return f"{CHECK_MARK[check.passed]} {check.name.replace('_', ' ')} {CHECK_WORD[check.passed]}: {check.detail}"


class ChecksView(QFrame):
    """A titled list of checks, one line each, with contradictions and a message."""

    def __init__(self, title: str, checks: list[Check], message: str = "", extra: list[str] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.checks = checks
        layout = QVBoxLayout(self)
        self.title = QLabel(title)
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setWordWrap(True)
        layout.addWidget(self.title)
        self.lines: list[QLabel] = []
        for text in [*(check_line(c) for c in checks), *(extra or [])]:
            label = QLabel(text)
            label.setWordWrap(True)
            layout.addWidget(label)
            self.lines.append(label)
        self.message = QLabel(message)
        self.message.setWordWrap(True)
        self.message.setVisible(bool(message))
        layout.addWidget(self.message)

    def texts(self) -> list[str]:
        return [label.text() for label in self.lines]


def finding_title(finding: FindingResult) -> str:
    score = f" · consistency {finding.reliability:.2f}" if finding.reliability is not None else ""
    tier = "not checked" if finding.tier is Tier.NONE and finding.reliability is not None else finding.tier.value
    return f"<b>finding {html.escape(finding.finding_id)}</b> · {tier}{score}"


class QuestionView(QFrame):
    """One question: finding, text, entropy, tier and the bar chart of its answer clusters."""

    def __init__(self, result: QuestionResult, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result = result
        self.setFrameShape(QFrame.Shape.StyledPanel)
        q = result.question
        head = QLabel(f"<b>{q.attribute}</b> · finding {q.finding_id}<br>{q.question}<br>"
                      f"draft: <i>{q.draft_answer}</i>")
        head.setWordWrap(True)
        head.setTextFormat(Qt.TextFormat.RichText)
        if result.state is State.DONE and result.entropy is not None:
            summary = (f"entropy {result.entropy:.2f} · reliability {result.reliability:.2f} · "
                       f"{result.tier.value} · {len(result.clusters())} meaning(s) in {len(result.answers)} answers")
        else:
            summary = f"{result.state.value}"
        if result.message:
            summary += f" — {result.message}"
        self.summary = QLabel(summary)
        self.summary.setWordWrap(True)
        clusters = result.clusters()
        answers = " · ".join(f"{n}× {' '.join(text.split()) or '(empty)'}" for text, n in clusters)
        self.samples = QLabel(f"answers: {answers}" if answers else "answers: none")
        self.samples.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(head)
        layout.addWidget(self.summary)
        layout.addWidget(self.samples)
        self.chart: pg.PlotWidget | None = None
        self.bars: pg.BarGraphItem | None = None
        if result.state is State.DONE and clusters:
            self.chart = pg.PlotWidget(background="w")
            self.chart.setFixedHeight(130)
            self.chart.setMouseEnabled(x=False, y=False)
            self.chart.hideButtons()
            counts = [c for _, c in clusters]
            brushes = [BAR_DRAFT if i == result.draft_cluster else BAR for i in range(len(clusters))]
            self.bars = pg.BarGraphItem(x=list(range(len(clusters))), height=counts, width=0.6, brushes=brushes)
            self.chart.addItem(self.bars)
            self.chart.getAxis("bottom").setTicks([[(i, _short(text)) for i, (text, _) in enumerate(clusters)]])
            self.chart.setLabel("left", "answers")
            self.chart.setYRange(0, max(counts), padding=0.1)
            tips = "\n".join(f"{n}× {text}" for text, n in clusters)
            self.chart.setToolTip(tips)
            layout.addWidget(self.chart)


class ReliabilityPanel(QWidget):
    """Traffic light + score + meaning + busy bar, and a details section that can be opened."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.reliability: Reliability | None = None
        self.light = TrafficLight()
        self.score = QLabel("Reliability: –")
        self.score.setObjectName("reliabilityScore")
        self.score.setWordWrap(True)  # its counts of checks run long: unwrapped it widened the dock (712 px at 1366)
        self.meaning = QLabel("Not assessed yet.")
        self.meaning.setWordWrap(True)
        self.spinner = QProgressBar()
        self.spinner.setRange(0, 0)  # busy: an endless moving bar
        self.spinner.setTextVisible(False)
        self.spinner.setMaximumHeight(8)
        self.spinner.hide()
        self.details_button = QToolButton()
        self.details_button.setText("Details")
        self.details_button.setCheckable(True)
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.toggled.connect(self._toggle_details)
        self.details = QWidget()
        self.details_layout = QVBoxLayout(self.details)
        self.details_layout.setContentsMargins(0, 0, 0, 0)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.details)
        self.scroll.hide()
        self.question_views: list[QuestionView] = []
        self.check_views: list[ChecksView] = []  # the answer's, then one per finding

        text = QVBoxLayout()
        text.addWidget(self.score)
        text.addWidget(self.meaning)
        text.addWidget(self.spinner)
        text.addWidget(self.details_button, alignment=Qt.AlignmentFlag.AlignLeft)
        top = QHBoxLayout()
        top.addWidget(self.light, alignment=Qt.AlignmentFlag.AlignTop)
        top.addLayout(text, stretch=1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.scroll, stretch=1)

    # ------------------------------------------------------------------ updates
    def set_running(self) -> None:
        """The check has started: dark light, busy bar, no stale details."""
        self.show_reliability(Reliability.running())

    def show_reliability(self, reliability: Reliability) -> None:
        self.reliability = reliability
        busy = reliability.state in (State.RUNNING, State.PENDING)
        self.spinner.setVisible(busy)
        self.light.set_tier(Tier.NONE if busy else reliability.tier)
        if reliability.worst is not None and not busy:
            n = len([q for q in reliability.questions if q.state is State.DONE])
            b = len([x for x in reliability.boxes if x.state is State.DONE])
            what = "1 question" if n == 1 else f"worst of {n} questions; mean {reliability.mean:.2f}"
            if b:
                what += f"; {b} box{'es' if b > 1 else ''} re-read"
            checks = reliability.all_checks()
            if checks:
                failed = sum(1 for c in checks if c.passed is False)
                unchecked = sum(1 for c in checks if c.passed is None)
                what += f"; checks: {len(checks) - failed - unchecked} passed"
                what += f", {failed} failed" if failed else ""
                what += f", {unchecked} not checked" if unchecked else ""
            self.score.setText(f"Reliability {reliability.worst:.2f} ({what})")
        else:
            self.score.setText("Reliability: computing…" if busy else "Reliability: –")
        self.meaning.setText(reliability.message or reliability.meaning)
        self._fill_details(reliability)

    def _fill_details(self, reliability: Reliability) -> None:
        for view in [*self.check_views, *self.question_views]:
            self.details_layout.removeWidget(view)
            view.deleteLater()
        self.check_views, self.question_views = [], []
        said = any(c.kind == "steps" and c.passed is False for c in reliability.checks)  # its detail lists them
        contradictions = [] if said else [f"✗ contradiction ({getattr(c, 'kind', '')}): {getattr(c, 'message', c)}"
                                          for c in reliability.contradictions]
        if reliability.checks or contradictions:
            view = ChecksView("<b>the answer</b>", reliability.checks, extra=contradictions)
            self.check_views.append(view)
            self.details_layout.addWidget(view)
        for finding in reliability.findings:
            if finding.checks or finding.message:
                view = ChecksView(finding_title(finding), finding.checks, "" if finding.checks else finding.message)
                self.check_views.append(view)
                self.details_layout.addWidget(view)
            for q in finding.questions:
                qv = QuestionView(q)
                self.question_views.append(qv)
                self.details_layout.addWidget(qv)
        self.details_button.setEnabled(bool(self.question_views or self.check_views))

    def _toggle_details(self, shown: bool) -> None:
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.scroll.setVisible(shown)
