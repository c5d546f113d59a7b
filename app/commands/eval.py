"""``xmedgpt eval --data DIR [--model DIR] --json OUT``: measure a model on a labelled dataset.

A thin wrapper: parse the flags, run :func:`inference.evaluation.harness.run_eval` (the
dataset format and the metrics are documented there), print the table, write the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from app.core.errors import XMedError
from inference.evaluation.harness import Options, format_table, run_eval
from inference.resources import DEMO_MODEL_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure a model on a labelled dataset (localization, VQA, findings, reliability, timing)",
        description="Run a model on a labelled dataset in the documented JSONL format (training/README.md) and "
        "print localization (mean IoU, accuracy@0.5 per lesion size), VQA accuracy, report finding "
        "precision/recall/F1, reliability AUROC per estimator, Kendall's tau-b and timing; --json writes them.",
    )
    p.add_argument("--data", type=Path, required=True, help="folder with grounding/vqa/report/reasoning .jsonl")
    p.add_argument("--model", type=Path, default=DEMO_MODEL_DIR, help=f"model folder (default {DEMO_MODEL_DIR})")
    p.add_argument("--json", type=Path, help="write the metrics as JSON to this file")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--samples", type=int, default=5, help="answers sampled per VQA question for the "
                   "reliability AUROC (default 5; 0 skips it)")
    p.add_argument("--labelled-out", type=Path, help="write the sampled VQA answers, labelled right/wrong, "
                   "as a JSONL file that 'xmedgpt calibrate --data' reads (calibrate on a split you do not report)")
    p.add_argument("--tasks", default=",".join(Options.tasks), help="comma-separated subset of "
                   "grounding,vqa,report,reasoning")
    p.add_argument("--max-new-tokens", type=int, help="cap on every answer's length in tokens")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--quantization", default="auto", help="auto, nf4, int8, bf16 or none")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = set(tasks) - set(Options.tasks)
    if unknown:
        raise XMedError(f"Unknown task(s) {', '.join(sorted(unknown))}; choose from {', '.join(Options.tasks)}.")
    result = run_eval(args.model, args.data, Options(limit=args.limit, samples=args.samples, tasks=tasks,
                                                          max_new_tokens=args.max_new_tokens,
                                                          labelled_out=args.labelled_out),
                      args.device, args.quantization)
    sys.stdout.write(format_table(result) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # for tests: the command alone
    parser = argparse.ArgumentParser(prog="xmedgpt")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *(argv or [])])
    return _run(args)
