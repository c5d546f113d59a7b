"""The study list: where a shift starts. Local studies, a PACS query with Retrieve, and the outbox.

Three tabs in one dock (:class:`StudyListWidget`):

- **Local studies** (:class:`LocalStudiesTab`): every study in the local database
  (:class:`app.studies.db.StudyDB`), searched as you type (name, patient ID, accession, UID), filtered
  by modality and date, sorted by any column. Columns: patient name, ID, accession, date,
  modalities, description, series / images, AI (queued, running, done with the worst tier as a
  coloured dot, failed) and report (draft, signed). The list follows the database (a study that
  arrives, a pre-read that finishes) by polling its change stamp. Double-click or Enter opens the
  study in the viewer (``open_requested`` with its files).
- **Query PACS** (:class:`QueryPacsTab`): the same columns for a remote node, searched by C-FIND or,
  for a node with a DICOMweb URL when chosen, QIDO-RS; Retrieve brings the selected studies into the
  local database (C-GET/C-MOVE as the node is set up, or WADO-RS) on a worker thread, with progress
  from the database as instances arrive. Cancel stops it (the association is aborted): what arrived
  stays, the study is marked incomplete, and retrieving it again completes it. A study already here shows its local AI and report state;
  double-click opens it; one not here yet is retrieved and opened as soon as its first images are
  stored, and opened again with everything when the retrieve ends (the viewer keeps its place).
- **Outbox** (:class:`ui.study.outbox_view.OutboxView`): signed results waiting to go to the PACS.

No domain logic here: searching, retrieving and queuing are :mod:`app.studies` calls; the network
ones run on ``QThread`` workers so the window never waits on a PACS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QDate,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QThread,
    QTimer,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDateEdit,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QStyle,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name
from app.studies.db import Study, StudyDB
from app.studies.dicomweb import qido, wado_study
from app.studies.locations import StudyPaths
from app.studies.nodes import NodeStore
from app.studies.scu import Query, RetrieveCancel, find, retrieve

log = logging.getLogger(__name__)

#: The AI dot first and the patient next: what a reader triages by is in view in the narrow dock (the rest
#: scrolls in).
COLUMNS = ("AI", "Patient", "Date", "Report", "Accession", "Patient ID", "Modalities", "Description",
           "Series / images")
AI, PATIENT, DATE, REPORT, ACCESSION, PATIENT_ID, MODALITIES, DESCRIPTION, COUNTS = range(len(COLUMNS))
SORT_ROLE = Qt.ItemDataRole.UserRole + 1  # the raw value a column sorts by
UID_ROLE = Qt.ItemDataRole.UserRole + 2  # the study instance UID of the row
TIER_ROLE = Qt.ItemDataRole.UserRole + 3  # AI column: the worst tier ('red', 'amber', 'green', 'none', '')
#: The AI dot, in the reliability lamp's colours (ui.assistant.reliability_panel).
TIER_COLOR = {"red": QColor(214, 48, 49), "amber": QColor(240, 165, 0), "green": QColor(39, 174, 96),
              "none": QColor(150, 150, 150)}
AI_TEXT = {"none": "", "queued": "queued", "running": "running…", "failed": "failed"}
REPORT_TEXT = {"none": "", "draft": "draft", "signed": "signed"}
DATE_PRESETS = ("Any date", "Today", "Last 7 days", "Last 30 days", "Between…")
POLL_MS = 1000


@dataclass
class Services:
    """What the study list works with (the shell makes them: ui.shell.studies_setup)."""

    db: StudyDB
    paths: StudyPaths
    nodes: NodeStore
    audit: Any = None
    queue: Any = None  # app.studies.queue.JobQueue: retrieved studies are queued for the pre-read when set
    outbox: Any = None  # app.studies.outbox.Outbox
    listener: Any = None  # app.studies.scp.Listener running in this process (the C-MOVE destination)
    preread_retrieved: bool = False


@dataclass
class StudyRow:
    uid: str
    patient_name: str = ""
    patient_id: str = ""
    accession: str = ""
    date: str = ""
    time: str = ""
    modalities: list[str] = field(default_factory=list)
    description: str = ""
    series: int | None = None
    instances: int | None = None
    ai_state: str = "none"
    tier: str = ""
    report_state: str = "none"
    state: str = "complete"  # complete / incomplete / receiving; "remote" for a PACS row not held here
    local: bool = True

    @classmethod
    def from_study(cls, s: Study) -> "StudyRow":
        return cls(s.study_uid, s.patient_name, s.patient_id, s.accession, s.study_date, s.study_time,
                   list(s.modalities), s.description, s.series, s.instances, s.ai_state, s.ai_worst_tier,
                   s.report_state, s.state)

    @classmethod
    def from_find(cls, r: dict, here: Study | None) -> "StudyRow":
        row = cls(r.get("StudyInstanceUID", ""), r.get("PatientName", ""), r.get("PatientID", ""),
                  r.get("AccessionNumber", ""), r.get("StudyDate", ""), r.get("StudyTime", ""),
                  [m for m in (r.get("ModalitiesInStudy") or []) if m], r.get("StudyDescription", ""),
                  r.get("NumberOfStudyRelatedSeries"), r.get("NumberOfStudyRelatedInstances"), state="remote",
                  local=False)
        if here is not None:
            row.ai_state, row.tier, row.report_state, row.local = here.ai_state, here.ai_worst_tier, here.report_state, True
            row.state = here.state
        return row

    def ai_text(self) -> str:
        if self.ai_state == "done":
            # beside its tier's dot; an empty list is not an all-clear (the model's operating point may have left
            # weaker candidates out, and the AI misses lesions), so it does not say "no lesion"
            return {"": "none listed", "none": "not assessed"}.get(self.tier, self.tier)
        return AI_TEXT.get(self.ai_state, self.ai_state)

    def counts_text(self) -> str:
        series = "" if self.series is None else str(self.series)
        inst = "" if self.instances is None else str(self.instances)
        text = f"{series} / {inst}" if series or inst else ""
        if self.state == "incomplete":
            text += "  (incomplete)"
        elif self.state == "receiving":
            text += "  (receiving…)"
        elif self.state == "remote":
            pass
        return text


def dot_icon(color: QColor, size: int = 12) -> QIcon:
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setBrush(QBrush(color))
    p.setPen(color.darker(140))
    p.drawEllipse(1, 1, size - 2, size - 2)
    p.end()
    return QIcon(pix)


_ICONS: dict[str, QIcon] = {}


def tier_icon(tier: str) -> QIcon:
    if tier not in _ICONS:
        _ICONS[tier] = dot_icon(TIER_COLOR.get(tier, TIER_COLOR["none"]))
    return _ICONS[tier]


class StudyTableModel(QAbstractTableModel):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[StudyRow] = []

    def set_rows(self, rows: list[StudyRow]) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r, c = self.rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(r, c)
        if role == SORT_ROLE:
            return self._sort_key(r, c)
        if role == UID_ROLE:
            return r.uid
        if role == TIER_ROLE and c == AI:
            return r.tier if r.ai_state == "done" else ""
        if role == Qt.ItemDataRole.DecorationRole and c == AI and r.ai_state == "done":
            return tier_icon(r.tier or "none")
        if role == Qt.ItemDataRole.ForegroundRole:
            if c == AI and r.ai_state == "failed":
                return QBrush(TIER_COLOR["red"])
            if not r.local:
                return QBrush(QColor(160, 160, 160)) if c in (AI, REPORT) else None
        if role == Qt.ItemDataRole.ToolTipRole:
            if c == AI:
                return {"queued": "Waiting for the AI pre-read", "running": "The AI is reading this study",
                        "failed": "The AI pre-read failed for a series (see the pre-read queue)",
                        "done": (f"AI pre-read done; worst reliability: {r.tier}" if r.tier else
                                 "AI pre-read done; it listed no lesion. This is not a negative read.")}.get(r.ai_state)
            if c == COUNTS and r.state in ("incomplete", "receiving"):
                return "Not all images are here yet: retrieve the study again to complete it."
            if c in (PATIENT, DATE):  # the narrow dock shows these two: which study is it?
                return self.summary(r)
            return r.uid if c == DESCRIPTION else None
        return None

    @classmethod
    def summary(cls, r: StudyRow) -> str:
        """Everything that tells one study from another, one line per field: the rows of one patient look
        alike in the narrow dock, where patient ID, accession and description are scrolled out of sight."""
        fields = (("", cls._text(r, PATIENT)), ("Patient ID", r.patient_id), ("Accession", r.accession),
                  ("Date", cls._text(r, DATE)), ("", r.description), ("Modalities", cls._text(r, MODALITIES)),
                  ("Series / images", cls._text(r, COUNTS)))
        return "\n".join(f"{k}: {v}" if k else v for k, v in fields if v)

    @staticmethod
    def _text(r: StudyRow, c: int) -> str:
        if c == PATIENT:
            return person_name(r.patient_name, NameStyle.LIST)
        if c == PATIENT_ID:
            return r.patient_id
        if c == ACCESSION:
            return r.accession
        if c == DATE:
            return date_time_text(r.date, r.time)
        if c == MODALITIES:
            return "/".join(r.modalities)
        if c == DESCRIPTION:
            return r.description
        if c == COUNTS:
            return r.counts_text()
        if c == AI:
            return r.ai_text()
        if c == REPORT:
            return REPORT_TEXT.get(r.report_state, r.report_state)
        return ""

    @staticmethod
    def _sort_key(r: StudyRow, c: int) -> Any:
        if c == DATE:
            return f"{r.date}{r.time}"
        if c == COUNTS:
            return r.instances or 0
        if c == AI:
            order = {"failed": 6, "running": 1, "queued": 2, "none": 0}
            tiers = {"red": 5, "amber": 4, "green": 3}
            return order.get(r.ai_state, tiers.get(r.tier, 3)) if r.ai_state != "done" else tiers.get(r.tier, 2.5)
        if c == REPORT:
            return {"none": 0, "draft": 1, "signed": 2}.get(r.report_state, 0)
        return StudyTableModel._text(r, c).lower()


def make_table(model: StudyTableModel, parent: QWidget) -> tuple[QTableView, QSortFilterProxyModel]:
    proxy = QSortFilterProxyModel(parent)
    proxy.setSourceModel(model)
    proxy.setSortRole(SORT_ROLE)
    view = QTableView(parent)
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.sortByColumn(DATE, Qt.SortOrder.DescendingOrder)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setAlternatingRowColors(True)
    view.verticalHeader().hide()
    view.setWordWrap(False)
    header = view.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    header.setStretchLastSection(True)
    for col, width in column_widths(view).items():
        view.setColumnWidth(col, width)
    return view, proxy


def date_time_text(date: str, time: str) -> str:
    """A study's DICOM date and time as the list shows them: ``2025-01-01 12:00`` (the time when it has one)."""
    t = time[:4]
    return display_date(date) + (f" {t[:2]}:{t[2:4]}" if len(t) == 4 and t.isdigit() else "")


