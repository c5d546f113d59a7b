"""One study's reporting session: answer → draft → reader actions → audit + autosave → sign → exports.

Qt-free (3D Slicer's Logic class): the viewer's report controller and
``xmedgpt analyze --sr/--pdf`` drive the same methods, and tests drive them
without a window.

- :meth:`ReportSession.open_study` restores the study's draft from the workspace
  (problems with damaged files come back as sentences for the reader).
- :meth:`ReportSession.on_answer` records the AI request and output in the audit
  log and turns the answer into the draft, or merges its new findings into the
  draft already there.
- Every reader action goes through :class:`app.report.draft.DraftReport`; the session
  keeps it journaled (:class:`app.report.workspace.Autosave`) and audited
  (:meth:`app.report.audit.AuditLog.watch`).
- :meth:`ReportSession.export` writes SR (TID 1500 + narrative), PDF (through the
  ``pdf_writer`` the caller gives, since PDF needs Qt) and plain text, and logs
  each file in the audit trail; the reader's measurements saved with the study's
  workspace (:mod:`app.viewer.measure_store`: lengths, angles, Cobb angles, ROI
  statistics) go into the TID 1500 document beside the findings' boxes, and a signed report's key images
  (marked by the reader, :mod:`app.viewer.key_images`) into a Key Object Selection document beside the SRs
  (:mod:`app.report.export.kos`; the PDF shows them through the ``pdf_writer``); :meth:`ReportSession.export_addendum` writes a signed
  addendum (the whole report with its addenda as text and PDF, and a new narrative SR
  whose predecessor is the signed one).

Every file is written owner-only (:func:`app.core.paths.write_private`: 0600, new
folders 0700) and named so a person can tell it apart in a folder:
``<PatientID>_<StudyDate>_report_signed_<YYYYMMDD-HHMMSS>.pdf`` (:func:`export_stem`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import XMedError
from app.core.paths import write_private
from app.dicom.model import FrameRef, ScanResult, Series, Volume, Window
from app.report.audit import AuditLog
from app.report.draft import (
    DraftReport,
    Edit,
    FindingReliability,
    Origin,
    Provenance,
    ReportBox,
    ReportError,
    StudyContext,
)
from app.report.export.kos import export_kos, exportable_key_images
from app.report.export.sr import (
    SrFiles,
    SrOptions,
    export_addendum_sr,
    export_sr,
    exportable_measurements,
    read_sources,
)
from app.report.export.text import render_text
from app.report.from_answer import draft_from_answer
from app.report.workspace import Autosave, Workspace
from app.viewer.key_images import KeyImage, KeyImageStore
from app.viewer.measure_store import MeasurementStore
from inference.phrases import phrase_key
from inference.reliability.scoring import Reliability, Tier
from inference.types import Box

if TYPE_CHECKING:  # only for type hints: the session works on any object with these attributes
    from app.assistant.ask import AssistantAnswer

log = logging.getLogger(__name__)

#: writes the report as PDF at the path (ui.report.pdf_export.write_pdf with the key images bound)
PdfWriter = Callable[[DraftReport, Path], Path]


@dataclass
class Exported:
    """What one export wrote."""

    sr: SrFiles | None = None
    pdf: Path | None = None
    text: str = ""
    text_path: Path | None = None
    addendum_sr: Path | None = None  # the addendum's narrative SR (export_addendum)
    kos: Path | None = None  # the signed report's key images as a Key Object Selection document
    #: sentences about what the export left out or could not read (saved measurements)
    notes: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        out = list(self.sr.paths) if self.sr else []
        return out + [p for p in (self.addendum_sr, self.kos, self.pdf, self.text_path) if p is not None]


# ---- file names ---------------------------------------------------------------------------

def _safe(text: str, limit: int = 40) -> str:
    """Letters, digits, dots and hyphens only (no separators, spaces or shell characters)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-.")[:limit].strip("-.")


