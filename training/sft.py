"""Supervised fine-tuning: stage 1 (grounded image–text pairs) and the reasoning SFT.

    python -m training.sft --config training/configs/sft_stage1.yaml [--resume] [--set train.max_steps=100]
    accelerate launch --config_file ... -m training.sft --config ...      # multi-GPU / multi-node
    bash training/launch/sft.sh training/configs/sft_stage1_8b.yaml      # cluster wrapper

Full fine-tuning, LoRA or QLoRA (NF4 base through bitsandbytes + LoRA), with
gradient checkpointing and DeepSpeed ZeRO from the config. Checkpoints
(``output_dir/checkpoint-N``) carry optimizer, scheduler and RNG state; the
finished model (adapters merged) is written to ``output_dir/final``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import Trainer

from training.config import SFTConfig, seed_everything
from training.data import Collator, ConversationDataset, load_samples
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


def train_sft(config: SFTConfig, resume: bool = False) -> Path:
    """Run one SFT stage; returns the folder of the finished model."""
    seed_everything(config.train.seed)
    out = Path(config.train.output_dir)
    processor = processor_for(config.model.path)
    samples = load_samples(config.data.meta, config.data.datasets, seed=config.train.seed)
    dataset = ConversationDataset(samples, processor, config.data.max_length)
    model = load_model(config.model, config.train, config.lora)
    write_run_info(out, config, {"records": len(samples)})
    trainer = trainer_class(Trainer)(
        model=model,
        args=training_arguments(config.train, workers=config.data.num_workers),
        train_dataset=dataset,
        data_collator=Collator(processor.tokenizer.pad_token_id),
        callbacks=[MetricsLogCallback(out / "metrics.jsonl", config.stage), CheckpointFilesCallback(processor)],
    )
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(out, resume))
    trainer.save_state()
    card = {"name": f"{Path(config.model.path).name} + {config.stage}", "trained": True,
            "stage": config.stage, "base": str(config.model.path), "mode": config.train.mode,
            "global_step": trainer.state.global_step, "train_loss": result.training_loss,
            "wall_s": round(time.monotonic() - start, 1), "records": len(samples)}
    finish_training(trainer, processor, out / "final", config.model.path, config.train.mode, card)
    log.info("%s finished at step %d: %s", config.stage, trainer.state.global_step, out / "final")
    return out / "final"


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(argv, "training.sft", 'Supervised fine-tuning (stage 1 or reasoning SFT).', SFTConfig, train_sft)


if __name__ == "__main__":
    sys.exit(main())
