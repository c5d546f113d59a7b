"""The local engine: a native transformers InternVL model from a folder on this machine.

CUDA: bitsandbytes NF4 4-bit with double quantization and bf16 compute (8-bit
or bf16 on request). CPU: full precision, or 4-bit on request (slow but small).
Memory is estimated from the config before anything is loaded; a model the
device cannot hold is refused with a message that says what to do.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    BitsAndBytesConfig,
    InternVLForConditionalGeneration,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from inference.engine import memory
from inference.engine.processor import ImageOnlyInternVLProcessor, load_processor
from inference.errors import XMedError
from inference.types import SEED_MASK, CancelFn, ChatRequest, Generation, sampling_seed

log = logging.getLogger(__name__)

#: ``progress(message, fraction)`` while a model loads.
Progress = Callable[[str, float], None]

QUANTIZATIONS = ("auto", "nf4", "int8", "bf16", "none")
_LABELS = {"nf4": "4-bit", "int8": "8-bit", "bf16": "bf16", "none": ""}
#: Kept in floating point when the language model is quantized: small, and the
#: vision features matter most for localisation.
_SKIP_QUANT = ["model.vision_tower", "model.multi_modal_projector", "vision_tower", "multi_modal_projector", "lm_head"]


@dataclass
class TokenGeneration(Generation):
    """A :class:`Generation` that also carries its tokens (ids and text) and, when asked, the top alternatives."""

    token_ids: list[int] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    top_logprobs: list[list[tuple[str, float]]] = field(default_factory=list)


class ModelLoadError(XMedError):
    """The model folder is missing, incomplete, or does not fit this machine."""


class LoadCancelled(XMedError):
    """The reader cancelled loading the model."""


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _read_ahead(files: list[Path], report: Progress, cancel: CancelFn | None, start: float, end: float) -> None:
    """Read the weight files once, in order, reporting bytes read: loading from disk is the slow part of
    a cold start, and this is where it can be shown and cancelled. The operating system's page cache
    keeps the data for the loader that follows (only done when the files fit comfortably in memory)."""
    total = sum(f.stat().st_size for f in files) or 1
    done = 0
    for path in files:
        with path.open("rb") as handle:
            while chunk := handle.read(64 << 20):
                done += len(chunk)
                if cancel is not None and cancel():
                    raise LoadCancelled("Loading the model was cancelled.")
                report(f"reading weights ({done / 1024**3:.1f} of {total / 1024**3:.1f} GiB)",
                       start + (end - start) * done / total)


class _Cancel(StoppingCriteria):
    """Stops generation as soon as ``cancel()`` returns True (checked every token)."""

    def __init__(self, cancel: CancelFn) -> None:
        self.cancel = cancel
        self.cancelled = False

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if not self.cancelled and self.cancel():
            self.cancelled = True
        return torch.full((input_ids.shape[0],), self.cancelled, dtype=torch.bool, device=input_ids.device)


class _Suppress(LogitsProcessor):
    """Sets the scores of tokens that must never be generated to -inf (one indexed fill per step)."""

    def __init__(self, token_ids: list[int]) -> None:
        self.ids = torch.tensor(token_ids, dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.ids.device != scores.device:
            self.ids = self.ids.to(scores.device)
        return scores.index_fill(1, self.ids, float("-inf"))


_END = object()


class _PieceStreamer(BaseStreamer):
    """Turns generated token ids into text pieces on a queue; special tokens kept, eos/pad dropped."""

    def __init__(self, tokenizer, drop_ids: set[int], out: queue.Queue, lock=None) -> None:
        self.tokenizer = tokenizer
        self.lock = lock if lock is not None else threading.RLock()  # the engine's tokenizer lock
        self.drop_ids = drop_ids
        self.out = out
        self.ids: list[int] = []
        self.emitted = 0
        self.prompt_skipped = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_skipped:  # generate() first hands over the prompt
            self.prompt_skipped = True
            return
        self.ids.extend(t for t in value.flatten().tolist() if t not in self.drop_ids)
        with self.lock:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
            return
        if len(text) > self.emitted:
            self.out.put(text[self.emitted:])
            self.emitted = len(text)

    def end(self) -> None:
        with self.lock:
            text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if len(text) > self.emitted:  # an unfinished character at the very end
            self.out.put(text[self.emitted:])
            self.emitted = len(text)
        self.out.put(_END)


@dataclass(frozen=True)
class _Plan:
    device: str  # "cpu", "cuda", "cuda:1"
    quantization: str  # "nf4", "int8", "bf16", "none"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.quantization == "none" else torch.bfloat16

    @property
    def memory_kind(self) -> str:
        return {"nf4": "nf4", "int8": "int8", "bf16": "bf16", "none": "fp32"}[self.quantization]


def _plan(device: str, quantization: str) -> _Plan:
    if quantization not in QUANTIZATIONS:
        raise XMedError(f"Unknown quantization '{quantization}'; choose one of {', '.join(QUANTIZATIONS)}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise XMedError("A CUDA GPU was requested but none is available; choose the CPU or check the NVIDIA driver.")
    if quantization == "auto":
        quantization = "nf4" if device.startswith("cuda") else "none"
    return _Plan(device=device, quantization=quantization)


def _device_label(device: str) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
        return name.removeprefix("NVIDIA ").strip() or "GPU"
    return "CPU"


def _model_name(folder: Path) -> str:
    card = folder / "model_card.json"
    if card.is_file():
        try:
            name = json.loads(card.read_text()).get("name")
        except (json.JSONDecodeError, AttributeError):
            name = None
        if name:
            return str(name)
    return folder.name


#: glibc ``mallopt`` parameters and the values :func:`keep_freed_memory` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest
_TRIM_THRESHOLD = 256 << 20
_allocator_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc keep and reuse the large blocks CPU generation frees, instead of handing them back to the kernel.

    Every generated token copies each layer's key/value cache into a new, slightly larger tensor and frees the old
    one; for a batch of 16–32 rows these are megabytes. glibc's default serves blocks that large with fresh
    ``mmap`` pages and returns them on ``free``, so every step maps and zero-fills new pages: a 37-request pre-read
    sweep of the demo model took ~75 000 page faults and 0.1–0.2 s of kernel time. Blocks up to 32 MB now come from
    the heap and the heap is trimmed only when 256 MB lie free at its top (the peak memory is unchanged: the same
    blocks are reused). Process-wide, once; glibc only (elsewhere nothing is done). True when set."""
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
                _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
        except (OSError, AttributeError):  # not glibc
            _allocator_tuned = False
        log.debug("glibc allocator keeps freed blocks: %s", _allocator_tuned)
    return _allocator_tuned


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise XMedError("The image handed to the model must be RGB, 8 bits per channel.")
    return Image.fromarray(image, mode="RGB")


