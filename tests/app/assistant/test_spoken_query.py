"""Spoken questions: a model that can hear gets the audio (no transcription at all); a model that
cannot, or Settings saying no, falls back to Whisper; each answer says which path it took."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.assistant.spoken_query import (
    AUDIO,
    HEARD_QUESTION,
    WHISPER,
    SpokenQuery,
    SpokenQueryError,
    can_hear,
    choose_path,
)
from app.core.settings import Settings
from inference.engine.audio import AudioQueryEngine
from inference.engine.local import LocalEngine
from inference.speech import read_wav
from tests.app.assistant.test_ask import make_volume
from tests.audio_model import build_audio_model
from tests.inference.speech.test_pipeline import require_tts, synthesize

QUESTION = "Is there a nodule in the right lung"


class Spy:
    """The real recogniser, counting the transcriptions it is asked for."""

    def __init__(self, recognizer) -> None:
        self.recognizer = recognizer
        self.model = recognizer.model
        self.calls = 0

    def describe(self) -> str:
        return self.recognizer.describe()

    def transcribe(self, audio, initial_prompt=None, cancel=None):
        self.calls += 1
        return self.recognizer.transcribe(audio, initial_prompt=initial_prompt, cancel=cancel)


@pytest.fixture(scope="session")
def audio_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return build_audio_model(tiny_model_dir, tmp_path_factory.mktemp("audio-model"))


@pytest.fixture(scope="module")
def hearing(audio_model_dir) -> AudioQueryEngine:
    return AudioQueryEngine.from_folder(audio_model_dir, device="cpu")


@pytest.fixture(scope="module")
def deaf(tiny_model_dir) -> LocalEngine:
    return LocalEngine.from_folder(tiny_model_dir, device="cpu")


@pytest.fixture
def whisper(recognizer):
    return recognizer  # the session's bundled tiny.en (tests/conftest.py)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> np.ndarray:
    require_tts()
    return read_wav(synthesize(QUESTION, tmp_path_factory.mktemp("spoken") / "question.wav"))


def test_path_follows_the_model_and_settings(hearing, deaf, whisper):
    assert can_hear(hearing) and not can_hear(deaf)
    assert choose_path(hearing, whisper).kind == AUDIO
    assert choose_path(hearing, whisper, prefer_audio=Settings().spoken_query_audio).kind == AUDIO
    assert choose_path(hearing, whisper, prefer_audio=False).kind == WHISPER
    assert whisper.model.label.startswith("tiny.en")
    assert choose_path(deaf, whisper).describe() == f"Spoken query transcribed by Whisper {whisper.model.label}"
    assert choose_path(hearing, None).describe() == f"Spoken query sent as audio to {hearing.describe()}"
    with pytest.raises(SpokenQueryError):
        choose_path(deaf, None)


def test_a_loaded_model_gains_its_hearing_from_its_folder(deaf, tiny_model_dir, audio_model_dir):
    from app.assistant.spoken_query import with_hearing

    assert with_hearing(deaf, tiny_model_dir) is deaf  # no audio parts: unchanged
    assert with_hearing(deaf, None) is deaf
    plain = LocalEngine.from_folder(audio_model_dir, device="cpu")
    hears = with_hearing(plain, audio_model_dir)
    assert can_hear(hears) and hears.engine is plain  # the same loaded model, not a second copy
    assert choose_path(hears, None).kind == AUDIO


def test_a_model_that_hears_answers_from_the_audio_without_transcription(hearing, whisper, spoken):
    spy = Spy(whisper)
    volume = make_volume()
    query = SpokenQuery(hearing, spy, prefer_audio=True)
    result = query.ask(spoken, volume, 1, volume.default_window)
    assert spy.calls == 0 and result.transcript is None  # nothing was transcribed
    assert result.path.kind == AUDIO
    assert result.message == f"Spoken query sent as audio to {hearing.describe()}."
    a = result.answer
    assert a.question == HEARD_QUESTION and a.raw_text and a.model_id == hearing.model_id
    assert a.frame == 1 and a.finish_reason == "stop"
    # it is the model's greedy answer to that audio with the assistant's prompt and the slice's image
    request = query.assistant.prepare(volume, 1, volume.default_window, "<audio>").request
    assert "<audio>" in request.prompt
    heard = hearing.generate_audio(spoken, request)
    assert a.raw_text == heard.text
    # and it depends on what was said: another sound moves the model's first-token distribution
    hum = (0.2 * np.sin(np.arange(spoken.size) / 3.0)).astype(np.float32)
    assert hearing.generate_audio(hum, request).token_logprobs[0] != pytest.approx(heard.token_logprobs[0], abs=1e-6)
    assert spy.calls == 0


def test_a_model_without_audio_falls_back_to_whisper(deaf, whisper, spoken):
    spy = Spy(whisper)
    volume = make_volume()
    result = SpokenQuery(deaf, spy).ask(spoken, volume, 0, volume.default_window)
    assert spy.calls == 1 and result.path.kind == WHISPER
    assert result.transcript.lower().rstrip("?.") == QUESTION.lower()
    assert result.answer.question == result.transcript  # asked as if typed
    assert result.message == f"Spoken query transcribed by Whisper {whisper.model.label}: “{result.transcript}”"


def test_settings_can_keep_a_hearing_model_on_whisper(hearing, whisper, spoken):
    spy = Spy(whisper)
    volume = make_volume()
    result = SpokenQuery(hearing, spy, prefer_audio=False).ask(spoken, volume, 0, volume.default_window)
    assert spy.calls == 1 and result.path.kind == WHISPER and result.answer.question == result.transcript


def test_silence_is_a_message_not_a_crash(deaf, whisper):
    volume = make_volume()
    with pytest.raises(SpokenQueryError, match="Nothing was heard"):
        SpokenQuery(deaf, whisper).ask(np.zeros(100, np.float32), volume, 0)


def test_the_placeholder_and_folder_test_agree_with_inference(audio_model_dir, tiny_model_dir):
    from app.assistant import spoken_query
    from inference.engine import audio

    assert spoken_query.AUDIO_PLACEHOLDER == audio.AUDIO_PLACEHOLDER
    assert (spoken_query.AUDIO_CONFIG, spoken_query.AUDIO_PROJECTOR) == (audio.AUDIO_CONFIG, audio.AUDIO_PROJECTOR)
    for folder in (audio_model_dir, tiny_model_dir, None):
        assert spoken_query.has_audio(folder) == audio.has_audio(folder)


def test_importing_the_router_does_not_load_torch():
    import subprocess
    import sys

    code = "import sys, app.assistant.spoken_query, ui.dictation.controller; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "False", out.stderr[-500:]
