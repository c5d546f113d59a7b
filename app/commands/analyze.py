"""``xmedgpt analyze PATH [--series] [--slice K|LIST|all] [--question TEXT] [--model DIR] [--reliability] [--json OUT] [--sr OUT.dcm] [--pdf OUT.pdf]``.

Headless: scan PATH, pick a series and a slice, render it as a reader would see it,
ask the local XMedGPT and write a JSON file with the reasoning steps, the findings
with their boxes in three coordinate systems (frame pixels, the model's 0–1000
scale, patient mm), the guardrail's warnings, the model that answered and timing.

``--slice`` takes one image number as the viewer shows it, from 1 (default: the middle slice), or
several: a list and ranges (``3,7,20-25``) or ``all``; the JSON is then ``{"source": …, "slices":
[answer, …]}``, each answer shaped as a single one (its ``frame`` is the 0-based slice index: image
number − 1).
``--reliability`` runs the viewer's reliability pass on each answer
(:func:`app.assistant.session.check_answer`: re-asked questions, boxes grounded again,
checks against the pixels, the body region and the reasoning) and adds
``reliability: {tier, score, state, message, checks: [{name, passed, detail}]}`` to the
answer and to each finding (``findings[i].reliability``, with its questions and sampled
answers); ``contradictions`` (of the reasoning, from the text alone) are always written.

``--sr`` and ``--pdf`` write the answer as an unsigned draft report (PARTIAL /
UNVERIFIED): the TID 1500 measurement SR at OUT.dcm with the narrative SR beside
it as OUT-report.dcm, and the PDF. Whatever is written, the AI request and output
go into the audit log as in the viewer, with the SHA-256 of the model's weights
(cached by file, size and time, so it is computed once); a log that cannot take
them stops the command before the model is loaded. PDF is drawn with Qt, which this package does not import:
the ``xmedgpt`` console script (ui.shell.cli) supplies the writer as ``args.pdf_writer``.

The model folder is ``--model``, else the one chosen in Settings, else the bundled
demo model (``resources/models/demo``); it is checked as ``xmedgpt models add`` checks
it (:func:`app.models.registry.require_native_model_folder`) before anything loads.
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from app.assistant.ask import Assistant, AssistantAnswer
from app.assistant.session import (
    check_answer,
    choose_model,
    contradictions_json,
    finding_reliability_json,
    reliability_json,
    step_checks,
)
from app.core.errors import XMedError
from app.core.paths import write_private
from app.core.settings import Settings
from app.dicom.display import auto_window_for, render
from app.dicom.loader import load_series
from app.dicom.model import ScanResult, Series
from app.dicom.scan import scan
from app.dicom.slice_request import (
    OpenedSlice,
    choose_window,
    one_slice,
    open_slice,
    pick_series,
    slice_numbers,
)
from app.models.registry import (
    ModelRegistry,
    require_native_model_folder,
    weights_sha256,
)
from app.report.audit import AuditLog
from app.report.draft import Provenance, StudyContext
from app.report.export.sr import SrOptions
from app.report.session import ReportSession, frame_refs, source_paths, study_context
from app.report.workspace import Workspace
from inference.imaging import ImageSpec
from inference.phrases import phrase_key
from inference.prompts import Task
from inference.reliability.scoring import Reliability
from inference.resources import DEMO_MODEL_DIR
from inference.types import Engine

log = logging.getLogger(__name__)

QUANTIZATIONS = ("auto", "nf4", "int8", "bf16", "none")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="ask the local XMedGPT about one slice and write steps and findings as JSON",
        description="Scan PATH, pick a series and a slice, run the assistant on it (as displayed with "
        "the chosen window) and write the answer, findings with boxes in pixel, 0-1000 and patient-mm "
        "coordinates, the model id and timing to a JSON file.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    p.add_argument("--json", dest="json_out", type=Path, metavar="OUT", help="JSON file to write")
    p.add_argument("--sr", dest="sr_out", type=Path, metavar="OUT.dcm",
                   help="draft DICOM SR: TID 1500 measurements at OUT.dcm, narrative report at OUT-report.dcm")
    p.add_argument("--pdf", dest="pdf_out", type=Path, metavar="OUT.pdf", help="draft report as PDF with the key image")
    p.add_argument("--series", default="0", help="series index (as listed by `info`) or UID (default 0)")
    p.add_argument("--slice", default=None, metavar="K|LIST|all",
                   help="image number from 1, as the viewer shows it (default: the middle); several: a list and "
                        "ranges such as 3,7,20-25, or 'all' (the JSON then has \"slices\": one answer per slice, "
                        "each with its 0-based \"frame\")")
    p.add_argument("--question", default="", help="what to ask (default: the five-step analysis of the slice)")
    p.add_argument("--task", choices=["auto", *(t.value for t in Task)], default="auto",
                   help="prompt to use; 'auto' reads it from the question (\"locate …\" → locate)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: Settings, then the demo model)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="auto",
                   help="auto: 4-bit NF4 on CUDA, full precision on CPU")
    p.add_argument("--window", default="default",
                   help="preset name, WIDTH/LEVEL such as 400/40, 'default' (header), 'voi' or 'auto'")
    p.add_argument("--invert", action="store_true", help="invert grey levels")
    p.add_argument("--max-new-tokens", type=int, default=768, help="longest answer in tokens (default 768)")
    p.add_argument("--reliability", action="store_true",
                   help="run the viewer's reliability pass on each answer (re-asked questions, boxes grounded "
                        "again, checks against the pixels and the reasoning) and write its tier and checks")
    p.add_argument("--reliability-samples", type=int, default=None, metavar="N",
                   help="answers sampled per question (default: Settings, 5)")
    p.add_argument("--reliability-questions", type=int, default=None, metavar="N",
                   help="attribute questions per answer (default: Settings, 5)")
    p.set_defaults(func=run, pdf_writer=None)


def open_slices(paths: list[Path], series_key: str, text: str | None, window_text: str) -> tuple[OpenedSlice, list[int]]:
    """One slice (as ``open_slice``) or several of one series, loaded together; the window of "auto"
    is resolved per slice by the caller."""
    if one_slice(text):
        opened = open_slice(paths, series_key, text, window_text)
        return opened, [opened.index]
    result = scan(list(paths))
    series = pick_series(result.all_series(), series_key)
    ks = slice_numbers(text, series.frame_count)
    volume = load_series(series, only=ks)
    bad = [k for k in ks if k in volume.frame_problems]
    if bad:
        raise XMedError(f"Image {bad[0] + 1} cannot be shown: {volume.frame_problems[bad[0]]}")
    return OpenedSlice(result, series, ks[0], volume, choose_window(window_text, series.modality)), ks


def answer_json(answer: AssistantAnswer, reliability: Reliability | None) -> dict:
    """The answer as JSON (``AssistantAnswer.to_json``) with its reliability: ``reliability`` (tier, score,
    checks) at answer level and per finding, ``contradictions`` of its reasoning."""
    data = answer.to_json()
    if reliability is None:
        data["reliability"] = None
        data["contradictions"] = [{"kind": c.kind, "steps": list(c.steps), "message": c.message}
                                  for c in step_checks(answer)[1]]
        for f in data["findings"]:
            f["reliability"] = None
        return data
    data["reliability"] = reliability_json(reliability)
    data["contradictions"] = contradictions_json(reliability)
    per_finding = finding_reliability_json(reliability)
    for f in data["findings"]:
        f["reliability"] = per_finding.get(phrase_key(f["phrase"]))
    return data


def resolve_model(explicit: Path | None) -> Path:
    """The same choice as the viewer (app.assistant.session.choose_model): --model, the Settings
    folder, the registered default, the bundled demo model. Runs locally: a remote server set in
    Settings is not used here."""
    settings = Settings.load()
    settings.remote_url = ""  # analyze always runs the model on this machine
    choice = choose_model(explicit, settings, ModelRegistry(), demo_dir=DEMO_MODEL_DIR)
    if choice.kind == "none" or choice.folder is None:
        raise XMedError("No model configured: pass --model DIR with a model folder, or choose one in Settings.")
    folder = Path(choice.folder)
    if not folder.is_dir():
        raise XMedError(f"The model folder {folder} ({choice.source}) does not exist.")
    require_native_model_folder(folder)  # the same check as `models add`, before minutes of loading
    return folder


def load_engine(folder: Path, device: str, quantization: str) -> tuple[Engine, ImageSpec]:
    """The local engine for ``folder`` and the image layout its processor uses."""
    from inference.engine.local import (
        LocalEngine,  # torch/transformers load only when a model is used
    )

    def progress(message: str, fraction: float) -> None:
        log.info("model: %s (%d%%)", message, round(fraction * 100))

    engine = LocalEngine.from_folder(folder, device=device, quantization=quantization, progress=progress)
    return engine, ImageSpec.from_preprocessor_config(folder)


def _study_description(result: ScanResult, series: Series) -> str:
    for patient in result.patients:
        for study in patient.studies:
            if any(s is series for s in study.series):
                return study.description
    return ""


def write_draft_report(args: argparse.Namespace, answer, volume, study, folder: Path) -> list[Path]:
    """The answer as an unsigned draft: SR pair at --sr, PDF at --pdf; the AI output audited."""
    settings = Settings.load()
    with tempfile.TemporaryDirectory(prefix="xmedgpt-analyze-") as tmp:  # no draft left in the viewer's workspace
        session = ReportSession(Workspace(Path(tmp)), AuditLog(settings.audit_log_path()),
                                reader_name=settings.reader_name,
                                sr_options=SrOptions(settings.institution_name, settings.department_name))
        report = session.on_answer(answer, volume, study, Provenance(
            model_id=answer.model_id, engine=answer.engine, weights_sha256=_weights_sha256(folder)))
        sr_path = narrative = None
        if args.sr_out is not None:
            boxed = any(f.boxes for f in report.findings)
            sr_path = args.sr_out if boxed else None
            narrative = args.sr_out.with_name(args.sr_out.stem + "-report.dcm") if boxed else args.sr_out
        keys = {answer.frame: render(volume, answer.frame, answer.window, invert=args.invert)}
        writer = None
        if args.pdf_out is not None:
            writer = lambda r, p: args.pdf_writer(r, p, keys)  # noqa: E731
        out_dir = (args.sr_out or args.pdf_out).parent
        done = session.export(source_paths(volume), out_dir, pdf_writer=writer, sr_path=sr_path,
                              narrative_path=narrative, pdf_path=args.pdf_out, text_file=False,
                              sr=args.sr_out is not None)
        session.close()
    return done.paths


def _weights_sha256(folder: Path) -> str:
    """The SHA-256 digest of the model's weights, as `xmedgpt models add` records it (cached)."""
    try:
        return weights_sha256(folder)
    except OSError as exc:
        raise XMedError(f"Could not read the model's weights in {folder} to record their SHA-256: "
                        f"{exc.strerror or exc}.") from exc


