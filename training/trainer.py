"""The transformers ``Trainer`` as every stage runs it: arguments, mixins, callbacks, resuming.

Training runs on transformers' ``Trainer`` (trl's ``DPOTrainer`` for DPO), so
``accelerate launch`` / ``torchrun`` / DeepSpeed ZeRO work as in the InternVL
recipe, and a checkpoint holds the optimizer, scheduler and RNG state: resume
continues the step count. Each checkpoint also gets the tokenizer and image
processor (:class:`CheckpointFilesCallback`), so it loads directly with
``from_pretrained`` or ``LocalEngine``; every log line goes to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from inference.engine.processor import ImageOnlyInternVLProcessor
from training.config import TrainSection
from training.data import LengthGroupedBatches
from training.saving import save_processor

log = logging.getLogger(__name__)


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
