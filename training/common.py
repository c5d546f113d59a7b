"""What every launch script shares: YAML configs, InternVL-style data, collation, logging, checkpoints.

Configs are YAML files read into dataclasses (an unknown key is an error, so a
typo never silently falls back to a default); ``--set section.key=value`` on
the command line overrides any value. Data follows training/README.md: a
``meta.json`` of datasets with repeat factors (InternVL's recipe) or a single
conversation JSONL. Records are tokenized with the model's own processor
(:func:`inference.engine.processor.load_processor`): ``<image>`` becomes the
chat template's ``<IMG_CONTEXT>``, which the processor expands to
``<img>`` + image tokens + ``</img>``; labels are kept for the assistant turns
only (their text and closing ``<|im_end|>``), everything else is -100.

Training runs on transformers' ``Trainer`` (trl's ``DPOTrainer`` for DPO), so
``accelerate launch`` / ``torchrun`` / DeepSpeed ZeRO work as in the InternVL
recipe, and a checkpoint holds the optimizer, scheduler and RNG state: resume
continues the step count. Each checkpoint also gets the tokenizer and image
processor, so it loads directly with ``from_pretrained`` or ``LocalEngine``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import sys
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from inference.engine.processor import (
    IMAGE_CONTEXT,
    ImageOnlyInternVLProcessor,
    load_processor,
)
from inference.errors import XMedError

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
AUDIO_PLACEHOLDER = "<audio>"
IGNORE_INDEX = -100
ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


class ConfigError(XMedError):
    """A training config file is missing, unreadable or has an unknown or ill-typed key."""


# ----------------------------------------------------------------------------- config


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


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True, help="YAML config (training/configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def run_stage(argv, prog: str, description: str, config_cls, train) -> int:
    """The command line every launch script shares: parse, log, load the YAML config, train, report."""
    args = base_parser(f"python -m {prog}", description).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                         format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, config_cls, args.overrides)
        final = train(config, resume=args.resume)
    except XMedError as exc:
        sys.stderr.write(f"{prog.rsplit('.', 1)[-1]}: {exc}\n")
        return 1
    sys.stdout.write(f"model written to {final}\n")
    return 0


# ----------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Sample:
    """One record of a dataset and the folder its relative paths start from."""

    record: dict
    root: Path
    source: str  # "file:line"


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise XMedError(f"Cannot read the data file {path}: {exc.strerror}.") from exc
    for no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise XMedError(f"{path}:{no}: not valid JSON ({exc.msg}).") from exc
        if not isinstance(rec, dict):
            raise XMedError(f"{path}:{no}: a record must be a JSON object.")
        out.append((no, rec))
    return out


def _repeat(samples: list[Sample], repeat_time: float, rng: random.Random) -> list[Sample]:
    """InternVL's repeat factor: whole copies, plus a random subset for the fractional part."""
    whole = int(math.floor(repeat_time))
    out = samples * whole
    frac = repeat_time - whole
    if frac > 1e-9:
        k = int(round(len(samples) * frac))
        out += rng.sample(samples, k)
    return out


def load_samples(path: Path | str, datasets: Sequence[str] = (), seed: int = 0) -> list[Sample]:
    """Records of a meta JSON (each dataset repeated by ``repeat_time``) or of one JSONL file."""
    path = Path(path)
    rng = random.Random(seed)
    if path.suffix == ".jsonl":
        return [Sample(rec, path.parent, f"{path.name}:{no}") for no, rec in read_jsonl(path)]
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise XMedError(f"Cannot read the meta file {path}: {exc}") from exc
    if not isinstance(meta, dict) or not meta:
        raise XMedError(f"The meta file {path} must be a JSON object of datasets.")
    wanted = list(datasets) or list(meta)
    missing = [d for d in wanted if d not in meta]
    if missing:
        raise XMedError(f"The meta file {path} has no dataset(s) {', '.join(missing)}.")
    out: list[Sample] = []
    for name in wanted:
        entry = meta[name]
        ann = path.parent / entry["annotation"]
        root = path.parent / entry.get("root", ".")
        samples = [Sample(rec, root, f"{ann.name}:{no}") for no, rec in read_jsonl(ann)]
        out += _repeat(samples, float(entry.get("repeat_time", 1)), rng)
        log.info("dataset %s: %d records × %s", name, len(samples), entry.get("repeat_time", 1))
    if not out:
        raise XMedError(f"The data in {path} holds no records.")
    return out


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as exc:
        raise XMedError(f"Cannot read the image {path}.") from exc


