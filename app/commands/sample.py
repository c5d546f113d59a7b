"""``xmedgpt sample``: write the synthetic CT study with its lesion ground truth."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app.synthetic.sample import GROUND_TRUTH_NAME, write_ct_study

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sample",
        help="write a synthetic CT study (chest and upper abdomen, with lesions) and its ground truth",
        description="Write a synthetic but DICOM-correct CT series of a chest/abdomen phantom with a "
        f"handful of lesions, plus {GROUND_TRUTH_NAME} with each lesion's box on every slice.",
    )
    p.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    p.add_argument("--slices", type=int, default=300, help="number of axial slices (default 300)")
    p.add_argument("--size", type=int, default=512, help="rows and columns of each slice (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed: same seed, same study (default 0)")
    p.add_argument("--rle", action="store_true", help="store RLE Lossless compressed pixel data")
    p.add_argument("--ground-truth", type=Path, metavar="JSON",
                   help=f"where to write the lesion ground truth (default: OUT/{GROUND_TRUTH_NAME})")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = write_ct_study(args.out, n_slices=args.slices, size=args.size, seed=args.seed, compress=args.rle,
                         ground_truth=args.ground_truth)
    gt = args.ground_truth or out / GROUND_TRUTH_NAME
    sys.stdout.write(f"wrote {args.slices} CT slices of {args.size}×{args.size} to {out}; lesion ground truth in {gt}\n")
    return 0
