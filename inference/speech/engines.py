"""Whisper speech recognition behind one interface.

``Recognizer.transcribe(audio, initial_prompt=None, cancel=None) -> Transcript``
takes mono float32 audio at 16 kHz. Two engines:

* :class:`FasterWhisperRecognizer`: CTranslate2 (int8 on CPU, float16 on GPU);
  reads CTranslate2 folders such as the bundled tiny.en.
* :class:`OpenAIWhisperRecognizer`: openai-whisper (PyTorch; GPU when present);
  reads an openai-whisper checkpoint (``.pt``) or converts a CTranslate2 folder
  in memory with :mod:`inference.speech.convert_ct2`, so both engines can run
  the same weights.

Models load once (lazily, or ahead with :meth:`load`) and are reused. Both are
called off the UI thread. ``cancel`` is polled between 30-second windows
(faster-whisper) or before every decoder step (openai-whisper); a cancelled
call returns a :class:`Transcript` with ``cancelled=True``.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.errors import XMedError
from inference.speech.models import SpeechModel, locate_model
from inference.types import CancelFn

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
ENGINES: tuple[str, ...] = ("faster-whisper", "openai-whisper")
#: Chosen by benchmarks/dictation.py: faster-whisper is several times faster on CPU.
DEFAULT_ENGINE = "faster-whisper"


class SpeechEngineError(XMedError):
    """The speech engine cannot run (package missing, model unreadable)."""


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str


@dataclass
class Transcript:
    """What was said, and how long recognising it took."""

    text: str
    segments: list[Segment] = field(default_factory=list)
    language: str = "en"
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0
    engine: str = ""
    model: str = ""
    cancelled: bool = False

    @property
    def real_time_factor(self) -> float:
        """Processing time / audio time (below 1 is faster than real time)."""
        return self.decode_seconds / self.audio_seconds if self.audio_seconds > 0 else 0.0


class _Cancelled(Exception):
    pass


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)


class Recognizer(ABC):
    """A speech recogniser for 16 kHz mono float32 audio."""

    engine_name: str = ""

    def __init__(self, model: SpeechModel | str | Path | None = None, *, device: str = "auto",
                 language: str = "en", beam_size: int = 5) -> None:
        self.model = model if isinstance(model, SpeechModel) else locate_model(model)
        self.requested_device = device
        self.language = language
        self.beam_size = beam_size
        self._lock = threading.Lock()
        self._loaded = False

    @property
    def device(self) -> str:
        return self._resolve_device()

    def describe(self) -> str:
        return f"{self.engine_name} · {self.model.label} · {self.device}"

    def load(self) -> None:
        """Load the weights now (the first transcription otherwise pays for it)."""
        with self._lock:
            if not self._loaded:
                t0 = time.perf_counter()
                self._load()
                self._loaded = True
                log.info("loaded %s in %.2f s", self.describe(), time.perf_counter() - t0)

    def transcribe(self, audio: np.ndarray, initial_prompt: str | None = None,
                   cancel: CancelFn | None = None) -> Transcript:
        audio = _check_audio(audio)
        seconds = len(audio) / SAMPLE_RATE
        result = Transcript("", audio_seconds=seconds, language=self.language,
                            engine=self.engine_name, model=self.model.label)
        if len(audio) == 0:
            return result
        if cancel is not None and cancel():
            result.cancelled = True
            return result
        self.load()
        t0 = time.perf_counter()
        with self._lock:
            try:
                segments = self._transcribe(audio, initial_prompt or None, cancel)
            except _Cancelled:
                result.cancelled = True
                segments = []
        result.decode_seconds = time.perf_counter() - t0
        result.segments = segments
        result.text = " ".join(s.text.strip() for s in segments if s.text.strip())
        return result

    @abstractmethod
    def _resolve_device(self) -> str: ...

    @abstractmethod
    def _load(self) -> None: ...

    @abstractmethod
    def _transcribe(self, audio: np.ndarray, prompt: str | None, cancel: CancelFn | None) -> list[Segment]: ...


class FasterWhisperRecognizer(Recognizer):
    engine_name = "faster-whisper"

    def __init__(self, model: SpeechModel | str | Path | None = None, *, device: str = "auto",
                 compute_type: str | None = None, language: str = "en", beam_size: int = 5,
                 cpu_threads: int = 0) -> None:
        super().__init__(model, device=device, language=language, beam_size=beam_size)
        if self.model.format != "ct2":
            raise SpeechEngineError(
                f"faster-whisper needs a CTranslate2 model folder; {self.model.path.name} is an "
                "openai-whisper checkpoint (choose the openai-whisper engine)."
            )
        self.compute_type = compute_type or ("float16" if self.device == "cuda" else "int8")
        self.cpu_threads = cpu_threads
        self._model = None

    def describe(self) -> str:
        return f"{super().describe()} · {self.compute_type}"

    def _resolve_device(self) -> str:
        if self.requested_device != "auto":
            return self.requested_device
        try:
            import ctranslate2
        except ImportError:
            return "cpu"
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"

    def _load(self) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise SpeechEngineError("Dictation needs the faster-whisper package, which is not installed.") from exc
        try:
            self._model = WhisperModel(str(self.model.path), device=self.device,
                                       compute_type=self.compute_type, cpu_threads=self.cpu_threads,
                                       local_files_only=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise SpeechEngineError(f"The dictation model {self.model.label} could not be loaded: {exc}") from exc

    def _transcribe(self, audio: np.ndarray, prompt: str | None, cancel: CancelFn | None) -> list[Segment]:
        assert self._model is not None
        language = "en" if self.model.english_only else self.language
        pieces, _info = self._model.transcribe(
            audio, language=language, beam_size=self.beam_size, initial_prompt=prompt,
            condition_on_previous_text=False, vad_filter=False, without_timestamps=True,
        )
        out: list[Segment] = []
        for piece in pieces:  # a generator: decoding happens window by window
            out.append(Segment(float(piece.start), float(piece.end), piece.text))
            if cancel is not None and cancel():
                raise _Cancelled
        return out


class OpenAIWhisperRecognizer(Recognizer):
    engine_name = "openai-whisper"

    def __init__(self, model: SpeechModel | str | Path | None = None, *, device: str = "auto",
                 language: str = "en", beam_size: int = 5) -> None:
        super().__init__(model, device=device, language=language, beam_size=beam_size)
        self._model = None

    def _resolve_device(self) -> str:
        if self.requested_device != "auto":
            return self.requested_device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self) -> None:
        try:
            from whisper.model import ModelDimensions, Whisper
        except ImportError as exc:
            raise SpeechEngineError("The openai-whisper engine is not installed; use faster-whisper.") from exc
        import torch

        if self.model.format == "ct2":
            from inference.speech.convert_ct2 import ct2_to_openai_checkpoint

            checkpoint = ct2_to_openai_checkpoint(self.model.path)
        else:
            try:
                checkpoint = torch.load(self.model.path, map_location="cpu", weights_only=True)
            except (RuntimeError, OSError, ValueError) as exc:
                raise SpeechEngineError(f"The Whisper checkpoint {self.model.path.name} cannot be read: {exc}") from exc
        try:
            model = Whisper(ModelDimensions(**checkpoint["dims"]))
            model.load_state_dict(checkpoint["model_state_dict"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise SpeechEngineError(f"{self.model.path.name} is not an openai-whisper checkpoint: {exc}") from exc
        heads = checkpoint.get("alignment_heads")
        if heads:
            mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
            for layer, head in heads:
                mask[layer, head] = True
            model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
        self._model = model.to(self.device).eval()

    def _transcribe(self, audio: np.ndarray, prompt: str | None, cancel: CancelFn | None) -> list[Segment]:
        assert self._model is not None
        hook = None
        if cancel is not None:
            def _poll(_module, _args):  # runs before every decoder step
                if cancel():
                    raise _Cancelled

            hook = self._model.decoder.register_forward_pre_hook(_poll)
        try:
            result = self._model.transcribe(
                audio, language="en" if not self._model.is_multilingual else self.language,
                initial_prompt=prompt, condition_on_previous_text=False, fp16=self.device == "cuda",
                beam_size=self.beam_size if self.beam_size > 1 else None,
                best_of=self.beam_size if self.beam_size > 1 else None,
                without_timestamps=True, verbose=None,
            )
        finally:
            if hook is not None:
                hook.remove()
        return [Segment(float(s["start"]), float(s["end"]), s["text"]) for s in result["segments"]]


def make_recognizer(engine: str = DEFAULT_ENGINE, model: str | Path | None = None, *,
                    device: str = "auto", language: str = "en", beam_size: int = 5) -> Recognizer:
    """The recogniser for an engine name from :data:`ENGINES` and a model path (None: bundled)."""
    if engine == "faster-whisper":
        return FasterWhisperRecognizer(model, device=device, language=language, beam_size=beam_size)
    if engine == "openai-whisper":
        return OpenAIWhisperRecognizer(model, device=device, language=language, beam_size=beam_size)
    raise SpeechEngineError(f"Unknown speech engine '{engine}'; choose one of: {', '.join(ENGINES)}.")
