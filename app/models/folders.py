"""Model folders chosen in the Settings dialog: a quick check, and converting an original checkpoint.

Qt-free; the dialog runs these off the UI thread. The reasons match ``xmedgpt models add``
(:mod:`app.models.registry`) and ``xmedgpt convert-checkpoint`` (:mod:`inference.convert`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.models.registry import (
    ModelInfo,
    ModelRegistry,
    require_native_model_folder,
)


def check_model_folder(folder: Path) -> str:
    """A quick check of a model folder chosen in Settings (no hashing): the same reasons as
    ``xmedgpt models add``, and an original checkpoint is refused with the conversion command.
    Returns a one-line description; raises :class:`app.models.registry.ModelFolderError`.
    The same check as ``--model DIR`` (:func:`app.models.registry.require_native_model_folder`)."""
    checked = require_native_model_folder(folder)
    size = checked.size_bytes / 2**20
    return f"InternVL model, {len(checked.weights)} weight file(s), {size:,.0f} MB"


def converted_folder(info: ModelInfo) -> Path:
    """Where the converted copy of an original checkpoint goes: beside it, ``<name>-native``."""
    src = Path(info.path)
    return src.with_name(src.name + "-native")


def convert_and_register(registry: ModelRegistry, info: ModelInfo,
                         progress: Callable[[str], None] | None = None) -> ModelInfo:
    """Convert the registered original checkpoint ``info`` and register the native folder."""
    from inference.convert import convert_checkpoint  # torch loads only when converting

    say = progress or (lambda text: None)
    dst = converted_folder(info)
    convert_checkpoint(info.path, dst, progress=lambda m, f: say(f"{m} ({f * 100:.0f}%)"))
    return registry.add(dst, f"{info.name}-native", progress=say)
