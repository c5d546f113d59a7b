"""Suite-wide test set-up: offscreen Qt, a folder for artefacts people look at."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """test-output/: screenshots and exported files saved for a person to open."""
    out = REPO / "test-output"
    out.mkdir(exist_ok=True)
    return out
