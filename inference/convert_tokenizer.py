"""A sentencepiece ``tokenizer.model`` (InternLM2's, XMedGPT's) as a ``tokenizers`` fast tokenizer.

Original InternVL2 checkpoints ship InternLM2's sentencepiece BPE model plus
remote code; the native folder needs a ``tokenizer.json`` that loads without
remote code. Built from the model's own settings: pieces and scores (merges
ordered by score), byte fallback, dummy-prefix and whitespace rules, control
and user-defined pieces as special tokens, then the added tokens of
``tokenizer_config.json`` (``<img>``, ``<IMG_CONTEXT>``, ``<ref>``, ``<box>`` …)
at exactly their original ids. Needs the ``sentencepiece`` package (for its
protobuf schema) only while converting.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    processors,
)

from inference.errors import XMedError

_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


class TokenizerConversionError(XMedError):
    """The sentencepiece tokenizer cannot be converted faithfully."""


def _proto(path: Path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as exc:
        raise TokenizerConversionError(
            "This checkpoint's tokenizer is a sentencepiece model; install the 'sentencepiece' package "
            "to convert it (pip install sentencepiece)."
        ) from exc
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def sentencepiece_to_tokenizer(model_file: Path, tokenizer_config: dict | None = None) -> Tokenizer:
    """The fast equivalent of ``model_file``; ``tokenizer_config`` supplies added tokens and bos/eos rules."""
    from transformers.tokenization_utils_base import generate_merges

    proto = _proto(Path(model_file))
    if proto.trainer_spec.model_type != 2:  # 1 unigram, 2 BPE
        raise TokenizerConversionError("Only sentencepiece BPE tokenizers (InternLM2's kind) can be converted.")
    norm = proto.normalizer_spec
    if norm.name not in ("identity", "") and norm.precompiled_charsmap:
        raise TokenizerConversionError(f"The tokenizer's '{norm.name}' text normalisation cannot be reproduced.")
    pieces = list(proto.pieces)
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    special = [p.piece for p in pieces if p.type in (_UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE)]
    scores = {p.piece: p.score for p in pieces if p.type == _NORMAL}
    merges = generate_merges(vocab, scores, skip_tokens=special)
    unk = pieces[proto.trainer_spec.unk_id].piece
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                               byte_fallback=proto.trainer_spec.byte_fallback))

    steps = []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = None

    dec = [decoders.Replace("▁", " ")]
    if proto.trainer_spec.byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)

    sp_special = [AddedToken(p.piece, special=p.type == _CONTROL, normalized=False)
                  for p in pieces if p.type in (_CONTROL, _USER)]
    tok.add_special_tokens([t for t in sp_special if t.special])
    tok.add_tokens([t for t in sp_special if not t.special])

    config = tokenizer_config or {}
    added = sorted(((int(i), t) for i, t in (config.get("added_tokens_decoder") or {}).items()), key=lambda x: x[0])
    for token_id, spec in added:
        content = spec["content"]
        if content in vocab:
            if vocab[content] != token_id:
                raise TokenizerConversionError(f"Token {content} has id {vocab[content]}, not {token_id}.")
            continue
        if token_id != tok.get_vocab_size(with_added_tokens=True):
            raise TokenizerConversionError(f"Added token {content} expects id {token_id}, but ids are not contiguous.")
        token = AddedToken(content, special=spec.get("special", True), normalized=False,
                           lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False))
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        if tok.token_to_id(content) != token_id:
            raise TokenizerConversionError(f"Added token {content} landed at id {tok.token_to_id(content)}, not {token_id}.")

    bos = pieces[proto.trainer_spec.bos_id].piece if proto.trainer_spec.bos_id >= 0 else None
    eos = pieces[proto.trainer_spec.eos_id].piece if proto.trainer_spec.eos_id >= 0 else None
    single, special_ids = "$A", []
    if config.get("add_bos_token", True) and bos:
        single, special_ids = f"{bos} $A", [(bos, vocab[bos])]
    if config.get("add_eos_token", False) and eos:
        single += f" {eos}"
        special_ids.append((eos, vocab[eos]))
    if special_ids:
        tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=special_ids)
    return tok


def write_fast_tokenizer(src: Path, dst: Path) -> Path:
    """``src/tokenizer.model`` (+ ``tokenizer_config.json``) → ``dst/tokenizer.json``."""
    config_file = src / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tok = sentencepiece_to_tokenizer(src / "tokenizer.model", config)
    dst.mkdir(parents=True, exist_ok=True)
    out = dst / "tokenizer.json"
    tok.save(str(out))
    return out
