"""The reliability indicator: a traffic light with its score and meaning, and the reasons behind it.

Shows an :class:`inference.reliability.scoring.Reliability`; every number and
word comes from there (this widget decides nothing). While the check runs the
light is dark and a busy bar turns; a finished check lights one lamp. The
details list each question with the finding it belongs to, its entropy, and a
pyqtgraph bar chart of its sampled answers grouped by meaning (the draft's own
answer's group drawn darker).
"""

from __future__ import annotations

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

from inference.reliability.scoring import QuestionResult, Reliability, State, Tier

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
        layout = QVBoxLayout(self)
        layout.addWidget(head)
        layout.addWidget(self.summary)
        self.chart: pg.PlotWidget | None = None
        self.bars: pg.BarGraphItem | None = None
        clusters = result.clusters()
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
            what = "1 question" if n == 1 else f"worst of {n} questions; mean {reliability.mean:.2f}"
            self.score.setText(f"Reliability {reliability.worst:.2f} ({what})")
        else:
            self.score.setText("Reliability: computing…" if busy else "Reliability: –")
        self.meaning.setText(reliability.message or reliability.meaning)
        self._fill_details(reliability)

    def _fill_details(self, reliability: Reliability) -> None:
        for view in self.question_views:
            self.details_layout.removeWidget(view)
            view.deleteLater()
        self.question_views = [QuestionView(q) for q in reliability.questions]
        for view in self.question_views:
            self.details_layout.addWidget(view)
        self.details_button.setEnabled(bool(self.question_views))

    def _toggle_details(self, shown: bool) -> None:
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        self.scroll.setVisible(shown)
