"""Connects the report to the viewer: report panel, viewport boxes, autosave, audit and exports.

All decisions live in :class:`app.report.session.ReportSession` and
:class:`app.report.draft.DraftReport`; this class only adapts Qt signals to them:

- an assistant answer (``on_answer``, also the slot for ``assistant.answer_ready``)
  becomes the study's draft, shown in the docked :class:`ReportPanel`, its boxes
  drawn on every viewport showing their series;
- moving a box in a viewport moves the finding's box; selecting a finding jumps to
  its slice and thickens its box; a box click selects its finding; accept/reject
  recolour the box;
- "Draw finding" switches to the rectangle tool; the next rectangle becomes a
  reader finding whose text is ready to type;
- a timer writes autosave snapshots; when the study is opened again its draft comes
  back from the workspace;
- on sign: signed SR pair + PDF + text in the study's exports folder and the text
  on the clipboard, with the key images the reader marked (``K`` in the viewer) as a Key Object
  Selection document beside the SRs and among the PDF's key images; "Export draft SR/PDF" writes the draft the same way; a signed
  addendum writes its own narrative SR (the signed one as predecessor), PDF and text;
- each finding's key image in the PDF is rendered in the window the finding was found
  (the answer's) or drawn (the viewport's) in, whatever window is on screen now;
- a box is labelled as everywhere in the viewer: ``AI 1 · lesion · green``
  (:func:`app.core.names.box_label`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QLabel, QMainWindow, QPushButton, QVBoxLayout, QWidget

from app.core.errors import XMedError
from app.core.names import box_label
from app.core.settings import Settings
from app.dicom.display import render
from app.dicom.model import Volume, Window
from app.report.audit import AuditLog
from app.report.draft import DraftReport, FindingStatus, Origin
from app.report.export.sr import SrOptions
from app.report.session import Exported, ReportSession, source_paths, study_context
from app.report.workspace import Workspace
from app.viewer.key_images import frames_of
from app.viewer.measure_store import frame_table
from inference.types import Box
from ui.report.panel import ReportPanel
from ui.report.pdf_export import write_pdf
from ui.viewer.overlays import SOURCE_COLORS
from ui.viewer.viewport import Viewport

log = logging.getLogger(__name__)

PREFIX = "report:"  # overlay ids of report boxes: "report:<finding id>:<box index>"
TICK_MS = 1000


def overlay_source(status: FindingStatus, origin: Origin) -> str:
    if status is FindingStatus.REJECTED:
        return "rejected"
    if origin is Origin.READER:
        return "user"
    return "ai" if status is FindingStatus.PROPOSED else "accepted"


class ReportController(QObject):
    #: After a report or addendum is signed and exported: the files written (SR, PDF, text), as a list of Paths.
    signed = Signal(object)

    def __init__(self, window: QMainWindow, settings: Settings, session: ReportSession | None = None) -> None:
        super().__init__(window)
        self.window = window
        self.settings = settings
        self.session = session or ReportSession(
            Workspace(settings.workspace_path()),
            AuditLog(settings.audit_log_path(), user=settings.reader_name or None),
            reader_name=settings.reader_name,
            snapshot_seconds=settings.autosave_seconds,
            sr_options=SrOptions(settings.institution_name, settings.department_name),
            on_error=lambda exc: self._status(str(exc)),
        )
        self.panel: ReportPanel | None = None
        self._drawing = False
        self._assistant: QObject | None = None
        self.last_export: Exported | None = None
        self.dock = window.add_panel(self._placeholder(), "Report")
        self._timer = QTimer(self, interval=TICK_MS)
        self._timer.timeout.connect(self._tick)
        self._timer.start()
        self.session.subscribe(self._report_replaced)
        for vp in window.grid.viewports:
            vp.overlays.box_edited.connect(self._box_edited)
            vp.overlays.box_clicked.connect(self._box_clicked)
            vp.window_changed.connect(lambda _w, vp=vp: self._sync_viewport(vp))
            vp.measurement_added.connect(lambda _t, vp=vp: self._rectangle_drawn(vp))
        window.idle.connect(self.study_shown)
        window.installEventFilter(self)
        self.connect_assistant(getattr(window, "assistant", None))

    # ---- inputs -----------------------------------------------------------------------------
    def connect_assistant(self, assistant: QObject | None) -> None:
        """Follow an assistant panel's ``answer_ready`` / ``reliability_ready`` signals (once)."""
        if assistant is None or assistant is self._assistant:
            return
        self._assistant = assistant
        if hasattr(assistant, "answer_ready"):
            assistant.answer_ready.connect(self.on_answer)
        if hasattr(assistant, "reliability_ready"):
            assistant.reliability_ready.connect(self.on_reliability)

    def on_answer(self, answer, context: object = None) -> None:
        """An assistant answer: draft it (or merge it into the study's draft) and show it.

        ``answer``: an :class:`app.assistant.ask.AssistantAnswer`, or the assistant panel's
        ``AnswerResult`` (answer + the context it was asked in); ``context``: the Volume
        asked about (default: the one in the result, else the open series it names).
        """
        if hasattr(answer, "context") and hasattr(answer, "answer"):
            context = context if context is not None else getattr(answer.context, "volume", None)
            answer = answer.answer
        if answer.finish_reason == "cancelled":
            self._status("The answer was stopped before it finished; it was not put into the report.")
            return
        volume = context if isinstance(context, Volume) else self._volume_of(answer.series_uid)
        if volume is None:
            self._status("The series the assistant answered about is no longer open; the answer was not drafted.")
            return
        try:
            study = study_context(self.window.result, volume.series)
            self.session.on_answer(answer, volume, study)
        except XMedError as exc:
            self._status(str(exc))
            return
        self._show_panel()
        self._sync_all()
        # the report dock updates in the background (the assistant's reliability light and warning band
        # stay in view); the panel and the status bar say so
        r = self.session.report
        line = (f"Draft updated from the assistant's answer: {len(r.undecided())} AI finding(s) and "
                f"{len(r.undecided_sentences())} AI impression sentence(s) to accept or reject.")
        if self.panel is not None:
            self.panel.draft_updated(line)
        self._status(line)

    def on_reliability(self, reliability) -> None:
        """A Reliability, or the assistant panel's ReliabilityResult holding one."""
        reliability = getattr(reliability, "reliability", reliability)
        try:
            if self.session.report is not None:
                changed = self.session.apply_reliability(reliability)
                if self.panel is not None:
                    self.panel.refresh()  # tints, and a red answer's caution on the AI sentences
                if changed:
                    self._sync_all()
        except XMedError as exc:
            self._status(str(exc))

    def study_shown(self) -> None:
        """After loading: restore the draft of the study in the active viewport, if it has one."""
        self.connect_assistant(getattr(self.window, "assistant", None))  # attached after the report
        vp = self.window.grid.active
        if vp.volume is None:
            return
        try:
            study = study_context(self.window.result, vp.volume.series)
        except XMedError:
            return
        if self.session.study is not None and self.session.study.study_uid == study.study_uid:
            self._sync_all()
            return
        self.session.open_study(study)
        if self.session.report is None:
            self._show_panel()
        if self.session.problems:  # all of them: a second one must not hide the first
            self._status(" ".join(self.session.problems))
        if self.session.report is not None and not self.session.problems:
            self._status("The saved draft report of this study was restored.")

    def set_reader_name(self, name: str) -> None:
        """The reader's name changed in Settings: it signs, and it is the user in the audit trail."""
        self.settings.reader_name = name
        self.session.reader_name = name
        self.session.audit.user = name or self.session.audit.user
        if self.panel is not None:
            self.panel.reader_name = name
            self.panel.refresh()

    def set_workspace(self, root) -> bool:
        """The workspace folder changed in Settings: drafts of the studies opened from now on, the exports and
        the measurements the SR carries are read and written there. The draft on screen stays open and keeps
        its journal where it was; True when the folder changed."""
        root = Path(root).expanduser()
        if Path(self.session.workspace.root) == root:
            return False
        try:
            workspace = Workspace(root)
        except XMedError as exc:
            self._status(str(exc))
            return False
        self.session.workspace = workspace
        self.settings.workspace_dir = str(root)
        kept = " (the draft on screen stays where it was saved)" if self.session.report is not None else ""
        self._status(f"Draft reports are kept in {root} from now on{kept}.")
        return True

    # ---- panel --------------------------------------------------------------------------------
    def _report_replaced(self, report: DraftReport | None) -> None:
        self._show_panel()

    def _show_panel(self) -> None:
        report = self.session.report
        if report is None:
            if self.panel is not None:
                self._replace_widget(self._placeholder())
                self.panel = None
            self._sync_all()
            return
        if self.panel is not None and self.panel.report is report:
            return
        panel = ReportPanel(report, self.settings.reader_name)
        panel.finding_selected.connect(self._finding_selected)
        panel.signed.connect(self._signed)
        panel.addendum_signed.connect(self._addendum_signed)
        panel.problem.connect(self._status)
        panel.draw_finding.connect(self.set_drawing)
        panel.export_draft.connect(lambda: self.export())
        report.subscribe(lambda _r, _e: self._sync_all())
        self._replace_widget(panel)
        self.panel = panel
        if self.dock.isHidden():  # closed by the reader: back, but never raised over the assistant (#13.7)
            self.dock.show()
        self._sync_all()

    def _placeholder(self) -> QWidget:
        box = QWidget()
        label = QLabel("Ask the assistant about an image to start a draft report, or start one yourself. "
                       "Drafts are saved as you work and come back when the study is opened again.")
        label.setWordWrap(True)
        start = QPushButton("Start a report")
        start.setObjectName("start_report")
        start.clicked.connect(self.start_report)
        layout = QVBoxLayout(box)
        layout.addWidget(label)
        layout.addWidget(start)
        layout.addStretch(1)
        return box

    # ---- named actions (ui.actions): voice commands and keys run these by name ------------------
    def named_actions(self) -> dict:
        """The actions this controller answers: accepting, rejecting and signing from the keyboard or
        by voice go through the same buttons' rules as a click."""
        return {
            "accept_finding": lambda: self._decide_selected("accept"),
            "reject_finding": lambda: self._decide_selected("reject"),
            "sign_report": self._sign_from_action,
            "start_report": self._start_from_action,
        }

    def text_targets(self) -> dict:
        """Where dictated text can go in the report: the finding text box, then the impression."""
        return {"report": lambda: self.panel.text_editors() if self.panel is not None else []}

    def _decide_selected(self, decision: str) -> str | None:
        panel = self.panel
        if panel is None:
            return "There is no draft report yet: ask the assistant or start a report."
        if panel.current_finding() is None:
            return "Select a finding first (click it in the report or its box on the image)."
        button = panel.accept_button if decision == "accept" else panel.reject_button
        if not button.isEnabled():
            return f"The selected finding cannot be {decision}ed now."
        button.click()
        return None

    def _sign_from_action(self) -> str | None:
        panel = self.panel
        if panel is None:
            return "There is no draft report yet: ask the assistant or start a report."
        if not panel.sign_button.isEnabled():
            return f"Not signed: {panel.blockers.text()}"
        panel.sign_button.click()
        return None

    def _start_from_action(self) -> str | None:
        if self.panel is None:
            self.start_report()
        return None if self.panel is not None else "Open a study first: dictated text goes into its report."

    def start_report(self) -> None:
        """A draft without an AI part, for the study in the active viewport."""
        vp = self.window.grid.active
        if vp.volume is None:
            self._status("Open a study first.")
            return
        try:
            self.session.ensure_report(study_context(self.window.result, vp.volume.series))
        except XMedError as exc:
            self._status(str(exc))
        self._show_panel()
        if self.panel is not None:  # the reader asked for it: show it
            self.dock.raise_()

    def _replace_widget(self, widget) -> None:
        old = self.dock.widget()
        self.dock.setWidget(widget)
        if old is not None and old is not widget:
            old.deleteLater()

    def _finding_selected(self, finding_id: str, slice_index: int) -> None:
        target = None
        for vp in self._viewports_of_report():
            if slice_index >= 0:
                vp.set_slice(slice_index)
            box_id = f"{PREFIX}{finding_id}:0"
            vp.overlays.highlight(box_id if box_id in vp.overlays.ids() else None)
            target = target or vp
        if target is not None and slice_index >= 0:
            self.window.grid.set_active(target)

    def _signed(self) -> None:
        done = self.export()
        if done is None:
            return
        QGuiApplication.clipboard().setText(done.text)
        notes = f" {' '.join(done.notes)}" if done.notes else ""  # e.g. measurements the SR had to leave out
        self._status(f"Signed. Report written to {done.paths[0].parent} and copied as text.{notes}")
        self.signed.emit(list(done.paths))

    def _addendum_signed(self, _addendum_id: str) -> None:
        done = self.export(addendum=True)
        if done is None:
            return
        QGuiApplication.clipboard().setText(done.text)
        self._status(f"Addendum signed. Written to {done.paths[0].parent} and copied as text.")
        self.signed.emit(list(done.paths))

    # ---- viewport -------------------------------------------------------------------------------
    def _viewports_of_report(self) -> list[Viewport]:
        report = self.session.report
        series = {b.series_uid for f in report.findings for b in f.boxes} if report else set()
        return [vp for vp in self.window.grid.viewports if vp.volume is not None and _series_uid(vp.volume) in series]

    def _volume_of(self, series_uid: str) -> Volume | None:
        active = self.window.grid.active
        for vp in [active, *self.window.grid.viewports]:
            if vp.volume is not None and series_uid in (vp.volume.series.uid, _series_uid(vp.volume)):
                return vp.volume
        return None

    def _sync_all(self) -> None:
        for vp in self.window.grid.viewports:
            self._sync_viewport(vp)

    def _sync_viewport(self, vp: Viewport) -> None:
        """Draw the report's boxes on ``vp`` (those of the series it shows); keep unchanged ones in place."""
        ov = vp.overlays
        wanted: dict[str, tuple] = {}
        report = self.session.report
        if report is not None and vp.volume is not None:
            uid = _series_uid(vp.volume)
            for n, f in enumerate(report.findings, 1):
                label = box_label("AI" if f.origin is Origin.AI else "You", n, f.finding_type or "finding",
                                  f.reliability.tier.value if f.reliability is not None else "")
                for i, b in enumerate(f.boxes):
                    if b.series_uid == uid and b.slice_index < len(vp.volume):
                        wanted[f"{PREFIX}{f.id}:{i}"] = (b.slice_index, b.box, label, overlay_source(f.status, f.origin))
        for box_id in ov.ids():
            if box_id.startswith(PREFIX) and box_id not in wanted:
                ov.remove(box_id)
        present = set(ov.ids())
        editable = report is not None and not report.signed
        for box_id, (frame, box, label, source) in wanted.items():
            if box_id not in present or ov.frame_of(box_id) != frame or not _same(ov.box(box_id), box):
                ov.add_box(frame, box, label, source, box_id=box_id, editable=editable)
                continue
            if ov.label_of(box_id) != label:
                ov.set_label(box_id, label)
            if ov.color_of(box_id) != SOURCE_COLORS[source]:
                ov.set_source(box_id, source)

    def _box_edited(self, box_id: str, frame: int, box: Box) -> None:
        if not box_id.startswith(PREFIX) or self.session.report is None:
            return
        finding_id, index = box_id[len(PREFIX):].rsplit(":", 1)
        try:
            self.session.report.move_box(finding_id, int(index), box)
        except XMedError as exc:
            self._status(str(exc))
            self._sync_all()  # put the box back where the report has it

    def _box_clicked(self, box_id: str) -> None:
        if box_id.startswith(PREFIX) and self.panel is not None:
            self.panel.select_finding(box_id[len(PREFIX):].rsplit(":", 1)[0])

    def set_drawing(self, on: bool) -> None:
        """Draw-finding mode: the next rectangle drawn on a viewport becomes a reader finding."""
        self._drawing = on
        self.window.grid.active.set_tool("rect" if on else "pan")
        if on:
            self._status("Drag a rectangle around the finding on the image.")
        if self.panel is not None and self.panel.draw_button.isChecked() != on:
            self.panel.draw_button.setChecked(on)

    def _rectangle_drawn(self, vp: Viewport) -> None:
        items = vp.measurements.items
        if not self._drawing or not items or items[-1].kind != "rect" or vp.volume is None:
            return
        m = items[-1]
        (x0, y0), (x1, y1) = m.points()
        vp.measurements.remove(m)
        try:
            study = study_context(self.window.result, vp.volume.series)
            self.session.ensure_report(study)
            self._show_panel()
            fid = self.session.add_reader_finding("New finding", Box(min(x0, x1), min(y0, y1), max(x0, x1),
                                                                     max(y0, y1)), m.frame, vp.volume, vp.window)
        except XMedError as exc:
            self._status(str(exc))
            return
        finally:
            self.set_drawing(False)
        self.panel.edit_new_finding(fid)

    # ---- exports --------------------------------------------------------------------------------
    def export(self, addendum: bool = False) -> Exported | None:
        """SR pair + PDF + text of the report as it is now, into the study's exports folder
        (``addendum``: the signed addendum's SR, PDF and text)."""
        report = self.session.report
        vps = self._viewports_of_report() or [vp for vp in self.window.grid.viewports if vp.volume is not None]
        if report is None or not vps:
            self._status("There is no report to export yet.")
            return None
        if self.panel is not None:
            self.panel.commit_pending()
        vp = vps[0]
        volume = vp.volume
        shown = vp.window
        slices = {b.slice_index for f in report.findings for b in f.boxes if b.series_uid == _series_uid(volume)}
        # the key images the reader marked (K): in the PDF (those of this series) and, signed, in a KOS beside the SR
        keys = self.session.key_images(report.study.study_uid)
        marked = sorted(frames_of(keys, frame_table(volume.series.instances), _series_uid(volume)))
        slices |= set(marked)

        def key_image(k: int, window: Window | None):
            """Slice k as the finding was seen: in its own window (the one on screen for older drafts)."""
            return render(volume, k, window or shown, vp.inverted) if k in slices and k < volume.loaded else None

        def writer(r, p):
            return write_pdf(r, p, key_image, marked=marked)

        sources = source_paths(volume) + self._key_image_paths(keys, volume)
        try:
            if addendum:
                done = self.session.export_addendum(sources, pdf_writer=writer)
            else:
                done = self.session.export(sources, pdf_writer=writer)
        except XMedError as exc:
            self._status(str(exc))
            return None
        self.last_export = done
        if not report.signed:
            self._status(f"Draft exported to {done.paths[0].parent}.")
        return done

    def _key_image_paths(self, keys, volume: Volume) -> list[Path]:
        """The files of key images marked on other series of the study (the export reads their headers)."""
        wanted = {k.sop_instance_uid for k in keys} - {inst.sop_instance_uid for inst in volume.series.instances}
        result = getattr(self.window, "result", None)
        if not wanted or result is None:
            return []
        return [Path(inst.path) for series in result.all_series() for inst in series.instances
                if inst.sop_instance_uid in wanted and Path(inst.path).is_file()]

    # ---- housekeeping ---------------------------------------------------------------------------
    def _tick(self) -> None:
        try:
            self.session.tick()
        except XMedError as exc:
            self._status(str(exc))

    def close(self) -> None:
        """Save the draft now and stop following it (the window is closing)."""
        self._timer.stop()
        if self.panel is not None:
            self.panel.commit_pending()
        try:
            self.session.close()
        except XMedError as exc:
            log.warning("closing the report: %s", exc)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if obj is self.window and event.type() == QEvent.Type.Close:
            self.close()
        return False

    def _status(self, text: str) -> None:
        self.window.statusBar().showMessage(text, 10000)


def _series_uid(volume: Volume) -> str:
    return volume.series.series_instance_uid or volume.series.uid


def _same(a: Box, b: Box, tol: float = 1e-3) -> bool:
    return all(abs(getattr(a, k) - getattr(b, k)) <= tol for k in ("x0", "y0", "x1", "y1"))

