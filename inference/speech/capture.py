"""Audio capture for push-to-talk dictation: 16 kHz mono float32.

* :class:`MicrophoneRecorder`: sounddevice (PortAudio) input stream, started on
  key/button press and stopped on release; reports the level (dBFS) as it
  records, stops taking audio at a maximum length, and trims leading/trailing
  silence from what it returns.
* :class:`FileSource`: the same interface fed from a WAV file, for tests and
  ``xmedgpt transcribe FILE``.
* :func:`input_unavailable_reason`: why recording cannot work here (no
  PortAudio, no input device, the chosen device missing) as one sentence, or
  None when it can. Nothing here raises because a microphone is missing.
"""

from __future__ import annotations

import logging
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from inference.errors import XMedError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
DEFAULT_MAX_SECONDS = 120.0
SILENCE_FLOOR_DB = -50.0  # frames quieter than this are never speech
SPEECH_BELOW_PEAK_DB = 35.0  # frames this far below the loudest frame count as silence
LevelFn = Callable[[float], None]


class AudioInputError(XMedError):
    """Recording or reading audio failed."""


@dataclass(frozen=True)
class AudioDevice:
    index: int
    name: str
    host_api: str
    channels: int
    default_samplerate: float
    is_default: bool = False

    def __str__(self) -> str:
        return f"{self.name} ({self.host_api})"


@dataclass
class Recording:
    """Captured audio (16 kHz mono float32, trimmed) and what happened while capturing."""

    audio: np.ndarray
    captured_seconds: float  # before trimming
    hit_max_length: bool = False

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


# ---- signal helpers ---------------------------------------------------------------


def level_dbfs(block: np.ndarray) -> float:
    """RMS level of a block in dB relative to full scale (−120 for digital silence)."""
    if block.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))
    return max(-120.0, 20.0 * np.log10(rms)) if rms > 0 else -120.0


def meter_fraction(dbfs: float, floor_db: float = -60.0) -> float:
    """Map a dBFS level to 0..1 for a level meter."""
    return float(np.clip((dbfs - floor_db) / -floor_db, 0.0, 1.0))


def trim_silence(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, *, pad_seconds: float = 0.2,
                 frame_seconds: float = 0.02) -> np.ndarray:
    """Drop leading and trailing silence, keeping ``pad_seconds`` around the speech.

    A frame is speech when it is above :data:`SILENCE_FLOOR_DB` and within
    :data:`SPEECH_BELOW_PEAK_DB` of the loudest frame. All silence → empty array.
    """
    audio = np.asarray(audio, dtype=np.float32)
    frame = max(1, int(frame_seconds * sample_rate))
    n_frames = len(audio) // frame + (1 if len(audio) % frame else 0)
    if n_frames == 0:
        return audio[:0]
    padded = np.zeros(n_frames * frame, dtype=np.float32)
    padded[: len(audio)] = audio
    rms = np.sqrt(np.mean(np.square(padded.reshape(n_frames, frame), dtype=np.float64), axis=1))
    db = 20.0 * np.log10(np.maximum(rms, 1e-9))
    threshold = max(SILENCE_FLOOR_DB, float(db.max()) - SPEECH_BELOW_PEAK_DB)
    voiced = np.flatnonzero(db > threshold)
    if voiced.size == 0:
        return audio[:0]
    pad = int(pad_seconds * sample_rate)
    start = max(0, int(voiced[0]) * frame - pad)
    end = min(len(audio), (int(voiced[-1]) + 1) * frame + pad)
    return audio[start:end]


