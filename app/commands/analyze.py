"""``xmedgpt analyze PATH [--series] [--slice] [--question TEXT] [--model DIR] [--json OUT] [--sr OUT.dcm] [--pdf OUT.pdf]``.

Headless: scan PATH, pick a series and a slice, render it as a reader would see it,
ask the local XMedGPT and write a JSON file with the reasoning steps, the findings
with their boxes in three coordinate systems (frame pixels, the model's 0–1000
scale, patient mm), the guardrail's warnings, the model that answered and timing.

``--sr`` and ``--pdf`` write the answer as an unsigned draft report (PARTIAL /
UNVERIFIED): the TID 1500 measurement SR at OUT.dcm with the narrative SR beside
it as OUT-report.dcm, and the PDF. The AI request and output go into the audit
log as in the viewer. PDF is drawn with Qt, which this package does not import:
the ``xmedgpt`` console script (ui.shell.cli) supplies the writer as ``args.pdf_writer``.

The model folder is ``--model``, else the one chosen in Settings, else the bundled
demo model (``resources/models/demo``). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from app.assistant.ask import Assistant
from app.assistant.session import choose_model
from app.core.errors import XMedError
from app.core.paths import write_atomic
from app.core.settings import Settings
from app.dicom.display import render
from app.dicom.model import ScanResult, Series
from app.dicom.slice_request import open_slice
from app.models.registry import ModelRegistry
from app.report.audit import AuditLog
from app.report.draft import Provenance
from app.report.export.sr import SrOptions
from app.report.session import ReportSession, source_paths, study_context
from app.report.workspace import Workspace
from inference.imaging import ImageSpec
from inference.prompts import Task
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
    p.add_argument("--slice", type=int, default=None, help="slice index from 0 (default: the middle)")
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
    p.set_defaults(func=run, pdf_writer=None)


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
    """The registered weights hash of the model folder ('' when it was not added with `xmedgpt models add`)."""
    try:
        target = folder.resolve()
        return next((m.weights_sha256 for m in ModelRegistry().models.values() if Path(m.path) == target), "")
    except (OSError, XMedError):
        return ""


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise XMedError("--max-new-tokens must be at least 1")
    if args.json_out is None and args.sr_out is None and args.pdf_out is None:
        raise XMedError("Say what to write: --json OUT, --sr OUT.dcm and/or --pdf OUT.pdf")
    if args.pdf_out is not None and args.pdf_writer is None:
        raise XMedError("PDF export needs the viewer's Qt libraries; run the installed `xmedgpt` command.")
    folder = resolve_model(args.model)
    opened = open_slice(args.paths, args.series, args.slice, args.window)
    result, series, k, n = opened.scan, opened.series, opened.index, opened.count
    volume, window = opened.volume, opened.window
    engine, spec = load_engine(folder, args.device, args.quantization)
    assistant = Assistant(engine, image_spec=spec, max_new_tokens=args.max_new_tokens)
    answer = assistant.ask(
        volume, k, window, args.question,
        task=None if args.task == "auto" else args.task,
        invert=args.invert,
        study_description=_study_description(result, series),
    )
    data = answer.to_json()
    data["source"] = {
        "paths": [str(p) for p in args.paths],
        "series": {"uid": series.uid, "number": series.number, "description": series.description,
                   "modality": series.modality, "body_part": series.body_part},
        "slice": k,
        "slices": n,
        "model_folder": str(folder),
    }
    written = [args.json_out] if args.json_out is not None else []
    if args.json_out is not None:
        write_atomic(args.json_out, json.dumps(data, indent=2, ensure_ascii=False) + "\n", mode=0o644)
    if args.sr_out is not None or args.pdf_out is not None:
        written += write_draft_report(args, answer, volume, study_context(result, series), folder)
    for warning in answer.warnings:
        print(f"warning: {warning}")
    print(
        f"wrote {', '.join(map(str, written))}: {len(answer.steps)} steps, {len(answer.findings)} findings "
        f"from {answer.engine} in {answer.timing.total_s:.1f} s (series {series.description!r}, slice {k + 1}/{n})"
    )
    return 0
