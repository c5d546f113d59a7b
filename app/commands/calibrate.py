"""``xmedgpt calibrate``: measure the reliability index on a labelled set and choose its thresholds.

A thin wrapper: parse the flags, then :mod:`inference.evaluation.calibrate` reads the
records (their format is documented there), samples the ones without samples with
``--model``, calibrates, and this prints the report and writes the calibration file.
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
    p.add_argument("--data", type=Path, required=True, help="folder of labelled .jsonl records")
    p.add_argument("--model", type=Path, help="local model folder, to sample records that have no samples")
    p.add_argument("--out", type=Path, default=CALIBRATION_FILE,
                   help="calibration file to write: MODEL_DIR/reliability_calibration.json for one model "
                        f"(default: the shipped defaults, {CALIBRATION_FILE})")
    p.add_argument("--estimator", default="confidence_weighted", choices=sorted(ESTIMATORS))
    p.add_argument("--judge", default="closed-form+embedding", choices=JUDGES)
    p.add_argument("--nli-model", type=Path, help="local NLI model folder for the nli judges")
    p.add_argument("-n", "--samples", type=int, default=10, help="answers sampled per question (default 10)")
    p.add_argument("--max-green-error", type=float, default=0.05, help="error rate allowed in green (default 0.05)")
    p.add_argument("--max-amber-error", type=float, default=0.25, help="error rate allowed in amber (default 0.25)")
    p.add_argument("--min-count", type=int, default=20, help="answers needed at or above a threshold (default 20)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
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
