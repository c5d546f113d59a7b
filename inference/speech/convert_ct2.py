"""Convert a CTranslate2 Whisper model to an openai-whisper checkpoint.

CTranslate2 (``model.bin``, binary version 6) stores named arrays:

* a header: ``uint32 version``, ``string spec name``, ``uint32 revision``,
  ``uint32 variable count``;
* per variable: ``string name``, ``uint8 rank``, ``uint32 dims[rank]``,
  ``uint8 dtype`` (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16),
  ``uint32 byte count``, the raw little-endian bytes;
* ``uint32 alias count`` and ``(alias, target)`` string pairs.

Strings are ``uint16 length`` (including a trailing NUL) followed by the bytes.

The Whisper spec fuses attention projections: self-attention ``linear_0`` is
``[query; key; value]`` stacked on the output axis (the key's bias is zeros,
since Whisper's key projection has none); cross-attention ``linear_0`` is the
query and ``linear_1`` is ``[key; value]``. openai-whisper keeps them apart
(``attn.query/key/value/out``), which is what :func:`ct2_to_openai_state_dict`
undoes. The result is ``{"dims": {...}, "model_state_dict": {...}}``, the
layout ``whisper.load_model(path)`` reads.

Run as ``python -m inference.speech.convert_ct2 CT2_DIR OUT.pt``.
"""

from __future__ import annotations

import argparse
import json
import logging
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from inference.errors import XMedError

log = logging.getLogger(__name__)

SUPPORTED_BINARY_VERSION = 6
HEAD_DIM = 64  # every released Whisper model uses 64-dimensional attention heads

_DTYPES: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}


class ConversionError(XMedError):
    """The CTranslate2 model cannot be turned into an openai-whisper checkpoint."""


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        name = self.aliases.get(name, name)
        try:
            return self.variables[name]
        except KeyError:
            raise ConversionError(f"The CTranslate2 model has no variable '{name}'.") from None

    def scalar(self, name: str, default: int) -> int:
        name = self.aliases.get(name, name)
        value = self.variables.get(name)
        return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else default


def _read(fh: BinaryIO, fmt: str) -> int:
    size = struct.calcsize(fmt)
    data = fh.read(size)
    if len(data) != size:
        raise ConversionError("The CTranslate2 model.bin is truncated.")
    return struct.unpack(fmt, data)[0]


def _read_string(fh: BinaryIO) -> str:
    length = _read(fh, "<H")
    raw = fh.read(length)
    return raw[:-1].decode("utf-8") if raw.endswith(b"\0") else raw.decode("utf-8")


