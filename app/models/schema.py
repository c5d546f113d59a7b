"""The one check of a model folder before anything reads it: files, config types, weights.

Shared by ``xmedgpt models add``, the Settings dialog's folder check and every
``--model DIR`` (through :func:`app.models.registry.check_model_folder`). A folder
passes when:

- every file a loader may open (``*.json``, ``*.safetensors``, tokenizer files, …) is a
  regular file after following symlinks (no device, FIFO or socket: ``/dev/zero``
  would never end), resolves *inside* the folder (a link to ``/etc/passwd`` is
  refused, not hashed), and is of a bounded size;
- ``config.json`` is a JSON object (no ``NaN``, no absurd nesting) whose fields the
  loader and the converter read have the expected types and ranges;
- the weights are in a format the workstation loads: safetensors for a native model;
  safetensors or ``pytorch_model*.bin`` (read with ``weights_only``) for an original
  checkpoint to convert. A folder whose only weights are ``model.pt`` is refused;
- a sharded model's index names only weight files that are there.

Errors are :class:`ModelFolderError` with one sentence naming the file or field.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.core import strict_json
from app.core.errors import XMedError
from app.core.strict_json import InvalidJson

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_INDEX_BYTES = 64 * 1024 * 1024
MAX_METADATA_BYTES = 1024 * 1024 * 1024  # tokenizer files and the like
MAX_WEIGHT_FILE_BYTES = 512 * 1024**3
MAX_INT = 1 << 31

#: Files a loader (transformers, the converter) may open: each must be a regular file inside the folder.
LOADED_SUFFIXES = frozenset({".json", ".jinja", ".model", ".txt", ".tiktoken", ".safetensors", ".bin", ".pt",
                             ".pth", ".ckpt", ".msgpack", ".h5", ".gguf"})
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf"})
NATIVE_ARCHITECTURES = {"InternVLForConditionalGeneration"}
CONVERTIBLE_ARCHITECTURES = {"InternVLChatModel"}
CONVERTIBLE_MODEL_TYPES = {"internvl_chat"}


class ModelFolderError(XMedError):
    """A folder that cannot be used as a model, with the reason."""


# ---- files ---------------------------------------------------------------------------

def checked_files(folder: Path) -> dict[str, int]:
    """Name → size of the files a loader may open in ``folder`` (top level), each checked."""
    root = folder.resolve()
    out: dict[str, int] = {}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise ModelFolderError(f"The model folder {folder} cannot be read ({exc.strerror}).") from exc
    for entry in entries:
        suffix = Path(entry.name).suffix.lower()
        if suffix not in LOADED_SUFFIXES:
            continue
        path = Path(entry.path)
        try:
            target = path.resolve(strict=True)
            st = os.stat(target)
        except (OSError, RuntimeError) as exc:
            raise ModelFolderError(f"{entry.name} in {folder} is a broken link or cannot be read ({exc}).") from exc
        if stat.S_ISDIR(st.st_mode):
            continue  # a folder named like a file is not opened as one
        if not stat.S_ISREG(st.st_mode):
            raise ModelFolderError(f"{entry.name} in {folder} is not a regular file (a device, FIFO or socket).")
        if not target.is_relative_to(root):
            raise ModelFolderError(f"{entry.name} in {folder} is a link to {target}, outside the model folder; "
                                   "copy the file into the folder instead.")
        limit = MAX_WEIGHT_FILE_BYTES if suffix in WEIGHT_SUFFIXES else MAX_METADATA_BYTES
        if st.st_size > limit:
            raise ModelFolderError(f"{entry.name} in {folder} is implausibly large ({st.st_size} bytes).")
        out[entry.name] = st.st_size
    return out


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of ``folder`` as a dict (strict JSON, bounded); :class:`ModelFolderError` otherwise."""
    try:
        config = strict_json.read_file(folder / "config.json", max_bytes=MAX_CONFIG_BYTES)
    except (OSError, InvalidJson) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ModelFolderError(f"The model's config.json in {folder} cannot be read ({why}).") from exc
    if not isinstance(config, dict):
        raise ModelFolderError(f"The model's config.json in {folder} cannot be read (not a JSON object).")
    return config


