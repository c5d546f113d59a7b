"""Writes the synthetic phantom corpus for the three training stages and the evaluation harness.

``python -m training.phantoms --out DIR --n N --seed S [--size 224] [--audio]``

The cases (images and their ground truth) come from :func:`app.synthetic.cases.make_case`;
the words trained on them from :mod:`training.phantom_text`. From each case it writes
(formats in training/README.md):

- ``images/NNNNNN.png`` and ``annotations.jsonl`` (ground truth: each lesion's
  :meth:`app.synthetic.truth.LesionTruth.to_dict`, boxes in pixels and on the 0–1000
  scale), the input of ``xmedgpt eval``;
- ``grounding.jsonl``, ``vqa.jsonl``, ``report.jsonl`` (stage 1 SFT) and
  ``reasoning.jsonl`` (five-step reasoning SFT), InternVL conversations, listed
  with repeat factors in ``meta.json``;
- ``preference.jsonl`` (DPO: correct grounded reasoning against a wrong box, a
  missed or hallucinated lesion, or the wrong side; with ``--preference-errors all`` also
  against self-contradicting chains, ``training.phantom_text.CHAIN_ERRORS``);
- with ``--audio``: ``audio/*.wav`` (espeak-ng, 16 kHz mono) and ``audio.jsonl``.

Case ``i`` depends only on ``(seed, i)``: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import subprocess
import sys
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.core.errors import XMedError
from app.dicom.png import write_png
from app.synthetic.cases import (
    KINDS,
    LESION_COUNT_WEIGHTS,
    CorpusConfig,
    PhantomCase,
    make_case,
)
from inference.parsing import BOX_SCALE
from inference.types import STEP_NAMES
from training import phantom_text as txt

log = logging.getLogger(__name__)

AUDIO_RATE = 16000
PREFERENCE_ERRORS = txt.BOX_ERRORS  # the phantom corpus's default: one wrong lesion list per pair
#: box errors plus self-contradicting chains (step 5 vs steps 2-4 on count/side/size/density, a step missing
#: or repeated); what the study corpus (training.study_corpus) writes
ALL_PREFERENCE_ERRORS = txt.BOX_ERRORS + txt.CHAIN_ERRORS


# ----------------------------------------------------------------------------- speech


def speak(text: str, path: Path, rng: np.random.Generator) -> float:
    """Speak ``text`` with espeak-ng into a 16 kHz mono 16-bit WAV; returns its duration in seconds.

    The voice, speed and pitch vary with ``rng`` so the audio stage hears more
    than one speaker; the same draws give the same bytes.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise XMedError("espeak-ng is not installed: install it (apt-get install espeak-ng) or leave out --audio.")
    voice = str(rng.choice(["en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland"]))
    speed = int(rng.integers(140, 190))
    pitch = int(rng.integers(30, 70))
    proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                          capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise XMedError(f"espeak-ng could not speak the query: {proc.stderr.decode(errors='replace').strip()[:200]}")
    with wave.open(io.BytesIO(proc.stdout)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    audio = _resample(pcm, rate, AUDIO_RATE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_RATE)
        out.writeframes(np.clip(np.rint(audio), -32768, 32767).astype("<i2").tobytes())
    return len(audio) / AUDIO_RATE


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum."""
    if rate == target or len(x) == 0:
        return x
    n_out = int(round(len(x) * target / rate))
    spectrum = np.fft.rfft(x)
    keep = n_out // 2 + 1
    if keep <= len(spectrum):
        spectrum = spectrum[:keep]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(keep - len(spectrum), dtype=spectrum.dtype)])
    return np.fft.irfft(spectrum, n_out) * (n_out / len(x))


# ----------------------------------------------------------------------------- corpus


#: Conversation datasets listed in meta.json, with how often each is repeated per epoch.
DATASETS: dict[str, tuple[str, int]] = {
    "phantom_grounding": ("grounding.jsonl", 2),  # localization is the hard skill: seen twice
    "phantom_vqa": ("vqa.jsonl", 1),
    "phantom_report": ("report.jsonl", 1),
    "phantom_reasoning": ("reasoning.jsonl", 1),
}


@dataclass
class CorpusSummary:
    out: Path
    seed: int
    n: int
    size: int
    counts: dict[str, int]
    lesions_per_image: dict[str, int]
    kinds: dict[str, int]


def _conversation(image: str, prompt: str, answer: str, **extra: object) -> dict:
    return {"image": image, "conversations": [{"from": "human", "value": f"<image>\n{prompt}"},
                                              {"from": "gpt", "value": answer}], **extra}


def _annotation(case: PhantomCase, image: str) -> dict:
    return {
        "image": image, "kind": case.kind, "modality": case.modality, "width": int(case.image.shape[1]),
        "height": int(case.image.shape[0]), "pixel_spacing_mm": round(case.pixel_spacing_mm, 4),
        "window": {"width": round(case.window.width, 3), "center": round(case.window.center, 3),
                   "name": case.window.name},
        "structures": case.structures,
        "lesions": [t.to_dict() for t in case.lesions],
    }


def corpus_config(kinds: Sequence[str] | None, max_lesions: int, lesion_mm: Sequence[float] | None) -> CorpusConfig:
    """The case generator's settings for a corpus recipe (kinds, lesions per image, diameters in mm)."""
    mm = (float(lesion_mm[0]), float(lesion_mm[1])) if lesion_mm else None
    return CorpusConfig.restricted(list(kinds) if kinds else None, max_lesions, mm)


def write_corpus(out: Path | str, n: int, seed: int, size: int = 224, audio: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 config: CorpusConfig = CorpusConfig(),
                 preference_errors: tuple[str, ...] = PREFERENCE_ERRORS) -> CorpusSummary:
    """Generate ``n`` cases with ``seed`` into ``out`` (see the module docstring for the files)."""
    if n < 1 or size < 64:
        raise XMedError("A phantom corpus needs at least 1 image of at least 64×64 pixels.")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    files = {name: [] for name in ("annotations", "grounding", "vqa", "report", "reasoning", "preference", "audio")}
    kinds: dict[str, int] = {}
    per_image: dict[str, int] = {}
    for i in range(n):
        case = make_case(seed, i, size, config)
        rng = np.random.default_rng([seed, i, 1])  # text choices: independent of the pixels' draws
        name = f"{case.name}.png"
        write_png(out / "images" / name, case.image)
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
        per_image[str(len(case.lesions))] = per_image.get(str(len(case.lesions)), 0) + 1
        desc = case.description
        files["annotations"].append(_annotation(case, f"images/{name}"))
        image = f"images/{name}"
        files["grounding"].append(_conversation(
            image, str(rng.choice(txt.GROUNDING_PROMPTS)).format(desc=desc), txt.grounding_answer(case.lesions)))
        report_prompt = str(rng.choice(txt.REPORT_PROMPTS)).format(desc=desc)
        files["report"].append(_conversation(image, report_prompt, txt.findings_and_impression(case, case.lesions)))
        prompt = str(rng.choice(txt.REASONING_PROMPTS)).format(desc=desc)
        chosen = txt.reasoning_answer(case, case.lesions)
        files["reasoning"].append(_conversation(image, prompt, chosen))
        qs = txt.questions(case, rng)
        for q in qs:
            files["vqa"].append(_conversation(image, q.question, q.answer, question_type=q.qtype))
        error, rejected = txt.rejected_reasoning(case, rng, preference_errors)
        files["preference"].append({"image": image, "prompt": f"<image>\n{prompt}", "chosen": chosen,
                                    "rejected": rejected, "error": error})
        if audio:
            q = qs[int(rng.integers(len(qs)))]
            wav = f"audio/{case.name}.wav"
            duration = speak(q.question, out / wav, rng)
            files["audio"].append({
                "audio": wav, "image": image, "transcript": q.question, "duration_s": round(duration, 3),
                "conversations": [{"from": "human", "value": "<image>\n<audio>"}, {"from": "gpt", "value": q.answer}],
                "question_type": q.qtype})
        if progress is not None:
            progress(i + 1, n)
    for key, records in files.items():
        if key == "audio" and not audio:
            continue
        with (out / f"{key}.jsonl").open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    meta = {name: {"root": ".", "annotation": fname, "data_augment": False, "repeat_time": repeat,
                   "length": len(files[fname.removesuffix(".jsonl")])}
            for name, (fname, repeat) in DATASETS.items()}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    counts = {key: len(v) for key, v in files.items() if key != "audio" or audio}
    summary = CorpusSummary(out, seed, n, size, counts, dict(sorted(per_image.items())), dict(sorted(kinds.items())))
    manifest = {"generator": "training.phantoms", "seed": seed, "n": n, "size": size, "audio": audio,
                "config": config.as_dict(),
                "counts": counts, "lesions_per_image": summary.lesions_per_image, "kinds": summary.kinds,
                "step_names": list(STEP_NAMES), "box_scale": BOX_SCALE}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("wrote %d phantom cases to %s", n, out)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.phantoms",
                                     description="Write the synthetic phantom corpus (images, SFT/DPO/audio JSONL).")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="seed (same seed, same bytes)")
    parser.add_argument("--size", type=int, default=224, help="image width and height in pixels (default 224)")
    parser.add_argument("--audio", action="store_true", help="also speak one question per image with espeak-ng")
    parser.add_argument("--kinds", help=f"comma-separated subset of {','.join(KINDS)} (default: all)")
    parser.add_argument("--max-lesions", type=int, choices=range(0, len(LESION_COUNT_WEIGHTS)),
                        help="at most this many lesions per image (default 3)")
    parser.add_argument("--lesion-mm", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="lesion diameter range in mm (default: per organ, 6-50 mm)")
    parser.add_argument("--preference-errors", choices=("box", "all"), default="box",
                        help="DPO rejected answers: box errors only (default) or also self-contradicting chains")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
        config = CorpusConfig.restricted(kinds, args.max_lesions, tuple(args.lesion_mm) if args.lesion_mm else None)
        errors = ALL_PREFERENCE_ERRORS if args.preference_errors == "all" else PREFERENCE_ERRORS
        summary = write_corpus(args.out, args.n, args.seed, args.size, audio=args.audio, config=config,
                               preference_errors=errors)
    except XMedError as exc:
        sys.stderr.write(f"phantoms: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {summary.n} images to {summary.out}: " +
                     ", ".join(f"{k} {v}" for k, v in summary.counts.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