#: The table's viewport in the narrowest dock the main window gives the study list (370 px, less its frame,
#: margins and vertical scroll bar)
DOCK_VIEWPORT = 340


def column_widths(view: QTableView) -> dict[int, int]:
    """Starting column widths in the view's own font: the date with its time and the AI state whole, the
    patient's name in what is left of a 370-pixel dock (the study list's place on a 1366-pixel laptop
    screen beside the image and the assistant), the rest a fixed share; a reader widens any of them."""
    metrics = view.fontMetrics()
    pad = 2 * view.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, view) + 12
    dot = view.style().pixelMetric(QStyle.PixelMetric.PM_SmallIconSize, None, view) + 4
    # the AI column's common states whole beside their dot ("not assessed" may be elided: its tooltip says it)
    states = [StudyRow(uid="", ai_state=a, tier=t).ai_text() for a, t in
              (("running", ""), ("queued", ""), ("done", ""), ("done", "amber"))]
    ai = max(metrics.horizontalAdvance(t) for t in states) + dot + pad
    date = metrics.horizontalAdvance(date_time_text("20261231", "235959")) + pad
    return {AI: ai, PATIENT: max(110, DOCK_VIEWPORT - ai - date), DATE: date, REPORT: 60, ACCESSION: 90,
            PATIENT_ID: 90, MODALITIES: 70, DESCRIPTION: 150, COUNTS: 90}


