"""``xmedgpt calibrate``: measure the reliability index on a labelled set and choose its thresholds.

A thin wrapper: parse the flags, then :mod:`inference.evaluation.calibrate` reads the
records (their format is documented there), samples the ones without samples with
``--model``, calibrates, and this prints the report and writes the calibration file.

``--data`` may also be a study written by ``xmedgpt sample`` (or a folder of them): then every chosen
slice is asked about in every ``--window`` as the viewer asks, the full reliability pass runs on each
answer, the findings are labelled right or wrong from the ground truth, the thresholds are fitted on one
split and measured on the other (:mod:`app.assistant.trust_eval`), and the model's own
``reliability_calibration.json`` is written (``--out`` to write elsewhere) -- only when the fit rests on at
least ``--min-count`` checked findings, unless ``--out`` says where: a measurement on a few slices never
replaces a model's calibration by itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.core.errors import XMedError
from inference.evaluation.calibrate import (
    JUDGES,
    calibrate,
    format_report,
    load_records,
    make_judge,
    sample_missing,
)
from inference.reliability.scoring import CALIBRATION_FILE, ESTIMATORS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure the reliability index on labelled answers and choose the traffic-light thresholds",
        description=__doc__.split("\n\n")[0] + " Records are read from DIR/*.jsonl (question, answer, label, "
        "optional image and precomputed samples).",
    )
    p.add_argument("--data", type=Path, required=True, help="folder of labelled .jsonl records, or a study written "
                   "by 'xmedgpt sample' (or a folder of them) to calibrate on slices as the viewer shows them")
    p.add_argument("--model", type=Path, help="local model folder, to sample records that have no samples")
    p.add_argument("--out", type=Path, default=None,
                   help="calibration file to write: MODEL_DIR/reliability_calibration.json for one model "
                        f"(default: the shipped defaults, {CALIBRATION_FILE}; for studies: the model's own file)")
    p.add_argument("--estimator", default="confidence_weighted", choices=sorted(ESTIMATORS))
    p.add_argument("--judge", default="closed-form+embedding", choices=JUDGES)
    p.add_argument("--nli-model", type=Path, help="local NLI model folder for the nli judges")
    p.add_argument("-n", "--samples", type=int, default=10, help="answers sampled per question (default 10)")
    p.add_argument("--max-green-error", type=float, default=0.05, help="error rate allowed in green (default 0.05)")
    p.add_argument("--max-amber-error", type=float, default=0.25, help="error rate allowed in amber (default 0.25)")
    p.add_argument("--min-count", type=int, default=20, help="answers needed at or above a threshold (default 20); "
                   "on studies also the checked findings a fit needs before it replaces the model's own file")
    g = p.add_argument_group("studies (when --data is a study written by 'xmedgpt sample')")
    g.add_argument("--window", default="all", help="windows to read each slice in: soft_tissue,lung,liver,bone,default "
                   "or 'all' (default: all)")
    g.add_argument("--slices", help="slices to ask about, numbered from 1 as in the viewer, e.g. 3,7,20-25 (default all)")
    g.add_argument("--questions", type=int, default=5, help="check questions per finding (default 5)")
    g.add_argument("--holdout", type=float, default=0.5, help="share of studies (one study: of slices) held out to "
                   "measure the fitted thresholds (default 0.5)")
    g.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    g.add_argument("--question", default=None, help="what to ask on each slice (default: the five-step description)")
    g.add_argument("--json", dest="json_out", type=Path, help="write every record and both splits' metrics here")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from app.synthetic.study_dataset import is_study_folder

    if is_study_folder(args.data) or (args.data.is_dir() and not any(args.data.glob("*.jsonl"))
                                       and any(is_study_folder(p) for p in args.data.iterdir() if p.is_dir())):
        return _run_studies(args)
    if args.out is None:
        args.out = CALIBRATION_FILE
    records = load_records(args.data)
    if any(not r.samples for r in records):
        if args.model is None:
            raise XMedError("Some records have no sampled answers: give --model DIR to sample them.")
        from inference.engine.local import LocalEngine

        engine = LocalEngine.from_folder(args.model)
        sample_missing(records, engine, args.samples)
    judge = make_judge(args.judge, args.nli_model)
    result = calibrate(records, judge, args.estimator, args.max_green_error, args.max_amber_error, args.min_count)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(format_report(result) + f"\n\nwrote {args.out}\n")
    return 0


def _run_studies(args: argparse.Namespace) -> int:
    from app.assistant import trust_eval
    from app.commands.analyze import load_engine, resolve_model
    from app.core.paths import write_private
    from app.synthetic.study_dataset import parse_windows

    if not 0.0 < args.holdout < 1.0:
        raise XMedError("--holdout must be between 0 and 1")
    if args.samples < 1 or args.questions < 1:
        raise XMedError("--samples and --questions must be at least 1")
    folders = trust_eval.study_folders(args.data)
    windows = parse_windows(args.window)
    folder = resolve_model(args.model)
    engine, _spec = load_engine(folder, "auto", "auto")
    collected, per_answer = trust_eval.collect(
        engine, folders, windows, args.slices, question=args.question or trust_eval.DEFAULT_QUESTION,
        n_samples=args.samples, n_questions=args.questions,
        progress=lambda line: sys.stderr.write(line + "\n"))
    cal = trust_eval.fit(collected, per_answer, args.holdout, args.seed, args.max_green_error, args.max_amber_error,
                         args.min_count)
    before = collected.thresholds
    if args.json_out is not None:
        write_private(args.json_out, json.dumps(cal.to_json(), indent=2) + "\n")
    if args.out is None and cal.n_fit_findings < args.min_count:
        # a measurement must not silently replace the model's calibration with thresholds fitted on next to nothing
        sys.stdout.write(trust_eval.format_table(cal) + f"\n\nnot written: the thresholds rest on {cal.n_fit_findings} "
                         f"checked finding(s), fewer than --min-count {args.min_count}; the model keeps its "
                         f"calibration ({folder / 'reliability_calibration.json'}). Give --out to write them anyway.\n")
        return 0
    out = args.out if args.out is not None else folder / "reliability_calibration.json"
    document = {
        "version": 1,
        "estimator": before.estimator,
        "likelihood": before.likelihood,
        "n_samples": args.samples,
        "thresholds": {"green": cal.green, "amber": cal.amber},
        "calibrated": True,
        "note": (f"Calibrated on sample studies as the viewer shows them ({', '.join(collected.studies)}; windows "
                 f"{', '.join(windows)}): the full reliability pass on {len(collected.answers)} answers, "
                 f"{len(collected.findings)} findings labelled right when the box overlaps a true lesion "
                 f"(IoU >= {trust_eval.RIGHT_IOU}) on the stated side; thresholds fitted on {cal.n_fit_findings} "
                 f"checked findings of the fit split (green where the error rate < {args.max_green_error:.0%}), "
                 "measured on the held-out split."),
        "date": _now(),
        "metrics": {"study": {k: v for k, v in cal.to_json().items() if k != "records"}},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(trust_eval.format_table(cal) + f"\n\nwrote {out}\n")
    return 0


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