class LocalEngine:
    """An :class:`~inference.types.Engine` over ``InternVLForConditionalGeneration``."""

    def __init__(
        self,
        model: InternVLForConditionalGeneration,
        processor: ImageOnlyInternVLProcessor,
        name: str,
        device: str,
        quantization: str,
    ) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.device = device
        self.quantization = quantization
        self._lock = threading.Lock()  # one generation at a time on this model
        #: The fast (Rust) tokenizer refuses to encode on one thread while another decodes ("Already
        #: borrowed"): encoding runs outside the model lock, so every use of it here takes this lock.
        self._tokenizer_lock = threading.RLock()
        self.folder: Path | None = None  # the model folder it was loaded from (its calibration lives there)
        eos = model.generation_config.eos_token_id
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in eos_ids if e is not None}
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(int(self.tokenizer.eos_token_id))
        self.pad_id = int(self.tokenizer.pad_token_id)
        self._drop_ids = self.eos_ids | {self.pad_id}
        #: Never generated: image placeholders (input-only; one would break the next forward)
        #: and embedding rows past the tokenizer (padding, they decode to nothing).
        vocab_rows = int(model.get_output_embeddings().weight.shape[0])
        padding = range(len(self.tokenizer), vocab_rows)
        self.suppressed_ids = sorted(set(processor.image_token_ids) | set(padding))
        self._suppress = _Suppress(self.suppressed_ids)
        self._image_ids = torch.tensor(sorted(set(processor.image_token_ids)), dtype=torch.long)
        #: key/value caches of prompt heads already read (the system prompt, ~350 tokens, is the same in
        #: every request): token ids -> cache of one row; guarded by the model lock
        self._heads: collections.OrderedDict[tuple[int, ...], Any] = collections.OrderedDict()
        if str(device).startswith("cpu"):
            keep_freed_memory()  # the key/value cache lives in CPU memory: see the function

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_folder(
        cls,
        path: Path | str,
        device: str = "auto",
        quantization: str = "auto",
        progress: Progress | None = None,
        context: int = 4096,
        cancel: CancelFn | None = None,
    ) -> "LocalEngine":
        """Load a native InternVL model folder; refuse early when it cannot fit.

        ``progress(message, fraction)`` is called as loading goes on; ``cancel()``
        returning True while the weights are read stops with :class:`LoadCancelled`.
        """
        report = progress or (lambda message, fraction: None)
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"No model found in {folder} (config.json is missing). Choose a model folder.")
        config = memory.read_config(folder)
        if config.get("model_type") == "internvl_chat":
            raise ModelLoadError(
                f"{folder} is an original InternVL2 checkpoint; convert it first with "
                "'xmedgpt convert-checkpoint SRC DST'."
            )
        if config.get("model_type") != "internvl":
            raise ModelLoadError(f"{folder} holds a '{config.get('model_type')}' model, not an InternVL model.")
        plan = _plan(device, quantization)
        saved = config.get("quantization_config")
        if saved:  # a folder saved already quantized keeps its own quantization
            bits = "nf4" if saved.get("load_in_4bit") else "int8" if saved.get("load_in_8bit") else None
            if bits is None:
                raise ModelLoadError(f"{folder} uses an unsupported quantization ({saved.get('quant_method')}).")
            if quantization not in ("auto", bits):
                log.warning("%s is stored %s-quantized; ignoring quantization=%s", folder, bits, quantization)
            plan = _Plan(device=plan.device, quantization=bits)
        report("checking memory", 0.05)
        check_memory(config, plan, context)
        report("loading tokenizer and image processor", 0.1)
        processor = load_processor(folder)
        files = _weight_files(folder)
        if files and sum(f.stat().st_size for f in files) < 0.5 * memory.available_bytes("cpu"):
            _read_ahead(files, report, cancel, 0.15, 0.7)
        report("loading weights", 0.7)
        kwargs: dict = {"dtype": plan.dtype, "device_map": {"": plan.device}, "local_files_only": True}
        if saved:
            pass
        elif plan.quantization == "nf4":
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
                llm_int8_skip_modules=_SKIP_QUANT,
            )
        elif plan.quantization == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=_SKIP_QUANT)
        try:
            model = InternVLForConditionalGeneration.from_pretrained(folder, **kwargs)
        except torch.OutOfMemoryError as exc:
            raise ModelLoadError("The GPU ran out of memory while loading the model; close other GPU programs "
                                 "or choose 4-bit quantization.", detail=str(exc)) from exc
        except ImportError as exc:
            raise ModelLoadError(f"{_LABELS[plan.quantization]} loading needs the bitsandbytes package, which is "
                                 "missing or was built without support for this device.", detail=str(exc)) from exc
        except Exception as exc:  # corrupt or mismatched files: one line for the reader, detail for the log
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ModelLoadError(f"The model in {folder} could not be loaded: {first_line}",
                                 detail=str(exc)) from exc
        model.eval()
        engine = cls(model, processor, _model_name(folder), plan.device, plan.quantization)
        engine.folder = Path(folder)
        report("ready", 1.0)
        log.info("loaded %s (%s)", folder, engine.describe())
        return engine

    def save(self, folder: Path | str) -> Path:
        """Write the model (quantized weights as they are), tokenizer and image processor to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        self.processor.image_processor.save_pretrained(folder)
        (folder / "processor_config.json").write_text(
            json.dumps({"processor_class": "InternVLProcessor", "image_seq_length": self.processor.image_seq_length})
        )
        (folder / "model_card.json").write_text(json.dumps({"name": self.name}))
        return folder

    # ----------------------------------------------------------------- identity
    @property
    def model_id(self) -> str:
        return self.name

    def describe(self) -> str:
        parts = [self.name, _LABELS[self.quantization], _device_label(self.device)]
        return " · ".join(p for p in parts if p)

    # ----------------------------------------------------------------- inputs
    def _prompt_text(self, request: ChatRequest) -> str:
        messages = []
        if request.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        content = [{"type": "image"}] if request.image is not None else []
        content.append({"type": "text", "text": request.prompt})
        messages.append({"role": "user", "content": content})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if request.image is not None and self.processor.image_token not in text:
            # Some templates write a generic "<image>" placeholder; the processor expands <IMG_CONTEXT>.
            if "<image>" not in text:
                raise XMedError("The model's chat template has no place for an image; it cannot look at images.")
            text = text.replace("<image>", self.processor.image_token, 1)
        return text

    def encode(self, requests: Sequence[ChatRequest], *, on_device: bool = True) -> dict[str, torch.Tensor]:
        """Token ids, attention mask (left padded) and pixel values for a batch of requests.

        With ``on_device=False`` the tensors stay as the processor made them (CPU, its dtype): a batch
        can then be encoded on another thread, ahead of time, without holding device memory early, and
        answered by :meth:`generate_encoded`, which moves them exactly as this method would have.
        Safe to call while another thread generates (the tokenizer is guarded by its own lock)."""
        texts = [self._prompt_text(r) for r in requests]
        images = [_to_pil(r.image) for r in requests if r.image is not None]
        with self._tokenizer_lock:
            batch = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        out = dict(batch.items())
        return self._on_device(out) if on_device else out

    def _on_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The encoded batch on the model's device, pixel values in the model's dtype (no copy when already there)."""
        out = {k: v.to(self.model.device) for k, v in inputs.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self.model.dtype)
        return out

    # ----------------------------------------------------------------- outputs
    def _finish(
        self,
        tokens: list[int],
        logprobs: list[float],
        max_new: int,
        cancelled: bool,
        top: list[list[tuple[int, float]]] | None = None,
    ) -> TokenGeneration:
        kept_tokens, kept_lp, kept_top = [], [], []
        stopped = False
        for i, (tok, lp) in enumerate(zip(tokens, logprobs)):
            if tok in self.eos_ids:
                stopped = True
                break
            if tok == self.pad_id:
                continue
            kept_tokens.append(tok)
            kept_lp.append(lp)
            if top:
                kept_top.append([(self._token_text(t), v) for t, v in top[i]])
        if cancelled and not stopped:
            reason = "cancelled"
        elif stopped:
            reason = "stop"
        else:
            reason = "length" if len(tokens) >= max_new else "stop"
        with self._tokenizer_lock:
            text = self.tokenizer.decode(kept_tokens, skip_special_tokens=False)
            tokens = [self._token_text(t) for t in kept_tokens]
        return TokenGeneration(
            text=text,
            token_logprobs=kept_lp,
            finish_reason=reason,
            token_ids=kept_tokens,
            tokens=tokens,
            top_logprobs=kept_top,
        )

    def _token_text(self, token_id: int) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode([token_id], skip_special_tokens=False)

    @staticmethod
    def _token_logprobs(
        logits: tuple[torch.Tensor, ...], new_tokens: torch.Tensor, top_k: int = 0
    ) -> tuple[torch.Tensor, list[list[list[tuple[int, float]]]] | None]:
        """Log-probs (natural log) of the chosen tokens under the model's own, untempered distribution.

        With ``top_k`` > 0 also the ``top_k`` most likely tokens per step, per sequence.
        """
        stacked = torch.stack(logits, dim=1).float()  # (batch, steps, vocab)
        logp = torch.log_softmax(stacked, dim=-1)
        chosen = logp.gather(-1, new_tokens[:, : stacked.shape[1], None]).squeeze(-1)
        if top_k <= 0:
            return chosen, None
        values, indices = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
        top = [
            [list(zip(ids, vals)) for ids, vals in zip(row_i.tolist(), row_v.tolist())]
            for row_i, row_v in zip(indices, values)
        ]
        return chosen, top

    def _stopping(self, cancel: CancelFn | None) -> tuple[StoppingCriteriaList, _Cancel | None]:
        if cancel is None:
            return StoppingCriteriaList(), None
        crit = _Cancel(cancel)
        return StoppingCriteriaList([crit]), crit

    def _shared_head(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[int, torch.Tensor] | None:
        """(head, pads): every row's real tokens (after its ``pads`` of left padding) start with the same
        ``head`` tokens, all before the image (the system prompt and the user turn's opening); None when the
        head is too short to be worth a cache or the padding is not on the left."""
        length = ids.shape[1]
        if length < 2:
            return None
        pads = (mask == 0).sum(dim=1)
        if not torch.equal((mask.cumsum(dim=1) == 0).sum(dim=1), pads):  # zeros somewhere but the left
            return None
        shortest = int((length - pads).min())
        real = ids.gather(1, pads[:, None] + torch.arange(shortest, device=ids.device)[None])
        differs = (real != real[:1]).any(dim=0) | torch.isin(real[0], self._image_ids.to(ids.device))
        stops = torch.nonzero(differs)
        head = min(int(stops[0]) if len(stops) else shortest, length - 1)
        return (head, pads) if head >= HEAD_CACHE_MIN_TOKENS else None

    def _kept_head(self, head: torch.Tensor) -> Any:
        """``head``'s keys and values, read once per distinct head and kept for the next
        :data:`HEAD_CACHE_ENTRIES` heads (the one kept copy: never handed out). Under the model lock."""
        key = tuple(head.tolist())
        kept = self._heads.get(key)
        if kept is None:
            out = self.model(input_ids=head[None], attention_mask=torch.ones_like(head)[None], use_cache=True)
            kept = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            self._heads[key] = kept
            while len(self._heads) > HEAD_CACHE_ENTRIES:
                self._heads.popitem(last=False)
        else:
            self._heads.move_to_end(key)
        return kept

    def _head_cache(self, head: torch.Tensor, rows: int) -> Any:
        """A fresh cache holding ``head``'s keys and values for ``rows`` rows (:meth:`_kept_head`, copied for
        this use). Under the model lock."""
        cache = copy.deepcopy(self._kept_head(head))
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache

    @staticmethod
    def _left_padded(cache: Any, pads: torch.Tensor, columns: int) -> bool:
        """Lay a head cache (every row the same ``head`` keys and values) out as a left-padded batch's first
        ``columns`` columns: row r holds its ``pads[r]`` padding columns (zeros, masked out), then the
        head's first ``columns - pads[r]`` keys and values, which do not depend on what follows them. False
        (nothing changed) for a cache whose layers are not plain dynamic ones."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return False
        for layer in layers:
            for name in ("keys", "values"):
                head = getattr(layer, name)
                laid = head.new_zeros((*head.shape[:2], columns, head.shape[3]))
                for r, pad in enumerate(pads.tolist()):
                    if columns > pad:
                        laid[r, :, pad:columns] = head[r, :, : columns - pad]
                setattr(layer, name, laid)
        return True

    def _prefill(self, inputs: dict[str, torch.Tensor], upto: int) -> Any | None:
        """Read the prompt of every row up to column ``upto`` (exclusive) into a key/value cache, the head the
        rows share from :meth:`_head_cache` (laid out under each row's left padding); None when they share
        no head worth caching (``generate`` then reads the whole prompt itself). The answers are those of
        reading the whole prompt at once, up to the last bits of floating point. Under the model lock."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        found = self._shared_head(ids, mask)
        if found is None:
            return None
        head, pads = found
        first = int(torch.argmin(pads))  # a row without padding (the longest)
        columns = min(head + int(pads[first]), upto)  # the columns every row takes from the head
        if columns <= 0:
            return None
        cache = self._head_cache(ids[first, int(pads[first]):int(pads[first]) + head], ids.shape[0])
        if bool(pads.any()) and not self._left_padded(cache, pads, columns):
            return None
        if not bool(pads.any()) and columns < head:
            cache.crop(head - columns)
        if upto > columns:
            rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
            positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, columns:upto]
            out = self.model(input_ids=ids[:, columns:upto], attention_mask=mask[:, :upto], position_ids=positions,
                             cache=cache, use_cache=True, **rest)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        return cache

    def read_ahead(self, request: ChatRequest) -> bool:
        """Read ``request``'s head (its system prompt and the user turn's opening) into the head cache now,
        so the first question does not wait for it; generates nothing. False when it has no head worth
        keeping. A model just loaded is asked this once with the assistant's system prompt."""
        inputs = self.encode([request], on_device=True)
        with self._lock, torch.inference_mode():
            found = self._shared_head(inputs["input_ids"], inputs["attention_mask"])
            if found is None:
                return False
            self._kept_head(inputs["input_ids"][0, :found[0]])
        return True

    def _generate_kwargs(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """What ``generate`` is given for ``inputs``: the prompt with all but its last token already read
        (through the head cache) when the rows share a head, else ``inputs`` as they are."""
        ids = inputs["input_ids"]
        cache = self._prefill(inputs, ids.shape[1] - 1)
        if cache is None:
            return dict(inputs)
        return {"input_ids": ids, "attention_mask": inputs["attention_mask"], "cache": cache}

    def _run_generate(self, max_new: int, stopping, **kwargs):
        """``generate`` with the model's own token suppression, every step's logits kept (under the lock)."""
        return self.model.generate(
            **kwargs,
            max_new_tokens=max_new,
            stopping_criteria=stopping,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=self.pad_id,
            logits_processor=LogitsProcessorList([self._suppress]),
        )

    def _scored_generate(self, prompt_len: int, max_new: int, stopping, top_logprobs: int, **kwargs):
        """``generate`` with the model's own token suppression, returning the new tokens, their
        log-probs and the ``top_logprobs`` alternatives (call under the model lock)."""
        out = self._run_generate(max_new, stopping, **kwargs)
        new = out.sequences[:, prompt_len:]
        lp, top = self._token_logprobs(out.logits, new, top_logprobs)
        return new, lp, top

    def _greedy_dropping_finished(self, prompt_len: int, max_new: int, stopping, top_logprobs: int,
                                  crit: "_Cancel | None", **kwargs):
        """Greedy :meth:`_scored_generate` of a batch in two passes: every row for :data:`FIRST_PASS_TOKENS`
        tokens, then only the rows still writing, from the same key/value cache with the finished rows
        taken out. A batch used to carry every row until its longest answer ended (a pre-read batch of
        "No focal lesion" answers, 6 tokens, decoded 90 steps for one slice listing boxes). The same
        greedy answers, up to the last bits of floating point. Under the model lock."""
        ids = kwargs["input_ids"]
        rows = ids.shape[0]
        if rows < 2 or max_new <= FIRST_PASS_TOKENS:
            return self._scored_generate(prompt_len, max_new, stopping, top_logprobs, **kwargs)
        out = self._run_generate(FIRST_PASS_TOKENS, stopping, **kwargs)
        new1 = out.sequences[:, prompt_len:]
        lp1, top1 = self._token_logprobs(out.logits, new1, top_logprobs)
        steps = new1.shape[1]
        eos = torch.tensor(sorted(self.eos_ids), device=new1.device)
        writing = ~torch.isin(new1, eos).any(dim=1)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if steps < FIRST_PASS_TOKENS or not bool(writing.any()) or cache is None or (crit and crit.cancelled):
            return new1, lp1, top1
        keep = torch.nonzero(writing).flatten()
        cache.batch_select_indices(keep)
        grown = torch.cat([kwargs["attention_mask"], kwargs["attention_mask"].new_ones((rows, steps))], dim=1)
        out2 = self._run_generate(max_new - steps, stopping, input_ids=out.sequences[keep],
                                  attention_mask=grown[keep], cache=cache, do_sample=False)
        new2 = out2.sequences[:, out.sequences.shape[1]:]
        lp2, top2 = self._token_logprobs(out2.logits, new2, top_logprobs)
        width = steps + new2.shape[1]
        new = new1.new_full((rows, width), self.pad_id)
        new[:, :steps] = new1
        new[keep, steps:] = new2
        lp = lp1.new_zeros((rows, width))
        lp[:, :steps] = lp1
        lp[keep, steps:] = lp2
        top = None
        if top1 is not None and top2 is not None:
            top = [list(row) for row in top1]
            for j, i in enumerate(keep.tolist()):
                top[i] = top[i] + top2[j]
        return new, lp, top

    # ----------------------------------------------------------------- Engine
    def generate(
        self, request: ChatRequest, cancel: CancelFn | None = None, *, top_logprobs: int = 0
    ) -> TokenGeneration:
        """Greedy answer with per-token log-probs (and the ``top_logprobs`` best alternatives per token):
        a batch of one."""
        return self.generate_batch([request], cancel, top_logprobs=top_logprobs)[0]

    def generate_batch(
        self, requests: Sequence[ChatRequest], cancel: CancelFn | None = None, *, top_logprobs: int = 0
    ) -> list[TokenGeneration]:
        """Greedy answers to several requests in one batched ``generate`` (one forward pass per token for
        the whole batch), in the order given; each as :meth:`generate` would answer it alone.

        The prompts are left padded (decoder-only batching: every row's last prompt token sits at the
        same position, so the new tokens line up) and the attention mask keeps the padding out; ``generate``
        derives the position ids from the mask, so a padded row sees the positions it would see unpadded.
        A row that has finished is padded until the longest one ends. ``cancel()`` returning True stops the whole batch
        (every answer then ends ``cancelled``).
        """
        if not requests:
            return []
        return self.generate_encoded(requests, self.encode(requests, on_device=False), cancel, top_logprobs=top_logprobs)

    def generate_encoded(
        self,
        requests: Sequence[ChatRequest],
        inputs: dict[str, torch.Tensor],
        cancel: CancelFn | None = None,
        *,
        top_logprobs: int = 0,
    ) -> list[TokenGeneration]:
        """:meth:`generate_batch` of requests already encoded by :meth:`encode` (``inputs``, on the device or
        not): the same answers. Lets a caller encode the next batch on another thread while this one generates
        (the series pre-read's sweep does)."""
        if not requests:
            return []
        inputs = self._on_device(inputs)
        ids = inputs["input_ids"]
        if ids.shape[0] != len(requests):
            raise ValueError(f"{ids.shape[0]} encoded rows for {len(requests)} requests")
        max_new = max(r.max_new_tokens for r in requests)
        stopping, crit = self._stopping(cancel)
        with self._lock, torch.inference_mode():
            new, lp, top = self._greedy_dropping_finished(ids.shape[1], max_new, stopping, top_logprobs, crit,
                                                          **self._generate_kwargs(inputs), do_sample=False)
        cancelled = bool(crit and crit.cancelled)
        return [
            self._finish(new[i, : r.max_new_tokens].tolist(), lp[i, : r.max_new_tokens].tolist(), r.max_new_tokens,
                         cancelled, top[i][: r.max_new_tokens] if top else None)
            for i, r in enumerate(requests)
        ]

    def stream(self, request: ChatRequest, cancel: CancelFn | None = None) -> Iterator[str]:
        """Greedy answer, piece by piece as decoded. Closing the iterator stops generation."""
        inputs = self.encode([request])
        yield from self.stream_greedy(lambda: inputs, request.max_new_tokens, self._suppress, cancel)

    def stream_greedy(self, make_inputs: Callable[[], dict], max_new_tokens: int, suppress,
                      cancel: CancelFn | None = None, name: str = "xmedgpt-stream") -> Iterator[str]:
        """Run greedy ``generate`` on a worker thread (inputs built under the model lock) and yield the
        decoded pieces as they arrive; closing the iterator stops generation. Shared by text and audio."""
        pieces: queue.Queue = queue.Queue()
        stop = threading.Event()
        stopping, _ = self._stopping(lambda: stop.is_set() or bool(cancel and cancel()))
        streamer = _PieceStreamer(self.tokenizer, self._drop_ids, pieces, self._tokenizer_lock)
        failure: list[BaseException] = []

        def work() -> None:
            try:
                with self._lock, torch.inference_mode():
                    inputs = make_inputs()
                    self.model.generate(
                        **(self._generate_kwargs(inputs) if "input_ids" in inputs else inputs),
                        do_sample=False,
                        max_new_tokens=max_new_tokens,
                        stopping_criteria=stopping,
                        streamer=streamer,
                        pad_token_id=self.pad_id,
                        logits_processor=LogitsProcessorList([suppress]),
                    )
            except BaseException as exc:  # handed to the consumer below
                failure.append(exc)
                pieces.put(_END)

        worker = threading.Thread(target=work, name=name, daemon=True)
        worker.start()
        try:
            while True:
                item = pieces.get()
                if item is _END:
                    break
                yield item
        finally:
            stop.set()
            worker.join()
        if failure:
            raise failure[0]

    def sample(
        self,
        requests: Sequence[ChatRequest],
        n: int,
        temperature: float = 1.0,
        top_p: float = 0.9,
        cancel: CancelFn | None = None,
        *,
        top_logprobs: int = 0,
        seed: int | None = None,
    ) -> list[list[TokenGeneration]]:
        """``n`` sampled answers per request, one batch per system prompt.

        The prompts (image included) are run through the model once; their
        key/value cache is then repeated ``n`` times and the samples decode from it.
        Requests with different system prompts are batched apart: a reliability pass asks short questions
        without one beside a grounding request with the ~350-token system prompt, and in one batch the
        questions were left padded to its length (two thirds of the positions read were padding).
        Each batch is drawn from ``seed`` (default: :func:`~inference.types.sampling_seed` of its requests),
        on a forked random state: the same call gives the same samples, and the process's own random
        state is left as it was.
        """
        if not requests:
            return []
        if n < 1:
            raise ValueError("n must be at least 1")
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.system, []).append(i)
        if len(groups) > 1:
            results: list[list[TokenGeneration]] = [[] for _ in requests]
            for g, rows in enumerate(groups.values()):
                part = self._sample_batch([requests[i] for i in rows], n, temperature, top_p, cancel, top_logprobs,
                                          None if seed is None else (seed * 1_000_003 + g) & SEED_MASK)
                for i, row in zip(rows, part):
                    results[i] = row
            return results
        return self._sample_batch(requests, n, temperature, top_p, cancel, top_logprobs, seed)

    def _sample_batch(self, requests: Sequence[ChatRequest], n: int, temperature: float, top_p: float,
                      cancel: CancelFn | None, top_logprobs: int, seed: int | None) -> list[list[TokenGeneration]]:
        """:meth:`sample` of requests with one system prompt: one batch."""
        if seed is None:
            seed = sampling_seed(requests, n, temperature, top_p)
        inputs = self.encode(requests)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        max_new = max(r.max_new_tokens for r in requests)
        stopping, crit = self._stopping(cancel)
        with self._lock, torch.inference_mode(), _seeded(seed, self.device):
            cache = self._prefill(inputs, ids.shape[1] - 1)
            if cache is None:  # rows of different heads (or padded): the whole prompt, as one forward
                prefix = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
                positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
                prefill = self.model(
                    input_ids=ids[:, :-1],
                    attention_mask=mask[:, :-1],
                    position_ids=positions[:, :-1],
                    use_cache=True,
                    **prefix,
                )
                cache = prefill.cache if getattr(prefill, "cache", None) is not None else prefill.past_key_values
            cache.batch_repeat_interleave(n)
            new, lp, top = self._scored_generate(
                ids.shape[1], max_new, stopping, top_logprobs,
                input_ids=ids.repeat_interleave(n, dim=0),
                attention_mask=mask.repeat_interleave(n, dim=0),
                cache=cache,
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=0,
            )
        cancelled = bool(crit and crit.cancelled)
        results: list[list[TokenGeneration]] = []
        for i, request in enumerate(requests):
            row = []
            for j in range(n):
                k = i * n + j
                tokens = new[k, : request.max_new_tokens].tolist()
                row.append(self._finish(tokens, lp[k, : request.max_new_tokens].tolist(), request.max_new_tokens,
                                        cancelled, top[k] if top else None))
            results.append(row)
        return results


#: A shared prompt head shorter than this is read with the rest of the prompt (not worth a cache)
HEAD_CACHE_MIN_TOKENS = 16
#: Distinct prompt heads kept (system prompts: the assistant's, the audio one, a remote client's)
HEAD_CACHE_ENTRIES = 4
#: A greedy batch decodes every row this many tokens, then only the rows still writing (a bare "No focal
#: lesion is localized." is 6 tokens and its end)
FIRST_PASS_TOKENS = 8


@contextlib.contextmanager
def _seeded(seed: int, device: str) -> Iterator[None]:
    """Run the block with torch's random state (the CPU's, and ``device``'s when it is a GPU) seeded with
    ``seed``; the state from before is back afterwards. Callers hold the engine's lock."""
    devices = []
    if str(device).startswith("cuda"):
        index = torch.device(device).index
        devices = [torch.cuda.current_device() if index is None else index]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed & SEED_MASK)
        yield


def check_memory(config: dict, plan: _Plan, context: int = 4096) -> memory.MemoryEstimate:
    """Raise :class:`ModelLoadError` when ``plan.device`` has too little free memory for the model."""
    cuda = plan.device.startswith("cuda")
    need = memory.estimate(config, plan.memory_kind, context=context, cuda=cuda)
    have = memory.available_bytes(plan.device)
    if need.total_bytes > have:
        where = f"the GPU ({_device_label(plan.device)})" if cuda else "this computer's memory"
        advice = ("choose 4-bit quantization or close other GPU programs" if cuda and plan.quantization != "nf4"
                  else "use a smaller model, a larger GPU, or a remote engine")
        raise ModelLoadError(
            f"The model needs about {need.describe()} but {where} has only {have / memory.GIB:.1f} GiB free; {advice}.",
            detail=f"weights {need.weights_bytes} B, runtime {need.runtime_bytes} B, free {have} B",
        )
    log.info("memory check: need %s, have %.1f GiB on %s", need.describe(), have / memory.GIB, plan.device)
    return need
