"""Dense pretraining of the demo model's vision tower: every patch learns whether a lesion's centre lies in it.

The demo model's boxes are limited by what its image tokens carry, not by the language model reading them out
(docs/demo-512-run-14.md: a box head on run 9b's vision tower boxes no better than the whole model). Trained
through the language model alone, the tower gets one signal per answer -- the box's digits -- and learns slowly.
Here it gets one per patch: a small head on each patch's output predicts whether a lesion's centre falls in
that patch (objectness) and, where one does, the centre's offset inside the patch and the box's width and
height (log, in patches) -- a one-stage detector on the patch grid, trained on the phantom corpus's own boxes
(``annotations.jsonl`` of :mod:`training.study_corpus`). The head is then dropped: the tower, saved as a
transformers ``InternVLVisionModel``, becomes the vision tower of a demo model
(:func:`training.demo_model.transplant_vision`), which reads it through the same InternVL code path as before.

    python -m training.vision_pretrain --corpus DIR --eval DIR --out DIR --like resources/models/demo \\
        --image-size 224 --patch 14 --minutes 20

The images are what the model's processor gives (resized to the tile, bicubic; its mean and standard deviation).
Resumable: ``--out`` keeps ``checkpoint.pt`` (tower, head, optimizer, step, random state); run the same command
again to continue. The held-out corpus is scored as ``xmedgpt eval`` scores grounding -- per lesion, the best IoU
of the boxes drawn (objectness ≥ 0.5), by size bucket -- plus the share of lesion-free images with no box.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.evaluation.sizes import BUCKET_NAMES, size_bucket
from inference.types import Box

log = logging.getLogger(__name__)

#: Lesion-centre cells are rare (about one in 300 on the demo grid): their objectness loss is weighted up.
POSITIVE_WEIGHT = 10.0


@dataclass
class Corpus:
    """Images resized to the tile (uint8 greyscale, N x S x S) and each image's lesions: (box in 0..1, size mm)."""

    images: object  # torch.Tensor (uint8)
    lesions: list[list[tuple[tuple[float, float, float, float], float]]] = field(default_factory=list)


def load_corpus(folder: Path, size: int, limit: int | None = None) -> Corpus:
    """The phantom corpus in ``folder`` (its ``annotations.jsonl``) at ``size`` x ``size`` px, as the processor
    resizes a one-tile image (bicubic, aspect not kept). Cached beside the annotations per size and limit (read
    again when the annotations file changed)."""
    import torch
    from PIL import Image

    folder = Path(folder)
    cache = folder / f"dense-{size}-{limit or 'all'}.pt"
    stat = (folder / "annotations.jsonl").stat()
    source = [stat.st_size, stat.st_mtime_ns]  # a corpus written again is read again
    if cache.is_file():
        d = torch.load(cache)
        if d.get("source") == source:
            return Corpus(d["images"], d["lesions"])
    images, lesions = [], []
    with (folder / "annotations.jsonl").open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if limit is not None and i >= limit:
                break
            a = json.loads(line)
            w, h = float(a["width"]), float(a["height"])
            with Image.open(folder / a["image"]) as im:
                im = im.convert("L").resize((size, size), Image.BICUBIC)
                images.append(torch.from_numpy(np.asarray(im, np.uint8).copy()))
            lesions.append([((b[0] / w, b[1] / h, b[2] / w, b[3] / h), float(les["size_mm"]))
                            for les in a.get("lesions", []) for b in [les["box"]]])
    out = Corpus(torch.stack(images), lesions)
    torch.save({"images": out.images, "lesions": out.lesions, "source": source}, cache)
    return out


def targets(lesions: Sequence[Sequence[tuple[tuple[float, float, float, float], float]]], grid: int):
    """Per image: objectness (grid x grid, 1 where a lesion's centre lies) and, there, the centre's offset in the
    cell and log width/height in cells (grid x grid x 4)."""
    import torch

    obj = torch.zeros(len(lesions), grid, grid)
    reg = torch.zeros(len(lesions), grid, grid, 4)
    for i, items in enumerate(lesions):
        for (x0, y0, x1, y1), _ in items:
            cx, cy = (x0 + x1) / 2 * grid, (y0 + y1) / 2 * grid
            gx, gy = min(int(cx), grid - 1), min(int(cy), grid - 1)
            obj[i, gy, gx] = 1.0
            reg[i, gy, gx] = torch.tensor([cx - gx, cy - gy, math.log(max(x1 - x0, 1e-3) * grid),
                                           math.log(max(y1 - y0, 1e-3) * grid)])
    return obj, reg


