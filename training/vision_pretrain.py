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
#: What is trained on the tower's output: "cell", a per-patch head (centre offset and size in the patch); "token",
#: that plus a head shaped as the demo model's projector on the image tokens the language model reads, which says
#: per token whether a lesion's centre lies in it and its box in image coordinates.
READOUTS = ("cell", "token")


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


def token_targets(lesions: Sequence[Sequence[tuple[tuple[float, float, float, float], float]]], side: int):
    """Per image and image token (``side`` x ``side`` of them, row-major as the language model reads them):
    objectness (1 where a lesion's centre lies in the token) and there the box (x0, y0, x1, y1 in 0..1 of the
    image); of two centres in one token, the larger lesion's."""
    import torch

    obj = torch.zeros(len(lesions), side * side)
    reg = torch.zeros(len(lesions), side * side, 4)
    area = torch.zeros(len(lesions), side * side)
    for i, items in enumerate(lesions):
        for (x0, y0, x1, y1), _ in items:
            gx, gy = min(int((x0 + x1) / 2 * side), side - 1), min(int((y0 + y1) / 2 * side), side - 1)
            k = gy * side + gx
            if (x1 - x0) * (y1 - y0) > area[i, k]:
                obj[i, k], area[i, k] = 1.0, (x1 - x0) * (y1 - y0)
                reg[i, k] = torch.tensor([x0, y0, x1, y1])
    return obj, reg


def decode_tokens(out, threshold: float = 0.5) -> list[list[tuple[float, float, float, float]]]:
    """Boxes (0..1) from the token head's output (N x tokens x 5): every token whose objectness clears it."""
    import torch

    boxes = []
    for o in out:
        found = []
        for k in torch.where(torch.sigmoid(o[:, 0]) >= threshold)[0]:
            x0, y0, x1, y1 = o[k, 1:].tolist()
            found.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        boxes.append(found)
    return boxes


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


class TokenHead:
    """A head on the image tokens shaped as InternVL's projector up to its hidden layer -- layer norm over the
    pixel-shuffled token, linear to ``width`` (the language model's width), GELU -- then a linear readout (token
    objectness, box in image coordinates). Its norm and first layer become the demo model's projector
    (:func:`training.demo_model.transplant_vision`), so what the language model first reads is, along straight
    lines, whether a lesion lies in the token and where in the image it is."""

    def __init__(self, hidden: int, ratio: float, width: int) -> None:
        import torch

        self.ratio = ratio
        channels = hidden * int(round(1 / ratio)) ** 2
        # named as the projector's parts, so the state dict's keys are the projector's
        self.parts = torch.nn.ModuleDict({"layer_norm": torch.nn.LayerNorm(channels),
                                          "linear_1": torch.nn.Linear(channels, width),
                                          "readout": torch.nn.Linear(width, 5)})

    def __call__(self, patches, grid: int):
        import torch.nn.functional as F
        from transformers.models.internvl.modeling_internvl import InternVLModel

        x = InternVLModel.pixel_shuffle(None, patches.reshape(patches.shape[0], grid, grid, -1), self.ratio)
        x = x.reshape(patches.shape[0], -1, x.shape[-1])
        p = self.parts
        return p["readout"](F.gelu(p["linear_1"](p["layer_norm"](x))))

    def parameters(self):
        return self.parts.parameters()

    def state_dict(self) -> dict:
        return self.parts.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.parts.load_state_dict(state)


class DenseDetector:
    """An ``InternVLVisionModel`` and a per-patch head (objectness, offset x/y, log width/height); with
    ``token_head`` = (pixel-shuffle ratio, language model width), also a :class:`TokenHead` on the image tokens."""

    def __init__(self, vision_config: dict, mean: Sequence[float], std: Sequence[float], seed: int = 0,
                 token_head: tuple[float, int] | None = None, position: bool = False) -> None:
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
        self.tokens = TokenHead(hidden, *token_head) if token_head else None
        # ``position``: every patch also says where it is -- trained for offsets alone, the tower forgets its
        # position embeddings, and no head can say where in the image a lesion is (docs/demo-512-run-18.md)
        self.where = torch.nn.Linear(hidden, 2) if position else None
        rows = (torch.arange(self.grid, dtype=torch.float32) + 0.5) / self.grid
        self.position = torch.stack(torch.meshgrid(rows, rows, indexing="ij")[::-1], dim=-1).view(-1, 2)  # x, y

    def parameters(self):
        return [*self.tower.parameters(), *self.head.parameters(), *(self.tokens.parameters() if self.tokens else []),
                *(self.where.parameters() if self.where is not None else [])]

    def train(self, on: bool = True) -> None:
        self.tower.train(on)
        self.head.train(on)

    def forward(self, images):
        """The per-patch head's output (N x G x G x 5), the token head's (N x tokens x 5) and each patch's own
        position as it reads it (N x G² x 2, x and y in 0..1); None for a head the detector does not have."""
        x = images.float()[:, None].expand(-1, 3, -1, -1) / 255.0
        x = (x - self.mean) / self.std
        h = self.tower(pixel_values=x).last_hidden_state[:, 1:]  # the class token is not a patch
        cells = self.head(h).view(images.shape[0], self.grid, self.grid, 5)
        return (cells, self.tokens(h, self.grid) if self.tokens else None,
                self.where(h) if self.where is not None else None)

    def __call__(self, images):
        return self.forward(images)[0]


def loss(out, obj, reg, scale: float = 1.0):
    """Objectness (binary cross-entropy, positives weighted up) plus the box numbers' smooth L1 where a lesion is,
    the numbers multiplied by ``scale`` first."""
    import torch
    import torch.nn.functional as F

    lo = F.binary_cross_entropy_with_logits(out[..., 0], obj, pos_weight=torch.tensor(POSITIVE_WEIGHT))
    m = obj > 0
    return lo + (F.smooth_l1_loss(out[..., 1:][m] * scale, reg[m] * scale) if bool(m.any()) else out.sum() * 0.0)


