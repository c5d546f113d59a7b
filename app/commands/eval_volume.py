"""``xmedgpt eval-volume --data DIR [--model DIR] --json OUT``: lesion detection of the series pre-read, FROC.

DIR is a study written by ``xmedgpt sample`` (with its ``ground_truth.json`` inside or beside it) or a
folder of such studies. Each study's first series is pre-read (:mod:`app.assistant.preread`: the sweep and
the 3-D linking; ``--reasoning`` adds the five-step reasoning, which does not change the candidates) and
every candidate (centre in patient mm, score) is matched to the true lesions
(``center_patient_mm``, ``size_mm``): a hit is a centre within the lesion's radius + 5 mm.
:mod:`inference.evaluation.froc` gives the per-lesion sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false
positives per volume, the competition performance metric (their mean, as LUNA16 reports it) overall and
per size bucket (small < 10 mm ≤ medium < 20 mm ≤ large), and the time per volume.

``--fit-operating-point FP`` fits the pre-read's operating point on these studies (the lowest candidate score with at
most FP false positives per volume, :func:`inference.evaluation.froc.fit_operating_point`) and writes it to the model
folder's ``preread_operating_point.json`` (or ``--out``); without it, a model that has one is also measured there
(sensitivity per size bucket and false positives per volume of the candidates the pre-read lists).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from app.assistant.preread import (
    OPERATING_POINT_FILE,
    PrereadOptions,
    operating_point_for,
    preread,
    write_operating_point,
)
from app.commands.analyze import QUANTIZATIONS, load_engine
from app.core.errors import XMedError
from app.core.paths import write_atomic
from app.dicom.loader import load_series
from app.dicom.scan import scan
from app.dicom.slice_request import pick_series
from app.models.registry import require_native_model_folder
from app.synthetic.sample import ground_truth_path, load_ground_truth
from inference.evaluation.froc import (
    OperatingPointResult,
    Prediction,
    TrueLesion,
    VolumeCase,
    at_threshold,
    fit_operating_point,
    format_table,
    froc,
    froc_by_size,
    match_volume,
)
from inference.resources import DEMO_MODEL_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval-volume",
        help="measure the series pre-read on sample studies: FROC, CPM per lesion size, time per volume",
        description="Pre-read every study in DIR (written by 'xmedgpt sample', with ground_truth.json) and "
        "report the per-lesion sensitivity at 1/8 to 8 false positives per volume (FROC), the competition "
        "performance metric overall and per lesion size, and the time per volume.",
    )
    p.add_argument("--data", type=Path, required=True, help="a sample study, or a folder of sample studies")
    p.add_argument("--model", type=Path, default=DEMO_MODEL_DIR, help=f"model folder (default {DEMO_MODEL_DIR})")
    p.add_argument("--json", dest="json_out", type=Path, metavar="OUT", help="write the metrics as JSON here")
    p.add_argument("--series", default="0", help="series index or UID in each study (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass (default 16)")
    p.add_argument("--reasoning", action="store_true", help="also run stage 3 (reasoning, no reliability)")
    p.add_argument("--fit-operating-point", type=float, metavar="FP", default=None,
                   help="fit the pre-read's operating point on these studies: the lowest candidate score with at most "
                        "FP false positives per volume, written to MODEL/preread_operating_point.json (or --out); "
                        "fit on studies you do not report")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="where --fit-operating-point writes (default: the model folder's "
                        "preread_operating_point.json)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="auto")
    p.set_defaults(func=run)


def find_studies(data: Path) -> list[Path]:
    """The sample-study folders under ``data`` (``data`` itself when it is one)."""
    data = Path(data)
    if not data.is_dir():
        raise XMedError(f"No studies at {data}: expected a folder written by 'xmedgpt sample' or a folder of them.")
    if ground_truth_path(data) is not None:
        return [data]
    found = sorted(p for p in data.iterdir() if p.is_dir() and ground_truth_path(p) is not None)
    if not found:
        raise XMedError(f"No study with a ground_truth.json in {data}.")
    return found


def _progress(name: str):
    shown = [-1]

    def report(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if tenth != shown[0]:
            shown[0] = tenth
            sys.stderr.write(f"{name}: {done}/{total}\n")

    return report


def preread_cases(engine, spec, studies: list[Path], options: PrereadOptions, series_choice: str = "0",
                  progress: bool = True) -> tuple[list[VolumeCase], list[dict]]:
    """Pre-read each study's series and match every candidate to its ground truth: the FROC's cases, and one
    summary per volume (lesions hit, candidates, false positives, seconds)."""
    cases: list[VolumeCase] = []
    volumes: list[dict] = []
    for folder in studies:
        truth = load_ground_truth(folder)
        series = pick_series(scan([folder]).all_series(), series_choice)
        t0 = time.perf_counter()
        volume = load_series(series)
        out = preread(engine, volume, options, image_spec=spec, progress=_progress(folder.name) if progress else None)
        seconds = time.perf_counter() - t0
        lesions = [TrueLesion(tuple(les["center_patient_mm"]), float(les["size_mm"]), les["id"])
                   for les in truth["lesions"]]
        preds = [Prediction(tuple(float(v) for v in c.center_mm), c.score) for c in out.candidates]
        case = VolumeCase(folder.name, lesions, preds)
        cases.append(case)
        m = match_volume(case)
        volumes.append({
            "id": folder.name, "path": str(folder), "series_uid": series.uid, "slices": len(volume),
            "lesions": [{"id": t.id, "size_mm": t.size_mm, "bucket": t.bucket, "found": s is not None,
                         "score": s} for t, s in zip(lesions, m.lesion_scores)],
            "candidates": len(preds), "false_positives": len(m.fp_scores),
            "seconds": round(seconds, 3), "sweep_s": round(out.timing["sweep_s"], 3),
        })
        if progress:
            sys.stderr.write(f"{folder.name}: {len(preds)} candidates, "
                             f"{sum(s is not None for s in m.lesion_scores)}/{len(lesions)} lesions hit, "
                             f"{seconds:.1f} s\n")
    return cases, volumes


def _point_line(what: str, r: OperatingPointResult) -> str:
    sizes = ", ".join(f"{b} {s:.3f}" for b, s in r.by_size.items() if s is not None)
    sens = "-" if r.sensitivity is None else f"{r.sensitivity:.3f}"
    return (f"{what} (score >= {r.min_score:.4f}): sensitivity {sens} ({sizes}), "
            f"{r.fp_per_volume:.2f} false positives per volume")


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise XMedError("--batch-size must be at least 1")
    if args.fit_operating_point is not None and not 0 <= args.fit_operating_point <= 100:
        raise XMedError("--fit-operating-point must be 0 to 100 false positives per volume")
    if args.out is not None and args.fit_operating_point is None:
        raise XMedError("--out says where --fit-operating-point writes; give --fit-operating-point FP too")
    studies = find_studies(args.data)
    require_native_model_folder(args.model)
    point = None if args.fit_operating_point is not None else operating_point_for(args.model)
    engine, spec = load_engine(Path(args.model), args.device, args.quantization)
    options = PrereadOptions(batch_size=args.batch_size, reasoning=args.reasoning, reliability=False)
    started = time.perf_counter()
    cases, volumes = preread_cases(engine, spec, studies, options, args.series)
    overall = froc(cases)
    by_size = froc_by_size(cases)
    matches = [match_volume(c) for c in cases]
    fitted = at_point = None
    if args.fit_operating_point is not None:
        try:
            fitted = fit_operating_point(matches, args.fit_operating_point)
        except ValueError as exc:
            raise XMedError(f"No operating point fits: {exc}.") from None
    elif point is not None:
        at_point = at_threshold(matches, point.min_score)
    total = time.perf_counter() - started
    doc = {
        "model": engine.describe(),
        "model_folder": str(args.model),
        "data": str(args.data),
        "hit_rule": "predicted centre within the true lesion's radius + 5 mm",
        "froc": overall.to_json(),
        "by_size": {b: r.to_json() for b, r in by_size.items()},
        "volumes": volumes,
        "timing": {"per_volume_s": round(sum(v["seconds"] for v in volumes) / len(volumes), 3),
                   "total_s": round(total, 3)},
    }
    if at_point is not None:
        doc["operating_point"] = {"source": point.source, "fitted_for_fp_per_volume": point.fp_per_volume,
                                  **at_point.to_json()}
    print(f"model: {doc['model']}\ndata:  {args.data} ({len(volumes)} volume(s))\n")
    print(format_table(overall, by_size))
    if at_point is not None:
        print(_point_line("at the model's operating point", at_point))
    if fitted is not None:
        target = args.out if args.out is not None else Path(args.model) / OPERATING_POINT_FILE
        write_operating_point(target, fitted.to_json(), args.fit_operating_point, str(args.data), doc["model"])
        doc["fitted_operating_point"] = {"written_to": str(target), "fp_per_volume_asked": args.fit_operating_point,
                                         **fitted.to_json()}
        print(_point_line(f"operating point fitted at {args.fit_operating_point:g} FP/volume", fitted))
        print(f"written to {target}")
    print(f"time per volume: {doc['timing']['per_volume_s']:.1f} s")
    if args.json_out is not None:
        write_atomic(args.json_out, json.dumps(doc, indent=2) + "\n", mode=0o644)
    return 0