def resample(audio: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling: windowed-sinc low-pass below the new Nyquist, then interpolation."""
    audio = np.asarray(audio, dtype=np.float32)
    if from_rate == to_rate or len(audio) == 0:
        return audio
    if to_rate < from_rate:
        cutoff = 0.45 * to_rate / from_rate  # cycles per input sample, a little under Nyquist
        taps = np.arange(-64, 65, dtype=np.float64)
        kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.blackman(len(taps))
        kernel /= kernel.sum()
        audio = np.convolve(audio, kernel, mode="same").astype(np.float32)
    n_out = int(round(len(audio) * to_rate / from_rate))
    positions = np.arange(n_out, dtype=np.float64) * (from_rate / to_rate)
    return np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)


def read_wav(path: Path) -> np.ndarray:
    """A PCM WAV file (8/16/24/32-bit, any rate, any channels) as 16 kHz mono float32."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise AudioInputError(f"The audio file {path} does not exist.") from None
    except (wave.Error, EOFError, OSError) as exc:
        raise AudioInputError(f"{path.name} is not a PCM WAV file this workstation can read ({exc}).") from exc
    if width == 1:
        data = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        data = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        data = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 8388608.0
    elif width == 4:
        data = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise AudioInputError(f"{path.name} uses {8 * width}-bit samples, which are not supported.")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return resample(data, rate, SAMPLE_RATE)


# ---- PortAudio ------------------------------------------------------------------


def _sounddevice() -> tuple[ModuleType | None, str | None]:
    """The sounddevice module, or None and the reason it cannot be used."""
    try:
        import sounddevice
    except OSError:
        return None, "Dictation is unavailable: the PortAudio audio library is not installed (Debian: libportaudio2)."
    except ImportError:
        return None, "Dictation is unavailable: the sounddevice package is not installed."
    return sounddevice, None


def list_input_devices(refresh: bool = False) -> list[AudioDevice]:
    """Input devices PortAudio sees now (empty when none, or when PortAudio is missing)."""
    sd, _reason = _sounddevice()
    if sd is None:
        return []
    try:
        if refresh:  # PortAudio enumerates at initialisation; re-initialise to see new devices
            sd._terminate()
            sd._initialize()
        devices = sd.query_devices()
        apis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except Exception as exc:  # PortAudio errors are not one class across versions
        log.warning("cannot list audio devices: %s", exc)
        return []
    out = []
    for dev in devices:
        if dev["max_input_channels"] > 0:
            out.append(AudioDevice(int(dev["index"]), dev["name"], apis[dev["hostapi"]]["name"],
                                   int(dev["max_input_channels"]), float(dev["default_samplerate"]),
                                   int(dev["index"]) == default_in))
    return out


def find_device(choice: str | int | None, devices: list[AudioDevice]) -> AudioDevice | None:
    """The device for a Settings value: None/"" → system default; an index; or (part of) a name."""
    if choice is None or choice == "":
        return next((d for d in devices if d.is_default), devices[0] if devices else None)
    if isinstance(choice, int) or str(choice).isdigit():
        return next((d for d in devices if d.index == int(choice)), None)
    exact = [d for d in devices if d.name == choice]
    if exact:
        return exact[0]
    partial = [d for d in devices if str(choice).lower() in d.name.lower()]
    return partial[0] if partial else None


def input_unavailable_reason(device: str | int | None = None) -> str | None:
    """Why recording from ``device`` cannot work here, in one sentence; None when it can."""
    sd, reason = _sounddevice()
    if sd is None:
        return reason
    devices = list_input_devices()
    if not devices:
        return "No microphone was found: connect one, then choose it in Settings → Dictation → Microphone."
    chosen = find_device(device, devices)
    if chosen is None:
        return (f"The microphone '{device}' chosen in Settings is not connected: connect it, or choose another "
                "in Settings → Dictation → Microphone.")
    return None


# ---- recorders ---------------------------------------------------------------------


class _Accumulator:
    """Collects blocks up to a maximum length; reports the level at most every ``level_interval`` s."""

    def __init__(self, max_seconds: float, on_level: LevelFn | None, on_limit: Callable[[], None] | None,
                 level_interval: float = 0.03) -> None:
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.on_level = on_level
        self.on_limit = on_limit
        self.level_interval = level_interval
        self._chunks: list[np.ndarray] = []
        self._count = 0
        self._last_level = 0.0
        self._peak = -120.0
        self._lock = threading.Lock()
        self.hit_max_length = False

    def add(self, block: np.ndarray) -> None:
        notify_limit = False
        with self._lock:
            room = self.max_samples - self._count
            if room <= 0:
                return
            if len(block) >= room:
                block = block[:room]
                self.hit_max_length = notify_limit = True
            self._chunks.append(np.array(block, dtype=np.float32, copy=True))
            self._count += len(block)
        if self.on_level is not None:
            self._peak = max(self._peak, level_dbfs(block))  # the meter shows the peak since its last update
            now = time.monotonic()
            if notify_limit or now - self._last_level >= self.level_interval:
                self.flush_level(now)
        if notify_limit and self.on_limit is not None:
            self.on_limit()

    def flush_level(self, now: float | None = None) -> None:
        """Report the peak level held since the last report (if any)."""
        if self.on_level is not None and self._peak > -120.0:
            self._last_level = time.monotonic() if now is None else now
            peak, self._peak = self._peak, -120.0
            self.on_level(peak)

    def take(self, trim: bool) -> Recording:
        with self._lock:
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
            self._chunks, self._count = [], 0
        captured = len(audio) / SAMPLE_RATE
        return Recording(trim_silence(audio) if trim else audio, captured, self.hit_max_length)


class MicrophoneRecorder:
    """Push-to-talk recording from a PortAudio input device.

    ``start()`` on key press, ``stop()`` on release returns the :class:`Recording`.
    ``on_level(dbfs)`` is called from the audio thread while recording; ``on_limit()``
    once when ``max_seconds`` is reached (the caller should then stop).

    ``latency`` is PortAudio's suggested input latency ("low" for a microphone). A
    virtual ALSA device without a clock (a WAV file over the ``null`` PCM, as the tests
    use) delivers its whole file at once, and PortAudio drops what overflows its buffer;
    such a device needs a latency (buffer) longer than the utterance, e.g. 20 seconds.
    """

    def __init__(self, device: str | int | None = None, *, max_seconds: float = DEFAULT_MAX_SECONDS,
                 on_level: LevelFn | None = None, on_limit: Callable[[], None] | None = None,
                 trim: bool = True, block_seconds: float = 0.05, latency: float | str = "low") -> None:
        self.device = device
        self.latency = latency  # PortAudio input latency; see the class docstring
        self.max_seconds = max_seconds
        self.on_level = on_level
        self.on_limit = on_limit
        self.trim = trim
        self.block_seconds = block_seconds
        self._stream = None
        self._acc: _Accumulator | None = None

    def unavailable_reason(self) -> str | None:
        return input_unavailable_reason(self.device)

    @property
    def is_recording(self) -> bool:
        return self._stream is not None

    def start(self) -> None:
        if self._stream is not None:
            return
        sd, reason = _sounddevice()
        if sd is None:
            raise AudioInputError(reason or "Dictation is unavailable.")
        chosen = find_device(self.device, list_input_devices())
        if chosen is None:
            raise AudioInputError(input_unavailable_reason(self.device) or "No microphone was found.")
        acc = _Accumulator(self.max_seconds, self.on_level, self.on_limit)
        errors = []
        # 16 kHz directly where the device (or ALSA's plug layer) can; else its own rate, resampled.
        for rate in dict.fromkeys((SAMPLE_RATE, int(chosen.default_samplerate))):
            def callback(indata, _frames, _time, status, rate=rate):
                if status:
                    log.debug("audio input status: %s", status)
                mono = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1)
                acc.add(mono if rate == SAMPLE_RATE else resample(mono, rate, SAMPLE_RATE))

            stream = None
            try:
                stream = sd.InputStream(device=chosen.index, samplerate=rate, channels=1, dtype="float32",
                                        blocksize=int(rate * self.block_seconds), latency=self.latency,
                                        callback=callback)
                stream.start()
            except Exception as exc:  # sounddevice.PortAudioError, ValueError for bad settings
                errors.append(f"{rate} Hz: {exc}")
                if stream is not None:
                    stream.close()
                continue
            self._stream, self._acc = stream, acc
            log.info("recording from %s at %d Hz", chosen, rate)
            return
        raise AudioInputError(f"The microphone {chosen.name} cannot record ({'; '.join(errors)}).")

    def stop(self) -> Recording:
        """Stop recording and return what was captured (trimmed); empty if not recording."""
        stream, acc = self._stream, self._acc
        self._stream = self._acc = None
        if stream is None or acc is None:
            return Recording(np.zeros(0, np.float32), 0.0)
        try:
            stream.stop()
        finally:
            stream.close()
        return acc.take(self.trim)