def _selected_uids(view: QTableView) -> list[str]:
    rows = sorted({i.row() for i in view.selectionModel().selectedRows()})
    return [view.model().index(r, 0).data(UID_ROLE) for r in rows]


def _date_range(preset: str, start: QDate, end: QDate) -> tuple[str, str]:
    today = QDate.currentDate()
    fmt = "yyyyMMdd"
    if preset == "Today":
        return today.toString(fmt), today.toString(fmt)
    if preset == "Last 7 days":
        return today.addDays(-6).toString(fmt), today.toString(fmt)
    if preset == "Last 30 days":
        return today.addDays(-29).toString(fmt), today.toString(fmt)
    if preset == "Between…":
        a, b = sorted((start, end))
        return a.toString(fmt), b.toString(fmt)
    return "", ""


class _DateFilter(QWidget):
    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.preset = QComboBox(objectName="date_preset")
        self.preset.addItems(DATE_PRESETS)
        self.start = QDateEdit(QDate.currentDate().addDays(-7), objectName="date_from", calendarPopup=True)
        self.end = QDateEdit(QDate.currentDate(), objectName="date_to", calendarPopup=True)
        for w in (self.start, self.end):
            w.setDisplayFormat("yyyy-MM-dd")
            w.setVisible(False)
            w.dateChanged.connect(lambda _d: self.changed.emit())
        lay.addWidget(self.preset)
        lay.addWidget(self.start)
        lay.addWidget(self.end)
        self.preset.currentTextChanged.connect(self._preset)

    def _preset(self, text: str) -> None:
        custom = text == "Between…"
        self.start.setVisible(custom)
        self.end.setVisible(custom)
        self.changed.emit()

    def set_range(self, start: QDate, end: QDate) -> None:
        self.start.setDate(start)
        self.end.setDate(end)
        self.preset.setCurrentText("Between…")

    def range(self) -> tuple[str, str]:
        return _date_range(self.preset.currentText(), self.start.date(), self.end.date())


