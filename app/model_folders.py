"""Model folders chosen in the Settings dialog: a quick check, and converting an original checkpoint.

Qt-free; the dialog runs these off the UI thread. The reasons match ``xmedgpt models add``
(:mod:`app.model_registry`) and ``xmedgpt convert-checkpoint`` (:mod:`inference.convert`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from app.model_registry import (
    CONVERTIBLE_ARCHITECTURES,
    CONVERTIBLE_MODEL_TYPES,
    NATIVE_ARCHITECTURES,
    WEIGHT_SUFFIXES,
    ModelFolderError,
    ModelInfo,
    ModelRegistry,
)


def check_model_folder(folder: Path) -> str:
    """A quick check of a model folder chosen in Settings (no hashing): the same
    reasons as ``xmedgpt models add``; returns a one-line description, raises
    :class:`app.model_registry.ModelFolderError` when it cannot be used as it is."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelFolderError(f"The model folder {folder} does not exist.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFolderError(f"{folder} is not a model folder: it has no config.json.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFolderError(f"The model's config.json in {folder} cannot be read ({exc}).") from exc
    archs = set(config.get("architectures") or [])
    model_type = str(config.get("model_type", ""))
    if archs & CONVERTIBLE_ARCHITECTURES or model_type in CONVERTIBLE_MODEL_TYPES:
        raise ModelFolderError(
            f"{folder} is an original InternVL2/XMedGPT checkpoint; convert it first: "
            f"xmedgpt convert-checkpoint {folder} {folder}-native")
    if not (archs & NATIVE_ARCHITECTURES or model_type == "internvl"):
        found = next(iter(archs), "") or model_type or "unknown"
        raise ModelFolderError(f"{folder} holds a '{found}' model; XMedGPT Workstation runs InternVL models.")
    weights = [p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        raise ModelFolderError(f"{folder} has a config but no weight files (*.safetensors or *.bin).")
    size = sum(p.stat().st_size for p in weights) / 2**20
    return f"InternVL model, {len(weights)} weight file(s), {size:,.0f} MB"



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
