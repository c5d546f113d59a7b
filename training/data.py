"""Training data: InternVL-style records, tokenized and batched.

Data follows training/README.md: a ``meta.json`` of datasets with repeat factors
(InternVL's recipe) or a single conversation JSONL. Records are tokenized with
the model's own processor (:func:`inference.engine.processor.load_processor`):
``<image>`` becomes the chat template's ``<IMG_CONTEXT>``, which the processor
expands to ``<img>`` + image tokens + ``</img>``; labels are kept for the
assistant turns only (their text and closing ``<|im_end|>``), everything else is
-100. Batches are right-padded (:class:`Collator`); :class:`LengthGroupedBatches`
orders records into batches of similar length.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from inference.engine.processor import IMAGE_CONTEXT, ImageOnlyInternVLProcessor
from inference.errors import XMedError

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
AUDIO_PLACEHOLDER = "<audio>"
IGNORE_INDEX = -100
ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


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