class FileSource:
    """A WAV file played through the recorder's path (levels, maximum length, trimming).

    With ``realtime=True`` the file is fed at speaking pace from a thread and
    ``stop()`` returns what had arrived; otherwise ``start()`` feeds it at once.
    """

    def __init__(self, path: Path, *, max_seconds: float = DEFAULT_MAX_SECONDS,
                 on_level: LevelFn | None = None, on_limit: Callable[[], None] | None = None,
                 trim: bool = True, realtime: bool = False, block_seconds: float = 0.05) -> None:
        self.path = Path(path)
        self.audio = read_wav(self.path)
        self.max_seconds = max_seconds
        self.on_level = on_level
        self.on_limit = on_limit
        self.trim = trim
        self.realtime = realtime
        self.block = int(block_seconds * SAMPLE_RATE)
        self._acc: _Accumulator | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def unavailable_reason(self) -> str | None:
        return None

    @property
    def is_recording(self) -> bool:
        return self._acc is not None

    def _feed(self, acc: _Accumulator) -> None:
        for i in range(0, len(self.audio), self.block):
            if self._stop.is_set():
                return
            acc.add(self.audio[i:i + self.block])
            if self.realtime:
                self._stop.wait(self.block / SAMPLE_RATE)
        acc.flush_level()

    def start(self) -> None:
        if self._acc is not None:
            return
        self._stop.clear()
        self._acc = _Accumulator(self.max_seconds, self.on_level, self.on_limit)
        if self.realtime:
            self._thread = threading.Thread(target=self._feed, args=(self._acc,), daemon=True)
            self._thread.start()
        else:
            self._feed(self._acc)

    def stop(self) -> Recording:
        acc, self._acc = self._acc, None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if acc is None:
            return Recording(np.zeros(0, np.float32), 0.0)
        return acc.take(self.trim)


def record_file(path: Path, *, max_seconds: float = DEFAULT_MAX_SECONDS, trim: bool = True) -> Recording:
    """Everything in a WAV file as one push-to-talk recording."""
    source = FileSource(path, max_seconds=max_seconds, trim=trim)
    source.start()
    return source.stop()
