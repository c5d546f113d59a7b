"""Wiring hospital connectivity into the main window: the study list, the outbox, arrivals.

The shell owns this (as :mod:`ui.shell.assistant_setup` does for the assistant): it opens the study
database, the PACS node list and the outbox (:mod:`app.studies`), docks the study list
(:class:`ui.study.study_list.StudyListWidget`) beside the series browser, and connects what the
feature packages cannot connect themselves, since they do not know each other:

- double-click in the study list → ``window.open_paths`` with the study's files;
- every study the window opens is indexed (in place) so it is in the list next time;
- a report drafted → the study's report state ``draft``; a report (or addendum) signed → ``signed``
  and, when Settings names a node (``report_send_node``), its SR and PDF (as Encapsulated PDF) queued in
  the outbox, which a background thread sends with retries;
- Settings ``pacs_listen``: the Storage SCP runs while the window is open; ``preread_on_arrival``: each
  complete arrival is queued for the series pre-read, run one job at a time in the background with the
  assistant's model (or the engine factory handed in). Changed in the Settings dialog they take effect at
  once (:meth:`StudiesController.apply_settings`): the listener starts, stops or restarts, the queue starts.

Nothing here blocks the window: the network and the model run on worker threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from PySide6.QtCore import QEvent, QObject, Qt, Signal

from app.assistant.preread import from_json as preread_from_json
from app.assistant.study_preread import (
    StudyPrereader,
    keep_viewer_preread,
    saved_preread,
)
from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name
from app.core.settings import Settings
from app.report.audit import AuditLog
from app.studies.importer import index_scan, open_library
from app.studies.locations import StudyPaths
from app.studies.nodes import NodeStore
from app.studies.outbox import Outbox, OutboxSender
from app.studies.queue import ArrivalWatcher, JobQueue
from app.studies.scp import Listener, Receiver
from ui.study.study_list import Services, StudyListWidget

log = logging.getLogger(__name__)


class StudiesController(QObject):
    """What :func:`install_studies` made; ``window.studies`` once attached."""

    status = Signal(str)  # a line for the status bar (emitted from worker threads too: queued to the UI)
    preread_done = Signal()  # a pre-read job finished (emitted on the queue's thread: queued to the UI)

    def __init__(self, window, settings: Settings, paths: StudyPaths, audit: Any, *,
                 engine_factory: Callable | None = None, start_workers: bool = True) -> None:
        super().__init__(window)
        self.window = window
        self.settings = settings
        self.paths = paths.ensure()
        self.audit = audit
        self.db = open_library(self.paths, audit=audit)
        self.nodes = NodeStore.load(self.paths.nodes_file)
        self.outbox = Outbox(self.db, self.nodes, local=self.nodes.local, audit=audit)
        self.sender = OutboxSender(self.outbox)
        self.queue: JobQueue | None = None
        self.listener: Listener | None = None
        self._indexed: object = None
        self._closed = False
        self._engine_factory = engine_factory
        preread = self._prereads()
        if preread:
            self.queue = self._make_queue()
        self.services = Services(self.db, self.paths, self.nodes, audit, queue=self.queue, outbox=self.outbox,
                                 preread_retrieved=preread)
        self.widget = StudyListWidget(self.services)
        self.widget.open_requested.connect(self.open_study)
        self.widget.message.connect(self.status)
        self.status.connect(lambda text: window.statusBar().showMessage(text, 8000))
        self.dock = window.add_panel(self.widget, "Study list", Qt.DockWidgetArea.LeftDockWidgetArea,
                                     name="study_list")
        browser_dock = getattr(window, "browser_dock", None)
        if browser_dock is not None:
            window.tabifyDockWidget(browser_dock, self.dock)
        if getattr(window, "result", None) is None:
            self.dock.raise_()  # the start screen: nothing is open yet
        #: (series UID, saved pre-read finished at) shown, or (series UID, why not) said
        self._restored: set[tuple[str, str]] = set()
        window.idle.connect(self._index_opened)
        window.idle.connect(self._place_compare)
        window.idle.connect(self.restore_prereads)
        self.preread_done.connect(self.restore_prereads)
        self.connect_report(getattr(window, "report", None))
        window.installEventFilter(self)
        for problem in self.nodes.problems:
            self.status.emit(problem)
        if start_workers:
            self.start()

    # ---- background work ---------------------------------------------------------------------
    def _prereads(self) -> bool:
        return self.settings.preread_on_arrival or self._engine_factory is not None

    def _make_queue(self) -> JobQueue:
        runner = StudyPrereader(self.db, self._engine_factory or self._assistant_engine, self.paths.preread_results,
                                audit=self.audit)
        queue = JobQueue(self.db, runner, audit=self.audit)
        # a series open in the window when its pre-read on arrival finishes shows it then
        queue.listeners.append(lambda job: self.preread_done.emit() if job.state == "done" else None)
        return queue

    def apply_settings(self, settings: Settings) -> list[str]:
        """The Settings dialog's PACS values take effect now: the report destination for the next signature,
        the listener started, stopped or restarted (with the pre-read on arrival and its quiet time), the
        pre-read queue started when it was off. Returns what changed (names of the settings)."""
        keys = ("report_send_node", "report_send_via", "pacs_listen", "preread_on_arrival", "preread_quiet_seconds")
        self.reload_nodes()
        mine = self.settings
        changed = [k for k in keys if getattr(mine, k) != getattr(settings, k)]
        for k in changed:
            setattr(mine, k, getattr(settings, k))
        if self._closed or not changed:
            return changed
        preread = self._prereads()
        if preread and self.queue is None:
            self.queue = self._make_queue()
            self.queue.start()
        self.services.queue = self.queue if preread else None
        self.services.preread_retrieved = preread
        arrivals = {"pacs_listen", "preread_on_arrival", "preread_quiet_seconds"} & set(changed)
        if arrivals and self.listener is not None:
            self.stop_listener()
        if arrivals and mine.pacs_listen and self.listener is None:
            if self.start_listener() is not None:
                self.status.emit(f"Receiving studies as {self.nodes.local.ae_title} on port {self.listener.port}"
                                 + (" (each complete study is pre-read)." if preread else "."))
        elif arrivals and not mine.pacs_listen:
            self.status.emit("Not receiving studies (listening is off in Settings).")
        return changed

    def reload_nodes(self) -> None:
        """Read the node list again (a node added with ``xmedgpt pacs nodes add`` since the window opened and
        chosen in Settings): the outbox and the study list share this store, so it is updated in place."""
        try:
            fresh = NodeStore.load(self.paths.nodes_file)
        except OSError:
            return
        if not fresh.problems:
            self.nodes.nodes, self.nodes.local = fresh.nodes, fresh.local

    def stop_listener(self) -> None:
        if self.listener is None:
            return
        port = self.listener.port
        self.listener.stop()
        self.listener = self.services.listener = None
        try:
            self.audit.append("pacs.listen.stop", {"ae_title": self.nodes.local.ae_title, "port": port,
                                                   "source": "viewer"})
        except XMedError as exc:
            log.warning("the listener's stop was not audited: %s", exc)

    def start(self) -> None:
        self.sender.start()
        if self.queue is not None:
            self.queue.start()
        if self.settings.pacs_listen:
            self.start_listener()

    def start_listener(self) -> Listener | None:
        receiver = Receiver(self.db, self.paths.storage, audit=self.audit, nodes=self.nodes)
        if self.queue is not None and self._prereads():
            ArrivalWatcher(self.queue, quiet_seconds=self.settings.preread_quiet_seconds).attach(receiver)
        allowed = sorted({n.ae_title for n in self.nodes.nodes.values()})
        try:
            self.listener = Listener(receiver, self.nodes.local, allowed_ae_titles=allowed).start()
        except XMedError as exc:
            self.status.emit(f"Not receiving studies: {exc}")
            return None
        self.services.listener = self.listener
        self.audit.append("pacs.listen", {"ae_title": self.nodes.local.ae_title, "host": self.nodes.local.host,
                                          "port": self.listener.port, "allowed": allowed, "tls": self.nodes.local.tls,
                                          "source": "viewer"})
        return self.listener

    def _assistant_engine(self):
        """The pre-read's engine: the assistant's, once it has loaded (waited for on the queue's thread)."""
        from inference.imaging import ImageSpec

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not self._closed:
            assistant = getattr(self.window, "assistant", None)
            engine = getattr(assistant, "engine", None)
            if engine is not None:
                folder = getattr(getattr(assistant, "choice", None), "folder", None)
                spec = ImageSpec.from_preprocessor_config(Path(folder)) if folder else None
                return engine, spec
            time.sleep(0.5)
        raise XMedError("No model is loaded for the pre-read (choose one in Settings).")

    # ---- the window --------------------------------------------------------------------------
    def open_study(self, paths: list[Path]) -> None:
        self.window.open_paths(list(paths))
        browser_dock = getattr(self.window, "browser_dock", None)
        if browser_dock is not None:
            browser_dock.raise_()  # the series of the study just opened

    def _index_opened(self) -> None:
        result = getattr(self.window, "result", None)
        if result is None or result is self._indexed:
            return
        self._indexed = result
        try:
            index_scan(self.db, result)
        except XMedError as exc:
            log.warning("the opened study was not added to the study list: %s", exc)
        self.widget.local.refresh()
        self.widget.local.show_current(self.current_study_uid())

    # ---- the worklist ------------------------------------------------------------------------
    def current_study_uid(self) -> str:
        """The study open in the window: the active viewport's (a prior may be open beside it), else the first
        one opened ('' when none)."""
        result = getattr(self.window, "result", None)
        studies = [st for p in getattr(result, "patients", None) or [] for st in p.studies]
        grid = getattr(self.window, "grid", None)
        volume = grid.active.volume if grid is not None and grid.active is not None else None
        if volume is not None:
            uid = volume.series.uid
            for st in studies:
                if any(s.uid == uid for s in st.series):
                    return st.uid
        return studies[0].uid if studies else ""

    def step_study(self, step: int = 1) -> str | None:
        """Ctrl+PgDown / Ctrl+PgUp: open the next / previous study of the study list (as it is searched, filtered
        and sorted) whose report is not signed; None when one opens, else why not (also on the status bar)."""
        current = self.current_study_uid()
        row = self.widget.local.to_read_after(current, step)
        if row is None:
            where = "after" if step > 0 else "before"
            return self._say(f"No study to read {where} this one in the study list (every other listed study is "
                             "signed, or the search and filters hide it)." if current
                             else "The study list has no study to read.")
        self.status.emit(f"Opening {_who(row)}…")
        self.widget.open_study(row.uid)
        return None

    def prior_of(self, uid: str):
        """The most recent earlier study of the same patient (same patient ID) with images here; None if none."""
        study = self.db.get(uid)
        if study is None or not study.patient_id:
            return None
        when = lambda s: (s.study_date or "", s.study_time or "")  # noqa: E731
        earlier = [s for s in self.db.search(patient_id=study.patient_id, limit=None)
                   if s.study_uid != uid and s.instances > 0 and when(s) < when(study)]
        return max(earlier, key=when) if earlier else None

    def open_with_prior(self) -> str | None:
        """Ctrl+Shift+C: the study on screen (else the one selected in the list) beside the patient's most recent
        earlier study, 1×2, current left and prior right; None when it opens, else why not."""
        current = self.current_study_uid() or next(iter(self.widget.local.selected()), "")
        if not current:
            return self._say("Open or select a study first: its prior is found by the patient ID.")
        prior = self.prior_of(current)
        if prior is None:
            return self._say("No earlier study of this patient in the study list (same patient ID, with images).")
        files = self.widget.study_files(current) + self.widget.study_files(prior.study_uid)
        self._compare = (current, prior.study_uid)
        self.window.set_layout("1x2")
        self.window.open_paths(files)
        self.status.emit(f"Opening the prior of {display_date(prior.study_date)} beside this study…")
        return None

    def _place_compare(self) -> None:
        """Once both studies of an open-with-prior are scanned: the current study's main series left, the prior's
        right (each its largest image series), and how to link them."""
        pending = getattr(self, "_compare", None)
        result = getattr(self.window, "result", None)
        if pending is None or result is None:
            return
        series = result.all_series()
        main: dict[str, int] = {}
        for p in result.patients:
            for st in p.studies:
                mine = [i for i, s in enumerate(series) if any(s is t for t in st.series) and s.frame_count > 0]
                if mine:
                    main[st.uid] = max(mine, key=lambda i: series[i].frame_count)
        current, prior = pending
        if current not in main or prior not in main:
            return
        self._compare = None
        left, right = self.window.grid.viewports[:2]
        self.window.show_series(main[current], left)
        self.window.show_series(main[prior], right)
        self.window.grid.set_active(left)
        prior_row = self.db.get(prior)
        when = display_date(prior_row.study_date) if prior_row is not None else "the prior"
        self.status.emit(f"Prior of {when} on the right: scroll it to the same level, then Ctrl+L links the two.")

    def _say(self, text: str) -> str:
        self.status.emit(text)
        return text

    def next_to_read_text(self) -> str:
        """" Next to read: NAME, DATE (Ctrl+PgDown)." after a signature; "" when the list has none."""
        row = self.widget.local.to_read_after(self.current_study_uid(), 1)
        return f" Next to read: {_who(row)} (Ctrl+PgDown)." if row is not None else ""

    def restore_prereads(self) -> int:
        """Each loaded series that was pre-read on arrival (or by ``xmedgpt listen --preread``) shows that
        pre-read's lesions in the Pre-read panel at once, unless this window has pre-read it; a saved result that
        no longer fits the series (other slices) or does not read is said once and left on disk. Returns how many
        were shown."""
        controller = getattr(self.window, "preread", None)
        grid = getattr(self.window, "grid", None)
        if controller is None or grid is None:
            return 0
        shown = 0
        for vp in grid.viewports:
            volume = vp.volume
            if volume is None or (volume.loaded and volume.loaded < len(volume)) \
                    or controller.result_for(volume) is not None:
                continue
            uid = volume.series.uid
            try:
                saved = saved_preread(self.db, uid)
                if saved is None or (uid, saved.finished_at) in self._restored:
                    continue
                self._restored.add((uid, saved.finished_at))
                result = preread_from_json(saved.document, volume)
            except XMedError as exc:
                if (uid, str(exc)) not in self._restored:  # said once
                    self._restored.add((uid, str(exc)))
                    self.status.emit(f"The saved pre-read of this series was not shown: {exc}")  # on arrival or in the viewer
                continue
            study = self.db.get(saved.document.get("study_uid", ""))
            shown += controller.restore(volume, result, f"{saved.origin}, {_local_time(saved.finished_at)}",
                                        study.description if study is not None else "")
        return shown

    def keep_preread(self, run: Any) -> Path | None:
        """A pre-read run in this window is kept with the study (the study list's AI column, reopening the
        study shows it); a series not in the local database is not. A failure to write is said, not raised."""
        try:
            path = keep_viewer_preread(self.db, self.paths.preread_results, run.volume, run.result)
        except (OSError, XMedError) as exc:
            log.error("the pre-read of %s was not kept: %s", run.series_uid, exc)
            self.status.emit(f"The pre-read is shown but was not saved with the study: {exc}")
            return None
        return path

    # ---- the report --------------------------------------------------------------------------
    def connect_report(self, report: Any) -> None:
        """Follow the report controller: drafts and signatures (its ``signed`` signal carries the files)."""
        if report is None:
            return
        if hasattr(report, "signed"):
            report.signed.connect(self.on_signed)
        session = getattr(report, "session", None)
        if session is not None and hasattr(session, "subscribe"):
            session.subscribe(self._report_replaced)

    def _report_replaced(self, report: Any) -> None:
        if report is None or getattr(report, "signed", False):
            return
        uid = report.study.study_uid
        study = self.db.get(uid)
        if study is not None and study.report_state == "none":
            self.db.set_report(uid, "draft")

    def on_signed(self, exported: Any) -> list:
        """A report was signed and exported: mark it, and queue its SR and PDF for the node in Settings."""
        paths = [Path(p) for p in (exported.paths if hasattr(exported, "paths") else exported)]
        uid = _study_uid(paths)
        if uid and self.db.get(uid) is not None:
            self.db.set_report(uid, "signed")
            self.widget.local.refresh()
        node = self.settings.report_send_node
        if not node:
            following = self.next_to_read_text()
            if following:
                self.status.emit("Report signed." + following)
            return []
        try:
            items = self.outbox.enqueue_report(paths, node, via=self.settings.report_send_via)
        except XMedError as exc:
            self.status.emit(f"The signed report was not queued for '{node}': {exc}")
            return []
        self.status.emit(f"Signed report queued for {node}: {len(items)} file(s) in the outbox."
                         + self.next_to_read_text())
        return items

    # ---- closing -----------------------------------------------------------------------------
    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if obj is self.window and event.type() == QEvent.Type.Close:
            self.shutdown()
        return False

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.widget.shutdown()
        if self.listener is not None:
            self.listener.stop()
        if self.queue is not None:
            self.queue.stop()
        self.sender.stop()
        self.db.close()


def _who(row: Any) -> str:
    """"Doe, John · 2025-01-01 · CT CHEST" for the status bar."""
    parts = [person_name(row.patient_name, NameStyle.LIST) or row.patient_id or "unnamed patient",
             display_date(row.date), row.description]
    return " · ".join(p for p in parts if p)


def _study_uid(paths: list[Path]) -> str:
    for p in paths:
        if p.suffix.lower() == ".dcm" and p.exists():
            try:
                return str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
                           .get("StudyInstanceUID", ""))
            except Exception:  # noqa: BLE001 - not readable: the report state stays as it was
                continue
    return ""


