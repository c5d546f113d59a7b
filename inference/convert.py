"""Convert original InternVL2 ``internvl_chat`` checkpoints to transformers' native InternVL format.

The original layout (XMedGPT's) is InternViT + an MLP projector (``mlp1``) + a
language model, either InternLM2 (fused, head-grouped ``wqkv``; ``w1/w3/w2``
feed-forward) or Qwen2/Llama (already transformers-shaped). The native layout
is ``InternVLForConditionalGeneration`` with a Llama (for InternLM2) or Qwen2
text model. Tensors are streamed file by file and written as safetensors
shards, so an 8B checkpoint converts in far less memory than it occupies.

Written from the published architecture: ``wqkv`` rows are grouped per
key/value head as [q × (heads / kv_heads), k, v] blocks of ``head_dim`` rows.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from inference.engine.processor import (
    CHAT_TEMPLATE,  # the same for InternLM2 and Qwen2 backbones
)
from inference.errors import XMedError

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

#: Tokens the native processor needs; original InternVL2 tokenizers already hold them.
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


class ConversionError(XMedError):
    """The source is not a convertible InternVL2 checkpoint, or the output would be wrong."""


@dataclass
class ConversionReport:
    src: Path
    dst: Path
    backbone: str  # "internlm2", "qwen2" or "llama"
    tensors: int = 0
    parameters: int = 0
    shards: int = 0
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- config
def _vision_config(cfg: dict) -> dict:
    v = cfg.get("vision_config") or {}
    size = cfg.get("force_image_size") or v.get("image_size", 448)
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = v.get("patch_size", 14)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return {
        "hidden_size": v["hidden_size"],
        "num_hidden_layers": v["num_hidden_layers"],
        "num_attention_heads": v["num_attention_heads"],
        "intermediate_size": v["intermediate_size"],
        "image_size": [size, size],
        "patch_size": [patch, patch],
        "hidden_act": v.get("hidden_act", "gelu"),
        "layer_norm_eps": v.get("layer_norm_eps", 1e-6),
        "norm_type": v.get("norm_type", "rms_norm"),
        "use_qk_norm": bool(v.get("qk_normalization", False)),
        "attention_bias": bool(v.get("qkv_bias", True)),
        "use_mean_pooling": True,  # InternViT has no final norm
        "use_absolute_position_embeddings": True,
        "attention_dropout": 0.0,
        "projection_dropout": 0.0,
        "hidden_dropout_prob": 0.0,
    }


def _rope(llm: dict) -> dict:
    theta = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return {"rope_type": "default", "rope_theta": theta}
    if kind not in ("dynamic", "linear"):
        raise ConversionError(f"The checkpoint uses '{kind}' rotary scaling, which the converter does not support.")
    return {"rope_type": kind, "rope_theta": theta, "factor": float(scaling["factor"])}


def _text_config(llm: dict) -> tuple[str, dict]:
    kind = llm.get("model_type") or ""
    arch = " ".join(llm.get("architectures") or [])
    common = {
        "vocab_size": llm["vocab_size"],
        "hidden_size": llm["hidden_size"],
        "intermediate_size": llm["intermediate_size"],
        "num_hidden_layers": llm["num_hidden_layers"],
        "num_attention_heads": llm["num_attention_heads"],
        "num_key_value_heads": llm.get("num_key_value_heads", llm["num_attention_heads"]),
        "max_position_embeddings": llm.get("max_position_embeddings", 32768),
        "rms_norm_eps": llm.get("rms_norm_eps", 1e-6),
        "rope_parameters": _rope(llm),
        "tie_word_embeddings": bool(llm.get("tie_word_embeddings", False)),
        "bos_token_id": llm.get("bos_token_id"),
        "eos_token_id": llm.get("eos_token_id"),
        "pad_token_id": llm.get("pad_token_id"),
        "hidden_act": llm.get("hidden_act", "silu"),
    }
    if kind == "internlm2" or "InternLM2" in arch:
        return "internlm2", {"model_type": "llama", **common, "attention_bias": bool(llm.get("bias", False)),
                             "mlp_bias": False, "head_dim": llm["hidden_size"] // llm["num_attention_heads"]}
    if kind == "qwen2" or "Qwen2" in arch:
        return "qwen2", {"model_type": "qwen2", **common, "use_sliding_window": False}
    if kind == "llama" or "Llama" in arch:
        return "llama", {"model_type": "llama", **common, "attention_bias": bool(llm.get("attention_bias", False)),
                         "mlp_bias": bool(llm.get("mlp_bias", False))}
    raise ConversionError(f"The language model '{kind or arch}' is not supported (InternLM2, Qwen2 or Llama).")


def native_config(cfg: dict, image_token_id: int, eos_token_id: int | None):
    """The native ``InternVLConfig`` for an original ``internvl_chat`` config dict."""
    from transformers import InternVLConfig

    if cfg.get("ps_version", "v2") != "v2":
        raise ConversionError("This checkpoint uses the old pixel-shuffle (ps_version v1), which the native "
                              "InternVL model does not implement.")
    backbone, text = _text_config(cfg.get("llm_config") or {})
    if eos_token_id is not None:
        text["eos_token_id"] = eos_token_id
    vision = _vision_config(cfg)
    ratio = float(cfg.get("downsample_ratio", 0.5))
    tokens = int((vision["image_size"][0] // vision["patch_size"][0]) ** 2 * ratio * ratio)
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=tokens,
        downsample_ratio=ratio,
        vision_feature_layer=int(cfg.get("select_layer", -1)),
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    return backbone, config


# --------------------------------------------------------------------- weights
_VISION_RENAMES = [
    (r"^vision_model\.embeddings\.class_embedding$", "model.vision_tower.embeddings.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "model.vision_tower.embeddings.position_embeddings"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "model.vision_tower.embeddings.patch_embeddings.projection."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.proj\.", r"model.vision_tower.encoder.layer.\1.attention.projection_layer."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.", r"model.vision_tower.encoder.layer.\1.attention.\2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.ls(\d)$", r"model.vision_tower.encoder.layer.\1.lambda_\2"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm1\.", r"model.vision_tower.encoder.layer.\1.layernorm_before."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.norm2\.", r"model.vision_tower.encoder.layer.\1.layernorm_after."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"model.vision_tower.encoder.layer.\1.mlp."),
    (r"^mlp1\.0\.", "model.multi_modal_projector.layer_norm."),
    (r"^mlp1\.1\.", "model.multi_modal_projector.linear_1."),
    (r"^mlp1\.3\.", "model.multi_modal_projector.linear_2."),
]

_INTERNLM2_RENAMES = [
    (r"^language_model\.model\.tok_embeddings\.", "model.language_model.embed_tokens."),
    (r"^language_model\.model\.norm\.", "model.language_model.norm."),
    (r"^language_model\.output\.", "lm_head."),
    (r"^language_model\.model\.layers\.(\d+)\.attention\.wo\.", r"model.language_model.layers.\1.self_attn.o_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w1\.", r"model.language_model.layers.\1.mlp.gate_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w3\.", r"model.language_model.layers.\1.mlp.up_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.feed_forward\.w2\.", r"model.language_model.layers.\1.mlp.down_proj."),
    (r"^language_model\.model\.layers\.(\d+)\.attention_norm\.", r"model.language_model.layers.\1.input_layernorm."),
    (r"^language_model\.model\.layers\.(\d+)\.ffn_norm\.", r"model.language_model.layers.\1.post_attention_layernorm."),
]

_HF_TEXT_RENAMES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
]

_IGNORED = re.compile(r"(rotary_emb\.inv_freq|\.attn\.dropout|num_batches_tracked)$")


def split_vision_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternViT's fused ``qkv`` is q, k and v stacked along the output dimension."""
    q, k, v = tensor.chunk(3, dim=0)
    return q.contiguous(), k.contiguous(), v.contiguous()


