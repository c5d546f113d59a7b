"""``xmedgpt transcribe FILE``: dictate from a WAV file, headless.

Runs the same path as push-to-talk (trimming, Whisper with the radiology
prompt, spoken punctuation, numbers and units, voice commands) and prints the
text, or ``command: <id>`` when the recording is a voice command.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from app.dictation.text import Dictation
from inference.speech.capture import record_file
from inference.speech.engines import DEFAULT_ENGINE, ENGINES, make_recognizer

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe a dictation WAV file with Whisper")
    p.add_argument("file", type=Path, help="WAV file (any rate; mono or stereo)")
    p.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                   help=f"speech engine (default {DEFAULT_ENGINE})")
    p.add_argument("--model", type=Path, default=None,
                   help="Whisper model: CTranslate2 folder or openai-whisper .pt (default: bundled tiny.en)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--target", choices=("report", "query"), default="report", help="where the text would go")
    p.add_argument("--raw", action="store_true", help="print Whisper's text without radiology clean-up")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    dictation = Dictation()
    recording = record_file(args.file)
    recognizer = make_recognizer(args.engine, args.model, device=args.device)
    transcript = recognizer.transcribe(recording.audio, initial_prompt=dictation.initial_prompt)
    log.info("%s: %.1f s of speech in %.2f s (RTF %.2f)", recognizer.describe(), transcript.audio_seconds,
             transcript.decode_seconds, transcript.real_time_factor)
    if args.raw:
        print(transcript.text)
        return 0
    result = dictation.handle(transcript.text, args.target)
    print(f"command: {result.command}" if result.is_command else result.text)
    return 0
