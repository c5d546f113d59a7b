"""Series pre-read benchmark: the batched sweep against the single-slice assistant, in this run.

A synthetic CT series (``app.synthetic.sample.write_ct_study``, default 300 × 512²) and the demo model
(resources/models/demo) on the CPU. Each row runs in its own fresh process (so its peak RSS is its own):

- **single-slice assistant** (the baseline): :meth:`Assistant.ask` slice by slice, one streamed answer
  per slice and window (the same windows as the sweep), answers capped at 96 tokens like the sweep's;
  once with the sweep's own prompt put into its request (the baseline: the model sees exactly what the
  sweep shows it and writes the same answers) and once with the assistant's locate prompt ("<ref>every
  lesion</ref>", which this demo model answers more briefly);
- **batched sweep, batch B**: :func:`app.assistant.preread.sweep`, B requests per batched ``generate``, the
  next batch rendered and encoded on a background thread meanwhile (the product's default); once more for the
  largest B with that prefetch off (``prefetch=False``: every batch prepared, then answered, on one thread);
- **whole pre-read**: :func:`app.assistant.preread.preread` on every slice: sweep, 3-D linking, and the
  five-step reasoning + reliability pass at each lesion's key slice (up to 10 lesions).

The baseline and the batched rows read the same slices in one process, interleaved over ``--rounds``
rounds (median), so the load of shared cores falls on every method alike: by default every slice of the
series (the issue's task: the whole series swept, against the assistant called slice by slice), or an
evenly spaced subset with ``--compare-slices N`` for a quicker run (the "series, est." column then scales
time per request to the whole series: a small subset leaves the sweep a part-filled last batch and the
wait for its first batch, so it overstates the sweep's time). The whole pre-read is measured on every
slice in its own process.

Every row runs with ``torch.set_num_threads(--threads)`` (default 1): on a busy machine (the shared
2-core development box runs at load 8) a ``generate`` on the main thread with 2 OpenMP threads was
measured ~15× slower than the same call on a worker thread (where the streamed single-slice path
runs), which would compare thread scheduling, not batching.

On a GPU (``--device cuda``, the issue's second table): ``--device-sweep`` runs only the sweep of the whole series
on that device, once per batch size (after a warm-up batch), and prints slices and requests per second, the
seconds until the first batch's boxes are there (the first lesion a reader could be shown), and the peak GPU
memory; ``--build-8b DIR`` first writes an 8B-class InternVL with random weights there (InternVL2-8B's shapes,
``training.model_factory.eight_b_class_spec``; kept, so a second run reuses it) and reads with it, in NF4 by
default. ``benchmarks/device_session.sh`` runs this and the assistant's GPU rows in one go.

Usage: python benchmarks/preread.py [--slices 300] [--size 512] [--compare-slices 0 (all)] [--rounds 1]
       [--batch 8,16,32] [--threads 1] [--study DIR] [--model DIR] [--skip-full]
       python benchmarks/preread.py --device-sweep --device cuda [--quantization nf4] [--build-8b DIR] [--batch 16,32,64]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "resources" / "models" / "demo"


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _SweepPrompted:
    """The engine, with the sweep's prompt put into every streamed request: the single-slice assistant's
    round trip (render, prompt, stream, parse, findings) with exactly the model input of the sweep."""

    def __init__(self, engine, system: str, user: str) -> None:
        self.engine, self.system, self.user = engine, system, user
        self.processor = getattr(engine, "processor", None)

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def describe(self) -> str:
        return self.engine.describe()

    def stream(self, request, cancel=None):
        from dataclasses import replace

        return self.engine.stream(replace(request, prompt=self.user, system=self.system), cancel=cancel)


def _child(args: argparse.Namespace) -> None:
    import statistics

    import numpy as np
    import torch

    from app.assistant.ask import Assistant
    from app.assistant.preread import (
        PrereadOptions,
        choose_windows,
        preread,
        sweep,
        sweep_prompt,
    )
    from app.commands.analyze import load_engine
    from app.dicom.loader import load_series
    from app.dicom.scan import scan
    from inference.prompts import Task

    torch.set_num_threads(args.threads)
    volume = load_series(scan([args.study]).all_series()[0])
    t_load = time.perf_counter()
    engine, spec = load_engine(Path(args.model), args.device, args.quantization)
    load_s = time.perf_counter() - t_load
    n = len(volume)
    m = n if args.compare_slices <= 0 else min(args.compare_slices, n)
    subset = sorted({int(k) for k in np.linspace(0, n - 1, m)})
    all_requests = sum(len(choose_windows(volume.values(k))[0]) for k in range(n))
    out: dict = {"mode": args.child, "slices": len(subset), "series_slices": n, "series_requests": all_requests}
    if args.child == "compare":
        system, user = sweep_prompt()
        plain = Assistant(engine, image_spec=spec, max_new_tokens=96)
        same = Assistant(_SweepPrompted(engine, system, user), image_spec=spec, max_new_tokens=96)

        def single(assistant, task):
            def go():
                requests = boxes = 0
                for k in subset:
                    for window in choose_windows(volume.values(k))[0]:
                        answer = assistant.ask(volume, k, window, "Locate every lesion", task=task)
                        requests += 1
                        boxes += len(answer.findings)
                return requests, boxes
            return go

        def batched(b, prefetch=True):
            def go():
                sw = sweep(engine, volume, slices=subset, batch_size=b, image_spec=spec, prefetch=prefetch)
                return sw.requests, len(sw.detections)
            return go

        methods = {"single-slice assistant, its locate prompt": single(plain, Task.LOCATE),
                   "single-slice assistant, the sweep's prompt (baseline)": single(same, Task.LOCATE)}
        for b in args.batches:
            methods[f"batched sweep, batch {b}"] = batched(b)
        methods[f"batched sweep, batch {max(args.batches)}, no prefetch"] = batched(max(args.batches), False)
        sweep(engine, volume, slices=subset[:2], batch_size=2, image_spec=spec)  # warm-up, not timed
        times: dict[str, list[float]] = {m: [] for m in methods}
        counts: dict[str, tuple[int, int]] = {}
        for _ in range(args.rounds):  # interleaved rounds: the shared cores' load falls on every method alike
            for name, go in methods.items():
                t0 = time.perf_counter()
                counts[name] = go()
                times[name].append(time.perf_counter() - t0)
        out["rows"] = [{"name": m, "requests": counts[m][0], "boxes": counts[m][1], "times": times[m],
                        "median": statistics.median(times[m]), "best": min(times[m])} for m in methods]
    elif args.child.startswith("device:"):  # the sweep of every slice on --device: speed, first boxes, memory
        batch = int(args.child.split(":")[1])
        cuda = args.device.startswith("cuda")
        sweep(engine, volume, slices=list(range(min(batch, n))), batch_size=batch, image_spec=spec)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        first: list[float] = []
        t0 = time.perf_counter()

        def progress(done: int, _total: int) -> None:
            if done and not first:
                first.append(time.perf_counter() - t0)

        sw = sweep(engine, volume, batch_size=batch, image_spec=spec, progress=progress)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        out.update(batch=batch, seconds=seconds, requests=sw.requests, boxes=len(sw.detections),
                   first_batch_s=first[0] if first else None, load_s=load_s, device=engine.describe(),
                   gpu_peak_mib=torch.cuda.max_memory_allocated() / 1024**2 if cuda else None)
    elif args.child.startswith("full:"):
        batch = int(args.child.split(":")[1])
        result = preread(engine, volume, PrereadOptions(batch_size=batch), image_spec=spec)
        out.update(seconds=result.timing["total_s"], requests=result.sweep.requests, slices=n,
                   boxes=len(result.sweep.detections), candidates=len(result.candidates),
                   lesions=len(result.lesions), timing=result.timing, batch=batch)
    out["peak_rss_mib"] = _peak_mib()
    Path(args.out).write_text(json.dumps(out))


def _run_child(study: Path, model: Path, mode: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, __file__, "--child", mode, "--study", str(study), "--model", str(model),
               "--compare-slices", str(args.compare_slices), "--batch", args.batch, "--rounds", str(args.rounds),
               "--threads", str(args.threads), "--device", args.device, "--quantization", args.quantization,
               "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def _device_table(study: Path, args: argparse.Namespace) -> None:
    rows = []
    for b in args.batches:
        r = _run_child(study, args.model, f"device:{b}", args)
        rows.append(r)
        print(f"batch {b}: {r['series_slices'] / r['seconds']:.2f} slices/s ({r['seconds']:.1f} s, {r['requests']} "
              f"requests), first boxes after {r['first_batch_s'] or 0:.1f} s", flush=True)
    first = rows[0]
    print(f"\nsweep of a {first['series_slices']}-slice series ({first['series_requests']} requests: slices × windows), "
          f"{first['device']}, model loaded in {first['load_s']:.0f} s\n")
    print("| batch | s | slices/s | requests/s | first boxes s | boxes | peak GPU MiB | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gpu = f"{r['gpu_peak_mib']:.0f}" if r.get("gpu_peak_mib") is not None else "–"
        print(f"| {r['batch']} | {r['seconds']:.1f} | {r['series_slices'] / r['seconds']:.2f} | "
              f"{r['requests'] / r['seconds']:.2f} | {r['first_batch_s'] or 0:.1f} | {r['boxes']} | {gpu} | "
              f"{r['peak_rss_mib']:.0f} |")
    best = max(r["series_slices"] / r["seconds"] for r in rows)
    if args.device.startswith("cuda"):  # the goal is for an 8B-class model on one H100-class GPU
        print(f"goal (GPU, 8B-class NF4): ≥ 5 slices/s: {'met' if best >= 5 else 'NOT met'} ({best:.2f} at best)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--compare-slices", type=int, default=0,
                    help="slices the comparison reads, evenly spaced (default 0: every slice of the series)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the comparison (median shown)")
    ap.add_argument("--batch", default="8,16,32", help="batch sizes of the sweep rows")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every row (default 1)")
    ap.add_argument("--study", type=Path, help="an existing series instead of generating one")
    ap.add_argument("--model", type=Path, default=DEMO)
    ap.add_argument("--skip-full", action="store_true", help="leave out the whole pre-read row")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--quantization", default="auto", help="auto (NF4 on CUDA), nf4, int8, bf16 or none")
    ap.add_argument("--device-sweep", action="store_true",
                    help="only the sweep of the whole series on --device, per batch size (the GPU table)")
    ap.add_argument("--build-8b", type=Path, metavar="DIR",
                    help="write an 8B-class InternVL with random weights to DIR (once) and read with it")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batch.split(",") if b.strip()]
    if args.child:
        _child(args)
        return
    from app.synthetic.sample import write_ct_study

    tmp = None
    study = args.study
    if study is None:
        tmp = tempfile.TemporaryDirectory(prefix="xmedgpt-preread-bench-")
        study = Path(tmp.name) / "ct"
        t0 = time.perf_counter()
        write_ct_study(study, n_slices=args.slices, size=args.size, seed=args.seed)
        print(f"generated {args.slices} × {args.size}² in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.build_8b is not None:
        from training.model_factory import eight_b_class_model

        t0 = time.perf_counter()
        args.model = eight_b_class_model(args.build_8b, args.device)
        print(f"8B-class random model at {args.model} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.device_sweep:
        _device_table(study, args)
        if tmp is not None:
            tmp.cleanup()
        return
    cmp = _run_child(study, args.model, "compare", args)
    full = None if args.skip_full else _run_child(study, args.model, f"full:{max(args.batches)}", args)
    rows = cmp["rows"]
    base_row = next(r for r in rows if "(baseline)" in r["name"])
    base = base_row["median"] / base_row["requests"]
    series_requests = cmp["series_requests"]
    n = cmp["series_slices"]
    print(f"\nseries: {n} slices ({series_requests} requests: slices × windows), model {args.model.name}, CPU, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, torch threads {args.threads}; comparison on "
          f"{'every slice' if cmp['slices'] == n else str(cmp['slices']) + ' evenly spaced slices'}, "
          f"{args.rounds} interleaved round(s) (median; best in brackets)\n")
    est = "" if cmp["slices"] == n else ", est."
    print(f"| method | requests | s (median) | s / request | × baseline | {n} slices{est} (s) | boxes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per = r["median"] / r["requests"]
        print(f"| {r['name']} | {r['requests']} | {r['median']:.1f} ({r['best']:.1f}) | {per:.3f} | "
              f"{base / per:.1f} | {per * series_requests:.0f} | {r['boxes']} |")
    print(f"\npeak RSS of the comparison process: {cmp['peak_rss_mib']:.0f} MiB")
    if full is not None:
        t = full["timing"]
        print(f"whole pre-read of all {full['slices']} slices ({full['requests']} requests, batch {full['batch']}): "
              f"sweep {t['sweep_s']:.1f} s ({t['sweep_s'] / full['requests']:.3f} s / request), link "
              f"{t['link_s']:.2f} s, reasoning + reliability {t['reasoning_s']:.1f} s for {full['lesions']} lesion(s) "
              f"of {full['candidates']} candidate(s); total {t['total_s']:.1f} s; peak RSS {full['peak_rss_mib']:.0f} MiB")
    best = max((r for r in rows if r["name"].startswith("batched") and "no prefetch" not in r["name"]),
               key=lambda r: r["requests"] / r["median"])
    speedup = base / (best["median"] / best["requests"])
    print(f"goal: batched sweep ≥ 3× faster than the single-slice assistant: "
          f"{'met' if speedup >= 3 else 'NOT met'} ({speedup:.1f}× at {best['name'].split(', ')[1]})")
    if full is not None:  # the same sweep over the whole series: batches full, the first batch's wait amortized
        whole = full["timing"]["sweep_s"] / full["requests"]
        print(f"whole-series sweep (its own process, {full['requests']} requests, batch {full['batch']}): "
              f"{whole:.3f} s / request, {base / whole:.1f}× the baseline's {base:.3f} s / request above")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