# ---- config fields -------------------------------------------------------------------
# Each rule: field → check(value) raising InvalidJson. Only fields that are present are checked
# (transformers fills in defaults); their types must be what the loader and the converter expect.

def _int(lo: int = 1, hi: int = MAX_INT, nullable: bool = False) -> Callable[[Any, str], None]:
    def check(value: Any, name: str) -> None:
        strict_json.expect_int({name: value}, name, lo=lo, hi=hi, nullable=nullable)
    return check


def _num(lo: float, hi: float) -> Callable[[Any, str], None]:
    def check(value: Any, name: str) -> None:
        strict_json.expect_number({name: value}, name, lo=lo, hi=hi)
    return check


def _str(value: Any, name: str) -> None:
    strict_json.expect_str({name: value}, name, max_len=256)


def _bool(value: Any, name: str) -> None:
    strict_json.expect_bool({name: value}, name)


def _str_list(value: Any, name: str) -> None:
    for i, item in enumerate(strict_json.expect_list(value, f"'{name}'", max_items=16)):
        strict_json.expect_str({f"{name}[{i}]": item}, f"{name}[{i}]", max_len=256)


def _size(value: Any, name: str) -> None:
    """An image or patch size: a number, or [height, width]."""
    if isinstance(value, list):
        if len(value) != 2:
            raise InvalidJson(f"'{name}' must be one number or two")
        for i, v in enumerate(value):
            _int(1, 1 << 16)(v, f"{name}[{i}]")
    else:
        _int(1, 1 << 16)(value, name)


def _token_ids(value: Any, name: str) -> None:
    if value is None:
        return
    if isinstance(value, list):
        for i, v in enumerate(strict_json.expect_list(value, f"'{name}'", max_items=64)):
            _int(0)(v, f"{name}[{i}]")
    else:
        _int(0)(value, name)


def _object(rules: dict[str, Callable[[Any, str], None]], nullable: bool = False) -> Callable[[Any, str], None]:
    def check(value: Any, name: str) -> None:
        if value is None and nullable:
            return
        d = strict_json.expect_object(value, f"'{name}'")
        _apply(d, rules, name)
    return check


def _apply(d: dict[str, Any], rules: dict[str, Callable[[Any, str], None]], where: str = "") -> None:
    for key, check in rules.items():
        if key in d:
            check(d[key], f"{where}.{key}" if where else key)


_TEXT = {
    "model_type": _str, "architectures": _str_list,
    "vocab_size": _int(), "hidden_size": _int(), "intermediate_size": _int(), "num_hidden_layers": _int(),
    "num_attention_heads": _int(), "num_key_value_heads": _int(), "head_dim": _int(nullable=True),
    "max_position_embeddings": _int(), "rms_norm_eps": _num(0.0, 1.0), "tie_word_embeddings": _bool,
    "bos_token_id": _token_ids, "eos_token_id": _token_ids, "pad_token_id": _token_ids,
    "hidden_act": _str, "attention_bias": _bool, "mlp_bias": _bool, "bias": _bool,
    "rope_theta": _num(0.0, 1e12),
    "rope_scaling": _object({"type": _str, "rope_type": _str, "factor": _num(0.0, 1e6)}, nullable=True),
    "rope_parameters": _object({"rope_type": _str, "rope_theta": _num(0.0, 1e12), "factor": _num(0.0, 1e6)},
                               nullable=True),
}
_VISION = {
    "model_type": _str, "architectures": _str_list,
    "hidden_size": _int(), "intermediate_size": _int(), "num_hidden_layers": _int(), "num_attention_heads": _int(),
    "image_size": _size, "patch_size": _size, "norm_type": _str, "hidden_act": _str,
    "use_qk_norm": _bool, "qk_normalization": _bool, "attention_bias": _bool, "qkv_bias": _bool,
    "use_mean_pooling": _bool, "layer_norm_eps": _num(0.0, 1.0),
}
_QUANTIZATION = {"load_in_4bit": _bool, "load_in_8bit": _bool, "quant_method": _str}
NATIVE_RULES: dict[str, Callable[[Any, str], None]] = {
    "architectures": _str_list, "model_type": _str,
    "text_config": _object(_TEXT), "vision_config": _object(_VISION),
    "quantization_config": _object(_QUANTIZATION, nullable=True),
    "downsample_ratio": _num(1e-3, 1.0), "image_token_id": _int(0), "image_seq_length": _int(),
    "vision_feature_layer": _int(-1000, 1000), "tie_word_embeddings": _bool, "eos_token_id": _token_ids,
}
CONVERTIBLE_RULES: dict[str, Callable[[Any, str], None]] = {
    "architectures": _str_list, "model_type": _str,
    "llm_config": _object(_TEXT, nullable=True), "vision_config": _object(_VISION, nullable=True),
    "force_image_size": lambda v, n: None if v is None else _size(v, n),
    "downsample_ratio": _num(1e-3, 1.0), "ps_version": _str, "select_layer": _int(-1000, 1000),
    "template": _str, "dynamic_image_size": _bool, "use_thumbnail": _bool,
    "min_dynamic_patch": _int(), "max_dynamic_patch": _int(),
}


