"""``xmedgpt convert-checkpoint SRC DST``: original InternVL2 / XMedGPT checkpoint → native model folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert-checkpoint",
        help="convert an original InternVL2 (internvl_chat) checkpoint to the native format",
        description="Convert SRC, an original InternVL2 / XMedGPT checkpoint (InternViT with an InternLM2 or "
        "Qwen2 language model), into DST, a native transformers InternVL folder the workstation loads. "
        "Offline; weights are streamed so memory use stays well below the model size.",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="original checkpoint folder")
    p.add_argument("dst", type=Path, metavar="DST", help="new (or empty) output folder")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it is not empty")
    p.add_argument("--shard-gb", type=float, default=4.0, help="largest output weight file (default 4 GB)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inference.convert import convert_checkpoint

    def progress(message: str, fraction: float) -> None:
        print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)

    report = convert_checkpoint(args.src, args.dst, progress=progress,
                                max_shard_bytes=int(args.shard_gb * 1024**3), overwrite=args.overwrite)
    print(f"Converted {report.src} ({report.backbone} backbone): {report.tensors} tensors, "
          f"{report.parameters / 1e9:.2f} B parameters, {report.shards} file(s) in {report.dst}")
    print(f"Register it with: xmedgpt models add {report.dst}")
    return 0
