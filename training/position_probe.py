"""Does a model find a lesion wherever it sits in the image? One slice of a sample study, moved up and down.

``xmedgpt eval`` says how often a model boxes each study's lesions; when it misses one study's lesion and finds
the same lesion in another study (run 9b: the sample plan's 32 mm mass on seed 7331, not on seed 1000), this
asks why. The lesion's slice is rendered as the viewer shows it (:func:`app.synthetic.study_dataset.study_examples`)
and rolled ``dy`` pixels down (negative: up; the body moves with it, nothing else changes), the grounding question
is asked, and the best IoU of the answer's boxes with the lesion's box moved the same way is printed per shift:

    python -m training.position_probe --model DIR --study /tmp/studies/s1000 --lesion L3 --window lung,soft_tissue

A model that learnt what a lesion looks like boxes it at every shift; one that learnt where lesions sit in its
training slices boxes it only inside a band of rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from app.synthetic.sample import load_ground_truth
from app.synthetic.study_dataset import study_examples
from inference.errors import XMedError
from inference.parsing import parse_answer
from inference.prompts import grounding_question
from inference.types import Box, ChatRequest, Engine

DEFAULT_SHIFTS = tuple(range(-48, 49, 12))


@dataclass
class ProbeRow:
    window: str
    shift_px: int
    iou: float  # best IoU of the answer's boxes with the moved lesion box (0: not boxed)
    boxes: int  # how many boxes the answer drew


def key_slice(study: Path, lesion_id: str) -> int:
    """The 0-based slice where the lesion's box is largest (from the study's ground truth)."""
    gt = load_ground_truth(study)
    best, where = -1.0, None
    for sl in gt.get("slices", []):
        for b in sl.get("boxes", []):
            if b.get("lesion_id") == lesion_id:
                area = (b["x1"] - b["x0"]) * (b["y1"] - b["y0"])
                if area > best:
                    best, where = area, int(sl["index"])
    if where is None:
        known = ", ".join(les["id"] for les in gt.get("lesions", []))
        raise XMedError(f"Lesion {lesion_id} is on no slice of {study} (its lesions: {known}).")
    return where


def probe(engine: Engine, study: Path, lesion_id: str, windows: Sequence[str],
          shifts: Sequence[int] = DEFAULT_SHIFTS) -> list[ProbeRow]:
    """The lesion's key slice in each window, rolled by each shift, asked the grounding question."""
    k = key_slice(study, lesion_id)
    rows: list[ProbeRow] = []
    for ex in study_examples(study, list(windows), str(k + 1)).examples:
        lesion = next((les for les in ex.lesions if les["id"] == lesion_id), None)
        if lesion is None:  # not shown in this window (the study's visibility rule)
            continue
        h = ex.image.shape[0]
        for dy in shifts:
            x0, y0, x1, y1 = lesion["box_1000"]
            moved = Box(x0, y0 + dy / h * 1000, x1, y1 + dy / h * 1000)
            text = engine.generate(ChatRequest(prompt=grounding_question(), image=np.roll(ex.image, dy, axis=0),
                                               max_new_tokens=96)).text
            boxes = [b for p in parse_answer(text).phrases for b in p.boxes]
            rows.append(ProbeRow(ex.group, int(dy), max((b.iou(moved) for b in boxes), default=0.0), len(boxes)))
    return rows


def format_rows(rows: Sequence[ProbeRow]) -> str:
    shifts = sorted({r.shift_px for r in rows})
    lines = ["window        " + " ".join(f"{s:+5d}" for s in shifts) + "   (px down; IoU with the moved lesion)"]
    for window in dict.fromkeys(r.window for r in rows):
        by = {r.shift_px: r for r in rows if r.window == window}
        lines.append(f"{window:<13} " + " ".join(f"{by[s].iou:5.2f}" if s in by else "    -" for s in shifts))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.position_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--study", required=True, type=Path, help="a study written by xmedgpt sample")
    parser.add_argument("--lesion", required=True, help="lesion id in its ground_truth.json, e.g. L3")
    parser.add_argument("--window", default="lung,soft_tissue", help="window presets, comma-separated")
    parser.add_argument("--shifts", default=",".join(str(s) for s in DEFAULT_SHIFTS),
                        help="pixels down (negative: up), comma-separated")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    try:
        from inference.engine.local import LocalEngine

        shifts = [int(s) for s in args.shifts.split(",") if s.strip()]
        key_slice(args.study, args.lesion)  # a lesion the study lacks is said before the model loads
        engine = LocalEngine.from_folder(args.model, device="cpu", quantization="none")
        rows = probe(engine, args.study, args.lesion, [w.strip() for w in args.window.split(",") if w.strip()], shifts)
    except (XMedError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