def install_studies(window, settings: Settings | None = None, *, paths: StudyPaths | None = None,
                    audit: Any = None, engine_factory: Callable | None = None,
                    start_workers: bool = True) -> StudiesController | None:
    """Open the study database and dock the study list in ``window`` (a MainWindow). ``engine_factory``:
    pre-read arrivals with this engine (tests); by default only when Settings asks, with the assistant's.
    When the database cannot be used (written by a newer version, a folder that cannot be created) the
    window works without the study list and says why in the status bar (None is returned)."""
    settings = settings if settings is not None else Settings.load()
    audit = audit if audit is not None else AuditLog(settings.audit_log_path(), user=settings.reader_name or None)
    try:
        return StudiesController(window, settings, paths or StudyPaths.detect(), audit,
                                 engine_factory=engine_factory, start_workers=start_workers)
    except (XMedError, OSError) as exc:
        log.error("study list not available: %s", exc)
        window.statusBar().showMessage(f"The study list is not available: {exc}")
        return None


def _local_time(iso: str) -> str:
    """A job's UTC finish time as the reading room's clock shows it: ``19:09`` today, else ``2026-12-05 19:09``."""
    from datetime import datetime

    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return iso
    return t.strftime("%H:%M") if t.date() == datetime.now().astimezone().date() else t.strftime("%Y-%m-%d %H:%M")
