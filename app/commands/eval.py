"""``xmedgpt eval --data DIR [--model DIR] --json OUT``: measure a model on a labelled dataset.

A thin wrapper: parse the flags, run :func:`inference.evaluation.harness.run_eval` (the
dataset format and the metrics are documented there), print the table, write the JSON.

``--data`` may also be a DICOM study written by ``xmedgpt sample`` (its ``ground_truth.json``
inside or beside the folder): every slice (or ``--slices 3,7,20-25``) is rendered as the viewer
renders it in each ``--window`` (``soft_tissue,lung``… or ``all``; default: the header's window) by
:mod:`app.synthetic.study_dataset` and scored by
:func:`inference.evaluation.harness.run_eval_examples`, per window and lesion size.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from app.core.errors import XMedError
from inference.evaluation.harness import (
    Options,
    format_table,
    run_eval,
    run_eval_examples,
)
from inference.resources import DEMO_MODEL_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure a model on a labelled dataset (localization, VQA, findings, reliability, timing)",
        description="Run a model on a labelled dataset in the documented JSONL format (training/README.md) and "
        "print localization (mean IoU, accuracy@0.5 per lesion size), VQA accuracy, report finding "
        "precision/recall/F1, reliability AUROC per estimator, Kendall's tau-b and timing; --json writes them.",
    )
    p.add_argument("--data", type=Path, required=True, help="folder with grounding/vqa/report/reasoning .jsonl, "
                   "or a DICOM study written by 'xmedgpt sample' (with its ground_truth.json)")
    p.add_argument("--model", type=Path, default=DEMO_MODEL_DIR, help=f"model folder (default {DEMO_MODEL_DIR})")
    p.add_argument("--json", type=Path, help="write the metrics as JSON to this file")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--samples", type=int, default=5, help="answers sampled per VQA question for the "
                   "reliability AUROC (default 5; 0 skips it)")
    p.add_argument("--labelled-out", type=Path, help="write the sampled VQA answers, labelled right/wrong, "
                   "as a JSONL file that 'xmedgpt calibrate --data' reads (calibrate on a split you do not report)")
    p.add_argument("--tasks", help="comma-separated subset of grounding,vqa,report,reasoning (default: all four; "
                   "a study: grounding, or grounding,reasoning)")
    p.add_argument("--max-new-tokens", type=int, help="cap on every answer's length in tokens")
    p.add_argument("--window", help="study only: display window(s) to render each slice in, comma-separated "
                   "(soft_tissue, lung, liver, bone, default) or 'all' (default: the header's window)")
    p.add_argument("--slices", help="study only: slices to evaluate, numbered from 1 as in the viewer, e.g. "
                   "3,7,20-25 (default: every slice)")
    p.add_argument("--zoom", type=int, default=0, metavar="PX",
                   help="grounding by the zoom pass: ask every overlapping PX-pixel crop at the image's own scale and "
                   "merge the boxes (inference.zoom; default 0: the whole image)")
    p.add_argument("--zoom-overlap", type=int, default=80, metavar="PX",
                   help="pixels neighbouring zoom crops share, at least the largest lesion (default 80)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--quantization", default="auto", help="auto, nf4, int8, bf16 or none")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from app.synthetic.study_dataset import is_study_folder

    study = is_study_folder(args.data)
    text = args.tasks or ("grounding" if study else ",".join(Options.tasks))
    tasks = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = set(tasks) - set(Options.tasks)
    if unknown:
        raise XMedError(f"Unknown task(s) {', '.join(sorted(unknown))}; choose from {', '.join(Options.tasks)}.")
    if Path(args.model).is_dir():
        from app.models.registry import require_native_model_folder

        require_native_model_folder(Path(args.model))  # the same folder check as models add, analyze and serve
    if args.zoom and not 0 <= args.zoom_overlap < args.zoom:
        raise XMedError(f"--zoom-overlap must be 0..{args.zoom - 1} px (under the crop's {args.zoom}).")
    if study:
        result = _run_study(args, tasks)
    elif args.window or args.slices:
        raise XMedError(f"--window and --slices apply to a DICOM study with its ground_truth.json; {args.data} "
                        "is not one.")
    else:
        result = run_eval(args.model, args.data, Options(limit=args.limit, samples=args.samples, tasks=tasks,
                                                         max_new_tokens=args.max_new_tokens,
                                                         labelled_out=args.labelled_out, zoom=args.zoom,
                                                         zoom_overlap=args.zoom_overlap),
                          args.device, args.quantization)
    sys.stdout.write(format_table(result) + "\n")
    if "study" in result:
        hidden = result["study"]["hidden_lesions"]
        sys.stdout.write(f"lesion sections on these slices: {result['study']['lesion_sections']}; not shown in the "
                         "window and not scored (section < 4 mm or < 6 grey levels of contrast): "
                         + ", ".join(f"{w} {n}" for w, n in hidden.items()) + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _run_study(args: argparse.Namespace, tasks: tuple[str, ...]) -> dict:
    """Slices × windows of a sample study, localization per window and lesion size."""
    from app.synthetic.study_dataset import study_examples

    study = study_examples(args.data, [args.window] if args.window else None, args.slices)
    options = Options(limit=args.limit, samples=0, tasks=tasks, max_new_tokens=args.max_new_tokens, zoom=args.zoom,
                      zoom_overlap=args.zoom_overlap)
    result = run_eval_examples(args.model, study.examples, options, args.device, args.quantization,
                               data=f"{args.data} (study: {len(study.slices)} slices x {len(study.windows)} windows)",
                               group_by="window")
    result["study"] = {"slices": [k + 1 for k in study.slices], "windows": study.windows,
                       "hidden_lesions": study.hidden, "lesion_sections": study.lesions_on_slices}
    return result


def main(argv: Sequence[str] | None = None) -> int:  # for tests: the command alone
    parser = argparse.ArgumentParser(prog="xmedgpt")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *(argv or [])])
    return _run(args)
