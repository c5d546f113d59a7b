"""Assistant engine benchmark: time to first token, decode speed, peak memory, in this run.

Each configuration runs in its own fresh process (so peak memory is its own):

- CPU: the demo model (resources/models/demo) if present, else a small random
  InternVL built offline by ``training.model_factory`` (~40 M parameters):
  full precision (the baseline) against NF4 4-bit.
- CUDA (only when a GPU is present): an 8B-class InternVL (InternViT-300M +
  a Qwen2-7B-shaped language model) built from config with random weights,
  bf16 (the baseline) against NF4 4-bit with double quantization.

Rows: load time, time to first streamed piece (prefill with a 512×512 image),
greedy decode tokens/s, n-sample throughput (``sample`` with a shared prefix),
and peak memory (process RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU).
Random weights generate random text; speed does not depend on what is said.

Usage: python benchmarks/assistant.py [--tokens 32] [--samples 4] [--model DIR] [--skip-gpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "resources" / "models" / "demo"


def _small_spec():
    from training.model_factory import TinySpec

    return TinySpec(vocab_size=1024, text_hidden=512, text_layers=8, text_heads=8, text_kv_heads=4,
                    text_intermediate=1408, vision_hidden=256, vision_layers=6, vision_heads=4,
                    vision_intermediate=1024, image_size=224, patch_size=14, max_tiles=6, model_vocab=32000)


def _image():
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    base = ((np.sin(xx / 23.0) + np.cos(yy / 17.0)) * 60 + 128).astype(np.uint8)
    noisy = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    return np.repeat(noisy[..., None], 3, axis=2)


def measure(model_dir: str, device: str, quantization: str, tokens: int, samples: int) -> dict:
    """Run in a child process: load, stream, generate, sample; report timings and peak memory."""
    import torch

    from inference.engine.local import LocalEngine
    from inference.types import ChatRequest

    torch.manual_seed(0)
    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    engine = LocalEngine.from_folder(model_dir, device=device, quantization=quantization)
    load_s = time.perf_counter() - t0
    # Random weights may pick end-of-text at once; every run must decode the same number of tokens.
    engine.model.generation_config.min_new_tokens = tokens
    request = ChatRequest("Describe the findings and locate any lesion.", _image(), max_new_tokens=tokens)
    engine.generate(ChatRequest("Warm-up.", _image(), max_new_tokens=2))  # kernels, allocator
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    t0 = time.perf_counter()
    stream = engine.stream(request)
    next(stream)
    ttft = time.perf_counter() - t0
    stream.close()

    t0 = time.perf_counter()
    result = engine.generate(request)
    gen_s = time.perf_counter() - t0
    n_tokens = len(result.token_ids)
    decode_tps = (n_tokens - 1) / max(gen_s - ttft, 1e-9) if n_tokens > 1 else float("nan")

    t0 = time.perf_counter()
    drawn = engine.sample([request], n=samples, temperature=1.0, top_p=0.9)
    sample_s = time.perf_counter() - t0
    sample_tokens = sum(len(g.token_ids) for g in drawn[0])

    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 1024**2
        peak_kind = "GPU"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        peak_kind = "RSS"
    from inference.engine.memory import count_parameters

    params = count_parameters(engine.model.config.to_dict()).total
    weights_mb = engine.model.get_memory_footprint() / 1024**2
    return {"describe": engine.describe(), "load_s": load_s, "ttft_s": ttft, "tokens": n_tokens,
            "decode_tps": decode_tps, "sample_tps": sample_tokens / sample_s, "samples": samples,
            "peak_mb": peak, "peak_kind": peak_kind, "params": params, "weights_mb": weights_mb,
            "prompt_tokens": int(engine.encode([request])["input_ids"].shape[1])}


def _child(model_dir: Path, device: str, quantization: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps([str(model_dir), device, quantization]),
           "--tokens", str(args.tokens), "--samples", str(args.samples)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(label: str, r: dict) -> str:
    if "error" in r:
        return f"| {label} | failed: {r['error']} ||||||||"
    return (f"| {label} | {r['params'] / 1e6:,.0f} M | {r['weights_mb']:,.0f} | {r['prompt_tokens']} | {r['load_s']:.1f} | "
            f"{r['ttft_s'] * 1000:,.0f} | {r['decode_tps']:.1f} | {r['sample_tps']:.1f} (n={r['samples']}) | "
            f"{r['peak_mb']:,.0f} ({r['peak_kind']}) |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer")
    parser.add_argument("--samples", type=int, default=4, help="n for the sampling row")
    parser.add_argument("--model", type=Path, help="CPU model folder (default: demo model, else a small random one)")
    parser.add_argument("--skip-gpu", action="store_true", help="do not run the 8B-class GPU rows")
    parser.add_argument("--gpu-model", type=Path, metavar="DIR",
                        help="the 8B-class random model's folder: used if it is there, else written there and kept "
                             "(default: a temporary folder)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model_dir, device, quantization = json.loads(args.one)
        print(json.dumps(measure(model_dir, device, quantization, args.tokens, args.samples)))
        return 0

    import torch

    from training.model_factory import build_tiny_model, eight_b_class_model

    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="xmedgpt-bench-") as tmp:
        cpu_model = args.model or (DEMO if (DEMO / "config.json").is_file() else None)
        if cpu_model is None:
            cpu_model = build_tiny_model(Path(tmp) / "small", _small_spec(), name="small random InternVL")
        for quant, label in (("none", "CPU fp32 (baseline)"), ("nf4", "CPU NF4 4-bit")):
            rows.append((label, _child(cpu_model, "cpu", quant, args)))
        if torch.cuda.is_available() and not args.skip_gpu:
            big = eight_b_class_model(args.gpu_model or Path(tmp) / "8b", "cuda")
            torch.cuda.empty_cache()
            for quant, label in (("bf16", "CUDA bf16 (baseline)"), ("nf4", "CUDA NF4 4-bit")):
                rows.append((label, _child(big, "cuda", quant, args)))

    print(f"\nAssistant engine: {args.tokens} new tokens, 512x512 image, greedy unless noted; "
          f"{torch.get_num_threads()} CPU threads")
    first = next((r for _, r in rows if "describe" in r), None)
    if first:
        print(f"CPU model: {first['describe']}")
    print("| configuration | parameters | weights MB | prompt tokens | load s | first token ms | decode tok/s "
          "| sample tok/s | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(_row(label, r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