def config_format(config: dict[str, Any], folder: Path) -> tuple[str, str, str]:
    """``(format, architecture, model_type)`` of a checked config: "native" or "internvl_chat"."""
    try:
        for key in ("architectures", "model_type"):
            if key in config:
                NATIVE_RULES[key](config[key], key)
    except InvalidJson as exc:
        raise ModelFolderError(f"The model's config.json in {folder} is not usable: {exc}.") from exc
    architectures = config.get("architectures") or []
    model_type = config.get("model_type") or ""
    architecture = architectures[0] if architectures else ""
    if set(architectures) & NATIVE_ARCHITECTURES or model_type == "internvl":
        fmt = "native"
    elif set(architectures) & CONVERTIBLE_ARCHITECTURES or model_type in CONVERTIBLE_MODEL_TYPES:
        fmt = "internvl_chat"
    else:
        found = architecture or model_type or "unknown"
        raise ModelFolderError(
            f"{folder} holds a '{found}' model; XMedGPT Workstation runs InternVL models "
            "(native transformers format, or original InternVL2/XMedGPT checkpoints to convert)."
        )
    try:
        _apply(config, NATIVE_RULES if fmt == "native" else CONVERTIBLE_RULES)
    except InvalidJson as exc:
        raise ModelFolderError(f"The model's config.json in {folder} is not usable: {exc}.") from exc
    return fmt, architecture, model_type


# ---- weights -------------------------------------------------------------------------

def weight_files(folder: Path, fmt: str, files: dict[str, int]) -> list[str]:
    """The weight files the loader of ``fmt`` reads (names), checked for size and format."""
    candidates = sorted(n for n in files if Path(n).suffix.lower() in WEIGHT_SUFFIXES)
    if fmt == "native":
        usable = [n for n in candidates if n.lower().endswith(".safetensors")]
        wanted = "*.safetensors"
    else:
        usable = [n for n in candidates if n.lower().endswith(".safetensors")] or \
                 [n for n in candidates if n.startswith("pytorch_model") and n.endswith(".bin")]
        wanted = "*.safetensors or pytorch_model.bin"
    if not usable:
        if candidates:
            raise ModelFolderError(
                f"{folder} has weights only in a format the workstation does not load ({', '.join(candidates[:3])}); "
                f"it needs {wanted}.")
        raise ModelFolderError(f"{folder} has a config but no weight files (*.safetensors or *.bin).")
    empty = [n for n in usable if files[n] == 0]
    if empty:
        raise ModelFolderError(f"The weight file {empty[0]} in {folder} is empty.")
    _check_index(folder, usable, files)
    return usable


def _check_index(folder: Path, usable: list[str], files: dict[str, int]) -> None:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index_name not in files:
            continue
        try:
            index = strict_json.expect_object(
                strict_json.read_file(folder / index_name, max_bytes=MAX_INDEX_BYTES), index_name)
            weight_map = strict_json.expect_object(index.get("weight_map"), f"'{index_name}.weight_map'")
            names = {strict_json.expect_str(weight_map, k, where="weight_map", max_len=255) for k in weight_map}
        except (OSError, InvalidJson) as exc:
            raise ModelFolderError(f"{index_name} in {folder} cannot be read ({exc}).") from exc
        missing = sorted(n for n in names if n not in usable)
        if missing:
            raise ModelFolderError(f"{index_name} in {folder} names weight file {missing[0]!r}, which is not there.")
