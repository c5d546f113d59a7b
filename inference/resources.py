"""The one place that knows where the shipped resources are.

``resources/`` sits beside the packages in the source tree, and the PyInstaller
spec copies it beside the frozen packages, so the same path holds inside the
bundle. Every layer finds prompts, vocabularies, templates, the sample study and
the embedded demo model through these names, never through ``__file__`` walks.
It lives in ``inference`` (the lowest layer) so that the model side, the app and
the UI share it without breaking the layering.
"""

from __future__ import annotations

from pathlib import Path

#: The folder holding ``resources/`` (the repository or the unpacked bundle).
ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
PROMPTS_DIR = RESOURCES / "prompts"
DEMO_MODEL_DIR = RESOURCES / "models" / "demo"
SAMPLE_STUDY = RESOURCES / "sample" / "ct-demo"
STYLE_SHEET = RESOURCES / "style.qss"


def resource(*parts: str) -> Path:
    """A path under ``resources/`` (not checked for existence)."""
    return RESOURCES.joinpath(*parts)
