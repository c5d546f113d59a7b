"""A spoken question to the assistant: sent to the model as audio, or transcribed by Whisper.

The paper's direct audio path: when the loaded model carries an audio encoder and
projector (audio post-training, :mod:`inference.engine.audio`) and Settings allow
it (``spoken_query_audio``), the recorded 16 kHz audio goes to the model in place
of the question's text, with the slice on screen; nothing is transcribed.
Otherwise Whisper transcribes it, the dictation text rules clean it up, and the
text is asked as if typed. Either way the answer says which path it took
(:attr:`SpokenAnswer.message`): "Spoken query sent as audio to <model>" or
"Spoken query transcribed by Whisper tiny.en: “…”".

Qt-free: the UI runs :meth:`SpokenQuery.ask` off its thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.assistant.ask import Assistant, AssistantAnswer, AssistantUpdate
from app.core.errors import XMedError
from app.dicom.model import Volume, Window
from app.dictation.text import Dictation
from inference.speech.engines import Recognizer
from inference.types import CancelFn, ChatRequest, Engine, Generation

log = logging.getLogger(__name__)

AUDIO = "audio"
WHISPER = "whisper"
#: Where the spoken question goes in the prompt (:data:`inference.engine.audio.AUDIO_PLACEHOLDER`;
#: not imported from there, which would load torch with the window).
AUDIO_PLACEHOLDER = "<audio>"
AUDIO_CONFIG = "audio_config.json"
AUDIO_PROJECTOR = "audio_projector.safetensors"
#: What an answer heard as audio records as its question (there is no text).
HEARD_QUESTION = "(spoken question, sent as audio)"


class SpokenQueryError(XMedError):
    """A spoken question that cannot be asked (nothing heard, no words, no model)."""


@dataclass(frozen=True)
class SpokenQueryPath:
    kind: str  # AUDIO or WHISPER
    label: str  # "tiny + audio · CPU" (audio) or "Whisper tiny.en" (whisper)

    def describe(self) -> str:
        if self.kind == AUDIO:
            return f"Spoken query sent as audio to {self.label}"
        return f"Spoken query transcribed by {self.label}"


@dataclass
class SpokenAnswer:
    answer: AssistantAnswer
    path: SpokenQueryPath
    transcript: str | None  # None on the audio path: nothing was transcribed

    @property
    def message(self) -> str:
        base = self.path.describe()
        return f"{base}: “{self.transcript}”" if self.transcript is not None else f"{base}."


def can_hear(engine: Engine | None) -> bool:
    """Whether the engine takes a spoken question as audio (see :class:`inference.engine.audio.AudioQueryEngine`)."""
    return bool(getattr(engine, "supports_audio", False)) and callable(getattr(engine, "stream_audio", None))


def has_audio(folder) -> bool:
    """Whether a model folder carries an audio encoder and projector (same test as
    :func:`inference.engine.audio.has_audio`, without importing torch)."""
    if folder is None:
        return False
    folder = Path(folder)
    return (folder / AUDIO_CONFIG).is_file() and (folder / AUDIO_PROJECTOR).is_file()


def with_hearing(engine: Engine, folder=None) -> Engine:
    """``engine`` able to hear when its model folder carries an audio encoder and projector.

    The audio parts are loaded beside the already loaded local model (no second copy of
    it); a remote engine, a folder without them, or parts that cannot be read leave the
    engine as it is (spoken queries then go through Whisper; the reason is logged).
    """
    if folder is None or can_hear(engine) or not has_audio(folder) or not hasattr(engine, "tokenizer"):
        return engine
    from inference.engine.audio import (
        AudioModelError,
        AudioQueryEngine,
        load_audio_parts,
        read_audio_config,
    )

    try:
        cfg = read_audio_config(folder)
        encoder, projector, features = load_audio_parts(folder, cfg)
        return AudioQueryEngine(engine, encoder, projector, features, int(cfg["audio_token_id"]))
    except AudioModelError as exc:
        log.warning("spoken queries go through Whisper: %s", exc)
        return engine


def whisper_label(recognizer: Recognizer) -> str:
    return f"Whisper {recognizer.model.label}"


def choose_path(engine: Engine | None, recognizer: Recognizer | None, prefer_audio: bool = True) -> SpokenQueryPath:
    """Audio when the model can hear and Settings allow it, else Whisper (when there is a recogniser)."""
    if engine is not None and prefer_audio and can_hear(engine):
        return SpokenQueryPath(AUDIO, engine.describe())
    if recognizer is None:
        raise SpokenQueryError("Spoken questions need the Whisper dictation model or a model that can hear; "
                               "neither is available.")
    return SpokenQueryPath(WHISPER, whisper_label(recognizer))


class _Heard:
    """An Engine that answers ``request`` with ``audio`` in place of the question's text."""

    def __init__(self, engine, audio: np.ndarray) -> None:
        self.engine = engine
        self.audio = audio
        self.processor = getattr(engine, "processor", None)  # the image layout (Assistant reads it)

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def describe(self) -> str:
        return self.engine.describe()

    def generate(self, request: ChatRequest, cancel: CancelFn | None = None) -> Generation:
        return self.engine.generate_audio(self.audio, request, cancel)

    def stream(self, request: ChatRequest, cancel: CancelFn | None = None) -> Iterator[str]:
        return self.engine.stream_audio(self.audio, request, cancel)

    def sample(self, requests: Sequence[ChatRequest], n: int, temperature: float = 1.0, top_p: float = 0.9,
               cancel: CancelFn | None = None) -> list[list[Generation]]:
        return self.engine.sample(requests, n, temperature, top_p, cancel)