def decode(out, threshold: float = 0.5) -> list[list[tuple[float, float, float, float]]]:
    """Boxes (0..1) from the head's output (N x G x G x 5): every cell whose objectness clears ``threshold``."""
    import torch

    grid = out.shape[1]
    boxes = []
    for o in out:
        p = torch.sigmoid(o[..., 0])
        found = []
        for gy, gx in zip(*torch.where(p >= threshold)):
            dx, dy, lw, lh = o[gy, gx, 1:].tolist()
            cx, cy = (int(gx) + dx) / grid, (int(gy) + dy) / grid
            w, h = math.exp(min(lw, 5.0)) / grid, math.exp(min(lh, 5.0)) / grid
            found.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        boxes.append(found)
    return boxes


def score(predicted: Sequence[Sequence[Sequence[float]]], lesions) -> dict:
    """Per size bucket: lesions, mean best IoU, share with IoU ≥ 0.5; lesion-free images left with no box, and the
    boxes drawn on them."""
    per: dict[str, list[float]] = {name: [] for name in BUCKET_NAMES}
    empty = called_empty = false_boxes = 0
    for boxes, truth in zip(predicted, lesions):
        if not truth:
            empty += 1
            called_empty += not boxes
            false_boxes += len(boxes)
            continue
        for box, mm in truth:
            per[size_bucket(mm)].append(max((Box(*box).iou(Box(*p)) for p in boxes), default=0.0))
    every = [v for vs in per.values() for v in vs]
    out = {name: {"lesions": len(vs), "mean_iou": round(float(np.mean(vs)), 4) if vs else None,
                  "acc_at_0_5": round(float(np.mean(np.array(vs) >= 0.5)), 4) if vs else None}
           for name, vs in per.items()}
    out["all"] = {"lesions": len(every), "mean_iou": round(float(np.mean(every)), 4) if every else None,
                  "acc_at_0_5": round(float(np.mean(np.array(every) >= 0.5)), 4) if every else None}
    out["empty"] = {"images": empty, "called_empty": round(called_empty / empty, 4) if empty else None,
                    "false_boxes_per_image": round(false_boxes / empty, 4) if empty else None}
    return out


class DenseDetector:
    """An ``InternVLVisionModel`` and a per-patch head (objectness, offset x/y, log width/height)."""

    def __init__(self, vision_config: dict, mean: Sequence[float], std: Sequence[float], seed: int = 0) -> None:
        import torch
        from transformers import InternVLVisionConfig, InternVLVisionModel

        torch.manual_seed(seed)
        self.config = InternVLVisionConfig(**vision_config)
        self.tower = InternVLVisionModel(self.config)
        hidden = self.config.hidden_size
        self.head = torch.nn.Sequential(torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 5))
        self.grid = self.config.image_size[0] // self.config.patch_size[0]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def parameters(self):
        return list(self.tower.parameters()) + list(self.head.parameters())

    def train(self, on: bool = True) -> None:
        self.tower.train(on)
        self.head.train(on)

    def __call__(self, images):
        x = images.float()[:, None].expand(-1, 3, -1, -1) / 255.0
        x = (x - self.mean) / self.std
        h = self.tower(pixel_values=x).last_hidden_state[:, 1:]  # the class token is not a patch
        return self.head(h).view(images.shape[0], self.grid, self.grid, 5)


def loss(out, obj, reg):
    import torch
    import torch.nn.functional as F

    lo = F.binary_cross_entropy_with_logits(out[..., 0], obj, pos_weight=torch.tensor(POSITIVE_WEIGHT))
    m = obj > 0
    return lo + (F.smooth_l1_loss(out[..., 1:][m], reg[m]) if bool(m.any()) else out.sum() * 0.0)


def evaluate(det: DenseDetector, corpus: Corpus, batch: int = 64, threshold: float = 0.5) -> dict:
    import torch

    det.train(False)
    predicted = []
    with torch.inference_mode():
        for s in range(0, len(corpus.lesions), batch):
            predicted.extend(decode(det(corpus.images[s:s + batch]), threshold))
    det.train(True)
    return score(predicted, corpus.lesions)


def vision_config_like(model: Path, image_size: int, patch: int, layers: int | None = None) -> dict:
    """The vision config of the model in ``model`` (its widths, heads, norm), with this tile and patch size."""
    cfg = json.loads((Path(model) / "config.json").read_text())["vision_config"]
    keep = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "dtype", "model_type")}
    keep.update(image_size=[image_size, image_size], patch_size=[patch, patch])
    if layers:
        keep["num_hidden_layers"] = layers
    return keep


