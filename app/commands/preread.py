"""``xmedgpt preread PATH [--series N|UID] [--model DIR] --json OUT [--sr OUT.dcm] [--pdf OUT.pdf]``: the series pre-read.

Headless: scan PATH, load the whole series, and run :func:`app.assistant.preread.preread` — the
grounding sweep over every slice (batched; windows chosen per slice from its HU), the 3-D linking
of the boxes into lesion candidates, and the five-step reasoning with the reliability pass at each
lesion's key slice. ``--json`` writes::

    {"series_uid", "model": {"id", "engine"}, "model_folder",
     "lesions": [{"id", "slices": [first, last] (0-based), "key_slice",
                  "box_pixels": {"x0","y0","x1","y1"} (key slice), "boxes": {slice: box},
                  "center_patient_mm": [x, y, z], "diameter_mm", "volume_ml", "score", "window",
                  "phrase", "location", "description", "reliability": {"tier", "score", "checks", …}}],
     "candidates", "operating_point": {"min_score", "source", "fp_per_volume"} | null, "below_operating_point",
     "windows": {"rule", "counts", "slices": [{"slice", "windows", "lung_fraction"}]},
     "timing": {"sweep_s", "link_s", "reasoning_s", "total_s", …}, "cancelled"}

``--sr`` writes the lesions as a draft TID 1500 measurement SR
(:func:`app.report.export.sr.export_preread_sr`: one volumetric ROI group per lesion with its box on
every slice of its range). ``--pdf`` writes a summary page (patient, series, model, a table of the
lesions) and one page per lesion (location, size, images, tier, checks, description, the key slice in
its window with the lesion's box and a zoomed view), Qt-free (:mod:`app.report.export.preread_pdf`),
so it works headless. The AI request and output go into the audit trail, as for ``analyze``.

The list holds the candidates scoring at least the model's operating point (its folder's
``preread_operating_point.json``; ``--min-score S`` instead); how many fell below it is said on stderr, in the
JSON and in the PDF.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from app.assistant.preread import PrereadOptions, below_point_note, misses_caveat, preread
from app.assistant.session import frame_ref
from app.commands.analyze import QUANTIZATIONS, load_engine, resolve_model
from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name
from app.core.paths import write_atomic
from app.core.settings import Settings
from app.dicom.loader import load_series
from app.dicom.scan import scan
from app.dicom.slice_request import pick_series
from app.models.registry import weights_sha256
from app.report.audit import AuditLog
from app.report.export.preread_pdf import volume_key_images, write_preread_pdf
from app.report.export.sr import SrOptions, export_preread_sr, read_sources
from app.report.from_preread import audit_preread
from app.report.session import study_context

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preread",
        help="the AI reads every slice of a series and lists the lesions it finds (JSON, draft SR)",
        description="Sweep every slice of a series with the model's lesion-grounding prompt (batched), link "
        "the boxes across slices into 3-D lesion candidates (slice range, centre in patient mm, diameter, "
        "volume), and at each lesion's key slice run the five-step reasoning and the reliability pass.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    p.add_argument("--series", default="0", help="series index (as listed by `info`) or UID (default 0)")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: Settings, then the demo model)")
    p.add_argument("--json", dest="json_out", type=Path, metavar="OUT", help="JSON file to write")
    p.add_argument("--sr", dest="sr_out", type=Path, metavar="OUT.dcm", help="draft TID 1500 measurement SR")
    p.add_argument("--pdf", dest="pdf_out", type=Path, metavar="OUT.pdf",
                   help="PDF: a summary page and one page per lesion with its key image and box")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="auto",
                   help="auto: 4-bit NF4 on CUDA, full precision on CPU")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass in the sweep (default 16)")
    p.add_argument("--max-lesions", type=int, default=10, help="lesions reasoned about and reported (default 10)")
    p.add_argument("--min-slices", type=int, default=1, help="a lesion needs boxes on this many slices (default 1)")
    p.add_argument("--min-score", type=float, default=None, metavar="S",
                   help="list candidates scoring at least S (default: the model's operating point, "
                        "preread_operating_point.json in its folder; 0 lists every candidate)")
    p.add_argument("--no-reasoning", action="store_true", help="sweep and link only (no five-step reasoning)")
    p.add_argument("--no-reliability", action="store_true", help="skip the reliability pass")
    p.add_argument("--reliability-samples", type=int, default=5, metavar="N", help="answers per question (5)")
    p.add_argument("--reliability-questions", type=int, default=3, metavar="N", help="questions per lesion (3)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json_out is None and args.sr_out is None and args.pdf_out is None:
        raise XMedError("Say what to write: --json OUT, --sr OUT.dcm and/or --pdf OUT.pdf")
    if args.batch_size < 1 or args.max_lesions < 0 or args.min_slices < 1:
        raise XMedError("--batch-size and --min-slices must be at least 1, --max-lesions at least 0")
    if args.min_score is not None and not 0.0 <= args.min_score <= 1.0:
        raise XMedError("--min-score must be a score from 0 to 1")
    folder = resolve_model(args.model)
    settings = Settings.load()
    audit = AuditLog(settings.audit_log_path())
    audit.ensure_writable()
    result = scan(list(args.paths))
    series = pick_series(result.all_series(), args.series)
    volume = load_series(series)
    if volume.frame_problems:
        log.warning("%d slice(s) could not be read and are skipped", len(volume.frame_problems))
    engine, spec = load_engine(folder, args.device, args.quantization)
    study = study_context(result, series)
    options = PrereadOptions(batch_size=args.batch_size, max_lesions=args.max_lesions, min_slices=args.min_slices,
                             min_score=args.min_score,
                             reasoning=not args.no_reasoning, reliability=not args.no_reliability,
                             n_samples=args.reliability_samples, n_questions=args.reliability_questions)
    state = {"stage": "sweep"}

    def stage(name: str) -> None:
        state["stage"] = name
        sys.stderr.write(f"{name}…\n")

    def progress(done: int, total: int) -> None:
        if total and (done == total or done % max(1, total // 10) < args.batch_size):
            sys.stderr.write(f"  {state['stage']}: {done}/{total}\n")

    out = preread(engine, volume, options, image_spec=spec, study_description=study.study_description,
                  progress=progress, stage=stage)
    document = out.to_json()
    note = below_point_note(out.below_operating_point, out.operating_point.min_score if out.operating_point else None)
    if note:
        sys.stderr.write(note + "\n")
    document["model_folder"] = str(folder)
    document["series"] = {"uid": series.uid, "number": series.number, "description": series.description,
                          "modality": series.modality, "slices": len(volume)}
    weights = _weights(folder)
    sops = [frame_ref(volume, k).sop_instance_uid for k in range(len(volume))]
    audit_preread(audit, study.study_uid, document, volume, source="xmedgpt preread", weights_sha256=weights)
    written: list[Path] = []
    if args.json_out is not None:
        write_atomic(args.json_out, json.dumps(document, indent=2, ensure_ascii=False) + "\n", mode=0o644)
        written.append(args.json_out)
    if args.sr_out is not None:
        if not document["lesions"]:
            sys.stderr.write("no lesion found: no SR written\n")
        else:
            sources = read_sources(Path(i.path) for i in series.instances)
            export_preread_sr(document["lesions"], sops, sources, args.sr_out, model_id=out.model,
                              weights_sha256=weights, modality=series.modality,
                              options=SrOptions(settings.institution_name, settings.department_name))
            written.append(args.sr_out)
    if args.pdf_out is not None:
        header = {"Patient": " · ".join(x for x in (person_name(study.patient_name, NameStyle.FULL),
                                                     study.patient_id and f"ID {study.patient_id}") if x),
                  "Study": " · ".join(x for x in (display_date(study.study_date), study.study_description,
                                                   study.accession_number and f"accession {study.accession_number}")
                                      if x)}
        write_preread_pdf(args.pdf_out, document, volume_key_images(volume), header=header)
        written.append(args.pdf_out)
    t = out.timing
    print(f"wrote {', '.join(map(str, written)) or 'nothing'}: {len(out.lesions)} lesion(s) of "
          f"{len(out.candidates)} candidate(s) from {out.engine}; {int(t['slices'])} slices in "
          f"{int(t['batches'])} batches, sweep {t['sweep_s']:.1f} s, reasoning {t['reasoning_s']:.1f} s, "
          f"total {t['total_s']:.1f} s. {misses_caveat(len(out.lesions))}")
    return 0


def _weights(folder: Path) -> str:
    try:
        return weights_sha256(folder)
    except OSError as exc:
        raise XMedError(f"Could not read the model's weights in {folder}: {exc.strerror or exc}.") from exc
