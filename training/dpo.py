"""Preference optimisation of the reasoning (DPO, optionally MPO-style mixed losses) with trl.

    python -m training.dpo --config training/configs/dpo_demo.yaml [--resume]
    bash training/launch/dpo.sh training/configs/dpo_8b.yaml

Data: preference JSONL (``image, prompt, chosen, rejected``; training/README.md).
The prompt is put in the model's chat format (``<image>`` → ``<IMG_CONTEXT>``,
expanded by the processor) and the answers end with ``<|im_end|>``, so trl's
vision collator (``DataCollatorForVisionPreference``) tokenizes exactly what
the SFT stages trained on.

trl's ``DPOTrainer`` with ``ref_model=None`` re-loads the reference from the
policy's ``name_or_path``, which is wrong for a model changed in memory; here
the reference is an explicit frozen copy (full mode), the policy with its
adapters disabled (LoRA/QLoRA: trl's peft path), or ``dpo.ref_model`` when given.

``dpo.mpo: true`` uses MPO's mix (InternVL2.5-MPO): preference loss (sigmoid),
quality loss (bco_pair) and generation loss (sft), weighted 0.8 / 0.2 / 1.0;
``dpo.loss_types`` / ``dpo.loss_weights`` set any other mix trl supports.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inference.errors import XMedError
from training.config import (
    ConfigError,
    DataSection,
    LoraSection,
    ModelSection,
    TrainSection,
    seed_everything,
)
from training.data import IMAGE_PLACEHOLDER, load_samples, record_images
from training.model import load_model, processor_for
from training.saving import finish_training, write_run_info
from training.stage import run_stage
from training.trainer import (
    CheckpointFilesCallback,
    MetricsLogCallback,
    resume_checkpoint,
    trainer_class,
    training_arguments,
)

log = logging.getLogger(__name__)

MPO_LOSSES = (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])
END = "<|im_end|>"


@dataclass
class DPOSection:
    beta: float = 0.1
    loss_types: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] = field(default_factory=list)
    mpo: bool = False
    ref_model: str = ""  # a model folder for the reference (default: the policy's starting weights)


@dataclass
class DPOConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    lora: LoraSection = field(default_factory=LoraSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    stage: str = "dpo"


def chat_prompt(prompt: str, system: str | None = None) -> str:
    """The user prompt in the chat template, up to the assistant header (what generation starts from)."""
    body = prompt.replace(IMAGE_PLACEHOLDER, "<IMG_CONTEXT>")
    head = f"<|im_start|>system\n{system}{END}\n" if system else ""
    return f"{head}<|im_start|>user\n{body}{END}\n<|im_start|>assistant\n"


def preference_dataset(path: Path | str, seed: int = 0, max_samples: int = 0):
    """A ``datasets.Dataset`` of ``images`` (PIL), chat-formatted ``prompt``, ``chosen`` and ``rejected``
    (``max_samples`` > 0: a random subset of that many pairs, the same for the same seed)."""
    import random

    from datasets import Dataset

    samples = load_samples(path, seed=seed)
    if 0 < max_samples < len(samples):
        samples = random.Random(seed).sample(samples, max_samples)
    rows = []
    for s in samples:
        rec = s.record
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(rec.get(k), str)]
        if missing:
            raise XMedError(f"{s.source}: a preference record needs {', '.join(missing)}.")
        rows.append({"images": record_images(s), "prompt": chat_prompt(rec["prompt"], rec.get("system")),
                     "chosen": rec["chosen"] + END, "rejected": rec["rejected"] + END})
    if not rows:
        raise XMedError(f"No preference pairs in {path}.")
    return Dataset.from_list(rows)


def losses(section: DPOSection) -> tuple[list[str], list[float] | None]:
    if section.mpo:
        return list(MPO_LOSSES[0]), list(MPO_LOSSES[1])
    if section.loss_weights and len(section.loss_weights) != len(section.loss_types):
        raise ConfigError("dpo.loss_weights needs one weight per entry of dpo.loss_types.")
    return list(section.loss_types), list(section.loss_weights) or None


def train_dpo(config: DPOConfig, resume: bool = False) -> Path:
    from transformers import InternVLForConditionalGeneration
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    seed_everything(config.train.seed)
    out = Path(config.train.output_dir)
    processor = processor_for(config.model.path)
    dataset = preference_dataset(config.data.meta, config.train.seed, config.data.max_samples)
    policy = load_model(config.model, config.train, config.lora)
    ref = None
    if config.dpo.ref_model:
        ref = InternVLForConditionalGeneration.from_pretrained(config.dpo.ref_model, local_files_only=True)
    elif config.train.mode == "full":
        ref = copy.deepcopy(policy)  # the starting weights, frozen; never re-read from disk
    if ref is not None:
        ref.eval().requires_grad_(False)
    loss_types, loss_weights = losses(config.dpo)
    args = training_arguments(config.train, cls=TrlDPOConfig, workers=config.data.num_workers,
                              beta=config.dpo.beta, loss_type=loss_types, loss_weights=loss_weights,
                              max_length=config.data.max_length,
                              truncation_mode="keep_start", precompute_ref_log_probs=False)
    write_run_info(out, config, {"pairs": len(dataset)})
    trainer = trainer_class(DPOTrainer)(model=policy, ref_model=ref, args=args, train_dataset=dataset,
                         processing_class=processor,
                         callbacks=[MetricsLogCallback(out / "metrics.jsonl", config.stage),
                                    CheckpointFilesCallback(processor)])
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(out, resume))
    trainer.save_state()
    model = trainer.model
    if config.train.mode != "full" and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")  # trl's frozen copy of the starting adapter
    card = {"name": f"{Path(config.model.path).name} + {config.stage}", "trained": True,
            "stage": config.stage, "base": str(config.model.path), "mode": config.train.mode,
            "losses": dict(zip(loss_types, loss_weights or [1.0] * len(loss_types))), "beta": config.dpo.beta,
            "global_step": trainer.state.global_step, "train_loss": result.training_loss,
            "wall_s": round(time.monotonic() - start, 1), "pairs": len(dataset)}
    finish_training(trainer, processor, out / "final", config.model.path, config.train.mode, card)
    return out / "final"


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(argv, "training.dpo", 'DPO / MPO on preference pairs (trl).', DPOConfig, train_dpo)


if __name__ == "__main__":
    sys.exit(main())
