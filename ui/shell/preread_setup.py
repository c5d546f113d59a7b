"""Wiring the series pre-read into the main window: its controller and panel, the menu entry and
toolbar button, the assistant's engine, the report and the audit trail.

The shell owns this because the pre-read meets three things its panel does not know about: the
assistant's loaded model (the pre-read runs on it), the report (an accepted lesion becomes a finding
there, :func:`app.report.from_preread.accept_lesions`) and the audit trail (each completed pre-read is
recorded, :func:`app.report.from_preread.audit_preread`). ``ui.preread`` imports neither
``ui.assistant`` nor ``ui.report``.

The pre-read's ✓ on an accepted lesion follows the report (:func:`follow_report`): every edit of the
study's draft (:meth:`app.report.draft.DraftReport.subscribe`) and every draft the report session opens
(:meth:`app.report.session.ReportSession.subscribe`) tells the panel which accepted lesions' findings are
still taken; a finding the reader rejects, sets back or deletes (Undo) loses its lesion's ✓.
"""

from __future__ import annotations

import logging

from PySide6.QtGui import QAction

from app.assistant.preread import PrereadOptions
from app.core.errors import XMedError
from app.core.settings import Settings
from app.report.audit import AuditLog
from app.report.draft import DraftReport, ReportError
from app.report.from_preread import accept_lesions, audit_preread
from app.report.session import study_context
from inference.types import Engine
from ui.preread.controller import PrereadController, PrereadRun, Waiting
from ui.preread.panel import PrereadPanel

log = logging.getLogger(__name__)


def assistant_engine(window) -> Engine | str:
    """The assistant's loaded model, or why there is none now."""
    assistant = getattr(window, "assistant", None)
    if assistant is None:
        return "There is no assistant model in this window to pre-read with."
    if assistant.ready and assistant.engine is not None:
        return assistant.engine
    if assistant.state == "loading":
        return Waiting("The model is still loading")
    return f"No model is ready for the pre-read: {assistant.indicator}"


def install_preread(window, settings: Settings | None = None, options: PrereadOptions | None = None,
                    engine: Engine | None = None) -> PrereadController:
    """Create the pre-read controller and panel, dock the panel beside the assistant, add "Pre-read series"
    to the Tools menu and the toolbar, and connect the report and the audit trail. ``engine``: pre-read with
    this one instead of the assistant's (a test double); ``options``: instead of the Settings' numbers."""
    if settings is None:
        assistant = getattr(window, "assistant", None)
        settings = assistant.settings if assistant is not None else Settings.load()
    source = (lambda: engine) if engine is not None else (lambda: assistant_engine(window))
    controller = PrereadController(source, settings, options, parent=window)
    grid = window.grid
    panel = PrereadPanel(controller, window.assistant_target, lambda: list(grid.viewports), grid.set_active)
    accepted_in: dict[str, str] = {}  # report finding id → id of the report it was accepted into

    def acceptor(lesions, run):
        out = accept_into_report(window, lesions, run)
        report = getattr(getattr(getattr(window, "report", None), "session", None), "report", None)
        if not isinstance(out, str) and report is not None:
            accepted_in.update({fid: report.report_id for _lid, fid in out})
        return out

    panel.acceptor = acceptor
    for vp in grid.viewports:
        panel.watch_viewport(vp)
    grid.active_changed.connect(lambda _vp: panel.refresh())
    window.idle.connect(panel.refresh)
    window.idle.connect(panel.start_waiting)  # a request made while the series was loading
    assistant = getattr(window, "assistant", None)
    if assistant is not None:  # … or while the model was loading
        assistant.model_changed.connect(lambda _state, _text: panel.start_waiting())
    window.idle.connect(panel.sync_all)
    follow_report(window, panel, accepted_in)
    window.idle.connect(lambda: follow_report(window, panel, accepted_in))  # a report attached later
    controller.finished.connect(lambda run: record(window, settings, run))
    window.installEventFilter(controller)  # the worker stops before the window closes
    dock = window.attach_preread(controller, panel)
    controller.started.connect(lambda _volume: dock.raise_())  # the reader asked for it: show its progress
    _menu_and_toolbar(window, panel)
    panel.refresh()
    return controller