def processor_stats(model: Path) -> tuple[list[float], list[float]]:
    pre = json.loads((Path(model) / "preprocessor_config.json").read_text())
    return list(pre["image_mean"]), list(pre["image_std"])


def pretrain(corpus_dir: Path, out: Path, like: Path, *, image_size: int, patch: int, layers: int | None = None,
             eval_dir: Path | None = None, eval_limit: int = 3000, minutes: float | None = None,
             steps: int | None = None, batch: int = 32, lr: float = 1e-3, seed: int = 0, save_every: int = 500,
             eval_every: int = 1000) -> dict:
    """Train (or continue) the dense detector; writes ``out/vision_tower`` and ``out/result.json``."""
    import torch

    if minutes is None and steps is None:
        raise ValueError("give --minutes or --steps")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mean, std = processor_stats(like)
    det = DenseDetector(vision_config_like(like, image_size, patch, layers), mean, std, seed)
    opt = torch.optim.AdamW(det.parameters(), lr=lr, weight_decay=0.01)
    step, trained_s = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        det.tower.load_state_dict(state["tower"])
        det.head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
        step, trained_s = state["step"], state["trained_s"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["py_rng"])
        log.info("resumed at step %d (%.0f s trained)", step, trained_s)
    else:
        random.seed(seed)
    train = load_corpus(corpus_dir, image_size)
    held = load_corpus(eval_dir, image_size, eval_limit) if eval_dir else None
    obj, reg = targets(train.lesions, det.grid)
    log.info("dense pretraining: %d images, grid %d x %d, %d lesion cells; step %d", len(train.lesions), det.grid,
             det.grid, int(obj.sum()), step)
    metrics = (out / "metrics.jsonl").open("a", encoding="utf-8")

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"tower": det.tower.state_dict(), "head": det.head.state_dict(), "optimizer": opt.state_dict(),
                    "step": step, "trained_s": trained_s, "torch_rng": torch.get_rng_state(),
                    "py_rng": random.getstate()}, tmp)
        tmp.replace(ckpt)

    start = time.monotonic()
    session_start = trained_s
    while True:
        trained_s = session_start + time.monotonic() - start
        if (steps is not None and step >= steps) or (minutes is not None and trained_s >= minutes * 60):
            break
        idx = torch.tensor([random.randrange(len(train.lesions)) for _ in range(batch)])
        value = loss(det(train.images[idx]), obj[idx], reg[idx])
        opt.zero_grad()
        value.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            metrics.write(json.dumps({"step": step, "loss": round(value.item(), 5), "trained_s": round(trained_s, 1)})
                          + "\n")
            metrics.flush()
        if step % save_every == 0:
            save()
        if held is not None and eval_every and step % eval_every == 0:
            metrics.write(json.dumps({"step": step, "eval": evaluate(det, held)}) + "\n")
            metrics.flush()
    save()
    metrics.close()
    det.tower.save_pretrained(out / "vision_tower", safe_serialization=True)
    torch.save(det.head.state_dict(), out / "dense_head.pt")
    result = {"corpus": str(corpus_dir), "images": len(train.lesions), "image_size": image_size, "patch": patch,
              "grid": det.grid, "steps": step, "batch": batch, "lr": lr, "seed": seed,
              "trained_min": round(trained_s / 60, 1),
              "held_out": ({"corpus": str(eval_dir), "images": len(held.lesions), **evaluate(det, held)}
                           if held is not None else None)}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.vision_pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True, help="phantom corpus folder (annotations.jsonl, images/)")
    p.add_argument("--eval", dest="eval_dir", type=Path, help="held-out corpus folder, scored at the end")
    p.add_argument("--eval-limit", type=int, default=3000, help="images of the held-out corpus scored")
    p.add_argument("--out", type=Path, required=True, help="output folder (checkpoint, vision_tower/, result.json)")
    p.add_argument("--like", type=Path, required=True, help="model whose vision widths and processor to use")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--layers", type=int, default=0, help="vision layers (default: the model's)")
    p.add_argument("--minutes", type=float, help="train until this much training time in all (resumes count)")
    p.add_argument("--steps", type=int, help="train until this step")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.image_size % args.patch:
        print(f"--image-size {args.image_size} is not a multiple of --patch {args.patch}.", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = pretrain(args.corpus, args.out, args.like, image_size=args.image_size, patch=args.patch,
                      layers=args.layers or None, eval_dir=args.eval_dir, eval_limit=args.eval_limit,
                      minutes=args.minutes, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
