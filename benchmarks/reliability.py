"""Reliability-pass benchmark: naive sampling loop against one batched, prefix-shared call.

Measured in this run, each method in its own fresh process (so peak memory is its own),
after the model is loaded and warmed up with one short generation:

- ``draft``: one greedy draft (``Engine.generate``, ``--draft-tokens`` new tokens at most),
  the baseline every other row is divided by;
- ``naive loop``: the full reliability pass (5 questions × 10 samples by default) with
  one ``Engine.sample`` call per sample (50 prefills, batch 1);
- ``batched``: the same pass as the product runs it: all questions in one
  ``Engine.sample`` call, prompt and image prefilled once per question, KV cache
  repeated ``n`` times.

Both passes go through :func:`inference.reliability.pipeline.assess` (decompose →
sample → cluster → score), so clustering and scoring are in the time too.
Peak memory: CUDA peak allocated on a GPU, else the process's peak RSS.
Goal (issue 4): batched ≤ 3× a single draft.

Usage: python benchmarks/reliability.py [--model DIR] [--device auto|cpu|cuda]
       [--questions 5] [--samples 10] [--draft-tokens 384]
Without --model a tiny random InternVL is built offline (timings then show overheads,
not a real model's cost).
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

FINDINGS = [  # structured findings: template questions, so every method asks the same ones
    ("f1", "nodule", {"presence": "yes", "location": "right upper lobe", "size": "12 mm", "shape": "spiculated",
                      "density": "solid", "count": "1"}),
    ("f2", "effusion", {"presence": "yes", "location": "left", "size": "small"}),
]


class _OneByOne:
    """Engine adapter: every sample its own ``sample(…, n=1)`` call (the naive loop)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        return [[self.engine.sample([r], n=1, temperature=temperature, top_p=top_p, cancel=cancel)[0][0]
                 for _ in range(n)] for r in requests]


def _child(method: str, model: str, device: str, questions: int, samples: int, draft_tokens: int) -> dict:
    import numpy as np
    import torch

    from inference.engine.local import LocalEngine
    from inference.reliability.decomposition import DraftFinding
    from inference.reliability.judges import ClosedFormJudge
    from inference.reliability.pipeline import ReliabilitySettings, assess
    from inference.reliability.scoring import Thresholds
    from inference.types import ChatRequest

    engine = LocalEngine.from_folder(model, device=device)
    cuda = str(engine.model.device).startswith("cuda")
    image = (np.random.default_rng(0).random((448, 448, 3)) * 255).astype(np.uint8)
    engine.generate(ChatRequest("Warm-up.", image, max_new_tokens=4))
    torch.manual_seed(0)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    tokens = 0
    if method == "draft":
        g = engine.generate(ChatRequest("Describe this image step by step and draft a radiology report.",
                                        image, max_new_tokens=draft_tokens))
        tokens = len(g.token_logprobs)
    else:
        findings = [DraftFinding(fid, label, label, attrs) for fid, label, attrs in FINDINGS]
        runner = engine if method == "batched" else _OneByOne(engine)
        rel = assess(runner, findings, image, judge=ClosedFormJudge(), thresholds=Thresholds(0.7, 0.4),
                     settings=ReliabilitySettings(n_samples=samples, max_questions=questions))
        assert len(rel.questions) == questions, "benchmark findings give too few questions"
        tokens = sum(len(q.answers) for q in rel.questions)  # answers sampled
    sync()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall": wall, "peak_mb": peak, "tokens": tokens, "device": engine.describe()}


def _run_child(method: str, args: argparse.Namespace, model: str) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--model", model, "--device", args.device,
           "--questions", str(args.questions), "--samples", str(args.samples), "--draft-tokens", str(args.draft_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="native InternVL model folder (default: build a tiny random one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--questions", type=int, default=5)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--draft-tokens", type=int, default=384)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.model, args.device, args.questions, args.samples, args.draft_tokens)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from training.model_factory import build_tiny_model

            model = str(build_tiny_model(Path(tmp) / "tiny"))
        rows = {m: _run_child(m, args, model) for m in ("draft", "naive loop", "batched")}
    base = rows["draft"]["wall"]
    mem = "CUDA peak alloc" if "CPU" not in rows["draft"]["device"] else "peak RSS"
    print(f"reliability pass: {args.questions} questions × {args.samples} samples · {rows['draft']['device']}")
    print(f"draft: {rows['draft']['tokens']} new tokens (max {args.draft_tokens})")
    print(f"{'method':<12} {'wall s':>8} {'× draft':>8} {mem + ' MiB':>20} {'answers':>8}")
    for name, r in rows.items():
        answers = "-" if name == "draft" else r["tokens"]
        print(f"{name:<12} {r['wall']:8.2f} {r['wall'] / base:8.2f} {r['peak_mb']:20.0f} {answers:>8}")


if __name__ == "__main__":
    main()
