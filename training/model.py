"""The model to train and its processor.

A native InternVL model folder loaded in full precision, with LoRA adapters or as
QLoRA (NF4 base through bitsandbytes + LoRA), the parts the config names frozen;
the processor pads on the right, as training wants.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from inference.engine.processor import ImageOnlyInternVLProcessor, load_processor
from training.config import ConfigError, LoraSection, ModelSection, TrainSection

log = logging.getLogger(__name__)


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


def processor_for(model_path: Path | str) -> ImageOnlyInternVLProcessor:
    processor = load_processor(model_path)
    processor.tokenizer.padding_side = "right"
    return processor
