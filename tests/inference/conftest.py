"""Fixtures for the model side: a tiny random native InternVL built offline once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete native InternVL model folder (Qwen2 text, 2 layers, 64 wide, trained BPE tokenizer).

    Read-only by convention: tests that change weights copy it first.
    """
    from training.model_factory import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-internvl") / "model")
