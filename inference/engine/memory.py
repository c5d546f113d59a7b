"""How much memory a native InternVL model needs, estimated from its config alone.

Used before loading so that a model that cannot fit is refused with a clear
message instead of an out-of-memory crash half-way through loading.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

GIB = 1024**3

#: Bytes per weight of a quantized or cast linear layer. NF4 with double
#: quantization stores 4 bits plus ~0.127 bits of scales per weight.
BYTES_PER_WEIGHT = {"nf4": 0.516, "int8": 1.02, "bf16": 2.0, "fp16": 2.0, "fp32": 4.0}


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by kind: big matrices (quantizable) and the rest (kept in float)."""

    vision: int  # vision tower + projector: kept in float when the language model is quantized
    text_linear: int  # language-model linear weights: what 4-/8-bit quantization shrinks
    text_other: int  # embeddings, norms, biases, lm_head

    @property
    def total(self) -> int:
        return self.vision + self.text_linear + self.text_other


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    runtime_bytes: int  # KV cache + activations for one request of ``context`` tokens, plus CUDA context
    context: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.runtime_bytes

    def describe(self) -> str:
        return f"{self.total_bytes / GIB:.1f} GiB"


def _pair(value, default: int) -> int:
    if value is None:
        return default
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def count_parameters(config: dict) -> ParamCounts:
    """Parameter counts of ``InternVLForConditionalGeneration`` from its config.json dict."""
    v = config.get("vision_config", {})
    t = config.get("text_config", {})
    hv = int(v.get("hidden_size", 1024))
    iv = int(v.get("intermediate_size", 4096))
    lv = int(v.get("num_hidden_layers", 24))
    patch = _pair(v.get("patch_size"), 14)
    size = _pair(v.get("image_size"), 448)
    n_patches = (size // patch) ** 2
    vision = 3 * patch * patch * hv + hv + hv + (n_patches + 1) * hv
    rms = v.get("norm_type", "layer_norm") == "rms_norm"
    norms = 2 * hv if rms else 4 * hv  # two norms per layer, RMS norms have no bias
    qk_norm = 2 * hv if v.get("use_qk_norm") else 0
    attn_bias = 3 * hv if v.get("attention_bias", False) else 0
    vision += lv * (4 * hv * hv + attn_bias + hv + 2 * hv * iv + iv + hv + norms + qk_norm + 2 * hv)
    if not v.get("use_mean_pooling", True):
        vision += 2 * hv  # final layer norm
    ratio = float(config.get("downsample_ratio", 0.5))
    shuffled = int(hv / (ratio * ratio))
    d = int(t.get("hidden_size", 4096))
    vision += 2 * shuffled + shuffled * d + d + d * d + d  # projector

    vocab = int(t.get("vocab_size", 151674))
    lt = int(t.get("num_hidden_layers", 32))
    heads = int(t.get("num_attention_heads", 32))
    kv = int(t.get("num_key_value_heads", heads))
    head_dim = int(t.get("head_dim") or d // heads)
    it = int(t.get("intermediate_size", 11008))
    q = heads * head_dim
    kvd = kv * head_dim
    text_linear = lt * (d * q + 2 * d * kvd + q * d + 3 * d * it)
    tied = bool(t.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
    biases = q + 2 * kvd if t.get("model_type") == "qwen2" or t.get("attention_bias") else 0
    text_other = vocab * d * (1 if tied else 2) + lt * (2 * d + biases) + d
    return ParamCounts(vision=vision, text_linear=text_linear, text_other=text_other)


def estimate(config: dict, quantization: str, context: int = 4096, cuda: bool = True) -> MemoryEstimate:
    """Bytes needed to hold the weights and run one ``context``-token request.

    ``quantization`` is ``"nf4"``, ``"int8"``, ``"bf16"``, ``"fp16"`` or ``"fp32"``.
    Quantization covers the language model's linear layers; the vision tower,
    projector, embeddings and head stay in bf16 (fp32 when nothing is quantized on CPU).
    """
    counts = count_parameters(config)
    float_bytes = 4.0 if quantization == "fp32" else 2.0
    weights = counts.text_linear * BYTES_PER_WEIGHT[quantization] + (counts.vision + counts.text_other) * float_bytes
    t = config.get("text_config", {})
    d = int(t.get("hidden_size", 4096))
    heads = int(t.get("num_attention_heads", 32))
    kv = int(t.get("num_key_value_heads", heads))
    head_dim = int(t.get("head_dim") or d // heads)
    lt = int(t.get("num_hidden_layers", 32))
    vocab = int(t.get("vocab_size", 151674))
    kv_cache = 2 * lt * kv * head_dim * context * float_bytes
    activations = context * (4 * d + int(t.get("intermediate_size", 4 * d)) * 2) * float_bytes + vocab * 4 * 2
    overhead = 0.6 * GIB if cuda else 0.2 * GIB  # CUDA context / allocator slack, or interpreter slack
    return MemoryEstimate(
        weights_bytes=int(weights), runtime_bytes=int(kv_cache + activations + overhead), context=context
    )


def read_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def available_bytes(device: str) -> int:
    """Free memory on ``device`` ("cuda", "cuda:1", "cpu")."""
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        free, _total = torch.cuda.mem_get_info(index)
        return int(free)
    return int(psutil.virtual_memory().available)