def split_wqkv(tensor: torch.Tensor, heads: int, kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2's fused ``wqkv`` (weight or bias) into separate q, k, v projections.

    Rows come in ``kv_heads`` blocks; each block holds ``heads / kv_heads`` query
    heads, then one key head, then one value head, each ``head_dim`` rows.
    """
    groups = heads // kv_heads
    rows = tensor.shape[0]
    head_dim = rows // (kv_heads * (groups + 2))
    if head_dim * kv_heads * (groups + 2) != rows:
        raise ConversionError(f"wqkv has {rows} rows, which does not fit {heads} heads / {kv_heads} key-value heads.")
    blocks = tensor.reshape(kv_heads, groups + 2, head_dim, *tensor.shape[1:])
    q = blocks[:, :groups].reshape(kv_heads * groups * head_dim, *tensor.shape[1:])
    k = blocks[:, groups].reshape(kv_heads * head_dim, *tensor.shape[1:])
    v = blocks[:, groups + 1].reshape(kv_heads * head_dim, *tensor.shape[1:])
    return q.contiguous(), k.contiguous(), v.contiguous()


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return None


def convert_tensor(key: str, tensor: torch.Tensor, backbone: str, heads: int, kv_heads: int) -> dict[str, torch.Tensor]:
    """One original tensor → its native name(s) and value(s). Unknown keys raise."""
    if _IGNORED.search(key):
        return {}
    m = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
    if m:
        base = f"model.vision_tower.encoder.layer.{m.group(1)}.attention"
        q, k, v = split_vision_qkv(tensor)
        return {f"{base}.q_proj.{m.group(2)}": q, f"{base}.k_proj.{m.group(2)}": k, f"{base}.v_proj.{m.group(2)}": v}
    if backbone == "internlm2":
        m = re.match(r"^language_model\.model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)$", key)
        if m:
            base = f"model.language_model.layers.{m.group(1)}.self_attn"
            q, k, v = split_wqkv(tensor, heads, kv_heads)
            return {f"{base}.q_proj.{m.group(2)}": q, f"{base}.k_proj.{m.group(2)}": k, f"{base}.v_proj.{m.group(2)}": v}
    rules = _VISION_RENAMES + (_INTERNLM2_RENAMES if backbone == "internlm2" else _HF_TEXT_RENAMES)
    new = _rename(key, rules)
    if new is None:
        raise ConversionError(f"The checkpoint holds a tensor the converter does not know: {key}")
    return {new: tensor}


def _weight_files(src: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = src / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                names = sorted(set(weight_map.values()))
                if not all(isinstance(n, str) and n and "/" not in n and "\\" not in n and n != ".." for n in names):
                    raise ValueError("a file name in it is not a plain file name")
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                raise ConversionError(f"{index_name} in {src} cannot be read ({exc.__class__.__name__}: {exc}).") from None
            return [src / n for n in names]
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (src / single).is_file():
            return [src / single]
    raise ConversionError(f"No weights found in {src} (model.safetensors or pytorch_model.bin).")


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the checkpoint, one at a time (safetensors lazily; .bin one file at a time)."""
    for path in files:
        if path.suffix == ".safetensors":
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise ConversionError(f"{path.name} is not a readable safetensors file ({exc}).") from None
            with handle as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            yield from _load_plain_tensors(path).items()


def _load_plain_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` checkpoint read as plain tensors only (``weights_only``). Anything else in the
    pickle (code, custom objects) is refused in one sentence: loading it would run it."""
    try:
        with warnings.catch_warnings():  # torch's notes about unusual pickles: the refusal below says it all
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConversionError(
            f"{path.name} contains code or objects we refuse to load (only plain tensors are read from "
            "a checkpoint); get the weights as safetensors from a source you trust.") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ConversionError(f"{path.name} is not a readable PyTorch checkpoint ({exc.__class__.__name__}).") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ConversionError(f"{path.name} does not hold a plain mapping of tensor names to tensors.")
    return state


class _ShardWriter:
    def __init__(self, dst: Path, max_bytes: int) -> None:
        self.dst = dst
        self.max_bytes = max_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total = 0

    def add(self, key: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.current and self.current_bytes + size > self.max_bytes:
            self.flush()
        self.current[key] = tensor
        self.current_bytes += size
        self.total += size

    def flush(self) -> None:
        if not self.current:
            return
        name = f"part-{len(self.files) + 1:05d}.safetensors"
        save_file(self.current, str(self.dst / name), metadata={"format": "pt"})
        self.files.append((name, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def finish(self) -> int:
        self.flush()
        count = len(self.files)
        if count == 1:
            (self.dst / self.files[0][0]).rename(self.dst / "model.safetensors")
        else:
            final = []
            for i, (name, keys) in enumerate(self.files, 1):
                new = f"model-{i:05d}-of-{count:05d}.safetensors"
                (self.dst / name).rename(self.dst / new)
                final.append((new, keys))
            weight_map = {k: name for name, keys in final for k in keys}
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            (self.dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return count


# --------------------------------------------------------------------- tokenizer
def _write_tokenizer(src: Path, dst: Path) -> tuple[int, int | None]:
    """Copy a fast tokenizer (tokenizer.json) with a remote-code-free config; return (image id, im_end id)."""
    from transformers import PreTrainedTokenizerFast

    if not (src / "tokenizer.json").is_file():
        if (src / "tokenizer.model").is_file():
            _sentencepiece_to_fast(src, dst)
        else:
            raise ConversionError(f"No tokenizer found in {src} (tokenizer.json or tokenizer.model).")
    else:
        config = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(src / "tokenizer.json"),
            eos_token=config.get("eos_token") if isinstance(config.get("eos_token"), str) else None,
            pad_token=config.get("pad_token") if isinstance(config.get("pad_token"), str) else None,
            bos_token=config.get("bos_token") if isinstance(config.get("bos_token"), str) else None,
            unk_token=config.get("unk_token") if isinstance(config.get("unk_token"), str) else None,
            model_max_length=config.get("model_max_length", 8192),
        )
        _finish_tokenizer(tokenizer, dst)
    vocab = json.loads((dst / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in vocab.get("added_tokens", [])}
    ids.update({k: v for k, v in (vocab.get("model", {}).get("vocab") or {}).items() if k in IMAGE_TOKENS.values()}
               if isinstance(vocab.get("model", {}).get("vocab"), dict) else {})
    missing = [t for t in IMAGE_TOKENS.values() if t not in ids]
    if missing:
        raise ConversionError(f"The tokenizer lacks the image tokens {', '.join(missing)}; is this an InternVL model?")
    return ids["<IMG_CONTEXT>"], ids.get("<|im_end|>")


def _finish_tokenizer(tokenizer, dst: Path) -> None:
    for name, token in IMAGE_TOKENS.items():
        setattr(tokenizer, name, token)
    tokenizer.init_kwargs.update(IMAGE_TOKENS)
    if "<|im_end|>" in tokenizer.get_vocab():
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dst)


def _sentencepiece_to_fast(src: Path, dst: Path) -> None:
    """InternLM2's sentencepiece ``tokenizer.model`` → ``tokenizer.json`` with a plain config."""
    from transformers import PreTrainedTokenizerFast

    from inference.convert_tokenizer import write_fast_tokenizer

    config = json.loads((src / "tokenizer_config.json").read_text()) if (src / "tokenizer_config.json").is_file() else {}
    tokenizer_file = write_fast_tokenizer(src, dst)

    def named(key: str, default: str | None) -> str | None:
        value = config.get(key, default)
        return value.get("content") if isinstance(value, dict) else value

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        bos_token=named("bos_token", "<s>"),
        eos_token=named("eos_token", "</s>"),
        unk_token=named("unk_token", "<unk>"),
        pad_token=named("pad_token", "</s>"),
        model_max_length=config.get("model_max_length", 8192),
        clean_up_tokenization_spaces=False,
    )
    _finish_tokenizer(tokenizer, dst)


def _write_image_processor(cfg: dict, dst: Path, size: int) -> None:
    from transformers import GotOcr2ImageProcessorPil

    GotOcr2ImageProcessorPil(
        size={"height": size, "width": size},
        crop_to_patches=bool(cfg.get("dynamic_image_size", True)),
        min_patches=int(cfg.get("min_dynamic_patch", 1)),
        max_patches=int(cfg.get("max_dynamic_patch", 12)),
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(dst)


# --------------------------------------------------------------------- config checks
def _read_config(src: Path) -> dict:
    try:
        cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ConversionError(f"The config.json in {src} cannot be read ({exc.__class__.__name__}).") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"The config.json in {src} is not a JSON object.")
    return cfg


def _check_config(cfg: dict) -> None:
    """Run the config translation once on its own, so that a missing or mistyped field is reported
    as one sentence naming it (and before the output folder is touched)."""
    for section, translate in (("llm_config", lambda: _text_config(_section(cfg, "llm_config"))),
                               ("vision_config", lambda: _vision_config({**cfg, "vision_config":
                                                                         _section(cfg, "vision_config")}))):
        try:
            translate()
        except KeyError as exc:
            raise ConversionError(f"The checkpoint's config.json lacks '{section}.{exc.args[0]}', "
                                  "which the conversion needs.") from None
        except (TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError) as exc:
            raise ConversionError(f"The checkpoint's config.json has an unusable '{section}' "
                                  f"({exc.__class__.__name__}: {exc}).") from None


def _section(cfg: dict, name: str) -> dict:
    value = cfg.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConversionError(f"The checkpoint's config.json has an unusable '{name}' (not an object).")
    return value


# --------------------------------------------------------------------- entry point
def convert_checkpoint(
    src: Path | str,
    dst: Path | str,
    progress: Progress | None = None,
    max_shard_bytes: int = 4 * 1024**3,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert the ``internvl_chat`` checkpoint in ``src`` into a native model folder ``dst``."""
    report = progress or (lambda message, fraction: None)
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise ConversionError(f"No checkpoint in {src} (config.json is missing).")
    cfg = _read_config(src)
    if cfg.get("model_type") == "internvl":
        raise ConversionError(f"{src} is already in the native format; no conversion needed.")
    archs = cfg.get("architectures") if isinstance(cfg.get("architectures"), list) else []
    if cfg.get("model_type") != "internvl_chat" and "InternVLChatModel" not in archs:
        raise ConversionError(f"{src} is not an original InternVL2 checkpoint (model_type '{cfg.get('model_type')}').")
    _check_config(cfg)  # before anything is written: a missing field is named, not a KeyError
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise ConversionError(f"{dst} is not empty; choose an empty or new folder.")
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)
    from transformers import (  # slow to import: only once the source is known to be convertible
        GenerationConfig,
        InternVLForConditionalGeneration,
    )

    report("tokenizer", 0.02)
    image_token_id, im_end = _write_tokenizer(src, dst)
    try:
        backbone, config = native_config(cfg, image_token_id, im_end)
    except (KeyError, TypeError, ValueError) as exc:
        shutil.rmtree(dst, ignore_errors=True)
        raise ConversionError(f"The checkpoint's config.json cannot be converted ({exc.__class__.__name__}: {exc}).") \
            from None
    result = ConversionReport(src=src, dst=dst, backbone=backbone)

    with torch.device("meta"):
        skeleton = InternVLForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if config.text_config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    del skeleton

    heads = config.text_config.num_attention_heads
    kv_heads = config.text_config.num_key_value_heads
    files = _weight_files(src)
    writer = _ShardWriter(dst, max_shard_bytes)
    seen: set[str] = set()
    for i, path in enumerate(files):
        report(f"weights {path.name}", 0.05 + 0.9 * i / len(files))
        for key, tensor in iter_tensors([path]):
            for new_key, value in convert_tensor(key, tensor, backbone, heads, kv_heads).items():
                if new_key.endswith("cls_token") and value.dim() == 2:
                    value = value.reshape(1, 1, -1)
                want = expected.get(new_key)
                if want is None:
                    raise ConversionError(f"Converted tensor {new_key} (from {key}) has no place in the native model.")
                if tuple(value.shape) != want:
                    raise ConversionError(f"{key}: shape {tuple(value.shape)} does not match the native {want}; "
                                          "the config and the weights disagree.")
                writer.add(new_key, value)
                seen.add(new_key)
                result.tensors += 1
                result.parameters += value.numel()
    missing = sorted(set(expected) - seen)
    if missing:
        shutil.rmtree(dst, ignore_errors=True)
        raise ConversionError(f"The checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}; it is incomplete.")
    result.shards = writer.finish()

    report("configuration", 0.97)
    config.save_pretrained(dst)
    eos = [t for t in {im_end, config.text_config.eos_token_id} if t is not None]
    GenerationConfig(eos_token_id=eos if len(eos) > 1 else (eos[0] if eos else None),
                     pad_token_id=config.text_config.pad_token_id).save_pretrained(dst)
    _write_image_processor(cfg, dst, config.vision_config.image_size[0])
    (dst / "processor_config.json").write_text(json.dumps(
        {"processor_class": "InternVLProcessor", "image_seq_length": config.image_seq_length}, indent=2))
    card = {"name": src.name}
    if (src / "model_card.json").is_file():
        card.update(json.loads((src / "model_card.json").read_text()))
    card.update({"converted_from": str(src), "source_format": f"internvl_chat ({backbone})"})
    (dst / "model_card.json").write_text(json.dumps(card, indent=2))
    report("done", 1.0)
    log.info("converted %s → %s: %d tensors, %d parameters", src, dst, result.tensors, result.parameters)
    return result
