"""Capture without a microphone: trimming, resampling, WAV reading, limits, and clear reasons."""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from inference.speech import capture
from inference.speech.capture import (
    SAMPLE_RATE,
    AudioDevice,
    AudioInputError,
    FileSource,
    MicrophoneRecorder,
    find_device,
    input_unavailable_reason,
    level_dbfs,
    meter_fraction,
    read_wav,
    resample,
    trim_silence,
)


def tone(freq: float, seconds: float, rate: int = SAMPLE_RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> Path:
    scaled = np.clip(data, -1, 1)
    if width == 2:
        raw = (scaled * 32767).astype("<i2").tobytes()
    else:  # 24-bit
        ints = (scaled * 8388607).astype("<i4")
        raw = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in ints)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def test_trim_keeps_speech_and_pad_only():
    silence = np.zeros(SAMPLE_RATE, np.float32)
    noise = (1e-4 * np.random.default_rng(1).standard_normal(SAMPLE_RATE)).astype(np.float32)
    audio = np.concatenate([silence, noise, tone(300, 1.0), noise, silence])
    out = trim_silence(audio, pad_seconds=0.2)
    assert 1.35 <= len(out) / SAMPLE_RATE <= 1.45
    assert trim_silence(np.zeros(SAMPLE_RATE, np.float32)).size == 0
    assert trim_silence(noise).size == 0  # hiss below the floor is not speech
    assert trim_silence(np.zeros(0, np.float32)).size == 0


def test_resample_keeps_pitch_and_removes_aliases():
    rate = 48_000
    out = resample(tone(1000, 1.0, rate), rate)
    assert len(out) == SAMPLE_RATE
    assert abs(dominant_freq(out, SAMPLE_RATE) - 1000) < 3
    # a 10 kHz tone cannot exist at 16 kHz: it must be filtered, not folded to 6 kHz
    aliased = resample(tone(10_000, 1.0, rate), rate)
    assert np.sqrt(np.mean(aliased[1000:-1000] ** 2)) < 0.01
    up = resample(tone(440, 0.5, 8000), 8000)
    assert len(up) == SAMPLE_RATE // 2 and abs(dominant_freq(up, SAMPLE_RATE) - 440) < 3


def test_read_wav_stereo_44k_and_24bit(tmp_path):
    stereo = np.repeat(tone(500, 0.5, 44_100)[:, None], 2, axis=1).reshape(-1)
    a = read_wav(write_wav(tmp_path / "s.wav", stereo, 44_100, channels=2))
    assert len(a) == SAMPLE_RATE // 2 and abs(dominant_freq(a, SAMPLE_RATE) - 500) < 3
    b = read_wav(write_wav(tmp_path / "p.wav", tone(700, 0.25, SAMPLE_RATE, amp=0.25), SAMPLE_RATE, width=3))
    assert abs(np.abs(b).max() - 0.25) < 1e-3
    (tmp_path / "x.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(AudioInputError, match="not a PCM WAV"):
        read_wav(tmp_path / "x.wav")
    with pytest.raises(AudioInputError, match="does not exist"):
        read_wav(tmp_path / "missing.wav")


def test_file_source_levels_and_max_length(tmp_path):
    wav = write_wav(tmp_path / "t.wav", np.concatenate([tone(300, 3.0), np.zeros(SAMPLE_RATE, np.float32)]),
                    SAMPLE_RATE)
    levels, limits = [], []
    src = FileSource(wav, max_seconds=2.0, on_level=levels.append, on_limit=lambda: limits.append(1))
    src.start()
    rec = src.stop()
    assert limits == [1] and rec.hit_max_length and rec.captured_seconds == pytest.approx(2.0)
    assert levels and max(levels) == pytest.approx(level_dbfs(tone(300, 0.05)), abs=0.5)
    full = FileSource(wav, max_seconds=60)
    full.start()
    rec = full.stop()
    assert not rec.hit_max_length and rec.captured_seconds == pytest.approx(4.0)
    assert 3.0 <= rec.seconds <= 3.3  # the trailing second of silence is trimmed


def test_realtime_file_source_stops_early(tmp_path):
    wav = write_wav(tmp_path / "t.wav", tone(300, 5.0), SAMPLE_RATE)
    src = FileSource(wav, realtime=True, trim=False)
    src.start()
    import time

    time.sleep(0.3)
    rec = src.stop()
    assert 0.1 < rec.captured_seconds < 2.0


def test_level_and_meter():
    assert level_dbfs(np.zeros(100, np.float32)) == -120.0
    assert level_dbfs(np.ones(100, np.float32)) == pytest.approx(0.0)
    assert meter_fraction(-60) == 0.0 and meter_fraction(0) == 1.0 and meter_fraction(-30) == 0.5


DEVICES = [AudioDevice(0, "HDA Intel: ALC892 Analog", "ALSA", 2, 44100.0),
           AudioDevice(3, "USB PowerMic III", "ALSA", 1, 16000.0, is_default=True)]


def test_find_device_by_default_index_and_name():
    assert find_device(None, DEVICES).index == 3
    assert find_device("", DEVICES).index == 3
    assert find_device(0, DEVICES).index == 0 and find_device("0", DEVICES).index == 0
    assert find_device("powermic", DEVICES).index == 3
    assert find_device("Dictaphone", DEVICES) is None
    assert find_device(None, []) is None


def test_reasons_without_portaudio_or_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as when the package is absent
    reason = input_unavailable_reason()
    assert reason and "sounddevice" in reason
    with pytest.raises(AudioInputError, match="unavailable"):
        MicrophoneRecorder().start()
    monkeypatch.setattr(capture, "_sounddevice", lambda: (None, "Dictation is unavailable: the PortAudio audio "
                                                          "library is not installed (Debian: libportaudio2)."))
    assert "PortAudio" in MicrophoneRecorder().unavailable_reason()


def test_reasons_with_portaudio_but_no_microphone(monkeypatch):
    pytest.importorskip("sounddevice", reason="PortAudio/sounddevice not installed")
    monkeypatch.setattr(capture, "list_input_devices", lambda refresh=False: [])
    assert "No microphone" in input_unavailable_reason()
    with pytest.raises(AudioInputError, match="No microphone"):
        MicrophoneRecorder().start()
    monkeypatch.setattr(capture, "list_input_devices", lambda refresh=False: DEVICES)
    assert input_unavailable_reason() is None
    assert "not connected" in input_unavailable_reason("Dictaphone")
    assert MicrophoneRecorder().stop().audio.size == 0  # stop without start is harmless