class SpokenQuery:
    """Asks a recorded question about one slice through whichever path applies."""

    def __init__(self, engine: Engine, recognizer: Recognizer | None, dictation: Dictation | None = None, *,
                 prefer_audio: bool = True, assistant: Assistant | None = None) -> None:
        self.engine = engine
        self.recognizer = recognizer
        self.dictation = dictation or Dictation()
        self.prefer_audio = prefer_audio
        self.assistant = assistant or Assistant(engine)

    @property
    def path(self) -> SpokenQueryPath:
        return choose_path(self.engine, self.recognizer, self.prefer_audio)

    def transcribe(self, audio: np.ndarray, cancel: CancelFn | None = None) -> str:
        """Whisper's text of the question, cleaned by the dictation rules ("" when cancelled)."""
        assert self.recognizer is not None
        result = self.recognizer.transcribe(audio, initial_prompt=self.dictation.initial_prompt, cancel=cancel)
        if result.cancelled:
            return ""
        handled = self.dictation.handle(result.text, "query")
        text = (handled.raw if handled.is_command else handled.text).strip()
        if not text:
            raise SpokenQueryError("No words were recognised in the spoken question.")
        return text

    def ask(self, audio: np.ndarray, volume: Volume, frame: int, window: Window | None = None, *,
            invert: bool = False, study_description: str = "", cancel: CancelFn | None = None,
            on_update: Callable[[AssistantUpdate], None] | None = None) -> SpokenAnswer:
        """Ask the spoken ``audio`` (16 kHz mono float32) about slice ``frame``; blocks (run it off the UI thread)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size < 1600:  # 0.1 s
            raise SpokenQueryError("Nothing was heard; hold the key while you speak.")
        path = self.path
        kwargs = dict(invert=invert, study_description=study_description, cancel=cancel, on_update=on_update)
        if path.kind == AUDIO:
            heard = Assistant(_Heard(self.engine, audio), image_spec=self.assistant.image_spec,
                              max_new_tokens=self.assistant.max_new_tokens)
            answer = heard.ask(volume, frame, window, AUDIO_PLACEHOLDER, **kwargs)
            answer = dataclasses.replace(answer, question=HEARD_QUESTION)
            log.info("spoken query answered from audio by %s", path.label)
            return SpokenAnswer(answer, path, None)
        text = self.transcribe(audio, cancel)
        answer = self.assistant.ask(volume, frame, window, text, **kwargs)
        log.info("spoken query transcribed by %s: %r", path.label, text)
        return SpokenAnswer(answer, path, text)