def _menu_and_toolbar(window, panel: PrereadPanel) -> None:
    run = QAction("Pre-read series", window)
    run.setObjectName("action_preread_series")
    run.setToolTip("The AI reads every slice of the series on screen and lists its lesions (voice: \"pre-read\")")
    run.triggered.connect(lambda _=False: panel.start())
    cancel = QAction("Cancel pre-read", window)
    cancel.setObjectName("action_cancel_preread")
    cancel.triggered.connect(lambda _=False: panel.cancel())
    tools = next((a.menu() for a in window.menuBar().actions() if a.menu() is not None
                  and a.text().replace("&", "") == "Tools"), None)
    if tools is not None:
        tools.addSeparator()
        tools.addAction(run)
        tools.addAction(cancel)
    button = QAction("Pre-read", window)
    button.setObjectName("toolbar_preread")
    button.setToolTip(run.toolTip())
    button.triggered.connect(run.trigger)
    toolbar = getattr(window, "toolbar", None)
    if toolbar is not None:
        actions = toolbar.actions()
        after_open = actions[1] if len(actions) > 1 else None  # Open | Pre-read | layouts …: in sight first
        toolbar.insertAction(after_open, button)
        toolbar.insertSeparator(button)
    window.preread_actions = {"menu": run, "cancel": cancel, "toolbar": button}

    def sync(_busy: bool = False) -> None:
        busy = panel.controller.running or panel.waiting
        run.setEnabled(not busy)
        button.setEnabled(not busy)
        cancel.setEnabled(busy)

    panel.controller.busy_changed.connect(sync)
    panel.waiting_changed.connect(sync)
    sync()


def accept_into_report(window, lesions, run: PrereadRun) -> list[tuple[str, str]] | str:
    """The reader accepted ``lesions``: they become findings of the study's draft report (created when
    there is none); returns (lesion id, finding id) pairs, or the sentence saying why not."""
    report = getattr(window, "report", None)
    if report is None:
        return "There is no report in this window to accept lesions into."
    try:
        study = study_context(window.result, run.volume.series)
        done = accept_lesions(report.session, list(lesions), run.volume, study, model_id=run.result.model,
                              engine=run.result.engine)
    except XMedError as exc:
        return str(exc)
    return [(a.lesion_id, a.finding_id) for a in done]


def follow_report(window, panel: PrereadPanel, accepted_in: dict[str, str]) -> bool:
    """Keep the panel's ✓ marks on what the window's report holds (once per window; True when connected)."""
    controller = getattr(window, "report", None)
    session = getattr(controller, "session", None)
    if session is None or getattr(panel, "_follows_report", None) is session:
        return False
    panel._follows_report = session
    watched: list = []  # [(report, unsubscribe)] of the draft followed now

    def in_report(report: DraftReport | None):
        def state(finding_id: str) -> bool | None:
            if report is None:
                return None
            try:
                return report.finding(finding_id).included
            except ReportError:  # not in this report: deleted from it (Undo of the acceptance), or another study's
                return False if accepted_in.get(finding_id) == report.report_id else None
        return state

    def edited(report: DraftReport, _edit) -> None:
        panel.follow_report(in_report(report))

    def replaced(report: DraftReport | None) -> None:
        if watched and watched[0][0] is report:
            return
        while watched:
            _old, unsubscribe = watched.pop()
            try:
                unsubscribe()
            except ValueError:
                pass
        if report is not None:
            watched.append((report, report.subscribe(edited)))
            panel.follow_report(in_report(report))

    session.subscribe(replaced)
    replaced(session.report)
    return True


def record(window, settings: Settings, run: PrereadRun) -> None:
    """A completed pre-read goes into the audit trail (the report's, else the Settings' log)."""
    report = getattr(window, "report", None)
    try:
        audit = report.session.audit if report is not None else AuditLog(settings.audit_log_path())
        study = study_context(window.result, run.volume.series)
        audit_preread(audit, study.study_uid, run.result.to_json(), run.volume)
    except (XMedError, OSError) as exc:
        log.warning("the pre-read was not audited: %s", exc)
        window.statusBar().showMessage(f"The pre-read could not be written to the audit trail: {exc}", 10000)
