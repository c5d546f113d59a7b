"""The pre-read panel (a tab beside the assistant): pre-read the series on screen, follow its progress,
cancel it, and work through the lesions it lists.

- "Pre-read series" starts :class:`ui.preread.controller.PrereadController` on the active viewport's
  series; a progress bar (sweep, then reasoning) with Cancel shows while it runs.
- The lesion list is the pre-read of the series in the active viewport (a list per series): lesion,
  location, size (longest axial diameter, mm), slices (1-based, as the viewer numbers them, the key
  slice in brackets) and the reliability tier (a coloured dot and word on a tint, at least 4.5:1,
  WCAG AA, the report's colours).
- Clicking a lesion jumps the viewport showing its series to the key slice, in the window the lesion
  was read in, and thickens its box; every lesion's boxes are drawn on every slice it spans, as
  non-editable "preread" overlays (ids ``preread:<lesion>:<slice>``), beside the assistant's and the
  report's boxes. Clicking a box selects its lesion.
- "Accept into report" (and "Accept all green") hands the lesions to the ``acceptor`` the shell gives
  (:func:`ui.shell.preread_setup.install_preread`: :func:`app.report.from_preread.accept_lesions`):
  nothing of the pre-read is in the report until the reader accepts it. An accepted lesion is marked ✓
  (and its boxes "accepted") while its finding is in the report: when the reader rejects, undoes or
  deletes that finding in the report, the shell calls :meth:`PrereadPanel.follow_report` and the mark
  goes, so the lesion can be accepted again (an undo that brings the finding back brings the ✓ back).

Named actions (ui.actions): ``preread_series`` (voice: "pre-read"), ``cancel_preread``,
``accept_preread_lesion`` and ``accept_green_lesions``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.assistant.preread import Candidate, below_point_note, misses_caveat
from app.core.names import approximate_ml
from app.dicom.model import Volume
from app.report.from_preread import (
    description_text,
    lesion_tier,
    size_conflict_text,
    window_of,
)
from inference.reliability.checks import Check
from inference.reliability.tiers import check_sentence
from ui.preread.controller import PrereadController, PrereadRun, Waiting
from ui.viewer.viewport import Viewport

PREFIX = "preread:"  # overlay ids: "preread:<lesion id>:<slice>"
SOURCE = "preread"
#: short headers, numbers without decimals, the key slice in the detail line: at the dock's default width the
#: Location column -- what a reader scans the list by -- is wide enough to read
COLUMNS = ("#", "Location", "mm", "Images", "Tier")
COL_ID, COL_LOCATION, COL_SIZE, COL_SLICES, COL_TIER = range(len(COLUMNS))
#: reliability tier → (background, text) of the tier cell: the report's dark tints with light text, every
#: pair at least 4.5:1 (WCAG AA; the tests check it); "" is a lesion whose reliability was not assessed
TIER_TINT = {"green": QColor(28, 74, 40), "amber": QColor(92, 62, 0), "red": QColor(96, 28, 28),
             "": QColor(37, 38, 42)}
TIER_TEXT = {"green": QColor(235, 247, 237), "amber": QColor(255, 243, 220), "red": QColor(253, 232, 232),
             "": QColor(224, 224, 224)}
TIER_WORD = {"green": "green", "amber": "amber", "red": "red", "": "not assessed"}
ACCEPTED_MARK = " ✓"
MUTED = "color: #8b949e;"
STAGES = {"sweep": "Sweep: %v of %m readings", "link": "Linking boxes across slices",
          "reasoning": "Reasoning: lesion %v of %m"}

#: The active viewport and the study description, or None when it shows no image.
Target = Callable[[], "tuple[Viewport, str] | None"]
#: Puts lesions into the report: the (lesion id, finding id) pairs taken, or why it could not.
Acceptor = Callable[[list[Candidate], PrereadRun], "list[tuple[str, str]] | str"]


#: how the Tier column sorts: the most trustworthy first, "not assessed" last
TIER_RANK = {"green": 0, "amber": 1, "red": 2, "": 3}
SORT_KEY = Qt.ItemDataRole.UserRole + 1


IDLE_HINT = ("Pre-read the series on screen: the AI goes through every slice and lists the lesions for you to "
             "look at. Nothing goes into the report until you accept it.")


def _caveat(n: int) -> str:
    """What follows every result line: a list is what to look at first, none is not an all-clear."""
    return ("Click one to see it. " if n else "") + misses_caveat(n)


def _run_summary(run: PrereadRun) -> str:
    n = len(run.result.lesions)  # the listed ones, whether the weaker candidates are shown or not
    found = f"{n} lesion{'s' if n != 1 else ''}" if n else "No lesion"
    return f"{found} in {series_name(run.volume)}. {_caveat(n)}" + _point_note(run)


def _point_note(run: PrereadRun) -> str:
    """" 4 weaker candidates (score under 0.21, the model's operating point) are not listed." or ""."""
    point = run.result.operating_point
    note = below_point_note(run.result.below_operating_point, point.min_score if point is not None else None)
    return f" {note}" if note else ""


class _LesionItem(QTreeWidgetItem):
    """A row that sorts by what its column means -- P2 before P10, sizes and images as numbers, tiers by
    rank -- when the reader clicks a column header (N / Shift+N then follow the list as shown)."""

    def __lt__(self, other: QTreeWidgetItem) -> bool:
        col = self.treeWidget().sortColumn() if self.treeWidget() is not None else COL_ID
        a, b = self.data(col, SORT_KEY), other.data(col, SORT_KEY)
        if a is None or b is None:  # not filled in yet (super().__lt__ would recurse in PySide6)
            return self.text(col) < other.text(col)
        return (a, self.data(COL_ID, SORT_KEY) or 0) < (b, other.data(COL_ID, SORT_KEY) or 0)


def slices_text(lesion: Candidate) -> str:
    """1-based, as the viewer numbers the images: "18", or "17–19" (the key slice is in the detail line)."""
    first, last = lesion.slices
    return f"{first + 1}" if first == last else f"{first + 1}–{last + 1}"


def location_text(lesion: Candidate) -> str:
    loc = (lesion.location or "").strip()
    return loc[:1].upper() + loc[1:] if loc else "—"


def box_label(lesion: Candidate, accepted: bool = False, weaker: bool = False) -> str:
    """``P1 · 12 mm · green`` on the image (``P1 · 12 mm · accepted`` once in the report, ``P7 · 9 mm · weaker``
    for a candidate under the model's operating point that the reader asked to see)."""
    tail = "accepted" if accepted else ("weaker" if weaker else (lesion_tier(lesion) or "not assessed"))
    return f"{lesion.id} · {lesion.diameter_mm:.0f} mm · {tail}"


WEAKER_TIP = ("Under the model's operating point: the AI is less sure of it than of the listed lesions, and it was "
              "not reasoned about or checked")


def weaker_text(n: int) -> str:
    return f"Show {n} weaker candidate{'s' if n != 1 else ''} (under the model's operating point)"


def series_name(volume: Volume) -> str:
    s = volume.series
    number = f"#{s.number} " if s.number not in (None, "") else ""
    return f"{number}{s.description or 'series'}".strip()


class PrereadPanel(QWidget):
    message = Signal(str)  # status-bar text
    lesion_shown = Signal(str)  # lesion id, after the jump to its key slice
    waiting_changed = Signal(bool)  # a pre-read asked for waits for the model or the series to load

    def __init__(self, controller: PrereadController, target: Target, viewports: Callable[[], Sequence[Viewport]],
                 activate: Callable[[Viewport], None] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.target = target
        self.viewports = viewports
        self.activate = activate
        self.acceptor: Acceptor | None = None
        self.run: PrereadRun | None = None  # the pre-read listed (the active viewport's series)
        self.accepted: dict[str, dict[str, str]] = {}  # series UID → lesion id → report finding id (✓ shown)
        #: report finding id → (series UID, lesion id) of every lesion accepted (✓ or no longer), so the mark
        #: can follow the finding when the reader decides on it in the report
        self.links: dict[str, tuple[str, str]] = {}
        self._building = False
        self._watched: set[int] = set()
        #: the pre-read the reader asked for while the model or the series was still loading: (volume,
        #: study description), started by :meth:`start_waiting` when that is done
        self._waiting: tuple[Volume, str] | None = None
        self._build()
        c = controller
        c.started.connect(self._started)
        c.stage_changed.connect(self._stage)
        c.progress.connect(self._progress)
        c.finished.connect(self._finished)
        c.restored.connect(self._restored)
        c.cancelled.connect(self._stopped)
        c.failed.connect(self._stopped)
        c.busy_changed.connect(lambda _b: self._sync_buttons())

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.setStyleSheet("QPushButton:disabled { color: #6e7681; border-color: rgba(128, 128, 128, 60); }")
        self.run_button = QPushButton("Pre-read series")
        self.run_button.setObjectName("prereadButton")
        self.run_button.setToolTip("The AI reads every slice of the series on screen and lists the lesions it "
                                   "finds, each with its reasoning and reliability (voice: \"pre-read\")")
        self.run_button.clicked.connect(self.start)
        self.series_label = QLabel("")
        self.series_label.setWordWrap(True)
        self.series_label.setStyleSheet(MUTED)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the pre-read; nothing of it is listed")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.status = QLabel(IDLE_HINT)
        self.status.setWordWrap(True)
        self.lesions = QTreeWidget()
        self.lesions.setObjectName("prereadLesions")
        self.lesions.setAccessibleName("Pre-read lesions")
        self.lesions.setColumnCount(len(COLUMNS))
        self.lesions.setHeaderLabels(list(COLUMNS))
        self.lesions.setRootIsDecorated(False)
        self.lesions.setUniformRowHeights(True)
        self.lesions.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.lesions.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.lesions.setAllColumnsShowFocus(True)
        header = self.lesions.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(COL_LOCATION, QHeaderView.ResizeMode.Stretch)
        for col in (COL_ID, COL_SIZE, COL_SLICES, COL_TIER):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        tips = {COL_ID: "Lesion, in the AI's order; ✓ when it is in the report",
                COL_SIZE: "Longest axial diameter, mm", COL_SLICES: "Images it spans (1-based)",
                COL_TIER: "Reliability: green consistent, amber check, red unreliable"}
        for col, tip in tips.items():
            self.lesions.headerItem().setToolTip(col, tip)
        self.lesions.setSortingEnabled(True)  # a header click sorts (by size, images, tier); Lesion: the AI's order
        self.lesions.sortByColumn(COL_ID, Qt.SortOrder.AscendingOrder)
        self.lesions.currentItemChanged.connect(lambda cur, _prev: self._current_changed(cur))
        self.lesions.itemClicked.connect(lambda item, _col: self.show_lesion(item.data(COL_ID, Qt.ItemDataRole.UserRole)))
        self.weaker_box = QCheckBox(weaker_text(0))
        self.weaker_box.setObjectName("prereadWeaker")
        self.weaker_box.setToolTip("Also list the candidates scoring under the model's operating point (fitted at "
                                   "about one false positive per volume): more lesions and more boxes on nothing, "
                                   "none of them reasoned about or checked")
        self.weaker_box.toggled.connect(self.show_weaker)
        self.weaker_box.hide()
        self.detail = QLabel("")
        self.detail.setObjectName("prereadDetail")
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.accept_button = QPushButton("Accept into report")
        self.accept_button.setToolTip("Put the selected lesion into the report as a finding you took "
                                      "(its box, slice, size and description)")
        self.accept_button.clicked.connect(self.accept_selected)
        self.accept_green_button = QPushButton("Accept all green")
        self.accept_green_button.setToolTip("Put every green (consistent) lesion not yet taken into the report")
        self.accept_green_button.clicked.connect(self.accept_green)

        top = QHBoxLayout()
        top.addWidget(self.run_button)
        top.addStretch(1)
        bar = QHBoxLayout()
        bar.addWidget(self.progress, stretch=1)
        bar.addWidget(self.cancel_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.accept_button)
        buttons.addWidget(self.accept_green_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.series_label)
        layout.addLayout(bar)
        layout.addWidget(self.status)
        layout.addWidget(self.lesions, stretch=1)
        layout.addWidget(self.weaker_box)
        layout.addWidget(self.detail)
        layout.addLayout(buttons)
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        running = self.controller.running
        busy = running or self.waiting
        self.run_button.setEnabled(not busy)
        self.cancel_button.setVisible(busy)
        self.cancel_button.setEnabled(busy)
        self.cancel_button.setToolTip("Stop the pre-read; nothing of it is listed" if running else
                                      "Do not pre-read when loading is done")
        lesion = self.current_lesion()
        taken = self._taken()
        can_accept = self.acceptor is not None and self.run is not None
        self.accept_button.setEnabled(can_accept and lesion is not None and lesion.id not in taken)
        self.accept_green_button.setEnabled(can_accept and any(
            lesion_tier(les) == "green" and les.id not in taken for les in (self.run.lesions if self.run else [])))

    # ------------------------------------------------------------------ named actions (ui.actions)
    def named_actions(self) -> dict:
        """What keys, menus and voice commands can ask of the pre-read, each saying why when it cannot."""
        return {
            "preread_series": self.start,
            "cancel_preread": self.cancel,
            "accept_preread_lesion": self.accept_selected,
            "accept_green_lesions": self.accept_green,
        }

    def text_targets(self) -> dict:
        """The pre-read takes no dictated text."""
        return {}

    # ------------------------------------------------------------------ running
    @property
    def waiting(self) -> bool:
        """A pre-read was asked for and starts when the model or the series has loaded."""
        return self._waiting is not None

    def start(self, *_args) -> str | None:
        """Pre-read the active viewport's series; None when it started, else why not (also shown). Asked
        while the model or the series is still loading, the request is kept and starts when that is done
        (:meth:`start_waiting`); Cancel withdraws it."""
        found = self.target()
        if found is None:
            return self._say("Open a study first: the pre-read reads the series on screen.")
        vp, study_description = found
        why = self.controller.start(vp.volume, study_description)
        if isinstance(why, Waiting):
            self._set_waiting((vp.volume, study_description))
            return self._say(f"{why}: the pre-read of {series_name(vp.volume)} starts when it is ready "
                             "(Cancel withdraws it).")
        self._set_waiting(None)
        return self._say(why) if why else None

    def start_waiting(self) -> None:
        """Start the pre-read the reader asked for while loading, if it can start now; say why not when
        it never will (the model failed to load, the series left the screen)."""
        if self._waiting is None or self.controller.running:
            return
        volume, study_description = self._waiting
        if not any(vp.volume is volume for vp in self.viewports()):
            self._set_waiting(None)
            self._say(f"The pre-read of {series_name(volume)} did not start: the series is no longer on screen.")
            return
        why = self.controller.start(volume, study_description)
        if isinstance(why, Waiting):
            return
        self._set_waiting(None)
        if why:
            self._say(f"The pre-read did not start: {why}")

    def _set_waiting(self, request: tuple[Volume, str] | None) -> None:
        changed = (request is None) != (self._waiting is None)
        self._waiting = request
        if changed:
            self._sync_buttons()
            self.waiting_changed.emit(request is not None)

    def cancel(self, *_args) -> str | None:
        if self._waiting is not None and not self.controller.running:
            self._set_waiting(None)
            return self._say("The pre-read will not start: withdrawn.")
        why = self.controller.cancel()
        if why:
            return self._say(why)
        self.status.setText("Cancelling the pre-read…")
        self._sync_buttons()
        return None

    def _say(self, text: str) -> str:
        self.status.setText(text)
        self.message.emit(text)
        return text

    def _started(self, volume: Volume) -> None:
        self.progress.setRange(0, 0)
        self.progress.setFormat("Starting…")
        self.progress.show()
        self.status.setText(f"Pre-reading {series_name(volume)} ({len(volume)} images)…")
        self._sync_buttons()

    def _stage(self, name: str) -> None:
        self.progress.setFormat(STAGES.get(name, name))
        if name == "link":
            self.progress.setRange(0, 0)

    def _progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 0))
        self.progress.setValue(done)

    def _finished(self, run: PrereadRun) -> None:
        self.progress.hide()
        self.accepted.pop(run.series_uid, None)  # a new pre-read: its lesions are new proposals
        self.links = {fid: sl for fid, sl in self.links.items() if sl[0] != run.series_uid}
        n = len(run.lesions)
        t = run.result.timing.get("total_s", 0.0)
        found = f"{n} lesion{'s' if n != 1 else ''} found" if n else "No lesion found"
        text = f"{found} in {series_name(run.volume)} ({t:.0f} s). {_caveat(n)}" + _point_note(run)
        self.refresh()
        if self.run is not run:
            text += " Show that series to see its list."
        self._say(text)
        self.sync_all()
        self._sync_buttons()

    def _restored(self, run: PrereadRun) -> None:
        n = len(run.lesions)
        found = f"{n} lesion{'s' if n != 1 else ''}" if n else "No lesion"
        self.refresh()
        self._say(f"{found} from the pre-read {run.origin} in {series_name(run.volume)}. {_caveat(n)}"
                  + _point_note(run))
        self.sync_all()
        self._sync_buttons()

    def _stopped(self, message: str) -> None:
        self.progress.hide()
        self._say(message)
        self._sync_buttons()

    # ------------------------------------------------------------------ the list
    def _taken(self) -> dict[str, str]:
        return self.accepted.get(self.run.series_uid, {}) if self.run is not None else {}

    def _active_volume(self) -> Volume | None:
        found = self.target()
        return found[0].volume if found is not None else None

    def refresh(self) -> None:
        """Show the pre-read of the active viewport's series (the list follows the active viewport)."""
        volume = self._active_volume()
        run = self.controller.result_for(volume)
        if volume is None:
            self.series_label.setText("")
        elif run is None:
            self.series_label.setText(f"{series_name(volume)}: not pre-read yet.")
        else:
            self.series_label.setText(f"{series_name(volume)}: pre-read by {run.result.model}"
                                      + (f" {run.origin}" if run.origin else ""))
        weaker = len(run.result.weaker) if run is not None else 0
        self.weaker_box.blockSignals(True)
        self.weaker_box.setText(weaker_text(weaker))
        self.weaker_box.setChecked(bool(run is not None and run.show_weaker))
        self.weaker_box.setVisible(weaker > 0)
        self.weaker_box.blockSignals(False)
        if run is self.run and self.lesions.topLevelItemCount() == len(run.lesions if run else []):
            self._update_rows()
            return
        if run is not self.run and not self.controller.running:
            # another series (or study) on screen: what the status said was about the list it leaves
            self.status.setText(IDLE_HINT if run is None else _run_summary(run))
        self.run = run
        self._building = True
        try:
            self.lesions.clear()
            self.lesions.setSortingEnabled(False)  # _update_rows sorts once every row is filled
            for lesion in run.lesions if run is not None else []:
                item = _LesionItem()
                item.setData(COL_ID, Qt.ItemDataRole.UserRole, lesion.id)
                self.lesions.addTopLevelItem(item)
            self._update_rows()
            self.detail.setText("")
        finally:
            self._building = False
        self._sync_buttons()

    def _update_rows(self) -> None:
        self.lesions.setSortingEnabled(False)  # rows move as their keys change: fill them all, then sort once
        try:
            self._fill_rows()
        finally:
            self.lesions.setSortingEnabled(True)

    def _fill_rows(self) -> None:
        taken = self._taken()
        for i in range(self.lesions.topLevelItemCount()):
            item = self.lesions.topLevelItem(i)
            lesion = self.run.lesion(item.data(COL_ID, Qt.ItemDataRole.UserRole)) if self.run else None
            if lesion is None:
                continue
            tier = lesion_tier(lesion)
            weaker = self.run.is_weaker(lesion)
            item.setText(COL_ID, lesion.id + (ACCEPTED_MARK if lesion.id in taken else ""))
            item.setText(COL_LOCATION, location_text(lesion))
            item.setText(COL_SIZE, f"{lesion.diameter_mm:.0f}")
            item.setText(COL_SLICES, slices_text(lesion))
            item.setText(COL_TIER, "○ weaker" if weaker else f"● {TIER_WORD[tier]}")
            number = lesion.id[1:] if lesion.id[:1].isalpha() else lesion.id
            keys = {COL_ID: int(number) if number.isdigit() else 0, COL_LOCATION: location_text(lesion).lower(),
                    COL_SIZE: float(lesion.diameter_mm), COL_SLICES: lesion.slices[0] * 10_000 + lesion.slices[1],
                    COL_TIER: TIER_RANK[tier]}
            for col, key in keys.items():
                item.setData(col, SORT_KEY, key)
            item.setBackground(COL_TIER, QBrush(TIER_TINT[tier]))
            item.setForeground(COL_TIER, QBrush(TIER_TEXT[tier]))
            for col in (COL_SIZE, COL_SLICES):
                item.setTextAlignment(col, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            tip = description_text(lesion) or lesion.phrase
            item.setToolTip(COL_LOCATION, f"{location_text(lesion)}: {tip}" if tip else location_text(lesion))
            item.setToolTip(COL_SIZE, f"{lesion.diameter_mm:.1f} mm")
            item.setToolTip(COL_SLICES, f"Images {slices_text(lesion)}, key image {lesion.key_slice + 1}")
            item.setToolTip(COL_ID, "In the report" if lesion.id in taken else "Not in the report")
            if weaker:
                item.setToolTip(COL_TIER, WEAKER_TIP)

    def item_of(self, lesion_id: str) -> QTreeWidgetItem | None:
        for i in range(self.lesions.topLevelItemCount()):
            item = self.lesions.topLevelItem(i)
            if item.data(COL_ID, Qt.ItemDataRole.UserRole) == lesion_id:
                return item
        return None

    def current_lesion(self) -> Candidate | None:
        item = self.lesions.currentItem()
        if item is None or self.run is None:
            return None
        return self.run.lesion(item.data(COL_ID, Qt.ItemDataRole.UserRole))

    def select_lesion(self, lesion_id: str) -> bool:
        """Select a lesion in the list (and jump to it); False when the list does not have it."""
        item = self.item_of(lesion_id)
        if item is None:
            return False
        if self.lesions.currentItem() is item:
            self.show_lesion(lesion_id)
        else:
            self.lesions.setCurrentItem(item)  # jumps through _current_changed
        return True

    def step_lesion(self, delta: int) -> str | None:
        """Select the next (``delta`` 1) or previous (-1) lesion of the list, from the first or the last
        one when none is selected and round at the ends, and show it; why not, when there is none."""
        n = self.lesions.topLevelItemCount()
        if self.run is None:
            return "No lesion list for the series on screen: pre-read it first."
        if n == 0:
            return "The pre-read found no lesion in this series."
        current = self.lesions.currentItem()
        i = self.lesions.indexOfTopLevelItem(current) if current is not None else -1
        item = self.lesions.topLevelItem((i + delta) % n if i >= 0 else (0 if delta > 0 else n - 1))
        if item is current:  # the only lesion: show it again (the reader may have scrolled away)
            return self.show_lesion(item.data(COL_ID, Qt.ItemDataRole.UserRole))
        self.lesions.setCurrentItem(item)  # shows it (_current_changed)
        self.lesions.scrollToItem(item)
        return None

    def _current_changed(self, item: QTreeWidgetItem | None) -> None:
        if self._building or item is None:
            self._sync_buttons()
            return
        self.show_lesion(item.data(COL_ID, Qt.ItemDataRole.UserRole))

    # ------------------------------------------------------------------ the jump and the boxes
    def _viewport_for(self, run: PrereadRun) -> Viewport | None:
        found = self.target()
        if found is not None and found[0].volume is not None and found[0].volume.series.uid == run.series_uid:
            return found[0]
        return next((vp for vp in self.viewports() if vp.volume is not None
                     and vp.volume.series.uid == run.series_uid), None)

    def show_lesion(self, lesion_id: str) -> str | None:
        """Jump to the lesion's key slice (in the window it was read in) and thicken its box there."""
        run = self.run
        lesion = run.lesion(lesion_id) if run is not None else None
        if lesion is None:
            return "That lesion is not in the list."
        self.detail.setText(self._detail(lesion))
        self._sync_buttons()
        vp = self._viewport_for(run)
        if vp is None:
            return self._say(f"Show {series_name(run.volume)} in a viewport to see lesion {lesion.id}.")
        window = window_of(lesion)
        if window is not None and (vp.window.width, vp.window.center) != (window.width, window.center):
            vp.set_window(window)
        self.sync_viewport(vp)
        vp.set_slice(lesion.key_slice)
        box_id = f"{PREFIX}{lesion.id}:{lesion.key_slice}"
        vp.overlays.highlight(box_id if box_id in vp.overlays.ids() else None)
        if self.activate is not None:
            self.activate(vp)
        self.lesion_shown.emit(lesion.id)
        return None

    def _detail(self, lesion: Candidate) -> str:
        rel = lesion.reliability or {}
        tier = lesion_tier(lesion)
        score = rel.get("score")
        reliability = (f"{tier} ({float(score):.2f})" if tier and isinstance(score, (int, float))
                       else TIER_WORD[tier])
        if self.run is not None and self.run.is_weaker(lesion):
            reliability = f"not assessed — {WEAKER_TIP[0].lower()}{WEAKER_TIP[1:]}"
        failed = [check_sentence(Check(str(c.get("name") or "check"), c.get("passed"), str(c.get("detail") or "")))
                  for c in rel.get("checks") or [] if not c.get("passed")]
        first, last = lesion.slices
        lines = [(f"{lesion.id} · {location_text(lesion)} · {lesion.diameter_mm:.1f} mm · about "
                 f"{approximate_ml(lesion.volume_ml)} · images {first + 1}–{last + 1}, "
                 f"key {lesion.key_slice + 1} · "
                 f"{lesion.window or 'default'} window"),
                 f"Reliability: {reliability}" + (f" — not passed: {' '.join(failed)}" if failed else ""),
                 description_text(lesion) or "No description (the reasoning step did not run).",
                 size_conflict_text(lesion)]
        return "\n".join(line for line in lines if line)

    def watch_viewport(self, vp: Viewport) -> None:
        """Redraw the pre-read boxes when ``vp`` shows another series (its boxes are cleared then), and
        select a lesion when its box is clicked."""
        if id(vp) in self._watched:
            return
        self._watched.add(id(vp))
        vp.window_changed.connect(lambda _w, vp=vp: self.sync_viewport(vp))
        vp.overlays.box_clicked.connect(self._box_clicked)

    def _box_clicked(self, box_id: str) -> None:
        if box_id.startswith(PREFIX):
            self.select_lesion(box_id[len(PREFIX):].rsplit(":", 1)[0])

    def sync_all(self) -> None:
        for vp in self.viewports():
            self.sync_viewport(vp)

    def sync_viewport(self, vp: Viewport) -> None:
        """Draw the boxes of the pre-read of the series ``vp`` shows, on every slice each lesion spans;
        leave unchanged ones in place and every other layer's boxes alone."""
        ov = vp.overlays
        wanted: dict[str, tuple] = {}
        run = self.controller.result_for(vp.volume)
        if run is not None and vp.volume is not None:
            taken = self.accepted.get(run.series_uid, {})
            for lesion in run.lesions:
                label = box_label(lesion, lesion.id in taken, run.is_weaker(lesion))
                for k, det in lesion.detections.items():
                    if k < len(vp.volume):
                        wanted[f"{PREFIX}{lesion.id}:{k}"] = (k, det.box, label)
        for box_id in ov.ids():
            if box_id.startswith(PREFIX) and box_id not in wanted:
                ov.remove(box_id)
        present = set(ov.ids())
        for box_id, (k, box, label) in wanted.items():
            if box_id not in present or ov.frame_of(box_id) != k or not _same(ov.box(box_id), box):
                ov.add_box(k, box, label, source=SOURCE, box_id=box_id, editable=False)
            elif ov.label_of(box_id) != label:
                ov.set_label(box_id, label)

    def show_weaker(self, on: bool) -> None:
        """List (and draw) the pre-read's candidates under the model's operating point too, or hide them again."""
        if self.run is None or self.run.show_weaker == bool(on):
            return
        self.run.show_weaker = bool(on)
        self.refresh()
        self.sync_all()
        n = len(self.run.result.weaker)
        self._say(f"Showing {n} weaker candidate{'s' if n != 1 else ''}: not reasoned about or checked." if on
                  else _run_summary(self.run))

    # ------------------------------------------------------------------ into the report
    def accept_selected(self, *_args) -> str | None:
        lesion = self.current_lesion()
        if lesion is None:
            return self._say("Select a lesion first (click it in the list or its box on the image).")
        if lesion.id in self._taken():
            return self._say(f"Lesion {lesion.id} is already in the report.")
        return self._accept([lesion])

    def accept_green(self, *_args) -> str | None:
        if self.run is None:
            return self._say("Pre-read the series first.")
        taken = self._taken()
        green = [les for les in self.run.lesions if lesion_tier(les) == "green" and les.id not in taken]
        if not green:
            return self._say("There is no green lesion left to accept.")
        return self._accept(green)

    def _accept(self, lesions: list[Candidate]) -> str | None:
        if self.acceptor is None or self.run is None:
            return self._say("There is no report in this window to accept lesions into.")
        out = self.acceptor(lesions, self.run)
        if isinstance(out, str):
            return self._say(out)
        self.accepted.setdefault(self.run.series_uid, {}).update(dict(out))
        self.links.update({fid: (self.run.series_uid, lid) for lid, fid in out})
        self._update_rows()
        self.sync_all()
        self._sync_buttons()
        ids = ", ".join(lid for lid, _ in out)
        self._say(f"Accepted into the report: {ids}." if out else "Nothing was accepted.")
        return None

    def follow_report(self, in_report: Callable[[str], bool | None]) -> bool:
        """The report changed: ``in_report(finding id)`` says whether each accepted lesion's finding is in the
        report now (True: taken, False: rejected, set back or deleted, None: not this report's, left as it is).
        Marks ✓ (list and box labels) exactly the lesions whose finding is taken; True when a mark changed."""
        changed = False
        for fid, (series_uid, lesion_id) in list(self.links.items()):
            state = in_report(fid)
            if state is None:
                continue
            taken = self.accepted.setdefault(series_uid, {})
            if state and taken.get(lesion_id) != fid:
                taken[lesion_id] = fid
                changed = True
            elif not state and taken.get(lesion_id) == fid:
                del taken[lesion_id]
                changed = True
        if changed:
            self._update_rows()
            self.sync_all()
            self._sync_buttons()
        return changed


def _same(a, b, tol: float = 1e-3) -> bool:
    return all(abs(getattr(a, k) - getattr(b, k)) <= tol for k in ("x0", "y0", "x1", "y1"))
