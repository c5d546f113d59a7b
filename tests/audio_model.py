"""A tiny audio-capable model folder for tests: the tiny InternVL model after audio post-training's
micro configuration (2 real steps), built once per test session."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "training" / "configs" / "audio_micro.yaml"
_BUILT: dict[Path, Path] = {}


def write_tone(path: Path, freq: float, seconds: float = 1.5, rate: int = 22050) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def build_audio_model(tiny: Path, root: Path) -> Path:
    """Run ``python -m training.audio_posttrain`` (micro config) on ``tiny``; the finished folder."""
    if tiny in _BUILT:
        return _BUILT[tiny]
    from training.audio_posttrain import main
    from training.phantoms import write_corpus

    data = write_corpus(root / "phantoms", n=3, seed=2, size=64).out
    (data / "audio").mkdir()
    lines = []
    for i, (freq, answer) in enumerate([(300.0, "yes"), (900.0, "no"), (600.0, "2")]):
        write_tone(data / "audio" / f"{i}.wav", freq)
        lines.append({"audio": f"audio/{i}.wav", "image": f"images/{i:06d}.png", "transcript": "question",
                      "conversations": [{"from": "human", "value": "<image>\n<audio>"},
                                        {"from": "gpt", "value": answer}]})
    (data / "audio.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = root / "audio-run"
    code = main(["--config", str(MICRO), "--set", f"model.path={tiny}", "--set", f"data.meta={data / 'audio.jsonl'}",
                 "--set", f"train.output_dir={out}"])
    if code != 0:
        raise RuntimeError("audio post-training (micro) failed")
    _BUILT[tiny] = out / "final"
    return out / "final"
