"""Proof: synthesised radiology dictation through the whole pipeline.

espeak-ng speaks each sentence to a WAV (resampled to 16 kHz by sox). The audio
goes (a) through the WAV file source and (b) through a virtual ALSA capture
device backed by the same samples, opened by sounddevice/PortAudio in a fresh
subprocess; then the bundled tiny.en (faster-whisper), then the radiology text
rules. Checked: corpus word error rate ≤ 0.25 and exact voice commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.dictation.text import Dictation
from inference.speech import record_file
from inference.speech.wer import edit_distance, word_error_rate, words

REPO = Path(__file__).resolve().parents[3]
VOICE = ("-v", "en-us", "-s", "160")

#: (what the reader says, what must land in the report)
SENTENCES: list[tuple[str, str]] = [
    ("There is a five millimeter nodule in the right upper lobe period",
     "There is a 5 mm nodule in the right upper lobe."),
    ("No pleural effusion or pneumothorax period", "No pleural effusion or pneumothorax."),
    ("The liver measures eighteen centimeters comma with diffuse hepatic steatosis period",
     "The liver measures 18 cm, with diffuse hepatic steatosis."),
    ("A point five centimeter hypodense lesion in the left kidney period new paragraph no hydronephrosis period",
     "A 0.5 cm hypodense lesion in the left kidney.\n\nNo hydronephrosis."),
    ("Impression colon stable consolidation in the left lower lobe period",
     "Impression: stable consolidation in the left lower lobe."),
]
COMMANDS: list[tuple[str, str]] = [
    ("Next image", "next_slice"),
    ("Previous series", "previous_series"),
    ("Lung window", "preset_2"),
    ("Accept finding", "accept_finding"),
    ("Sign report", "sign_report"),
]


def synthesize(text: str, out: Path) -> Path:
    """espeak-ng → 16 kHz mono 16-bit WAV at ``out``."""
    raw = out.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", *VOICE, "-w", str(raw), text], check=True, capture_output=True, timeout=60)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


def require_tts() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian: apt-get install espeak-ng sox)")


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory) -> Path:
    require_tts()
    folder = tmp_path_factory.mktemp("speech")
    for i, (spoken, _expected) in enumerate(SENTENCES + COMMANDS):
        synthesize(spoken, folder / f"utt{i}.wav")
    return folder


@pytest.fixture(scope="module")
def dictation() -> Dictation:
    return Dictation()


def _corpus_wer(pairs: list[tuple[str, str]]) -> float:
    errors = sum(edit_distance(words(ref), words(hyp)) for ref, hyp in pairs)
    return errors / sum(len(words(ref)) for ref, _ in pairs)


@pytest.mark.slow
def test_file_source_dictation_meets_wer(speech_dir, dictation, recognizer):
    pairs = []
    for i, (_spoken, expected) in enumerate(SENTENCES):
        recording = record_file(speech_dir / f"utt{i}.wav")
        transcript = recognizer.transcribe(recording.audio, initial_prompt=dictation.initial_prompt)
        result = dictation.handle(transcript.text, "report")
        assert not result.is_command and result.target == "report"
        print(f"{word_error_rate(expected, result.text):.2f}  {result.text!r}")
        pairs.append((expected, result.text))
    assert _corpus_wer(pairs) <= 0.25, pairs


@pytest.mark.slow
def test_file_source_voice_commands_exact(speech_dir, dictation, recognizer):
    got = {}
    for j, (spoken, command_id) in enumerate(COMMANDS):
        recording = record_file(speech_dir / f"utt{len(SENTENCES) + j}.wav")
        transcript = recognizer.transcribe(recording.audio, initial_prompt=dictation.initial_prompt)
        got[spoken] = (dictation.handle(transcript.text, "query").command, transcript.text)
    assert {k: v[0] for k, v in got.items()} == dict(COMMANDS), got


# ---- virtual ALSA microphone -------------------------------------------------------

ASOUNDRC = """
pcm.dictation_wav_file {{
  type file
  slave.pcm "null"
  file "/dev/null"
  infile "{raw}"
  format "raw"
}}
pcm.dictation_wav {{
  type plug
  slave {{ pcm "dictation_wav_file"; format S16_LE; rate 16000; channels 1 }}
  hint {{ show on; description "Dictation test microphone (WAV)" }}
}}
pcm.!default dictation_wav
"""

CHILD = r"""
import json, sys, time
from inference.speech.capture import MicrophoneRecorder, list_input_devices, input_unavailable_reason
from inference.speech import make_recognizer
from app.dictation.text import Dictation
levels = []
names = [d.name for d in list_input_devices()]
reason = input_unavailable_reason("dictation_wav")
# The null PCM has no clock: a buffer longer than the utterance keeps PortAudio from dropping any.
rec = MicrophoneRecorder("dictation_wav", max_seconds=float(sys.argv[1]), on_level=levels.append, latency=20.0)
rec.start()
time.sleep(0.5)   # this ALSA null device is not clocked: it delivers the file at once
recording = rec.stop()
d = Dictation()
t = make_recognizer("faster-whisper").transcribe(recording.audio, initial_prompt=d.initial_prompt)
r = d.handle(t.text, "report")
print(json.dumps({"devices": names, "reason": reason, "levels": len(levels), "max_level": max(levels),
                  "captured": recording.captured_seconds, "seconds": recording.seconds,
                  "hit_max": recording.hit_max_length, "text": r.text, "command": r.command}))
"""


def _record_through_alsa(wav: Path, home: Path) -> dict:
    import wave

    with wave.open(str(wav)) as w:
        (home / "speech.raw").write_bytes(w.readframes(w.getnframes()))
    (home / ".asoundrc").write_text(ASOUNDRC.format(raw=home / "speech.raw"))
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("ALSA_CONFIG_PATH", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, "12"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_virtual_alsa_microphone_dictation(speech_dir, tmp_path):
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA configuration (libasound2-data) not installed")
    pairs = []
    # the whole corpus, as through the file source: two sentences (22 words) made the rate
    # swing by 0.05 per misheard word between runs of the clock-less virtual device
    for index in range(len(SENTENCES)):
        home = tmp_path / f"home{index}"
        home.mkdir()
        out = _record_through_alsa(speech_dir / f"utt{index}.wav", home)
        assert "dictation_wav" in out["devices"] and out["reason"] is None
        assert out["levels"] > 0 and out["max_level"] > -60.0  # the meter saw sound, not digital silence
        assert out["hit_max"] and abs(out["captured"] - 12.0) < 0.01  # the length limit held
        assert out["seconds"] < 8.0  # trailing silence after the file was trimmed
        expected = SENTENCES[index][1]
        assert out["command"] is None
        pairs.append((expected, out["text"]))
    print(f"virtual microphone corpus WER {_corpus_wer(pairs):.3f}")
    assert _corpus_wer(pairs) <= 0.25, pairs


@pytest.mark.slow
def test_virtual_alsa_voice_command(speech_dir, tmp_path):
    if not Path("/usr/share/alsa/alsa.conf").exists():
        pytest.skip("ALSA configuration (libasound2-data) not installed")
    out = _record_through_alsa(speech_dir / f"utt{len(SENTENCES) + 2}.wav", tmp_path)  # "Lung window"
    assert out["command"] == "preset_2", out
