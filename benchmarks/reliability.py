"""Reliability-pass benchmark: naive sampling loop against one batched, prefix-shared call,
and the full trust pass of the viewer (issue #13) per answer.

Measured in this run, each method in its own fresh process (so peak memory is its own),
after the model is loaded and warmed up with one short generation; every method looks at
the same image (a CT phantom slice with a liver lesion, as the model is given it):

- ``draft``: one greedy draft (``Engine.generate``, ``--draft-tokens`` new tokens at most),
  the baseline every other row is divided by;
- ``naive loop``: the attribute questions (5 questions × 10 samples by default) with
  one ``Engine.sample`` call per sample (50 prefills, batch 1);
- ``batched``: the same questions as the product samples them: all in one
  ``Engine.sample`` call, prompt and image prefilled once per question, KV cache
  repeated ``n`` times;
- ``full pass``: :func:`app.assistant.session.check_answer` on a grounded five-step answer
  with two boxed findings, as the viewer and ``xmedgpt analyze --reliability`` run it: the
  model decomposes each finding (template questions fill up to ``--questions``), the
  questions *and* each finding's box grounded again (``--samples`` each) in one batched
  ``Engine.sample`` call, box clustering, the checks against the pixels (size, side,
  density, inside the body), the body-region and cross-step checks, and the tiers.

The first three go through :func:`inference.reliability.pipeline.assess` on structured
findings (no decomposition call), so clustering and scoring are in the time too.
Peak memory: CUDA peak allocated on a GPU, else the process's peak RSS.
Goals: batched ≤ 3× a single draft (issue 4); the full pass ≤ 3× (issue #13).

With ``--repeat R`` every method runs R times, interleaved (draft, naive, batched, full, draft,
…), each in a fresh process; rows are the best run and "× draft" divides best by best, the
medians line covers all runs (a shared, loaded machine makes single runs noisy).

Usage: python benchmarks/reliability.py [--model DIR] [--device auto|cpu|cuda]
       [--questions 5] [--samples 10] [--draft-tokens 384] [--methods "naive loop,batched,full pass"]
       [--repeat 1]
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


#: the grounded answer of the full pass: two boxed findings on the phantom (0–1000 of the model image)
DRAFT_ANSWER = (
    "Step 1: Structure identification\nAxial CT of the upper abdomen: <ref>liver</ref><box>[[60, 300, 470, 720]]</box>.\n"
    "Step 2: Region localization\nThere is a 20 mm <ref>hypodense lesion</ref><box>[[230, 450, 330, 550]]</box> in "
    "the right hepatic lobe and a <ref>hyperdense focus</ref><box>[[670, 450, 770, 550]]</box> on the left.\n"
    "Step 3: Detailed description\nThe lesion is round and well defined, about 20 mm.\n"
    "Step 4: Holistic analysis\nMost consistent with a simple cyst; the focus is likely a calcified granuloma.\n"
    "Step 5: Report synthesis\n20 mm hypodense lesion in the right hepatic lobe; hyperdense focus on the left.\n"
)


def phantom_volume(size: int = 512):
    """One axial CT slice (HU): body in air, a liver on the patient's right with a 24 mm hypodense
    lesion (20 mm), a hyperdense focus on the left; 200 mm across, standard orientation."""
    import numpy as np

    from app.dicom.model import Geometry, Series, Volume, Window

    s = size / 200
    yy, xx = np.mgrid[0:size, 0:size] / s
    hu = np.full((size, size), -1000.0)
    body = ((xx - 100) / 95) ** 2 + ((yy - 100) / 80) ** 2 <= 1
    hu[body] = 40.0
    hu[body & (xx < 95) & (yy > 60) & (yy < 145)] = 60.0
    hu[(xx - 56) ** 2 + (yy - 100) ** 2 <= 10 ** 2] = 20.0
    hu[(xx - 144) ** 2 + (yy - 100) ** 2 <= 10 ** 2] = 150.0
    frames = (hu + 1024).astype(np.int16)[None]
    series = Series(uid="1.2.826.0.1.99", number=1, description="Axial", modality="CT", body_part="ABDOMEN")
    geo = Geometry(origins=np.array([[-100.0, -100.0, 0.0]]), row_direction=np.array([1.0, 0.0, 0.0]),
                   col_direction=np.array([0.0, 1.0, 0.0]), spacing=(200 / size * 1.0, 200 / size * 1.0))
    return Volume(series, frames, np.ones(1), np.full(1, -1024.0), geo, Window(400, 40, "abdomen"), loaded=1)


class _Draft:
    """Engine adapter for the full pass: the draft streams a fixed grounded answer (a random model
    draws no boxes); decomposition and sampling are the real engine's."""

    def __init__(self, engine, text: str) -> None:
        self.engine, self.text = engine, text

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def stream(self, request, cancel=None):
        yield self.text


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
    import torch

    from app.assistant.ask import Assistant
    from app.assistant.session import check_answer
    from inference.engine.local import LocalEngine
    from inference.reliability.decomposition import DraftFinding
    from inference.reliability.judges import ClosedFormJudge
    from inference.reliability.pipeline import ReliabilitySettings, assess
    from inference.reliability.scoring import Thresholds
    from inference.types import ChatRequest

    engine = LocalEngine.from_folder(model, device=device)
    cuda = str(engine.model.device).startswith("cuda")
    draft_engine = _Draft(engine, DRAFT_ANSWER)
    answer = Assistant(draft_engine).ask(phantom_volume(), 0, None, "Describe the findings on this slice.")
    assert len({f.phrase for f in answer.findings}) == 3, "the benchmark answer must give its boxes"
    image = answer.image.rgb  # the phantom as the model is given it: every method looks at the same image
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
    extra = {}
    if method == "draft":
        g = engine.generate(ChatRequest("Describe this image step by step and draft a radiology report.",
                                        image, max_new_tokens=draft_tokens))
        tokens = len(g.token_logprobs)
    elif method == "full pass":
        calls = {"generate": 0, "sample": 0, "requests": 0}
        generate, sample = engine.generate, engine.sample

        def counted_generate(*a, **k):
            calls["generate"] += 1
            return generate(*a, **k)

        def counted_sample(requests, *a, **k):
            calls["sample"] += 1
            calls["requests"] += len(requests)
            return sample(requests, *a, **k)

        engine.generate, engine.sample = counted_generate, counted_sample
        rel = check_answer(draft_engine, answer, samples, questions)
        assert len(rel.questions) == questions, f"the full pass asked {len(rel.questions)} questions"
        tokens = sum(len(q.answers) for q in rel.questions) + sum(b.n for b in rel.boxes)
        extra = {**calls, "checks": len(rel.all_checks()), "tier": rel.tier.value}
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
    return {"wall": wall, "peak_mb": peak, "tokens": tokens, "device": engine.describe(), **extra}


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
    p.add_argument("--methods", default="naive loop,batched,full pass",
                   help="comma-separated rows to measure besides the draft (always measured)")
    p.add_argument("--repeat", type=int, default=1, help="runs per method, interleaved; rows show the best")
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
        wanted = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "draft"]
        runs: dict[str, list[dict]] = {m: [] for m in ("draft", *wanted)}
        for _ in range(max(1, args.repeat)):
            for m in runs:
                runs[m].append(_run_child(m, args, model))
    rows = {m: min(rs, key=lambda r: r["wall"]) for m, rs in runs.items()}
    base = rows["draft"]["wall"]
    mem = "CUDA peak alloc" if "CPU" not in rows["draft"]["device"] else "peak RSS"
    print(f"reliability pass: {args.questions} questions × {args.samples} samples · {rows['draft']['device']}")
    print(f"draft: {rows['draft']['tokens']} new tokens (max {args.draft_tokens})")
    print(f"{'method':<12} {'wall s':>8} {'× draft':>8} {mem + ' MiB':>20} {'answers':>8}")
    for name, r in rows.items():
        answers = "-" if name == "draft" else r["tokens"]
        print(f"{name:<12} {r['wall']:8.2f} {r['wall'] / base:8.2f} {r['peak_mb']:20.0f} {answers:>8}")
    if args.repeat > 1:
        medians = {m: sorted(r["wall"] for r in rs)[len(rs) // 2] for m, rs in runs.items()}
        print("medians of " + str(args.repeat) + " runs: " + ", ".join(
            f"{m} {w:.2f} s ({w / medians['draft']:.2f}×)" for m, w in medians.items()))
    full = rows.get("full pass")
    if full:
        print(f"full pass: {full['generate']} decomposition call(s), {full['sample']} batched sample call(s) of "
              f"{full['requests']} requests, {full['checks']} checks, tier {full['tier']}")


if __name__ == "__main__":
    main()