class LocalStudiesTab(QWidget):
    """The local database: search, filters, sortable columns; double-click opens."""

    open_requested = Signal(str)  # study UID

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.search = QLineEdit(objectName="study_search", placeholderText="Search name, patient ID, accession…",
                                clearButtonEnabled=True)
        self.modality = QComboBox(objectName="modality_filter")
        self.modality.addItem("All modalities", "")
        self.dates = _DateFilter(self)
        self.count = QLabel(objectName="study_count")
        self.model = StudyTableModel(self)
        self.view, self.proxy = make_table(self.model, self)
        self.view.setObjectName("local_studies")
        self.open_button = QPushButton("Open", objectName="open_study", enabled=False)
        filters = QHBoxLayout()
        filters.addWidget(self.modality)
        filters.addWidget(self.dates, 1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.count, 1)
        bottom.addWidget(self.open_button)
        lay = QVBoxLayout(self)
        lay.addWidget(self.search)
        lay.addLayout(filters)
        lay.addWidget(self.view, 1)
        lay.addLayout(bottom)
        self._debounce = QTimer(self, singleShot=True, interval=150)
        self._debounce.timeout.connect(self.refresh)
        self.search.textChanged.connect(lambda _t: self._debounce.start())
        self.search.returnPressed.connect(self.refresh)
        self.modality.currentIndexChanged.connect(lambda _i: self.refresh())
        self.dates.changed.connect(self.refresh)
        self.view.doubleClicked.connect(lambda index: self._open(index.data(UID_ROLE)))
        self.view.activated.connect(lambda index: self._open(index.data(UID_ROLE)))
        self.open_button.clicked.connect(self._open_selected)
        self.view.selectionModel().selectionChanged.connect(
            lambda *_: self.open_button.setEnabled(bool(self.view.selectionModel().selectedRows())))
        self._stamp: tuple[int, int] | None = None
        self._poll = QTimer(self, interval=POLL_MS)
        self._poll.timeout.connect(self._poll_db)
        self._poll.start()
        self.refresh()

    def _open(self, uid: str | None) -> None:
        if uid:
            self.open_requested.emit(uid)

    def _open_selected(self) -> None:
        uids = _selected_uids(self.view)
        if uids:
            self._open(uids[0])

    def _poll_db(self) -> None:
        try:
            stamp = self.services.db.change_stamp()
        except Exception:  # noqa: BLE001 - the database was closed (shutting down)
            return
        if stamp != self._stamp:
            self.refresh()

    def refresh(self) -> None:
        """Run the search with the filters as they are now; the selection is kept where it can be."""
        db = self.services.db
        selected = set(_selected_uids(self.view))
        date_from, date_to = self.dates.range()
        try:
            self._stamp = db.change_stamp()
            found, seconds = db.timed_search(self.search.text(), date_from=date_from, date_to=date_to,
                                             modality=self.modality.currentData() or "")
            modalities = db.modalities()
        except (XMedError, ValueError) as exc:
            self.count.setText(str(exc))
            return
        self._update_modalities(modalities)
        self.model.set_rows([StudyRow.from_study(s) for s in found])
        self.count.setText(f"{len(found)} stud{'y' if len(found) == 1 else 'ies'}"
                           + (" (first 1000; narrow the search)" if len(found) >= 1000 else ""))
        if selected:
            sel = self.view.selectionModel()
            for r in range(self.proxy.rowCount()):
                if self.proxy.index(r, 0).data(UID_ROLE) in selected:
                    sel.select(self.proxy.index(r, 0), sel.SelectionFlag.Select | sel.SelectionFlag.Rows)
        log.debug("study list: %d studies in %.1f ms", len(found), seconds * 1000)

    def _update_modalities(self, modalities: list[str]) -> None:
        have = [self.modality.itemData(i) for i in range(1, self.modality.count())]
        if have == modalities:
            return
        current = self.modality.currentData()
        self.modality.blockSignals(True)
        self.modality.clear()
        self.modality.addItem("All modalities", "")
        for m in modalities:
            self.modality.addItem(m, m)
        i = self.modality.findData(current)
        self.modality.setCurrentIndex(max(i, 0))
        self.modality.blockSignals(False)

    def uids(self) -> list[str]:
        """The UIDs of the rows in the order shown (tests)."""
        return [self.proxy.index(r, 0).data(UID_ROLE) for r in range(self.proxy.rowCount())]

    def selected(self) -> list[str]:
        """The UIDs of the selected rows."""
        return _selected_uids(self.view)

    def to_read_after(self, uid: str, step: int = 1) -> StudyRow | None:
        """The next (``step`` 1) or previous (-1) study of the list as shown (its search, filters and sort) whose
        report is not signed and that has images here, after ``uid`` (from the top or bottom when ``uid`` is not
        listed); None when there is none. The worklist a reader walks with Ctrl+PgDown."""
        order = [self.model.rows[self.proxy.mapToSource(self.proxy.index(r, 0)).row()]
                 for r in range(self.proxy.rowCount())]
        uids = [row.uid for row in order]
        start = uids.index(uid) if uid in uids else (-1 if step > 0 else len(order))
        k = start + step
        while 0 <= k < len(order):
            row = order[k]
            if row.report_state != "signed" and row.state != "remote" and (row.instances or 0) > 0:
                return row
            k += step
        return None

    def show_current(self, uid: str) -> None:
        """Select (and scroll to) the row of the study open in the viewer, so the list shows where the reader is."""
        for r in range(self.proxy.rowCount()):
            index = self.proxy.index(r, 0)
            if index.data(UID_ROLE) == uid:
                self.view.selectionModel().select(index, self.view.selectionModel().SelectionFlag.ClearAndSelect
                                                  | self.view.selectionModel().SelectionFlag.Rows)
                self.view.scrollTo(index)
                return