def record_images(sample: Sample) -> list[Image.Image]:
    image = sample.record.get("image")
    if not image:
        return []
    paths = image if isinstance(image, list) else [image]
    return [load_image(Path(p) if Path(p).is_absolute() else sample.root / p) for p in paths]


def chat_segments(conversations: Sequence[dict]) -> list[tuple[str, bool]]:
    """The conversation in the model's chat format as (text, trained?) pieces.

    Assistant contents and their ``<|im_end|>`` are trained; the role headers,
    the prompts and the newlines between turns are not. ``<image>`` becomes
    ``<IMG_CONTEXT>`` (expanded later by the processor).
    """
    segments: list[tuple[str, bool]] = []
    pending = ""
    for turn in conversations:
        role = ROLE.get(turn.get("from", ""))
        if role is None:
            raise XMedError(f"Unknown conversation role {turn.get('from')!r}.")
        value = str(turn.get("value", ""))
        if role == "assistant":
            pending += "<|im_start|>assistant\n"
            segments.append((pending, False))
            segments.append((value + "<|im_end|>", True))
            pending = "\n"
        else:
            value = value.replace(IMAGE_PLACEHOLDER + "\n", IMAGE_CONTEXT + "\n").replace(IMAGE_PLACEHOLDER,
                                                                                          IMAGE_CONTEXT)
            pending += f"<|im_start|>{role}\n{value}<|im_end|>\n"
    if pending:
        segments.append((pending, False))
    return segments


def prompt_text(conversations: Sequence[dict]) -> str:
    """The chat-formatted prompt up to and including the last ``<|im_start|>assistant\\n``."""
    segs = chat_segments(conversations)
    last = max(i for i, (_t, trained) in enumerate(segs) if trained)
    return "".join(t for t, _ in segs[:last])


def expand_images(processor: ImageOnlyInternVLProcessor, text: str, images: Sequence[Image.Image]
                  ) -> tuple[str, torch.Tensor]:
    """Tile the images and expand each ``<IMG_CONTEXT>`` to ``<img>`` + tokens × tiles + ``</img>``.

    The same expansion as ``InternVLProcessor`` (checked in the tests), without its
    per-call overhead: the image processor runs once per record.
    """
    out = processor.image_processor(images=list(images), return_tensors="pt")
    counts = [int(n) for n in out["num_patches"]]
    parts = text.split(IMAGE_CONTEXT)
    pieces = [parts[0]]
    for n, rest in zip(counts, parts[1:]):
        pieces.append(f"{processor.start_image_token}{IMAGE_CONTEXT * (processor.image_seq_length * n)}"
                      f"{processor.end_image_token}{rest}")
    return "".join(pieces), out["pixel_values"]


def encode_segments(
    processor: ImageOnlyInternVLProcessor,
    segments: Sequence[tuple[str, bool]],
    images: Sequence[Image.Image],
    max_length: int,
) -> dict[str, torch.Tensor]:
    """Token ids, labels (-100 outside trained segments) and pixel values of one example."""
    queue = list(images)
    ids: list[int] = []
    labels: list[int] = []
    pixels: list[torch.Tensor] = []
    tokenizer = processor.tokenizer
    for text, trained in segments:
        n_img = text.count(IMAGE_CONTEXT)
        if n_img:
            if len(queue) < n_img:
                raise XMedError("The conversation has more <image> placeholders than images.")
            imgs, queue = queue[:n_img], queue[n_img:]
            text, tiles = expand_images(processor, text, imgs)
            seg_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            pixels.append(tiles)
        else:
            seg_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg_ids
        labels += seg_ids if trained else [IGNORE_INDEX] * len(seg_ids)
    if queue:
        raise XMedError(f"The conversation has {len(queue)} image(s) without an <image> placeholder.")
    if len(ids) > max_length:
        image_ids = set(processor.image_token_ids)
        if any(t in image_ids for t in ids[max_length:]):
            raise XMedError(f"An example is longer than data.max_length={max_length} inside its image tokens; "
                            "raise max_length.")
        ids, labels = ids[:max_length], labels[:max_length]
    out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if pixels:
        out["pixel_values"] = pixels[0] if len(pixels) == 1 else torch.cat(pixels)
    return out