def position_loss(where, position, scale: float):
    """Smooth L1 between each patch's stated position and its place on the grid, in patches."""
    import torch.nn.functional as F

    return F.smooth_l1_loss(where * scale, position.expand_as(where) * scale)


def evaluate(det: DenseDetector, corpus: Corpus, batch: int = 64, threshold: float = 0.5) -> dict:
    """The held-out corpus scored by the per-patch head and, where there is one, by the token head (``tokens``)."""
    import torch

    det.train(False)
    cells, tokens = [], []
    with torch.inference_mode():
        for s in range(0, len(corpus.lesions), batch):
            c, t, _ = det.forward(corpus.images[s:s + batch])
            cells.extend(decode(c, threshold))
            if t is not None:
                tokens.extend(decode_tokens(t, threshold))
    det.train(True)
    return {**score(cells, corpus.lesions), **({"tokens": score(tokens, corpus.lesions)} if det.tokens else {})}


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
             eval_every: int = 1000, readout: str = "cell", ratio: float = 0.25,
             init_tower: Path | None = None, position: bool = False) -> dict:
    """Train (or continue) the dense detector; writes ``out/vision_tower`` and ``out/result.json``.

    ``readout`` "token" also trains a :class:`TokenHead` on the image tokens (``ratio``: the pixel shuffle's
    downsample ratio) and saves it as ``out/token_head.pt``. ``init_tower``: start the tower from a saved
    ``InternVLVisionModel`` (fresh heads). ``position``: a linear head on each patch also says the patch's own
    place on the grid (keeps the position embeddings' signal in the tower's output)."""
    import torch

    if minutes is None and steps is None:
        raise ValueError("give --minutes or --steps")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mean, std = processor_stats(like)
    if readout not in READOUTS:
        raise ValueError(f"readout {readout!r}: one of {', '.join(READOUTS)}")
    width = json.loads((Path(like) / "config.json").read_text())["text_config"]["hidden_size"]
    det = DenseDetector(vision_config_like(like, image_size, patch, layers), mean, std, seed,
                        token_head=(ratio, width) if readout == "token" else None, position=position)
    if init_tower is not None:
        from safetensors.torch import load_file

        det.tower.load_state_dict(load_file(Path(init_tower) / "model.safetensors"), strict=True)
    opt = torch.optim.AdamW(det.parameters(), lr=lr, weight_decay=0.01)
    step, trained_s = 0, 0.0
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state.get("readout", "cell") != readout or ("where" in state) != position:
            raise ValueError(f"{ckpt} was trained with readout {state.get('readout', 'cell')!r}"
                             f"{' and position' if 'where' in state else ''}, not {readout!r}"
                             f"{' and position' if position else ''}")
        det.tower.load_state_dict(state["tower"])
        det.head.load_state_dict(state["head"])
        if det.tokens:
            det.tokens.load_state_dict(state["tokens"])
        if det.where is not None:
            det.where.load_state_dict(state["where"])
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
    side = round(det.grid * ratio)
    tobj, treg = token_targets(train.lesions, side) if det.tokens else (None, None)
    log.info("dense pretraining: %d images, grid %d x %d, %d lesion cells; step %d", len(train.lesions), det.grid,
             det.grid, int(obj.sum()), step)
    metrics = (out / "metrics.jsonl").open("a", encoding="utf-8")

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"tower": det.tower.state_dict(), "head": det.head.state_dict(), "optimizer": opt.state_dict(),
                    "step": step, "trained_s": trained_s, "torch_rng": torch.get_rng_state(), "readout": readout,
                    **({"tokens": det.tokens.state_dict()} if det.tokens else {}),
                    **({"where": det.where.state_dict()} if det.where is not None else {}),
                    "py_rng": random.getstate()}, tmp)
        tmp.replace(ckpt)

    start = time.monotonic()
    session_start = trained_s
    while True:
        trained_s = session_start + time.monotonic() - start
        if (steps is not None and step >= steps) or (minutes is not None and trained_s >= minutes * 60):
            break
        idx = torch.tensor([random.randrange(len(train.lesions)) for _ in range(batch)])
        cells, tokens, where = det.forward(train.images[idx])
        value = loss(cells, obj[idx], reg[idx])
        if tokens is not None:  # box numbers and positions in 0..1 of the image, counted in patches as offsets are
            value = value + loss(tokens, tobj[idx], treg[idx], scale=float(det.grid))
        if where is not None:
            value = value + position_loss(where, det.position, float(det.grid))
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
    if det.tokens:
        torch.save(det.tokens.state_dict(), out / "token_head.pt")
    result = {"corpus": str(corpus_dir), "images": len(train.lesions), "image_size": image_size, "patch": patch,
              "grid": det.grid, "steps": step, "batch": batch, "lr": lr, "seed": seed, "readout": readout,
              **({"ratio": ratio} if det.tokens else {}), **({"position": True} if position else {}),
              **({"init_tower": str(init_tower)} if init_tower is not None else {}),
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
    p.add_argument("--readout", choices=READOUTS, default="cell",
                   help="token: also train a projector-shaped head on the image tokens (box in image coordinates)")
    p.add_argument("--ratio", type=float, default=0.25, help="the pixel shuffle's downsample ratio (--readout token)")
    p.add_argument("--init-tower", type=Path, help="start from this saved vision tower (fresh heads)")
    p.add_argument("--position", action="store_true", help="also train each patch to say its place on the grid")
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
                      minutes=args.minutes, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
                      readout=args.readout, ratio=args.ratio, init_tower=args.init_tower, position=args.position)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