def _stamp(iso: str | None) -> str:
    """ISO 8601 time (UTC) → ``YYYYMMDD-HHMMSS``; now when None or unreadable."""
    try:
        when = datetime.fromisoformat(iso) if iso else datetime.now(timezone.utc)
    except ValueError:
        when = datetime.now(timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y%m%d-%H%M%S")


def export_stem(report: DraftReport, kind: str, at: str | None = None) -> str:
    """``<PatientID>_<StudyDate>_report_<kind>_<YYYYMMDD-HHMMSS>`` in safe characters only; ``kind``
    is ``signed``, ``draft`` or ``addendum-N_signed``; the time is ``at`` (ISO, e.g. the signature's),
    else now."""
    s = report.study
    parts = (_safe(s.patient_id) or "no-patient-id", _safe(s.study_date) or "no-study-date", "report",
             "_".join(_safe(k) for k in kind.split("_")), _stamp(at))
    return "_".join(parts)


# ---- where things are in the loaded study ---------------------------------------------

def study_context(result: ScanResult | None, series: Series) -> StudyContext:
    """The patient and study a loaded series belongs to (from the scan's index)."""
    for patient in (result.patients if result else []):
        for st in patient.studies:
            if any(s is series or s.uid == series.uid for s in st.series):
                return StudyContext(
                    study_uid=st.uid, patient_name=patient.name, patient_id=patient.id,
                    patient_birth_date=patient.birth_date, patient_sex=patient.sex,
                    accession_number=st.accession, study_date=st.date, study_description=st.description,
                    modality=series.modality,
                )
    raise ReportError("The study of this series is not known; open the study again.")


def frame_refs(volume: Volume) -> Callable[[int], FrameRef]:
    """Slice index of the loaded series → the SOP instance (and frame) it shows."""
    series_uid = volume.series.series_instance_uid or volume.series.uid
    table: list[tuple[str, int]] = []
    for inst in volume.series.instances:
        table += [(inst.sop_instance_uid, f + 1) for f in range(max(inst.number_of_frames, 1))]

    def ref(k: int) -> FrameRef:
        if not 0 <= k < len(table):
            raise ReportError(f"Slice {k + 1} is not part of this series.")
        sop, frame = table[k]
        return FrameRef(k, sop, series_uid, frame)

    return ref


def source_paths(volume: Volume) -> list[Path]:
    return [Path(inst.path) for inst in volume.series.instances]


# ---- the session ------------------------------------------------------------------------

@dataclass
class ReportSession:
    workspace: Workspace
    audit: AuditLog
    reader_name: str = ""
    snapshot_seconds: float = 2.0
    sr_options: SrOptions = SrOptions()
    on_error: Callable[[XMedError], None] | None = None
    report: DraftReport | None = None
    study: StudyContext | None = None
    problems: list[str] = field(default_factory=list)
    _autosave: Autosave | None = field(default=None, repr=False)
    _unwatch: Callable[[], None] | None = field(default=None, repr=False)
    _listeners: list[Callable[[DraftReport | None], None]] = field(default_factory=list, repr=False)
    #: the assistant's phrase (its reliability pass names findings by it) → report finding id
    phrase_ids: dict[str, str] = field(default_factory=dict)

    # ---- study ------------------------------------------------------------------------
    def open_study(self, study: StudyContext) -> DraftReport | None:
        """Restore the study's saved draft, if any (None: no draft until the first answer)."""
        if self.study is not None and self.study.study_uid == study.study_uid:
            return self.report
        self.close()
        self.study = study
        restored = self.workspace.load(study.study_uid)
        self.problems = list(restored.problems)
        if restored.report is not None:
            self._attach(restored.report)
        return self.report

    def close(self) -> None:
        """Save the draft (snapshot) and stop journaling and auditing it."""
        if self._autosave is not None:
            self._autosave.close()
        if self._unwatch is not None:
            self._unwatch()
        self._autosave = self._unwatch = None
        self.report = None
        self.study = None

    def tick(self) -> bool:
        """Called by a timer: write a snapshot if edits are waiting."""
        return self._autosave.tick() if self._autosave is not None else False

    def subscribe(self, listener: Callable[[DraftReport | None], None]) -> None:
        """``listener(report)`` whenever the session's report object is replaced."""
        self._listeners.append(listener)

    def _attach(self, report: DraftReport) -> None:
        self.report = report
        self._autosave = Autosave(self.workspace, report, self.snapshot_seconds, on_error=self.on_error)
        self._unwatch = self.audit.watch(report)
        for listener in list(self._listeners):
            listener(report)

    # ---- the assistant ------------------------------------------------------------------
    def on_answer(self, answer: AssistantAnswer, volume: Volume, study: StudyContext,
                  provenance: Provenance | None = None) -> DraftReport:
        """Audit the AI request and output, then make (or extend) the study's draft from the answer."""
        self.open_study(study)
        prov = provenance or Provenance(model_id=answer.model_id, engine=answer.engine)
        refs = frame_refs(volume)
        ref = refs(answer.frame)
        self.audit.ai_request(
            study.study_uid, model_id=prov.model_id, weights_sha256=prov.weights_sha256,
            prompt=answer.prompt.user, system=answer.prompt.system or "", question=answer.question,
            image={"sop_instance_uid": ref.sop_instance_uid, "frame_number": ref.frame_number,
                   "slice_index": answer.frame,
                   "window": None if answer.window is None else [answer.window.width, answer.window.center]},
        )
        data = answer.to_json()
        self.audit.ai_output(
            study.study_uid, model_id=prov.model_id, weights_sha256=prov.weights_sha256, text=answer.raw_text,
            reasoning=data["steps"], boxes=data["findings"], engine=answer.engine,
            finish_reason=answer.finish_reason, warnings=answer.warnings,
        )
        warnings = list(getattr(answer, "warnings", None) or [])
        fresh = draft_from_answer(study, answer.steps, answer.findings, refs, prov,
                                  window=getattr(answer, "window", None),
                                  caution=("Guardrail warning: " + " ".join(warnings)) if warnings else "")
        keys = list(dict.fromkeys(phrase_key(f.phrase) for f in answer.findings
                                  if phrase_key(f.phrase) and f.box_px.area > 0))
        ids = dict(zip(keys, (f.id for f in fresh.findings)))  # draft_from_answer keeps the phrases' order
        if self.report is None:
            self._attach(fresh)
        else:
            ids = self._merge(fresh, ids)
        self.phrase_ids.update(ids)
        return self.report

    def _merge(self, fresh: DraftReport, ids: dict[str, str]) -> dict[str, str]:
        """Add the fresh draft's findings the report does not have yet; returns phrase → report finding id."""
        report = self.report
        if report.signed:
            raise ReportError("This study's report is already signed; the new answer was not added to it.")
        same = {(f.ai_text, tuple((b.slice_index, b.box) for b in f.boxes)): f.id for f in report.findings}
        renamed: dict[str, str] = {}
        for f in fresh.findings:
            old = same.get((f.ai_text, tuple((b.slice_index, b.box) for b in f.boxes)))
            if old is not None:  # the same finding asked again
                renamed[f.id] = old
                continue
            report.apply(Edit("add", f.id, len(report.findings), None, f))
        if not report.provenance.model_id:
            report.provenance = fresh.provenance
        # the new answer's impression sentences join the proposals (never the reader's text)
        report.add_ai_sentences(replace(x, finding_ids=tuple(renamed.get(i, i) for i in x.finding_ids))
                                for x in fresh.ai_sentences)
        return {k: renamed.get(v, v) for k, v in ids.items()}

    def apply_reliability(self, reliability: Reliability) -> int:
        """Give each finding its reliability (matched by finding id or by the assistant's phrase);
        returns how many findings changed.

        The AI's measurement, not a reader's edit: it is audited as ``ai.reliability`` and saved,
        but not put on the undo stack (Undo must not strip the tints). Listeners are not called;
        the caller refreshes what shows the report.
        """
        report = self._require()
        by_id = {self.phrase_ids.get(phrase_key(fr.finding_id), fr.finding_id): fr for fr in reliability.findings}
        self.audit.append("ai.reliability", {
            "report_id": report.report_id, "tier": reliability.tier.value, "worst": reliability.worst,
            "estimator": reliability.estimator,
            "findings": {fid: {"score": fr.reliability, "tier": fr.tier.value} for fid, fr in by_id.items()},
        }, study_uid=report.study.study_uid)
        if report.signed:
            return 0
        if reliability.tier is Tier.RED:  # a red answer: its sentences need the reader's particular care
            report.set_sentence_caution("Red answer reliability: check before accepting.")
        changed = 0
        for f in list(report.findings):
            fr = by_id.get(f.id)
            if fr is None or fr.reliability is None or fr.tier is Tier.NONE:
                continue
            rel = FindingReliability(min(max(fr.reliability, 0.0), 1.0), fr.tier)
            if rel != f.reliability:
                report.replay(Edit("reliability", f.id, report.index_of(f.id), f, replace(f, reliability=rel),
                                   revision=report.revision))
                changed += 1
        if changed and self._autosave is not None:
            self._autosave.flush()
        return changed

    # ---- reader actions the report does not have as one call ------------------------------------
    def add_reader_finding(self, text: str, box: Box, slice_index: int, volume: Volume,
                           window: Window | None = None) -> str:
        """A finding the reader drew (a box on a slice, in ``window``) and typed; returns its id."""
        report = self._require()
        ref = frame_refs(volume)(slice_index)
        f = report.add_finding(text, [ReportBox(box, ref.slice_index, ref.sop_instance_uid, ref.series_uid,
                                                ref.frame_number)], origin=Origin.READER, window=window)
        return f.id

    def ensure_report(self, study: StudyContext) -> DraftReport:
        """The study's draft; a new one without an AI part when the reader reports without asking."""
        self.open_study(study)
        if self.report is None:
            self._attach(DraftReport(study))
        return self.report

    def sign(self) -> None:
        self._require().sign(self.reader_name)

    # ---- exports ------------------------------------------------------------------------------
    def export(self, sources: Iterable[Path] | Mapping[str, Any], out_dir: Path | None = None, *,
               pdf_writer: PdfWriter | None = None, sr_path: Path | None = None,
               narrative_path: Path | None = None, pdf_path: Path | None = None,
               text_file: bool = True, sr: bool = True) -> Exported:
        """Write the SR pair, the PDF (if a writer is given) and the text of the report as it is now.

        Default names go into the study's exports folder; a signed export references the
        latest draft SRs there as predecessors.
        """
        report = self._require()
        uid = report.study.study_uid
        out_dir = Path(out_dir) if out_dir is not None else self.workspace.exports_dir(uid)
        headers = sources if isinstance(sources, Mapping) else read_sources(sources) if sr else {}
        previous = self.workspace.latest_draft_srs(uid) if report.signed else []
        kind = "signed" if report.signed else "draft"
        done = Exported()
        if sr:
            saved = MeasurementStore(self.workspace.root).load(uid)
            done.notes += saved.problems
            kept, left = exportable_measurements(saved.measurements, headers)
            done.notes += [f"Not in the SR: {why}." for why in left]
            done.sr = export_sr(report, headers, out_dir, reader_name=self.reader_name, options=self.sr_options,
                                previous=previous, measurement_path=sr_path, narrative_path=narrative_path,
                                measurements=kept)
            if done.sr.measurement is not None:
                self.audit.export(report, "sr-measurements", done.sr.measurement, done.sr.measurement_uid)
            self.audit.export(report, "sr-report", done.sr.narrative, done.sr.narrative_uid)
            if report.signed:
                self._export_key_images(report, headers, out_dir, done)
        stem = export_stem(report, kind, report.signature.signed_at if report.signature else None)
        self._write_pdf_and_text(report, done, out_dir, stem, pdf_writer, pdf_path, text_file)
        return done

    def key_images(self, study_uid: str | None = None) -> list[KeyImage]:
        """The key images the reader marked in the study (saved with its workspace)."""
        uid = study_uid or (self.report.study.study_uid if self.report is not None else "")
        return KeyImageStore(self.workspace.root).load(uid).key_images if uid else []

    def _export_key_images(self, report: DraftReport, headers: Mapping[str, Any], out_dir: Path,
                           done: Exported) -> None:
        loaded = KeyImageStore(self.workspace.root).load(report.study.study_uid)
        done.notes += loaded.problems
        kept, left = exportable_key_images(loaded.key_images, headers, report.study.study_uid)
        done.notes += [f"Not in the key image selection: {why}." for why in left]
        if not kept:
            return
        sig = report.signature
        description = (f"Key images of the report signed by {sig.reader_name} on {sig.signed_at[:10]}"
                       if sig is not None else "Key images marked by the reader")
        done.kos, sop = export_kos(report, kept, headers, out_dir, options=self.sr_options, description=description)
        self.audit.export(report, "key-images", done.kos, sop)

    def export_addendum(self, sources: Iterable[Path] | Mapping[str, Any], out_dir: Path | None = None, *,
                        pdf_writer: PdfWriter | None = None) -> Exported:
        """After an addendum is signed: the whole report with its addenda as a new narrative SR (the signed
        narrative SR, or the last addendum SR, as its predecessor), a PDF and text, each audited."""
        report = self._require()
        addenda = report.signed_addenda()
        if not report.signed or not addenda:
            raise ReportError("Sign the addendum first; then it is exported.")
        uid = report.study.study_uid
        out_dir = Path(out_dir) if out_dir is not None else self.workspace.exports_dir(uid)
        headers = sources if isinstance(sources, Mapping) else read_sources(sources)
        done = Exported()
        done.addendum_sr, sop = export_addendum_sr(report, headers, out_dir, predecessor=latest_signed_narrative(out_dir),
                                                   options=self.sr_options)
        self.audit.export(report, "sr-addendum", done.addendum_sr, sop)
        last = addenda[-1]
        stem = export_stem(report, f"addendum-{len(addenda)}_signed", last.signature.signed_at)
        self._write_pdf_and_text(report, done, out_dir, stem, pdf_writer, None, True)
        return done

    def _write_pdf_and_text(self, report: DraftReport, done: Exported, out_dir: Path, stem: str,
                            pdf_writer: PdfWriter | None, pdf_path: Path | None, text_file: bool) -> None:
        if pdf_writer is not None:
            done.pdf = write_private(pdf_path or out_dir / f"{stem}.pdf", lambda p: pdf_writer(report, p))
            self.audit.export(report, "pdf", done.pdf)
        done.text = render_text(report)
        if text_file:
            done.text_path = write_private(out_dir / f"{stem}.txt", done.text)
            self.audit.export(report, "text", done.text_path)

    def _require(self) -> DraftReport:
        if self.report is None:
            raise ReportError("There is no report for this study yet; ask the assistant or add a finding first.")
        return self.report



def latest_signed_narrative(out_dir: Path) -> Path | None:
    """The newest signed narrative SR or addendum SR in a study's exports folder (an addendum's predecessor)."""
    if not Path(out_dir).is_dir():
        return None
    found = [p for pattern in ("SR-signed-report-*.dcm", "SR-addendum-report-*.dcm") for p in Path(out_dir).glob(pattern)]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)