class ConversationDataset(torch.utils.data.Dataset):
    """InternVL conversations, tokenized on access with the model's processor."""

    def __init__(self, samples: Sequence[Sample], processor: ImageOnlyInternVLProcessor, max_length: int) -> None:
        self.samples = list(samples)
        self.processor = processor
        self.max_length = max_length
        self._lengths: list[int] | None = None  # computed by lengths(), with _mean_trained
        self._mean_trained = 0.0

    def __len__(self) -> int:
        return len(self.samples)

    def lengths(self) -> list[int]:
        """Approximate token count of every record (text tokens + one tile of image tokens), without
        reading images: what length-grouped batching sorts by."""
        if self._lengths is None:
            segments = [chat_segments(s.record["conversations"]) for s in self.samples]
            texts = ["".join(text for text, _ in segs) for segs in segments]
            answers = ["".join(text for text, trained in segs if trained) for segs in segments]
            tokenize = self.processor.tokenizer
            counts = [len(ids) for ids in tokenize(texts, add_special_tokens=False)["input_ids"]]
            per_image = self.processor.image_seq_length - 1  # the placeholder is one token of the text already
            self._lengths = [c + per_image * t.count(IMAGE_CONTEXT) for c, t in zip(counts, texts)]
            trained = [len(ids) for ids in tokenize(answers, add_special_tokens=False)["input_ids"]]
            self._mean_trained = sum(trained) / max(1, len(trained))
        return self._lengths

    def mean_trained_tokens(self) -> float:
        """Mean number of trained (label) tokens per record."""
        self.lengths()
        return self._mean_trained

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.samples[i]
        try:
            return encode_segments(self.processor, chat_segments(s.record["conversations"]), record_images(s),
                                   self.max_length)
        except XMedError as exc:
            raise XMedError(f"{s.source}: {exc}") from exc


def pad_batch(features: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ids (pad id), labels (-100) and the attention mask; concatenate the images' tiles."""
    longest = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(features), longest), dtype=torch.long)
    for i, f in enumerate(features):
        n = len(f["input_ids"])
        ids[i, :n] = f["input_ids"]
        labels[i, :n] = f["labels"]
        mask[i, :n] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    tiles = [f["pixel_values"] for f in features if "pixel_values" in f]
    if tiles:
        batch["pixel_values"] = torch.cat(tiles)
    return batch


@dataclass
class Collator:
    pad_id: int

    def __call__(self, features: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_batch(features, self.pad_id)


# ----------------------------------------------------------------------------- model


def torch_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"model.dtype must be float32, bfloat16 or float16, not {name!r}.") from None


def lora_target_regex(lora: LoraSection) -> str:
    """peft ``target_modules`` regex: the named linears of the language model (and vision tower)."""
    scopes = "language_model" + ("|vision_tower" if lora.vision else "")
    names = "|".join(lora.modules)
    return rf".*(?:{scopes}).*\.(?:{names})"


def load_model(model: ModelSection, train: TrainSection, lora: LoraSection):
    """The model to train: full precision, LoRA, or QLoRA (NF4 base + LoRA), with freezing applied."""
    from transformers import BitsAndBytesConfig, InternVLForConditionalGeneration

    if train.mode not in ("full", "lora", "qlora"):
        raise ConfigError(f"train.mode must be full, lora or qlora, not {train.mode!r}.")
    path = Path(model.path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.path {path} is not a model folder (no config.json).")
    kwargs: dict[str, Any] = {"dtype": torch_dtype(model.dtype), "local_files_only": True}
    if train.mode == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if train.bf16 else torch.float32,
            llm_int8_skip_modules=["model.vision_tower", "model.multi_modal_projector", "vision_tower",
                                   "multi_modal_projector", "lm_head"])
        kwargs["device_map"] = {"": "cuda" if torch.cuda.is_available() else "cpu"}
    net = InternVLForConditionalGeneration.from_pretrained(path, **kwargs)
    if train.mode == "qlora":
        from peft import prepare_model_for_kbit_training

        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=train.gradient_checkpointing)
    if train.mode in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        # the projector is small: trained fully beside the adapters (InternVL recipe) unless frozen
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora_target_regex(lora), task_type="CAUSAL_LM",
                            modules_to_save=None if train.freeze_projector else ["multi_modal_projector"])
        net = get_peft_model(net, config)
    freeze(net, train)
    if train.gradient_checkpointing:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if train.mode != "full":
            net.enable_input_require_grads()
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    total = sum(p.numel() for p in net.parameters())
    log.info("model %s: %s mode, %d of %d parameters trainable", path, train.mode, trainable, total)
    if trainable == 0:
        raise ConfigError("Nothing to train: every parameter is frozen.")
    return net


