"""Dictation speed: key release → text latency, real-time factor and peak memory.

For each engine and model, a 5 s and a 15 s synthesised radiology dictation
(espeak-ng, 16 kHz) are "released" into the pipeline the widget runs: stop the
source (trimming), Whisper with the radiology prompt, then the text rules.
Each configuration runs in its own process (a clean peak-memory reading),
with the model loaded first (the widget warms it up at start-up), a warm-up
call, then ``--repeats`` timed calls (median reported). openai-whisper, the
product's reference package, is the baseline the speed-up column compares to.

    python benchmarks/dictation.py [--model DIR_OR_PT ...] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

UTTERANCES = {
    5: ("There is a five millimeter nodule in the right upper lobe period no pleural effusion period",
        "There is a 5 mm nodule in the right upper lobe. No pleural effusion."),
    15: ("There is a five millimeter nodule in the right upper lobe period no pleural effusion or "
         "pneumothorax period the heart is normal in size period the liver measures eighteen centimeters "
         "with diffuse hepatic steatosis period no hydronephrosis period impression colon stable "
         "pulmonary nodule period",
         "There is a 5 mm nodule in the right upper lobe. No pleural effusion or pneumothorax. The heart is "
         "normal in size. The liver measures 18 cm with diffuse hepatic steatosis. No hydronephrosis. "
         "Impression: stable pulmonary nodule."),
}


def synthesize(folder: Path) -> dict[int, Path]:
    out = {}
    for target, (spoken, _) in UTTERANCES.items():
        raw, wav = folder / f"u{target}.espeak.wav", folder / f"u{target}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), spoken], check=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
        out[target] = wav
    return out


def worker(args: argparse.Namespace) -> None:
    """One configuration in this process; prints one JSON line."""
    from app.dictation.text import Dictation
    from inference.speech.capture import FileSource
    from inference.speech.engines import (
        FasterWhisperRecognizer,
        OpenAIWhisperRecognizer,
    )
    from inference.speech.wer import word_error_rate

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.engine == "faster-whisper":
        rec = FasterWhisperRecognizer(args.model or None, device=args.device, compute_type=args.compute or None)
    else:
        rec = OpenAIWhisperRecognizer(args.model or None, device=args.device)
    dictation = Dictation()
    t0 = time.perf_counter()
    rec.load()
    load_s = time.perf_counter() - t0
    results = {}
    for target, wav in zip(UTTERANCES, args.wavs):
        latencies, rtfs = [], []
        text = ""
        for i in range(args.repeats + 1):
            source = FileSource(Path(wav))
            source.start()  # the whole utterance is "spoken"; the clock starts at key release
            t_release = time.perf_counter()
            recording = source.stop()
            transcript = rec.transcribe(recording.audio, initial_prompt=dictation.initial_prompt)
            text = dictation.handle(transcript.text).text
            latency = time.perf_counter() - t_release
            if i:  # the first call is a warm-up
                latencies.append(latency)
                rtfs.append(transcript.decode_seconds / recording.captured_seconds)
        results[target] = {
            "audio_s": recording.captured_seconds, "latency_s": statistics.median(latencies),
            "rtf": statistics.median(rtfs), "wer": word_error_rate(UTTERANCES[target][1], text),
        }
    gpu_mib = None
    if rec.device == "cuda" and args.engine == "openai-whisper":
        import torch

        gpu_mib = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps({"describe": rec.describe(), "load_s": load_s, "results": results,
                      "rss_before_mib": rss_before,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "gpu_mib": gpu_mib}))


def configurations(models: list[str], device: str) -> list[tuple[str, str, str]]:
    """(engine, model, compute type) to measure; faster-whisper needs CTranslate2 folders."""
    from inference.speech.models import locate_model

    gpu = device == "cuda"
    if device == "auto":
        try:
            import ctranslate2

            gpu = ctranslate2.get_cuda_device_count() > 0
        except ImportError:
            gpu = False
    out = []
    for model in ["", *models]:
        fmt = locate_model(model or None).format
        if fmt == "ct2":
            out.append(("faster-whisper", model, "float16" if gpu else "int8"))
            out.append(("faster-whisper", model, "float32"))
        out.append(("openai-whisper", model, ""))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="extra model (CT2 folder or .pt)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "MODEL", "COMPUTE"), help=argparse.SUPPRESS)
    parser.add_argument("--wavs", nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.engine, args.model, args.compute = args.worker
        worker(args)
        return 0

    rows = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        wavs = synthesize(Path(tmp))
        for engine, model, compute in configurations(args.model, args.device):
            cmd = [sys.executable, __file__, "--worker", engine, model, compute, "--repeats", str(args.repeats),
                   "--device", args.device, "--wavs", *[str(wavs[t]) for t in UTTERANCES]]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if proc.returncode:
                print(f"{engine} {model or 'bundled'} {compute}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    baseline = next((r for r in rows if r["describe"].startswith("openai-whisper")), None)
    head = ("| engine · model · device · precision | utterance | key release → text | RTF | vs openai-whisper "
            "| WER | model load | peak RSS (Δ model) | GPU peak |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for row in rows:
        for target, r in row["results"].items():
            base = baseline["results"][target]["latency_s"] if baseline else None
            speed = f"{base / r['latency_s']:.1f}×" if base else "–"
            gpu = f"{row['gpu_mib']:.0f} MiB" if row["gpu_mib"] else "–"
            print(f"| {row['describe']} | {r['audio_s']:.1f} s | {r['latency_s']:.2f} s | {r['rtf']:.3f} | {speed} "
                  f"| {r['wer']:.2f} | {row['load_s']:.1f} s | {row['peak_rss_mib']:.0f} MiB "
                  f"(+{row['peak_rss_mib'] - row['rss_before_mib']:.0f}) | {gpu} |")
    print(f"\n{os.cpu_count()} CPUs; load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end "
          f"(other work on the machine slows every row alike). Median of {args.repeats} runs after a warm-up.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
