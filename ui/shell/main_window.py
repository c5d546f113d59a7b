"""The workstation's main window: the study browser on the left, viewports in the
middle, the tag browser on the right (a tab beside the assistant and the report once
they are docked), menus, toolbar and a status bar with load progress, cancel and problems.

Every side panel is docked through :meth:`MainWindow.add_panel`, which also lists it in the
View menu; Reading mode (F11) hides them all with the toolbar and brings them back."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QWidget,
)

from app.core.errors import XMedError
from app.dicom.loader import load_series
from app.dicom.model import ScanResult, Series, Volume
from app.viewer.measure_store import frame_table
from app.viewer.viewport import StudyInfo
from ui.actions import Actions
from ui.shell.help_dialog import HelpDialog
from ui.shell.toolbar import build_toolbar
from ui.shortcuts import SHORTCUTS, by_action, pretty_keys
from ui.study.browser import StudyBrowser
from ui.study.problems_dialog import ProblemsDialog, problem_rows
from ui.study.tag_browser import TagBrowser
from ui.viewer.grid import ViewportGrid
from ui.viewer.load_worker import ScanWorker, SeriesLoadWorker, ThumbnailWorker
from ui.viewer.viewport import Viewport

log = logging.getLogger(__name__)

#: Loaded volumes kept in memory for quick switching (most recent last).
VOLUME_CACHE = 4
#: Default widths of the side docks (px): with both sides open a 1600 px window still gives the
#: images at least 60% of its width (RadiAnt, OHIF and Horos leave them about two thirds). The
#: right-hand column is as wide as its widest panel needs (the assistant's, ~420 px, today).
LEFT_DOCK_WIDTH = 200
RIGHT_DOCK_WIDTH = 380  # the pre-read list shows "Right upper abdomen" whole beside size, images and tier


class MainWindow(QMainWindow):
    #: Emitted when no scan, series load or thumbnail job is running any more.
    idle = Signal()
    #: The function that decodes a series (replaceable in tests to simulate a slow disk).
    load_fn = staticmethod(load_series)

    def __init__(self, model_path: Path | None = None) -> None:
        super().__init__()
        self.setWindowTitle("XMedGPT Workstation")
        self.resize(1600, 1000)
        self.model_path = model_path
        self.result: ScanResult | None = None
        self._series: list[Series] = []
        self._study_info: list[StudyInfo] = []
        self._volumes: OrderedDict[int, Volume] = OrderedDict()
        self._open_next: list[Path] | None = None  # asked for while a scan ran
        self._restore: dict[int, tuple] = {}  # viewport id -> the place to go back to once its series is loaded
        self._shown: dict[int, int] = {}  # id(viewport) → series index
        self._loads: dict[int, SeriesLoadWorker] = {}  # id(viewport) → worker
        self._scan: ScanWorker | None = None
        self._thumbs: ThumbnailWorker | None = None
        self._extra_problems: list[tuple[str, str]] = []
        self.docks: list[QDockWidget] = []
        self.view_menu: QMenu | None = None  # built in _menus_and_toolbar; add_panel adds each dock's toggle
        self._reading_state = None  # the window state to restore when Reading mode ends

        self.grid = ViewportGrid(self)
        self.setCentralWidget(self.grid)
        self.browser = StudyBrowser()
        self.tags = TagBrowser()
        self._docks()
        self._status_bar()
        self._actions()
        self._menus_and_toolbar()
        for vp in self.grid.viewports:
            self._wire(vp)
        self.grid.active_changed.connect(self._active_changed)
        self.grid.message.connect(lambda text: self.statusBar().showMessage(text, 6000))
        self._update_edit_actions()
        self.browser.series_activated.connect(lambda i: self.show_series(i, self.grid.active))

    # -- construction --------------------------------------------------------------------

    def _docks(self) -> None:
        self.setDockNestingEnabled(True)
        self.browser_dock = self.add_panel(self.browser, "Series", Qt.DockWidgetArea.LeftDockWidgetArea,
                                           name="studies")
        # the tags want width, the study list does not: the tags share the right-hand column (as a
        # tab beside the assistant and the report), so a narrow left column leaves the images the room
        self.tags_dock = self.add_panel(self.tags, "DICOM tags", name="tags")
        self.resizeDocks([self.browser_dock, self.tags_dock], [LEFT_DOCK_WIDTH, RIGHT_DOCK_WIDTH],
                         Qt.Orientation.Horizontal)
        self.tags_dock.visibilityChanged.connect(lambda _v: self._update_tags())

    def add_panel(self, widget: QWidget, title: str, area: Qt.DockWidgetArea = Qt.DockWidgetArea.RightDockWidgetArea,
                  name: str | None = None) -> QDockWidget:
        """Dock a side panel (the assistant and the report go to the right-hand area).

        Every dock comes through here: it can be closed, floated or moved, and its show/hide
        toggle is listed in the View menu, so a closed panel always has a way back.
        """
        dock = QDockWidget(title, self)
        dock.setObjectName(name or title.lower().replace(" ", "_"))
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetClosable
                         | QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable)
        self.addDockWidget(area, dock)
        self.docks.append(dock)
        toggle = dock.toggleViewAction()
        toggle.setToolTip(f"Show or hide the {title} panel")
        if self.view_menu is not None:
            self.view_menu.addAction(toggle)
        return dock

    def _status_bar(self) -> None:
        sb = self.statusBar()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip(f"Stop loading ({pretty_keys(by_action('cancel_load'))})")
        self.cancel_button.clicked.connect(self.cancel_loading)
        self.cancel_button.hide()
        self.problems_button = QPushButton("")
        self.problems_button.setFlat(True)
        self.problems_button.clicked.connect(self.show_problems)
        self.problems_button.hide()
        self.cursor_label = QLabel("")
        sb.addPermanentWidget(self.cursor_label)
        sb.addPermanentWidget(self.problems_button)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_button)
        model = f"  ·  assistant model: {self.model_path}" if self.model_path else ""
        sb.showMessage(f"Open a study folder, files or a zip (Ctrl+O){model}")

    def _actions(self) -> None:
        """One QAction per shortcut table entry.

        Window-scope entries are bound as shortcuts; viewport-scope entries show
        their key in the menu and run on the active viewport (the viewport binds
        those keys itself when it has focus, from the same table).
        """
        self.actions_by_name: dict[str, QAction] = {}
        #: named actions of every panel (ui.actions): keys, menus and voice commands run them by name
        self.actions = Actions()
        handlers = {
            "open_folder": self.open_folder_dialog,
            "open_files": self.open_files_dialog,
            "layout_1x1": lambda: self.set_layout("1x1"),
            "layout_1x2": lambda: self.set_layout("1x2"),
            "layout_2x2": lambda: self.set_layout("2x2"),
            "layout_mpr": lambda: self.show_mpr("mpr"),
            "layout_mpr_2x2": lambda: self.show_mpr("mpr2x2"),
            "slab_thicker": lambda: self._slab(lambda p: p.step_slab(+1)),
            "slab_thinner": lambda: self._slab(lambda p: p.step_slab(-1)),
            "slab_mode": lambda: self._slab(lambda p: p.cycle_mode()),
            "mpr_rotate": lambda: self._slab(lambda p: p.rotate(15.0)),
            "mpr_rotate_back": lambda: self._slab(lambda p: p.rotate(-15.0)),
            "next_viewport": self.grid.next_viewport,
            "link_viewports": self.grid.toggle_link,
            "reading_mode": self.toggle_reading_mode,
            "open_with_prior": lambda: self._studies_command("open_with_prior"),
            "next_study": lambda: self._studies_command("step_study", 1),
            "previous_study": lambda: self._studies_command("step_study", -1),
            "run_preread": lambda: self._preread_command("start"),
            "take_preread_lesion": lambda: self._preread_command("accept_selected"),
            "next_preread_lesion": lambda: self._preread_command("step_lesion", 1),
            "previous_preread_lesion": lambda: self._preread_command("step_lesion", -1),
            "cancel_load": self.cancel_loading,
            "show_problems": self.show_problems,
            "show_help": self.show_help,
            "quit": self.close,
        }
        for sc in SHORTCUTS:
            if sc.scope == "window":
                act = QAction(sc.description, self)
                act.setShortcuts([QKeySequence(k) for k in sc.keys])
                act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
                act.triggered.connect(lambda _=False, fn=handlers[sc.action]: fn())
                self.addAction(act)
            else:
                act = QAction(f"{sc.description}\t{pretty_keys(sc)}", self)
                act.triggered.connect(lambda _=False, name=sc.action: self._on_active(name))
            act.setToolTip(f"{sc.description} ({pretty_keys(sc)})")
            self.actions_by_name[sc.action] = act
            self.actions.register(sc.action, lambda act=act: act.trigger(), owner="window")
        reading = self.actions_by_name["reading_mode"]
        reading.setCheckable(True)
        reading.setText("Reading mode")  # the menu entry; the tooltip and Help say what it does
        link = self.actions_by_name["link_viewports"]
        link.setCheckable(True)
        link.setText("Link viewports")
        self.grid.sync.link_changed.connect(link.setChecked)

    def _menus_and_toolbar(self) -> None:
        a = self.actions_by_name
        mb = self.menuBar()
        m = mb.addMenu("&File")
        for name in ("open_folder", "open_files", None, "show_problems", None, "quit"):
            m.addSeparator() if name is None else m.addAction(a[name])
        m = mb.addMenu("&Edit")
        for name in ("undo_measurement", "redo_measurement", None, "delete_measurement", "clear_measurements", None,
                     "toggle_key_image"):
            m.addSeparator() if name is None else m.addAction(a[name])
        self.edit_menu = m
        m = mb.addMenu("&View")
        for name in ("layout_1x1", "layout_1x2", "layout_2x2", "layout_mpr", "layout_mpr_2x2", "slab_thicker",
                     "slab_thinner", "slab_mode", "mpr_rotate", "mpr_rotate_back", "next_viewport",
                     "link_viewports", None, "fit",
                     "zoom_in",
                     "zoom_out", "rotate_cw", "rotate_ccw", "flip_h", "flip_v", "reset", None,
                     "previous_series", "next_series", "toggle_cine", "cine_faster", "cine_slower", None,
                     "reading_mode"):
            m.addSeparator() if name is None else m.addAction(a[name])
        m.addSection("Panels")
        for dock in self.docks:  # docks added later (assistant, report) join through add_panel
            m.addAction(dock.toggleViewAction())
        self.view_menu = m
        m = mb.addMenu("&Window")
        for name in ("preset_1", "preset_2", "preset_3", "preset_4", "preset_5", "preset_0", None, "toggle_invert"):
            m.addSeparator() if name is None else m.addAction(a[name])
        m = mb.addMenu("&Tools")
        for name in ("tool_pan", "tool_length", "tool_rect", "tool_ellipse", "tool_angle", "tool_cobb"):
            m.addAction(a[name])
        m = mb.addMenu("&Help")
        m.addAction(a["show_help"])
        about = QAction("About", self)
        about.triggered.connect(self._about)
        m.addAction(about)

        self.toolbar, self.tool_buttons = build_toolbar(self, a)

    def _wire(self, vp: Viewport) -> None:
        vp.slice_changed.connect(lambda _k, vp=vp: self._viewport_slice(vp))
        vp.series_step_requested.connect(lambda d, vp=vp: self._step_series(vp, d))
        vp.series_dropped.connect(lambda key, vp=vp: self.show_series(int(key), vp))
        vp.measurement_added.connect(lambda text: self.statusBar().showMessage(f"Measured: {text}", 8000))
        vp.message.connect(lambda text: self.statusBar().showMessage(text, 4000))
        vp.tool_changed.connect(self._tool_changed)
        vp.cursor_text.connect(self.cursor_label.setText)
        vp.measurements_changed.connect(lambda vp=vp: self._update_edit_actions() if vp is self.grid.active else None)

    # -- opening -------------------------------------------------------------------------

    def open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open study folder")
        if path:
            self.open_paths([Path(path)])

    def open_files_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Open DICOM files, a DICOMDIR or a zip", "", "DICOM (*.dcm *.DCM DICOMDIR *.zip *);;All files (*)"
        )
        if paths:
            self.open_paths([Path(p) for p in paths])

    def open_paths(self, paths: list[Path]) -> None:
        """Scan ``paths`` in the background, then show the first series. Opening the study on screen
        again (e.g. once a retrieve that was opened early has brought the rest) keeps each viewport's
        series, image and window."""
        self.cancel_loading()
        if self._scan is not None and self._scan.isRunning():
            self._open_next = list(paths)  # opened when this scan is done (the latest request wins)
            return
        self._open_next = None
        self.statusBar().showMessage(f"Reading {', '.join(p.name or str(p) for p in paths)}…")
        self._set_progress(0, 0, "Reading headers")
        worker = ScanWorker(paths, self)
        worker.progress.connect(lambda d, t: self._set_progress(d, t, "Reading headers"))
        worker.scanned.connect(self._scanned)
        worker.failed.connect(self._scan_failed)
        worker.finished.connect(self._maybe_idle)
        worker.finished.connect(self._open_queued)
        self._scan = worker
        worker.start()

    def _open_queued(self) -> None:
        paths, self._open_next = self._open_next, None
        if paths:
            self.open_paths(paths)

    def _scan_failed(self, message: str) -> None:
        self._hide_progress()
        self.statusBar().showMessage(message)

    def _scanned(self, result: ScanResult) -> None:
        self._hide_progress()
        # the same study again (a retrieve opened early is complete now): each viewport keeps its place
        keep = self._view_state() if self._study_uids(self.result) & self._study_uids(result) else {}
        for vp in self.grid.viewports:
            vp.set_volume(None)
        self.result = result
        self._volumes.clear()
        self._shown.clear()
        self._extra_problems = []
        self._series = result.all_series()
        self._study_info = []
        for p in result.patients:
            for st in p.studies:
                info = StudyInfo(p.name, p.id, p.birth_date, p.sex, st.date, st.description, st.accession)
                self._study_info += [info] * len(st.series)
        self.browser.set_result(result)
        self._update_problems()
        if not self._series:
            reason = f": {result.problems[0].reason}" if len(result.problems) == 1 else ""
            more = f" ({len(result.problems)} unreadable files, Ctrl+P)" if len(result.problems) > 1 else ""
            self.statusBar().showMessage(f"No DICOM images found{reason}{more}")
            return
        n = len(self._series)
        self.statusBar().showMessage(f"{n} series found", 5000)
        self._restore = {}
        uids = [s.uid for s in self._series]
        for i, vp in enumerate(self.grid.visible()):
            kept = keep.get(id(vp))
            if kept is not None and kept[0] in uids:
                self._restore[id(vp)] = kept
                self.show_series(uids.index(kept[0]), vp)
            else:
                self.show_series(i % n, vp)
        self.grid.set_active(self.grid.viewports[0])
        self.grid.viewports[0].setFocus()
        if self._thumbs is not None:
            self._thumbs.cancel()
        thumbs = ThumbnailWorker(self._series, parent=self)
        thumbs.thumbnail.connect(self.browser.set_thumbnail)
        thumbs.finished.connect(self._maybe_idle)
        self._thumbs = thumbs
        thumbs.start()

    def _view_state(self) -> dict[int, tuple]:
        """Per visible viewport: its series, the image on screen (SOP Instance UID, frame) and its window."""
        state: dict[int, tuple] = {}
        for vp in self.grid.visible():
            volume = vp.volume
            if volume is None:
                continue
            table = frame_table(volume.series.instances)
            if 0 <= vp.slice_index < len(table):
                state[id(vp)] = (volume.series.uid, table[vp.slice_index], vp.window)
        return state

    @staticmethod
    def _study_uids(result: ScanResult | None) -> set[str]:
        return {st.uid for p in result.patients for st in p.studies} if result is not None else set()

    # -- series in viewports -----------------------------------------------------------------

    def show_series(self, index: int, vp: Viewport) -> None:
        """Show series ``index`` in ``vp``: from memory, or loaded in the background."""
        if not 0 <= index < len(self._series):
            return
        self._cancel_viewport_load(vp)
        self._shown[id(vp)] = index
        if vp is self.grid.active:
            self.browser.mark_current(index)
        if index in self._volumes:
            self._volumes.move_to_end(index)
            vp.set_volume(self._volumes[index], self._study_info[index])
            self._update_tags()
            return
        series = self._series[index]
        vp.set_volume(None)
        vp.corner.set_message(f"Loading {series.description or 'series'}…")
        worker = SeriesLoadWorker(series, self, load_fn=self.load_fn)
        worker.first_frame.connect(lambda v, vp=vp, i=index: self._first_frame(vp, i, v))
        worker.frame_loaded.connect(lambda k, n, vp=vp: self._frame_loaded(vp, k, n))
        worker.loaded.connect(lambda v, vp=vp, i=index: self._loaded(vp, i, v))
        worker.failed.connect(lambda msg, vp=vp: self._load_failed(vp, msg))
        worker.cancelled.connect(lambda vp=vp: self._load_cancelled(vp))
        worker.finished.connect(lambda w=worker: self._retire(w))
        self._loads[id(vp)] = worker
        self._set_progress(0, series.frame_count, "Loading")
        worker.start()

    def _first_frame(self, vp: Viewport, index: int, volume: Volume) -> None:
        if self._shown.get(id(vp)) != index:
            return
        vp.set_volume(volume, self._study_info[index], complete=False)
        vp.frames_loaded(volume.loaded)
        self._update_tags()

    def _frame_loaded(self, vp: Viewport, k: int, n: int) -> None:
        vp.frames_loaded(k + 1)
        self._set_progress(k + 1, n, "Loading")

    def _loaded(self, vp: Viewport, index: int, volume: Volume) -> None:
        self._volumes[index] = volume
        self._volumes.move_to_end(index)
        while len(self._volumes) > VOLUME_CACHE:
            self._volumes.popitem(last=False)
        if self._shown.get(id(vp)) == index:
            vp.load_finished()
            kept = self._restore.pop(id(vp), None)
            if kept is not None and vp.volume is volume:
                table = frame_table(volume.series.instances)
                if kept[1] in table:
                    vp.set_slice(table.index(kept[1]))
                vp.set_window(kept[2])
        if volume.frame_problems:
            name = self._series[index].description
            self._extra_problems += [(f"{name} image {k + 1}", r) for k, r in sorted(volume.frame_problems.items())]
            self._update_problems()
        self.statusBar().showMessage(f"Loaded {len(volume)} images", 3000)

    def _load_failed(self, vp: Viewport, message: str) -> None:
        vp.corner.set_message(message)
        self.statusBar().showMessage(message)

    def _load_cancelled(self, vp: Viewport) -> None:
        v = vp.volume
        shown = f" ({v.loaded} of {len(v)} images shown)" if v is not None else ""
        self.statusBar().showMessage(f"Loading cancelled{shown}")

    def _retire(self, worker: SeriesLoadWorker) -> None:
        for key, w in list(self._loads.items()):
            if w is worker:
                del self._loads[key]
        worker.deleteLater()
        if not self._loads:
            self._hide_progress()
        self._maybe_idle()

    def _cancel_viewport_load(self, vp: Viewport) -> None:
        worker = self._loads.get(id(vp))
        if worker is not None:
            worker.cancel()

    def cancel_loading(self) -> None:
        for worker in list(self._loads.values()):
            worker.cancel()

    def is_busy(self) -> bool:
        jobs = [self._scan, self._thumbs, *self._loads.values()]
        return any(j is not None and j.isRunning() for j in jobs) or bool(self._loads) or self._open_next is not None

    def _maybe_idle(self) -> None:
        QTimer.singleShot(0, lambda: None if self.is_busy() else self.idle.emit())

    def _step_series(self, vp: Viewport, delta: int) -> None:
        if not self._series:
            return
        current = self._shown.get(id(vp), 0)
        target = (current + delta) % len(self._series)
        if target == current:
            self.statusBar().showMessage("This study has no other series", 3000)
            return
        self.show_series(target, vp)

    def show_mpr(self, layout: str = "mpr") -> str | None:
        """MPR of the series in the active viewport (axial, coronal, sagittal with crosshair)."""
        active = self.grid.active
        panel = self.grid.mpr
        if panel is not None and active in panel.views and panel.source is not None:
            self.grid.set_layout(layout)  # already in MPR: only the layout changes
            return None
        volume = active.volume
        if volume is None:
            msg = "Open a series first, then choose MPR"
        elif id(active) in self._loads:
            msg = "Wait until the series has loaded, then choose MPR"
        else:
            try:
                msg = self.grid.mpr_panel().set_volume(volume, getattr(active, "_study", None), active.window)
            except XMedError as exc:
                msg = f"MPR is not possible for this series: {exc}"
                self.statusBar().showMessage(msg, 8000)
                return msg
            self.grid.set_layout(layout)
            self.statusBar().showMessage(msg or "MPR: left click or drag sets the crosshair; S / Shift+S slab, "
                                         "M slab mode", 8000)
            return None
        self.statusBar().showMessage(msg, 6000)
        return msg

    def _slab(self, change) -> str | None:
        panel = self.grid.mpr
        if panel is None or not self.grid.is_mpr or panel.state is None:
            msg = "Slabs and crosshair rotation are for MPR: choose MPR (Ctrl+3) first"
            self.statusBar().showMessage(msg, 4000)
            return msg
        self.statusBar().showMessage(change(panel), 4000)
        return None

    def set_layout(self, name: str) -> None:
        before = set(map(id, self.grid.visible()))
        self.grid.set_layout(name)
        if not self._series:
            return
        start = max(self._shown.values(), default=-1) + 1
        for vp in self.grid.visible():
            if id(vp) not in before and vp.volume is None and id(vp) not in self._loads:
                self.show_series(start % len(self._series), vp)
                start += 1

    # -- active viewport, tags, problems ------------------------------------------------------

    def _on_active(self, action: str) -> None:
        self.grid.active.trigger(action)
        self.grid.active.setFocus()

    def _tool_changed(self, tool: str) -> None:
        """A tool applies to every viewport, as in RadiAnt and OHIF; the toolbar shows which."""
        for vp in self.grid.viewports:
            if vp.tool != tool:
                vp.set_tool(tool)
        for name, act in self.tool_buttons.items():
            act.setChecked(name == f"tool_{tool}")
        self.statusBar().showMessage(f"Tool: {by_action(f'tool_{tool}').description}", 3000)

    def _active_changed(self, vp: Viewport) -> None:
        self.browser.mark_current(self._shown.get(id(vp)))
        self._update_tags()
        self._update_edit_actions()

    def _update_edit_actions(self) -> None:
        """Edit > Undo / Redo name what they would do in the active viewport, and are off when nothing."""
        layer = self.grid.active.measurements
        for name, verb, what in (("undo_measurement", "Undo", layer.undo_text()),
                                 ("redo_measurement", "Redo", layer.redo_text())):
            act = self.actions_by_name[name]
            label = f"{verb} {what}" if what else verb
            act.setText(f"{label}\t{pretty_keys(by_action(name))}")
            act.setEnabled(bool(what))
        self.actions_by_name["clear_measurements"].setEnabled(bool(layer.items))

    # -- reading mode ----------------------------------------------------------------------------

    @property
    def reading_mode(self) -> bool:
        return self._reading_state is not None

    def toggle_reading_mode(self) -> None:
        """F11 / Ctrl+Shift+R: the images get the window (side panels and toolbar hidden); again:
        everything comes back as it was, sizes included."""
        act = self.actions_by_name["reading_mode"]
        if self._reading_state is None:
            self._reading_state = self.saveState()
            for dock in self.docks:
                dock.hide()
            self.toolbar.hide()
            self.statusBar().showMessage(
                f"Reading mode: {pretty_keys(by_action('reading_mode'))} brings the panels back", 5000)
        else:
            state, self._reading_state = self._reading_state, None
            self.restoreState(state)
            self.toolbar.show()
        act.setChecked(self._reading_state is not None)

    def _viewport_slice(self, vp: Viewport) -> None:
        if vp is self.grid.active:
            self._update_tags()

    def _update_tags(self) -> None:
        vp = self.grid.active
        v = vp.volume
        if v is None or not self.tags_dock.isVisible():
            return
        sources = getattr(v, "frame_sources", None)
        if sources and vp.slice_index < len(sources):
            path, frame = sources[vp.slice_index]
        else:
            path, frame = _instance_path(v, vp.slice_index)
        self.tags.show_instance(path, frame)

    def _update_problems(self) -> None:
        rows = problem_rows(self.result, self._extra_problems)
        if rows:
            self.problems_button.setText(f"⚠ {len(rows)} problem{'s' if len(rows) != 1 else ''}")
            self.problems_button.setToolTip("; ".join(f"{Path(w).name}: {r}" for w, r in rows[:5]))
            self.problems_button.show()
        else:
            self.problems_button.hide()

    def problem_rows(self) -> list[tuple[str, str]]:
        return problem_rows(self.result, self._extra_problems)

    def show_problems(self) -> None:
        ProblemsDialog(self.problem_rows(), self).exec()

    def show_help(self) -> None:
        HelpDialog(self).exec()

    def _about(self) -> None:
        QMessageBox.about(self, "XMedGPT Workstation", "XMedGPT Workstation\nDICOM viewer with a local AI assistant.\n"
                          "For research use; findings must be confirmed by a radiologist.")

    # -- progress --------------------------------------------------------------------------------

    def _set_progress(self, done: int, total: int, what: str) -> None:
        self.progress.setMaximum(max(total, 0))
        self.progress.setValue(done)
        self.progress.setFormat(f"{what} %v/%m" if total else what)
        self.progress.show()
        self.cancel_button.setVisible(what == "Loading")

    def _hide_progress(self) -> None:
        self.progress.hide()
        self.cancel_button.hide()

    def closeEvent(self, event) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self, timeout_ms: int = 5000) -> None:
        """Stop background work and wait for the threads (on close and in tests)."""
        self.cancel_loading()
        if self._thumbs is not None:
            self._thumbs.cancel()
        for w in [self._scan, self._thumbs, *self._loads.values()]:
            if w is not None:
                w.wait(timeout_ms)
        if getattr(self, "assistant", None) is not None:
            self.assistant.shutdown()

    # -- the assistant (ui/shell/assistant_setup.install_assistant attaches it) ---------------------

    def attach_assistant(self, controller, panel) -> QDockWidget:
        """Dock the assistant panel on the right; ``self.assistant`` is its
        :class:`ui.assistant.controller.AssistantController` (signals ``answer_ready``,
        ``reliability_ready``, …, documented there)."""
        self.assistant = controller
        self.assistant_panel = panel
        self._register(panel, "assistant")
        panel.message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.removeDockWidget(self.tags_dock)  # the assistant takes the first tab, the tags move behind it
        dock = self.add_panel(panel, "Assistant")
        self.tabifyDockWidget(dock, self.tags_dock)
        self.tags_dock.show()
        dock.raise_()
        self.resizeDocks([dock], [RIGHT_DOCK_WIDTH], Qt.Orientation.Horizontal)
        settings = QAction("Settings…", self)
        settings.triggered.connect(panel.settings_requested)
        self.menuBar().actions()[0].menu().insertAction(self.actions_by_name["show_problems"], settings)
        return dock

    def _register(self, panel, owner: str) -> None:
        """Register what a panel offers by name: its actions and where dictated text can go."""
        self.actions.register_all(panel.named_actions(), owner)
        for name, widgets in panel.text_targets().items():
            self.actions.register_target(name, widgets)

    def assistant_target(self) -> tuple[Viewport, str] | None:
        """The active viewport and its study's description, when it shows an image."""
        vp = self.grid.active
        if vp.volume is None:
            return None
        index = self._shown.get(id(vp))
        info = self._study_info[index] if index is not None and index < len(self._study_info) else None
        return vp, info.study_description if info is not None else ""

    # -- the report (ui/report/controller.py) -----------------------------------------------------

    def attach_report(self, settings=None):
        """Dock the report editor and wire it to the viewports, the workspace and the audit log;
        ``self.report`` is the :class:`ui.report.controller.ReportController`."""
        from app.core.settings import Settings
        from ui.report.controller import ReportController

        self.report = ReportController(self, settings if settings is not None else Settings.load())
        self._register(self.report, "report")
        assistant_panel = getattr(self, "assistant_panel", None)
        if assistant_panel is not None and assistant_panel.parentWidget() is not None:
            # stacked under the assistant the two panels need ~975 px of height: share the space as tabs
            self.tabifyDockWidget(assistant_panel.parentWidget(), self.report.dock)
            assistant_panel.parentWidget().raise_()  # where a reading starts; the report never raises itself (#13.7)
        else:
            self.tabifyDockWidget(self.tags_dock, self.report.dock)
        return self.report

    # -- dictation (ui/dictation/controller.py) ---------------------------------------------------

    def attach_dictation(self, settings=None, **kwargs):
        """Put the push-to-talk microphone in the status bar (F4 anywhere in the window); text follows the
        focus into the query box or the report, voice commands run the window's actions.
        ``self.dictation`` is the :class:`ui.dictation.controller.DictationController`."""
        from ui.dictation.controller import DictationController

        self.dictation = DictationController(self, settings, **kwargs)
        return self.dictation

    # -- the series pre-read (ui/shell/preread_setup.install_preread attaches it) --------------------

    def _studies_command(self, method: str, *args) -> str | None:
        """A study-list command from the keyboard; the study list says why not on the status bar itself."""
        studies = getattr(self, "studies", None)
        if studies is None:
            why = "There is no study list in this window."
            self.statusBar().showMessage(why, 5000)
            return why
        return getattr(studies, method)(*args)

    def _preread_command(self, method: str, *args) -> str | None:
        """A Pre-read panel command from the keyboard, eyes on the image (Ctrl+Shift+P pre-read series,
        Ctrl+Shift+A accept, N / Shift+N next / previous lesion); why not goes to the status bar."""
        panel = getattr(self, "preread_panel", None)
        why = getattr(panel, method)(*args) if panel is not None else "There is no pre-read in this window."
        if why:
            self.statusBar().showMessage(why, 5000)
        return why

    def attach_preread(self, controller, panel) -> QDockWidget:
        """Dock the pre-read panel as a tab beside the assistant (else the tags); ``self.preread`` is its
        :class:`ui.preread.controller.PrereadController`, ``self.preread_panel`` the panel."""
        self.preread, self.preread_panel = controller, panel
        self._register(panel, "preread")
        panel.message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        dock = self.add_panel(panel, "Pre-read", name="preread")
        assistant_panel = getattr(self, "assistant_panel", None)
        beside = assistant_panel.parentWidget() if assistant_panel is not None else None
        beside = beside if isinstance(beside, QDockWidget) else self.tags_dock
        self.tabifyDockWidget(beside, dock)
        beside.raise_()  # the assistant stays the tab a reading starts on
        self._keep_prereads_with_studies()
        return dock

    def _keep_prereads_with_studies(self) -> None:
        """Once both the pre-read and the study list are attached (either order), each pre-read run here is kept
        with its study (:meth:`ui.shell.studies_setup.StudiesController.keep_preread`)."""
        controller, studies = getattr(self, "preread", None), getattr(self, "studies", None)
        if controller is not None and studies is not None and getattr(self, "_kept_by", None) is not controller:
            controller.finished.connect(studies.keep_preread)
            self._kept_by = controller

    # -- the study list, PACS and the outbox (ui/shell/studies_setup.install_studies) -------------------

    def attach_studies(self, **kwargs):
        """Dock the study list (local studies, Query PACS, outbox) beside the series browser and follow the
        report's signatures; ``self.studies`` is the :class:`ui.shell.studies_setup.StudiesController`."""
        from ui.shell.studies_setup import install_studies

        self.studies = install_studies(self, **kwargs)
        self._keep_prereads_with_studies()
        return self.studies


def _instance_path(volume: Volume, k: int) -> tuple[Path | None, int]:
    for inst in volume.series.instances:
        if k < inst.number_of_frames:
            return Path(inst.path), k
        k -= inst.number_of_frames
    return None, 0