def freeze(net: torch.nn.Module, train: TrainSection) -> None:
    parts = {"vision_tower": train.freeze_vision, "multi_modal_projector": train.freeze_projector,
             "language_model": train.freeze_llm, "lm_head": train.freeze_llm}
    for name, p in net.named_parameters():
        for part, frozen in parts.items():
            if frozen and f"{part}." in name and "lora_" not in name:
                p.requires_grad_(False)


# ----------------------------------------------------------------------------- saving


def save_processor(processor: ImageOnlyInternVLProcessor, folder: Path) -> None:
    """Tokenizer, image processor and ``processor_config.json`` (what ``load_processor`` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps(
        {"processor_class": "InternVLProcessor", "image_seq_length": processor.image_seq_length}, indent=2))


def merge_adapter(adapter: Path, base_path: Path | str, folder: Path) -> None:
    """Merge a saved LoRA adapter (and its fully trained ``modules_to_save``) into a full-precision base."""
    from peft import PeftModel
    from transformers import InternVLForConditionalGeneration

    base = InternVLForConditionalGeneration.from_pretrained(base_path, dtype=torch.float32, local_files_only=True)
    PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(folder, safe_serialization=True)


def export_model(net, processor: ImageOnlyInternVLProcessor, folder: Path, base_path: Path | str,
                 mode: str, card: dict | None = None) -> Path:
    """A complete, plain model folder from a model in memory (one process): adapters merged."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "full":
        net.save_pretrained(folder, safe_serialization=True)
    else:
        net.save_pretrained(folder / "adapter")
        merge_adapter(folder / "adapter", base_path, folder)
    save_processor(processor, folder)
    if card is not None:
        (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder


def finish_training(trainer, processor: ImageOnlyInternVLProcessor, folder: Path, base_path: Path | str,
                    mode: str, card: dict) -> Path:
    """Write the finished model with ``trainer.save_model`` (every rank: gathers ZeRO-3 shards), then, on
    the main process, merge adapters, add the processor files and the model card."""
    folder = Path(folder)
    trainer.save_model(str(folder if mode == "full" else folder / "adapter"))
    if trainer.is_world_process_zero():
        if mode != "full":
            merge_adapter(folder / "adapter", base_path, folder)
        save_processor(processor, folder)
        (folder / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    trainer.accelerator.wait_for_everyone()
    return folder


class CheckpointFilesCallback(TrainerCallback):
    """Adds the tokenizer and image processor to every ``checkpoint-N`` folder the Trainer writes."""

    def __init__(self, processor: ImageOnlyInternVLProcessor) -> None:
        self.processor = processor

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_processor(self.processor, Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control


class MetricsLogCallback(TrainerCallback):
    """Appends every log (loss, learning rate, grad norm, …) to ``metrics.jsonl`` with step and wall time."""

    def __init__(self, path: Path, stage: str) -> None:
        self.path = Path(path)
        self.stage = stage
        self.start = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            row = {"stage": self.stage, "step": state.global_step, "epoch": state.epoch,
                   "wall_s": round(time.monotonic() - self.start, 3), **logs}
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        return control


class RestoresFullWeights:
    """Trainer mixin: resuming a full fine-tune restores the weights through ``from_pretrained``.

    ``save_pretrained`` writes InternVL checkpoints in the original (hub) key layout, which the
    stock ``Trainer._load_from_checkpoint`` loads with ``strict=False`` and without the key
    conversion: every key is silently skipped and "resume" restarts from the base weights with
    the step count and schedule of the checkpoint. Loading through ``from_pretrained`` applies the
    conversion; ``strict=True`` makes any remaining mismatch an error. Adapters, FSDP and
    DeepSpeed checkpoints keep the stock path.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from transformers import PreTrainedModel

        model = self.model if model is None else model
        folder = Path(resume_from_checkpoint)
        if (isinstance(model, PreTrainedModel) and not getattr(self, "is_fsdp_enabled", False)
                and (folder / "model.safetensors").is_file()):
            restore_full_weights(model, folder)
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Record order for batches of similar length, the batches themselves in random order.

    Records are shuffled, cut into megabatches of ``mega`` batches, sorted by length inside each
    megabatch and cut into batches; then the batches of the whole epoch are shuffled.
    transformers' ``LengthGroupedSampler`` leaves each megabatch's batches sorted from long to
    short, so training alternates 25 steps of long records with 25 steps of short ones, and a
    checkpoint taken after the short half has just learned that "No lesion is seen." is the usual
    answer. Draws from torch's global RNG, which the Trainer seeds (and restores on resume).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, mega: int = 50) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.mega = mega

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths)).tolist()
        size = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), size):
            group = sorted(order[start:start + size], key=lambda i: self.lengths[i], reverse=True)
            batches += [group[k:k + self.batch_size] for k in range(0, len(group), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        for k in torch.randperm(len(full)).tolist():
            yield from full[k]
        for b in batches:  # the one short batch, if any, last: the DataLoader cuts every batch_size indices
            if len(b) != self.batch_size:
                yield from b


class GroupsByLength:
    """Trainer mixin: ``train.group_by_length`` batches records of similar length together, with the
    lengths a dataset's ``lengths()`` gives (no image decoding); records of a 60-token grounding answer
    are then not padded to a 900-token reasoning chain.

    Grouped batches must not be averaged per batch: a batch of short answers ("No lesion is seen.")
    would give each of its tokens ten times the weight of a token in a batch of long grounded answers,
    and the model learns the short answers' first tokens as if they were the norm (it did: the demo
    model said "No lesion is seen." for every image). The summed token loss is divided by a constant
    instead, the expected number of trained tokens per optimizer step, so every token of the corpus
    weighs the same, as with shuffled batches.
    """

    def _grouped_dataset(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            return dataset
        return None

    def _get_train_sampler(self, train_dataset=None):
        dataset = self._grouped_dataset(train_dataset)
        if dataset is not None:
            return LengthGroupedBatches(dataset.lengths(), self.args.train_batch_size
                                        * self.args.gradient_accumulation_steps)
        return super()._get_train_sampler(train_dataset)

    def expected_step_tokens(self) -> float | None:
        """Trained tokens per optimizer step on average over the corpus, all processes together."""
        dataset = self._grouped_dataset()
        if dataset is None or not self.model_accepts_loss_kwargs:
            return None
        return (dataset.mean_trained_tokens() * self.args.train_batch_size
                * self.args.gradient_accumulation_steps * self.accelerator.num_processes)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        fixed = self.expected_step_tokens() if model.training else None
        if fixed is not None:
            num_items_in_batch = torch.tensor(fixed, dtype=torch.float32, device=inputs["input_ids"].device)
        return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch)


def restore_full_weights(model, folder: Path) -> None:
    """Copy the weights saved in ``folder`` into ``model`` (same architecture), strictly."""
    saved = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype, local_files_only=True)
    model.load_state_dict(saved.state_dict(), strict=True)
    log.info("restored the weights of %s", folder)


def trainer_class(trainer_cls: type) -> type:
    """``trainer_cls`` with :class:`RestoresFullWeights` and :class:`GroupsByLength` mixed in."""
    return type(f"Workstation{trainer_cls.__name__}", (RestoresFullWeights, GroupsByLength, trainer_cls), {})


def resume_checkpoint(output_dir: Path, resume: bool) -> str | None:
    """The last ``checkpoint-N`` in ``output_dir`` when resuming (None to start fresh)."""
    if not resume:
        return None
    last = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    if last is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", output_dir)
    else:
        log.info("resuming from %s", last)
    return last


def training_arguments(train: TrainSection, cls: type | None = None, workers: int = 0, **extra: Any):
    """transformers ``TrainingArguments`` (or ``cls``, e.g. trl's ``DPOConfig``) from the train section."""
    from transformers import TrainingArguments

    cls = cls or TrainingArguments
    if train.threads > 0:
        torch.set_num_threads(train.threads)
    return cls(
        output_dir=train.output_dir,
        max_steps=train.max_steps,
        num_train_epochs=train.epochs,
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.lr,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=train.scheduler,
        max_grad_norm=train.max_grad_norm,
        logging_steps=train.logging_steps,
        save_strategy="steps",
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        gradient_checkpointing=False,  # enabled on the model in load_model (works for peft too)
        bf16=train.bf16,
        deepspeed=train.deepspeed,
        seed=train.seed,
        data_seed=train.seed,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=workers,
        disable_tqdm=not train.progress,
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if train.group_by_length else "random",
        **extra,
    )


def write_run_info(folder: Path, config: Any, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run_config.json").write_text(json.dumps({**config_dict(config), **(extra or {})}, indent=2) + "\n")


def processor_for(model_path: Path | str) -> ImageOnlyInternVLProcessor:
    processor = load_processor(model_path)
    processor.tokenizer.padding_side = "right"
    return processor
