"""What a run writes: complete model folders and the run's config.

A finished model is a plain folder that loads with ``from_pretrained`` or
``LocalEngine``: weights (adapters merged into a full-precision base), tokenizer,
image processor, ``processor_config.json`` and the model card. ``run_config.json``
records the config a run started with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from inference.engine.processor import ImageOnlyInternVLProcessor
from training.config import config_dict


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


def write_run_info(folder: Path, config: Any, extra: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run_config.json").write_text(json.dumps({**config_dict(config), **(extra or {})}, indent=2) + "\n")