# ---- Query PACS ------------------------------------------------------------------------------------

class FindWorker(QThread):
    found = Signal(object)  # list of C-FIND/QIDO result dicts
    failed = Signal(str)

    def __init__(self, services: Services, node_name: str, query: Query, web: bool, parent=None) -> None:
        super().__init__(parent)
        self.services, self.node_name, self.query, self.web = services, node_name, query, web

    def run(self) -> None:
        try:
            node = self.services.nodes.get(self.node_name)
            audit = self.services.audit
            results = qido(node, self.query, audit=audit) if self.web else \
                find(node, self.services.nodes.local, self.query, audit=audit)
        except XMedError as exc:
            self.failed.emit(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a network library error: shown, logged
            log.exception("PACS query failed")
            self.failed.emit(f"The query failed unexpectedly ({exc.__class__.__name__}: {exc}).")
            return
        self.found.emit(results)


class RetrieveWorker(QThread):
    """Retrieves studies one after the other into the local database."""

    started_study = Signal(int, int, str)  # index (0-based), total, study UID
    study_done = Signal(str, object)  # study UID, RetrieveResult
    study_failed = Signal(str, str)  # study UID, message
    study_cancelled = Signal(str)  # study UID: cancelled before a result came back

    def __init__(self, services: Services, node_name: str, uids: list[str], web: bool, parent=None) -> None:
        super().__init__(parent)
        self.services, self.node_name, self.uids, self.web = services, node_name, list(uids), web
        self.token = RetrieveCancel()

    def cancel(self) -> None:
        """Stop now: the association in progress is aborted (from a helper thread; never waits here) and no
        further study is retrieved."""
        self.requestInterruption()
        self.token.cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    def run(self) -> None:
        s = self.services
        for i, uid in enumerate(self.uids):
            if self.isInterruptionRequested() or self.token.cancelled:
                return
            self.started_study.emit(i, len(self.uids), uid)
            try:
                node = s.nodes.get(self.node_name)
                if self.web:
                    result = wado_study(node, uid, s.db, s.paths.storage, audit=s.audit, cancel=self.token)
                else:
                    result = retrieve(node, s.nodes.local, uid, s.db, s.paths.storage, audit=s.audit, nodes=s.nodes,
                                      listener=s.listener, cancel=self.token)
                if s.queue is not None and s.preread_retrieved and s.db.get(uid) is not None \
                        and not result.cancelled:
                    s.queue.enqueue_study(uid, reason="retrieved")
            except XMedError as exc:
                if self.token.cancelled:  # the abort cut the association short: not a failure of the node
                    self.study_cancelled.emit(uid)
                    return
                self.study_failed.emit(uid, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001
                if self.token.cancelled:
                    log.info("retrieve of %s cancelled (%s: %s)", uid, exc.__class__.__name__, exc)
                    self.study_cancelled.emit(uid)
                    return
                log.exception("retrieve failed")
                self.study_failed.emit(uid, f"The retrieve failed unexpectedly ({exc.__class__.__name__}: {exc}).")
                continue
            self.study_done.emit(uid, result)


class QueryPacsTab(QWidget):
    """Search a remote node; Retrieve the selected studies (in the background, with progress)."""

    open_requested = Signal(str)  # study UID (here, complete)
    message = Signal(str)

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.node = QComboBox(objectName="pacs_node")
        self.web = QCheckBox("DICOMweb (QIDO/WADO)", objectName="pacs_web")
        self.patient_name = QLineEdit(objectName="pacs_patient_name", placeholderText="DOE* (wildcards)")
        self.patient_id = QLineEdit(objectName="pacs_patient_id")
        self.accession = QLineEdit(objectName="pacs_accession")
        self.modality = QLineEdit(objectName="pacs_modality", placeholderText="CT, MR…")
        self.dates = _DateFilter(self)
        self.search_button = QPushButton("Search", objectName="pacs_search")
        self.retrieve_button = QPushButton("Retrieve", objectName="pacs_retrieve", enabled=False)
        self.cancel_button = QPushButton("Cancel retrieve", objectName="pacs_cancel", visible=False)
        self.cancel_button.setToolTip("Stop the retrieve: what arrived stays, the study is marked incomplete and a "
                                      "later Retrieve completes it")
        self.progress = QProgressBar(objectName="pacs_progress", visible=False)
        self.status = QLabel(objectName="pacs_status", wordWrap=True)
        self.model = StudyTableModel(self)
        self.view, self.proxy = make_table(self.model, self)
        self.view.setObjectName("pacs_results")
        form = QFormLayout()
        node_row = QHBoxLayout()
        node_row.addWidget(self.node, 1)
        node_row.addWidget(self.web)
        form.addRow("Node", node_row)
        form.addRow("Patient name", self.patient_name)
        form.addRow("Patient ID", self.patient_id)
        form.addRow("Accession", self.accession)
        form.addRow("Modality", self.modality)
        form.addRow("Date", self.dates)
        buttons = QHBoxLayout()
        buttons.addWidget(self.search_button)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.retrieve_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(buttons)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.progress)
        lay.addWidget(self.status)
        self._find: FindWorker | None = None
        self._retrieve: RetrieveWorker | None = None
        self._results: list[dict] = []
        self._current: tuple[str, int | None] | None = None  # study being retrieved, instances expected
        self._open_after: set[str] = set()  # studies to open once their first images are here
        self._opened_early: set[str] = set()  # opened while still arriving: opened again when the retrieve ends
        self._prefix = ""
        self._retrieve_busy = False
        self._poll = QTimer(self, interval=300)
        self._poll.timeout.connect(self._update_progress)
        self.search_button.clicked.connect(self.run_search)
        for w in (self.patient_name, self.patient_id, self.accession, self.modality):
            w.returnPressed.connect(self.run_search)
        self.retrieve_button.clicked.connect(lambda: self.retrieve(_selected_uids(self.view)))
        self.cancel_button.clicked.connect(self.cancel_retrieve)
        self.view.doubleClicked.connect(lambda index: self._activated(index.data(UID_ROLE)))
        self.view.selectionModel().selectionChanged.connect(lambda *_: self._update_buttons())
        self.node.currentIndexChanged.connect(lambda _i: self._node_changed())
        self.reload_nodes()

    # ---- nodes -------------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not (self._find is not None and self._find.isRunning()) and not self.retrieving:
            self.reload_nodes()  # a node added with `xmedgpt pacs nodes add` while the viewer was open
        super().showEvent(event)

    def reload_nodes(self) -> None:
        """Fill the node list again (after ``xmedgpt pacs nodes add`` or a Settings change)."""
        try:
            fresh = NodeStore.load(self.services.nodes.path)
            if not fresh.problems:
                self.services.nodes = fresh
        except OSError:
            pass
        current = self.node.currentText()
        self.node.blockSignals(True)
        self.node.clear()
        for name in sorted(self.services.nodes.nodes):
            self.node.addItem(name)
        if current:
            self.node.setCurrentText(current)
        self.node.blockSignals(False)
        self._node_changed()

    def _node_changed(self) -> None:
        name = self.node.currentText()
        node = self.services.nodes.nodes.get(name)
        self.web.setEnabled(bool(node and node.dicomweb))
        if not (node and node.dicomweb):
            self.web.setChecked(False)
        self.search_button.setEnabled(node is not None)
        if node is None:
            self.status.setText("No PACS node is configured. Add one with 'xmedgpt pacs nodes add NAME --ae AE "
                                "--host HOST --port PORT'.")
        self._update_buttons()

    # ---- search ------------------------------------------------------------------------------
    def query(self) -> Query:
        date_from, date_to = self.dates.range()
        date = f"{date_from}-{date_to}" if date_from and date_from != date_to else date_from
        return Query(level="study", patient_name=self.patient_name.text().strip(),
                     patient_id=self.patient_id.text().strip(), accession=self.accession.text().strip(),
                     study_date=date, modality=self.modality.text().strip().upper())

    def run_search(self) -> None:
        name = self.node.currentText()
        if not name or (self._find is not None and self._find.isRunning()):
            return
        self.status.setText(f"Searching {name}…")
        self.search_button.setEnabled(False)
        w = FindWorker(self.services, name, self.query(), self.web.isChecked(), self)
        w.found.connect(self._found)
        w.failed.connect(self._find_failed)
        w.finished.connect(lambda: self.search_button.setEnabled(True))
        self._find = w
        w.start()

    def _found(self, results: list[dict]) -> None:
        self._results = results
        self._show_results()
        self.status.setText(f"{len(results)} stud{'y' if len(results) == 1 else 'ies'} on {self.node.currentText()}.")

    def _show_results(self) -> None:
        db = self.services.db
        self.model.set_rows([StudyRow.from_find(r, db.get(r.get("StudyInstanceUID", ""))) for r in self._results])
        self._update_buttons()

    def _find_failed(self, message: str) -> None:
        self.status.setText(message)
        self.message.emit(message)

    # ---- retrieve ----------------------------------------------------------------------------
    def _update_buttons(self) -> None:
        busy = self.retrieving
        self.retrieve_button.setEnabled(bool(self.node.currentText()) and not busy
                                        and bool(self.view.selectionModel().selectedRows()))

    def _activated(self, uid: str | None) -> None:
        if not uid:
            return
        here = self.services.db.get(uid)
        if here is not None and here.state == "complete":
            self.open_requested.emit(uid)
            return
        self._open_after.add(uid)
        self.retrieve([uid])

    def retrieve(self, uids: list[str]) -> bool:
        """Retrieve ``uids`` from the chosen node on a worker; False when one is already running."""
        name = self.node.currentText()
        if not uids or not name or self.retrieving:
            return False
        w = RetrieveWorker(self.services, name, uids, self.web.isChecked(), self)
        w.started_study.connect(self._started_study)
        w.study_done.connect(self._study_done)
        w.study_failed.connect(self._study_failed)
        w.study_cancelled.connect(self._study_cancelled)
        w.finished.connect(self._retrieve_finished)
        self._retrieve = w
        self._retrieve_busy = True
        self.cancel_button.setEnabled(True)
        self.cancel_button.setVisible(True)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        w.start()
        self._update_buttons()
        self._poll.start()
        return True

    def cancel_retrieve(self) -> bool:
        """Stop the retrieve running (the window does not wait); False when none is running."""
        if not self.retrieving:
            return False
        self._retrieve.cancel()
        self.cancel_button.setEnabled(False)
        self.status.setText("Cancelling the retrieve…")
        return True

    @property
    def retrieving(self) -> bool:
        """True from Retrieve until the worker's last result has been shown here (its ``finished`` arrives
        after its results: queued from one thread, in order), not merely until its thread has ended."""
        return self._retrieve_busy

    def _expected(self, uid: str) -> int | None:
        for r in self._results:
            if r.get("StudyInstanceUID") == uid:
                return r.get("NumberOfStudyRelatedInstances")
        return None

    def _started_study(self, i: int, n: int, uid: str) -> None:
        self._current = (uid, self._expected(uid))
        self._prefix = f"Retrieving {i + 1} of {n}"
        self.status.setText(f"{self._prefix}…")
        self._update_progress()

    def _update_progress(self) -> None:
        if self._current is None or (self._retrieve is not None and self._retrieve.cancelled):
            return
        uid, expected = self._current
        study = self.services.db.get(uid)
        have = study.instances if study is not None else 0
        if have and uid in self._open_after:  # the first images are here: the reader need not wait for the rest
            self._open_after.discard(uid)
            self._opened_early.add(uid)
            self.open_requested.emit(uid)
        if expected:
            self.progress.setRange(0, expected)
            self.progress.setValue(min(have, expected))
            self.status.setText(f"{self._prefix}: {have} of {expected} images")
        else:
            self.progress.setRange(0, 0)
            self.status.setText(f"{self._prefix}: {have} images")

    def _ended(self, uid: str) -> None:
        """A study's retrieve ended (done, failed or cancelled): a late progress poll must not overwrite its
        result, and a study opened while arriving is opened again with what is here now (the viewer keeps
        its place)."""
        self._current = None
        if uid in self._opened_early:
            self._opened_early.discard(uid)
            here = self.services.db.get(uid)
            if here is not None and here.instances:
                self.open_requested.emit(uid)

    def _study_done(self, uid: str, result: Any) -> None:
        self._ended(uid)
        if getattr(result, "cancelled", False):
            self._open_after.discard(uid)
            here = self.services.db.get(uid)
            have = here.instances if here is not None else 0
            text = (f"Retrieve cancelled: {have} image(s) of the study are here, it is marked "
                    f"{result.state or 'not here'}; Retrieve it again to complete it.")
            self.status.setText(text)
            self.message.emit(text)
            self._show_results()
            return
        text = (f"Retrieved {result.received} new image(s), {result.duplicates} already here; the study is "
                f"{result.state or 'not here'}.")
        if result.problems:
            text += " " + "; ".join(result.problems)
        self.status.setText(text)
        self.message.emit(text)
        self._show_results()
        if uid in self._open_after and result.state in ("complete", "incomplete"):
            self._open_after.discard(uid)
            self.open_requested.emit(uid)

    def _study_failed(self, uid: str, message: str) -> None:
        self._ended(uid)
        self._open_after.discard(uid)
        self.status.setText(message)
        self.message.emit(message)

    def _study_cancelled(self, uid: str) -> None:
        self._ended(uid)
        self._open_after.discard(uid)
        here = self.services.db.get(uid)
        text = "Retrieve cancelled" + (f": {here.instances} image(s) of the study are here, it is marked {here.state}."
                                       if here is not None else "; nothing of the study arrived.")
        self.status.setText(text)
        self.message.emit(text)
        self._show_results()

    def _retrieve_finished(self) -> None:
        self._retrieve_busy = False
        self._poll.stop()
        self._current = None
        self.progress.setVisible(False)
        self.cancel_button.setVisible(False)
        self._update_buttons()

    def shutdown(self, timeout_ms: int = 60_000) -> None:
        for w in (self._find, self._retrieve):
            if w is not None:
                w.requestInterruption()
                w.wait(timeout_ms)


class StudyListWidget(QWidget):
    """The dock: Local studies, Query PACS and the Outbox as tabs."""

    open_requested = Signal(list)  # the files (or the managed-storage folder) of the study to open
    message = Signal(str)

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from ui.study.outbox_view import OutboxView

        self.services = services
        self.tabs = QTabWidget(objectName="study_list_tabs")
        self.local = LocalStudiesTab(services, self)
        self.pacs = QueryPacsTab(services, self)
        self.tabs.addTab(self.local, "Local studies")
        self.tabs.addTab(self.pacs, "Query PACS")
        self.outbox: OutboxView | None = None
        if services.outbox is not None:
            self.outbox = OutboxView(services.outbox, self)
            self.tabs.addTab(self.outbox, "Outbox")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)
        self.local.open_requested.connect(self.open_study)
        self.pacs.open_requested.connect(self.open_study)
        self.pacs.message.connect(self.message)

    def study_files(self, uid: str) -> list[Path]:
        """What to open for study ``uid``: its folder in managed storage when all of it is there, else its files."""
        db = self.services.db
        files = db.instance_paths(uid)
        folder = self.services.paths.storage / uid
        if files and all(folder in p.parents for p in files):
            return [folder]
        return files

    def open_study(self, uid: str) -> None:
        files = self.study_files(uid)
        if not files:
            self.message.emit("This study has no images here yet: retrieve it first.")
            return
        missing = [p for p in files if not p.exists()]
        if len(missing) == len(files):
            self.message.emit(f"The files of this study are gone ({files[0].parent}).")
            return
        self.open_requested.emit([p for p in files if p.exists()])

    def shutdown(self) -> None:
        self.local._poll.stop()
        if self.outbox is not None:
            self.outbox._timer.stop()
        self.pacs.shutdown()
