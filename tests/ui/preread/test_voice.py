"""The spoken "pre-read": espeak-ng says it, the bundled Whisper (with the dictation's initial prompt) writes
it, and the dictation's command table turns it into the action the pre-read panel registers."""

from __future__ import annotations

import pytest

from app.dictation.text import Dictation
from inference.speech import record_file
from tests.inference.speech.test_pipeline import require_tts, synthesize

SPOKEN = [("Pre-read", "preread_series"), ("Pre-read the series", "preread_series"),
          ("Cancel pre-read", "cancel_preread")]


@pytest.mark.slow
def test_spoken_preread_commands(tmp_path, recognizer):
    require_tts()
    dictation = Dictation()
    got = {}
    for i, (spoken, _command) in enumerate(SPOKEN):
        audio = record_file(synthesize(spoken, tmp_path / f"say{i}.wav")).audio
        text = recognizer.transcribe(audio, initial_prompt=dictation.initial_prompt).text
        got[spoken] = (dictation.handle(text, "query").command, text)
    assert {k: v[0] for k, v in got.items()} == dict(SPOKEN), got