def audit_answer(audit: AuditLog, answer, volume, study: StudyContext, weights: str) -> None:
    """The AI request and output in the audit trail, as the viewer's report session records them."""
    ref = frame_refs(volume)(answer.frame)
    audit.ai_request(
        study.study_uid, model_id=answer.model_id, weights_sha256=weights,
        prompt=answer.prompt.user, system=answer.prompt.system or "", question=answer.question,
        image={"sop_instance_uid": ref.sop_instance_uid, "frame_number": ref.frame_number,
               "slice_index": answer.frame,
               "window": None if answer.window is None else [answer.window.width, answer.window.center]},
        source="xmedgpt analyze",
    )
    data = answer.to_json()
    audit.ai_output(
        study.study_uid, model_id=answer.model_id, weights_sha256=weights, text=answer.raw_text,
        reasoning=data["steps"], boxes=data["findings"], engine=answer.engine,
        finish_reason=answer.finish_reason, warnings=answer.warnings, source="xmedgpt analyze",
    )


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise XMedError("--max-new-tokens must be at least 1")
    if args.json_out is None and args.sr_out is None and args.pdf_out is None:
        raise XMedError("Say what to write: --json OUT, --sr OUT.dcm and/or --pdf OUT.pdf")
    if args.task == "locate" and not args.question.strip():
        raise XMedError("--task locate needs --question naming what to find, e.g. --question \"the mass in the "
                        "right lung\"")
    if args.pdf_out is not None and args.pdf_writer is None:
        raise XMedError("PDF export needs the viewer's Qt libraries; run the installed `xmedgpt` command.")
    folder = resolve_model(args.model)
    audit = AuditLog(Settings.load().audit_log_path())
    audit.ensure_writable()  # every AI request and answer is recorded: find out now, not after the model ran
    several = not one_slice(args.slice)
    if several and (args.sr_out is not None or args.pdf_out is not None):
        raise XMedError("--sr and --pdf write the answer about one slice; give --slice one image number for them")
    settings = Settings.load()
    n_samples = args.reliability_samples or settings.reliability_samples
    n_questions = args.reliability_questions or settings.reliability_questions
    if args.reliability and (n_samples < 1 or n_questions < 1):
        raise XMedError("--reliability-samples and --reliability-questions must be at least 1")
    opened, ks = open_slices(args.paths, args.series, args.slice, args.window)
    result, series, n = opened.scan, opened.series, opened.count
    volume = opened.volume
    engine, spec = load_engine(folder, args.device, args.quantization)
    assistant = Assistant(engine, image_spec=spec, max_new_tokens=args.max_new_tokens)
    study = study_context(result, series)
    source = {
        "paths": [str(p) for p in args.paths],
        "series": {"uid": series.uid, "number": series.number, "description": series.description,
                   "modality": series.modality, "body_part": series.body_part},
        "slices": n,
        "model_folder": str(folder),
    }
    answers: list[dict] = []
    for k in ks:
        window = opened.window
        if window is not None and window.name == "auto":
            window = auto_window_for(volume, k)
        answer = assistant.ask(
            volume, k, window, args.question,
            task=None if args.task == "auto" else args.task,
            invert=args.invert,
            study_description=_study_description(result, series),
        )
        rel = check_answer(engine, answer, n_samples, n_questions) if args.reliability else None
        data = answer_json(answer, rel)
        data["source"] = {**source, "slice": k}
        answers.append(data)
        if args.sr_out is None and args.pdf_out is None:  # the draft report's session audits it otherwise
            audit_answer(audit, answer, volume, study, _weights_sha256(folder))
        for warning in answer.warnings:
            print(f"warning: image {k + 1}: {warning}" if several else f"warning: {warning}")
        tier = f", reliability {rel.tier.value}" if rel is not None else ""
        if several:
            print(f"image {k + 1}/{n}: {len(answer.steps)} steps, {len(answer.findings)} findings{tier} "
                  f"in {answer.timing.total_s:.1f} s")
    if several:
        document = {"source": {**source, "frames": ks}, "slices": answers}
    else:
        document = answers[0]
    written = [args.json_out] if args.json_out is not None else []
    if args.json_out is not None:
        write_private(args.json_out, json.dumps(document, indent=2, ensure_ascii=False) + "\n")  # patient data: 0600
    if args.sr_out is not None or args.pdf_out is not None:
        written += write_draft_report(args, answer, volume, study, folder)
    if several:
        print(f"wrote {', '.join(map(str, written))}: {len(ks)} slices from {answer.engine} "
              f"(series {series.description!r}, images {_ranges(ks)} of 1-{n})")
    else:
        print(
            f"wrote {', '.join(map(str, written))}: {len(answer.steps)} steps, {len(answer.findings)} findings{tier} "
            f"from {answer.engine} in {answer.timing.total_s:.1f} s (series {series.description!r}, "
            f"image {ks[0] + 1}/{n})"
        )
    return 0


def _ranges(ks: list[int]) -> str:
    """Indices [3, 4, 5, 9] → "4-6,10" (image numbers from 1, as --slice takes them)."""
    parts: list[str] = []
    i = 0
    while i < len(ks):
        j = i
        while j + 1 < len(ks) and ks[j + 1] == ks[j] + 1:
            j += 1
        parts.append(str(ks[i] + 1) if i == j else f"{ks[i] + 1}-{ks[j] + 1}")
        i = j + 1
    return ",".join(parts)
