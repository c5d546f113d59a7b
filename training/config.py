"""Training configs: YAML files read into dataclasses, with overrides; seeding.

Configs are YAML files read into dataclasses (an unknown key is an error, so a
typo never silently falls back to a default); ``--set section.key=value`` on
the command line overrides any value. The sections every stage shares (model,
data, train, lora) and the SFT config are here; DPO, audio and the demo recipe
add their own sections and read them with the same :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import random
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from inference.errors import XMedError


class ConfigError(XMedError):
    """A training config file is missing, unreadable or has an unknown or ill-typed key."""


@dataclass
class ModelSection:
    path: str = ""  # a native InternVL model folder (model_factory output, converted XMedGPT, InternVL3-hf)
    dtype: str = "float32"  # float32 | bfloat16 | float16


@dataclass
class DataSection:
    meta: str = ""  # meta.json (datasets with repeat factors) or one conversation/preference/audio .jsonl
    max_length: int = 2048
    datasets: list[str] = field(default_factory=list)  # subset of the meta's dataset names (empty: all)
    num_workers: int = 0
    #: at most this many records, a seeded random subset (0: all). DPO holds every pair's pixel values in
    #: memory once tokenized (~3 MB per 512-px pair with 5 tiles): load what max_steps x batch_size will see.
    max_samples: int = 0


@dataclass
class TrainSection:
    output_dir: str = "checkpoints/run"
    mode: str = "full"  # full | lora | qlora
    max_steps: int = -1  # > 0 overrides epochs
    epochs: float = 1.0
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int = 2
    gradient_checkpointing: bool = False
    bf16: bool = False
    deepspeed: str | None = None  # training/configs/deepspeed/zero1.json | zero3.json
    seed: int = 0
    freeze_vision: bool = False
    freeze_projector: bool = False
    freeze_llm: bool = False
    threads: int = 0  # torch CPU threads (0: torch's default)
    group_by_length: bool = False  # batches of similar length (less padding; InternVL's recipe does the same)
    progress: bool = True


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    #: module names adapted inside the language model (InternVL recipe: attention and MLP of the LLM)
    modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"])
    vision: bool = False  # adapt the vision tower too


@dataclass
class SFTConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    lora: LoraSection = field(default_factory=LoraSection)
    stage: str = "sft"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a section of keys, not {value!r}.")
        return from_dict(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{where}' must be a list, not {value!r}.")
        return [_coerce(v, args[0], where) for v in value] if args else list(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-4 as a string
        except ValueError:
            pass
    if annotation in (int, str, bool, float) and not isinstance(value, annotation) or (
            annotation is int and isinstance(value, bool)):
        raise ConfigError(f"'{where}' must be a {annotation.__name__}, not {value!r}.")
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"Unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
                          f"known: {', '.join(sorted(names))}.")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """``["train.max_steps=2", "data.meta=/tmp/x/meta.json"]`` → nested dict updates (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"An override must read section.key=value, not {item!r}.")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Cannot override {key}: {part} is not a section.")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: Path | str, cls: type, overrides: Sequence[str] = ()) -> Any:
    """Read a YAML config into dataclass ``cls`` (with ``section.key=value`` overrides)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"Cannot read the config {path}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"The config {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"The config {path} must be a mapping of sections.")
    return from_dict(cls, apply_overrides(data, overrides))


def config_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