def read_ct2_model(model_bin: Path) -> CT2Model:
    """Parse ``model.bin`` into numpy arrays (bfloat16 widened to float32)."""
    with open(model_bin, "rb") as fh:
        version = _read(fh, "<I")
        if version != SUPPORTED_BINARY_VERSION:
            raise ConversionError(
                f"This Whisper model uses CTranslate2 format version {version}; "
                f"re-convert it with a current CTranslate2 (format {SUPPORTED_BINARY_VERSION})."
            )
        spec = _read_string(fh)
        revision = _read(fh, "<I")
        count = _read(fh, "<I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _read_string(fh)
            rank = _read(fh, "<B")
            shape = tuple(_read(fh, "<I") for _ in range(rank))
            type_id = _read(fh, "<B")
            nbytes = _read(fh, "<I")
            raw = fh.read(nbytes)
            if len(raw) != nbytes:
                raise ConversionError("The CTranslate2 model.bin is truncated.")
            dtype = _DTYPES.get(type_id)
            if dtype is None:
                raise ConversionError(f"Unknown CTranslate2 data type {type_id} for '{name}'.")
            if dtype == "bfloat16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                array = bits.view(np.float32)
            else:
                array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            variables[name] = array.reshape(shape)
        aliases: dict[str, str] = {}
        for _ in range(_read(fh, "<I")):
            alias = _read_string(fh)
            aliases[alias] = _read_string(fh)
    return CT2Model(spec, revision, variables, aliases)


def _linear(model: CT2Model, scope: str) -> tuple[np.ndarray, np.ndarray | None]:
    if f"{scope}/weight_scale" in model.variables:
        raise ConversionError(
            "This CTranslate2 Whisper model is int8-quantized; openai-whisper needs the "
            "float16 or float32 model (the one Systran publishes)."
        )
    weight = model.get(f"{scope}/weight")
    bias_name = f"{scope}/bias"
    bias = model.get(bias_name) if model.aliases.get(bias_name, bias_name) in model.variables else None
    return weight, bias


def _put_linear(out: dict[str, np.ndarray], prefix: str, weight: np.ndarray, bias: np.ndarray | None,
                with_bias: bool = True) -> None:
    out[f"{prefix}.weight"] = weight
    if with_bias:
        out[f"{prefix}.bias"] = bias if bias is not None else np.zeros(weight.shape[0], weight.dtype)
    elif bias is not None and np.abs(bias.astype(np.float32)).max() > 1e-6:
        raise ConversionError(f"'{prefix}' has a bias that openai-whisper's model cannot hold.")


def _put_norm(out: dict[str, np.ndarray], prefix: str, model: CT2Model, scope: str) -> None:
    out[f"{prefix}.weight"] = model.get(f"{scope}/gamma")
    out[f"{prefix}.bias"] = model.get(f"{scope}/beta")


def _put_qkv(out: dict[str, np.ndarray], prefix: str, weight: np.ndarray, bias: np.ndarray | None,
             parts: tuple[str, ...]) -> None:
    """Split a fused projection (stacked on the output axis) into openai-whisper's separate ones."""
    n = len(parts)
    if weight.shape[0] % n:
        raise ConversionError(f"Fused projection for '{prefix}' has an unexpected shape {weight.shape}.")
    size = weight.shape[0] // n
    for i, part in enumerate(parts):
        w = weight[i * size:(i + 1) * size]
        b = bias[i * size:(i + 1) * size] if bias is not None else None
        _put_linear(out, f"{prefix}.{part}", w, b, with_bias=part != "key")


def _count_layers(model: CT2Model, scope: str) -> int:
    n = 0
    while f"{scope}/layer_{n}/ffn/linear_0/weight" in model.variables:
        n += 1
    return n


def ct2_to_openai_state_dict(model: CT2Model) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """Map CTranslate2 Whisper variables to openai-whisper's ``ModelDimensions`` and state dict."""
    if model.spec != "WhisperSpec":
        raise ConversionError(f"This is a CTranslate2 '{model.spec}' model, not Whisper.")
    sd: dict[str, np.ndarray] = {}
    conv1_w, conv1_b = _linear(model, "encoder/conv1")
    conv2_w, conv2_b = _linear(model, "encoder/conv2")
    _put_linear(sd, "encoder.conv1", conv1_w, conv1_b)
    _put_linear(sd, "encoder.conv2", conv2_w, conv2_b)
    sd["encoder.positional_embedding"] = model.get("encoder/position_encodings/encodings")
    n_audio_layer = _count_layers(model, "encoder")
    for i in range(n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _put_qkv(sd, f"{dst}.attn", *_linear(model, f"{src}/self_attention/linear_0"), ("query", "key", "value"))
        _put_linear(sd, f"{dst}.attn.out", *_linear(model, f"{src}/self_attention/linear_1"))
        _put_norm(sd, f"{dst}.attn_ln", model, f"{src}/self_attention/layer_norm")
        _put_linear(sd, f"{dst}.mlp.0", *_linear(model, f"{src}/ffn/linear_0"))
        _put_linear(sd, f"{dst}.mlp.2", *_linear(model, f"{src}/ffn/linear_1"))
        _put_norm(sd, f"{dst}.mlp_ln", model, f"{src}/ffn/layer_norm")
    _put_norm(sd, "encoder.ln_post", model, "encoder/layer_norm")

    embeddings = model.get("decoder/embeddings/weight")
    projection_name = model.aliases.get("decoder/projection/weight", "decoder/projection/weight")
    if projection_name in model.variables and projection_name != "decoder/embeddings/weight":
        if not np.array_equal(model.variables[projection_name], embeddings):
            raise ConversionError("The model's output projection is not tied to its embeddings.")
    sd["decoder.token_embedding.weight"] = embeddings
    sd["decoder.positional_embedding"] = model.get("decoder/position_encodings/encodings")
    n_text_layer = _count_layers(model, "decoder")
    for i in range(n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _put_qkv(sd, f"{dst}.attn", *_linear(model, f"{src}/self_attention/linear_0"), ("query", "key", "value"))
        _put_linear(sd, f"{dst}.attn.out", *_linear(model, f"{src}/self_attention/linear_1"))
        _put_norm(sd, f"{dst}.attn_ln", model, f"{src}/self_attention/layer_norm")
        _put_linear(sd, f"{dst}.cross_attn.query", *_linear(model, f"{src}/attention/linear_0"))
        _put_qkv(sd, f"{dst}.cross_attn", *_linear(model, f"{src}/attention/linear_1"), ("key", "value"))
        _put_linear(sd, f"{dst}.cross_attn.out", *_linear(model, f"{src}/attention/linear_2"))
        _put_norm(sd, f"{dst}.cross_attn_ln", model, f"{src}/attention/layer_norm")
        _put_linear(sd, f"{dst}.mlp.0", *_linear(model, f"{src}/ffn/linear_0"))
        _put_linear(sd, f"{dst}.mlp.2", *_linear(model, f"{src}/ffn/linear_1"))
        _put_norm(sd, f"{dst}.mlp_ln", model, f"{src}/ffn/layer_norm")
    _put_norm(sd, "decoder.ln", model, "decoder/layer_norm")

    n_audio_state = int(conv1_w.shape[0])
    n_text_state = int(embeddings.shape[1])
    dims = {
        "n_mels": int(conv1_w.shape[1]),
        "n_audio_ctx": int(sd["encoder.positional_embedding"].shape[0]),
        "n_audio_state": n_audio_state,
        "n_audio_head": model.scalar("encoder/num_heads", n_audio_state // HEAD_DIM),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(embeddings.shape[0]),
        "n_text_ctx": int(sd["decoder.positional_embedding"].shape[0]),
        "n_text_state": n_text_state,
        "n_text_head": model.scalar("decoder/num_heads", n_text_state // HEAD_DIM),
        "n_text_layer": n_text_layer,
    }
    return dims, sd


def ct2_to_openai_checkpoint(ct2_dir: Path) -> dict:
    """The openai-whisper checkpoint (torch tensors) for a CTranslate2 Whisper folder."""
    import torch

    ct2_dir = Path(ct2_dir)
    model_bin = ct2_dir / "model.bin"
    if not model_bin.is_file():
        raise ConversionError(f"{ct2_dir} holds no CTranslate2 model.bin.")
    dims, sd = ct2_to_openai_state_dict(read_ct2_model(model_bin))
    checkpoint: dict = {
        "dims": dims,
        "model_state_dict": {k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()},
    }
    config = ct2_dir / "config.json"
    if config.is_file():
        heads = json.loads(config.read_text(encoding="utf-8")).get("alignment_heads")
        if heads:
            checkpoint["alignment_heads"] = [[int(a), int(b)] for a, b in heads]
    log.info("converted %s: %s", ct2_dir, dims)
    return checkpoint


def convert(ct2_dir: Path, out_file: Path) -> Path:
    """Write the openai-whisper checkpoint for ``ct2_dir`` to ``out_file`` (a ``.pt``)."""
    import torch

    checkpoint = ct2_to_openai_checkpoint(ct2_dir)
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out_file)
    return out_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CTranslate2 Whisper folder → openai-whisper checkpoint (.pt)")
    parser.add_argument("ct2_dir", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        print(convert(args.ct2_dir, args.out))
    except XMedError as exc:
        print(f"convert_ct2: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
