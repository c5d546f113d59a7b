"""Converter: tiny original-layout InternVL2 checkpoints (InternLM2 fused wqkv, Qwen2) → native.

The reference forward below is written from the original architecture
(InternViT → pixel shuffle → mlp1 → InternLM2 / Qwen2 decoder) on the original
state dict; the converted native model must give the same logits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from inference.convert import ConversionError, convert_checkpoint, split_wqkv
from inference.engine import memory
from training.model_factory import build_tokenizer

VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              image_size=28, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu")
TEXT = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            intermediate_size=80, rms_norm_eps=1e-6, rope_theta=1_000_000.0, max_position_embeddings=512)


# --------------------------------------------------------------------- checkpoints
def original_config(backbone: str, vocab: int, norm_type: str, qk_norm: bool) -> dict:
    llm = {**TEXT, "vocab_size": vocab, "tie_word_embeddings": False, "bos_token_id": None, "eos_token_id": 2,
           "pad_token_id": 0}
    if backbone == "internlm2":
        llm.update(model_type="internlm2", architectures=["InternLM2ForCausalLM"], bias=False,
                   rope_scaling={"type": "dynamic", "factor": 2.0})
    else:
        llm.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    return {
        "model_type": "internvl_chat", "architectures": ["InternVLChatModel"],
        "vision_config": {**VISION, "model_type": "intern_vit_6b", "qkv_bias": True,
                          "qk_normalization": qk_norm, "norm_type": norm_type},
        "llm_config": llm, "downsample_ratio": 0.5, "select_layer": -1, "ps_version": "v2",
        "force_image_size": VISION["image_size"], "template": "internlm2-chat",
        "dynamic_image_size": True, "max_dynamic_patch": 6,
    }


def original_weights(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    def ones(n):
        return 1.0 + rnd(n, scale=0.1)

    v, t = cfg["vision_config"], cfg["llm_config"]
    hv, iv = v["hidden_size"], v["intermediate_size"]
    grid = (v["image_size"] // v["patch_size"]) ** 2
    sd = {
        "vision_model.embeddings.class_embedding": rnd(1, 1, hv),
        "vision_model.embeddings.position_embedding": rnd(1, grid + 1, hv),
        "vision_model.embeddings.patch_embedding.weight": rnd(hv, 3, v["patch_size"], v["patch_size"]),
        "vision_model.embeddings.patch_embedding.bias": rnd(hv),
    }
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        sd.update({p + "attn.qkv.weight": rnd(3 * hv, hv), p + "attn.qkv.bias": rnd(3 * hv),
                   p + "attn.proj.weight": rnd(hv, hv), p + "attn.proj.bias": rnd(hv),
                   p + "ls1": rnd(hv, scale=0.5), p + "ls2": rnd(hv, scale=0.5),
                   p + "norm1.weight": ones(hv), p + "norm2.weight": ones(hv),
                   p + "mlp.fc1.weight": rnd(iv, hv), p + "mlp.fc1.bias": rnd(iv),
                   p + "mlp.fc2.weight": rnd(hv, iv), p + "mlp.fc2.bias": rnd(hv)})
        if v["norm_type"] == "layer_norm":
            sd.update({p + "norm1.bias": rnd(hv), p + "norm2.bias": rnd(hv)})
        if v["qk_normalization"]:
            sd.update({p + "attn.q_norm.weight": ones(hv), p + "attn.k_norm.weight": ones(hv)})
    d, it, vocab = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    heads, kv = t["num_attention_heads"], t["num_key_value_heads"]
    hd = d // heads
    sd.update({"mlp1.0.weight": ones(4 * hv), "mlp1.0.bias": rnd(4 * hv), "mlp1.1.weight": rnd(d, 4 * hv),
               "mlp1.1.bias": rnd(d), "mlp1.3.weight": rnd(d, d), "mlp1.3.bias": rnd(d)})
    if t["model_type"] == "internlm2":
        sd.update({"language_model.model.tok_embeddings.weight": rnd(vocab, d, scale=0.5),
                   "language_model.model.norm.weight": ones(d), "language_model.output.weight": rnd(vocab, d)})
        for i in range(t["num_hidden_layers"]):
            p = f"language_model.model.layers.{i}."
            sd.update({p + "attention.wqkv.weight": rnd((heads + 2 * kv) * hd, d), p + "attention.wo.weight": rnd(d, d),
                       p + "feed_forward.w1.weight": rnd(it, d), p + "feed_forward.w3.weight": rnd(it, d),
                       p + "feed_forward.w2.weight": rnd(d, it), p + "attention_norm.weight": ones(d),
                       p + "ffn_norm.weight": ones(d)})
    else:
        sd.update({"language_model.model.embed_tokens.weight": rnd(vocab, d, scale=0.5),
                   "language_model.model.norm.weight": ones(d), "language_model.lm_head.weight": rnd(vocab, d)})
        for i in range(t["num_hidden_layers"]):
            p = f"language_model.model.layers.{i}."
            sd.update({p + "self_attn.q_proj.weight": rnd(heads * hd, d), p + "self_attn.q_proj.bias": rnd(heads * hd),
                       p + "self_attn.k_proj.weight": rnd(kv * hd, d), p + "self_attn.k_proj.bias": rnd(kv * hd),
                       p + "self_attn.v_proj.weight": rnd(kv * hd, d), p + "self_attn.v_proj.bias": rnd(kv * hd),
                       p + "self_attn.o_proj.weight": rnd(d, d), p + "mlp.gate_proj.weight": rnd(it, d),
                       p + "mlp.up_proj.weight": rnd(it, d), p + "mlp.down_proj.weight": rnd(d, it),
                       p + "input_layernorm.weight": ones(d), p + "post_attention_layernorm.weight": ones(d),
                       p + "self_attn.rotary_emb.inv_freq": torch.zeros(hd // 2)})
    return sd


def write_original(folder: Path, backbone: str, norm_type: str, qk_norm: bool, shards: int) -> tuple[dict, dict]:
    folder.mkdir(parents=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(folder)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.update(auto_map={"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    cfg = original_config(backbone, len(tokenizer), norm_type, qk_norm)
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = original_weights(cfg, seed=11 if backbone == "internlm2" else 12)
    keys = sorted(sd)
    if shards == 1:
        save_file(sd, str(folder / "model.safetensors"))
    else:
        weight_map = {}
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: sd[k].contiguous() for k in keys[s::shards]}
            save_file(part, str(folder / name))
            weight_map.update(dict.fromkeys(part, name))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return cfg, sd


# --------------------------------------------------------------------- reference forward (original layout)
def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def vit_norm(x, sd, prefix, v):
    if v["norm_type"] == "layer_norm":
        return F.layer_norm(x, (x.shape[-1],), sd[prefix + ".weight"], sd[prefix + ".bias"], v["layer_norm_eps"])
    return rms_norm(x, sd[prefix + ".weight"], v["layer_norm_eps"])


def intern_vit(pixels, sd, v):
    x = F.conv2d(pixels, sd["vision_model.embeddings.patch_embedding.weight"],
                 sd["vision_model.embeddings.patch_embedding.bias"], stride=v["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    cls = sd["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd["vision_model.embeddings.position_embedding"]
    heads = v["num_attention_heads"]
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = vit_norm(x, sd, p + "norm1", v)
        b, n, c = h.shape
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(b, n, 3, heads, c // heads)
        q, k, val = qkv.permute(2, 0, 3, 1, 4)
        if v["qk_normalization"]:
            q = rms_norm(q.transpose(1, 2).flatten(-2), sd[p + "attn.q_norm.weight"], v["layer_norm_eps"])
            k = rms_norm(k.transpose(1, 2).flatten(-2), sd[p + "attn.k_norm.weight"], v["layer_norm_eps"])
            q = q.view(b, n, heads, -1).transpose(1, 2)
            k = k.view(b, n, heads, -1).transpose(1, 2)
        att = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        out = (att @ val).transpose(1, 2).reshape(b, n, c)
        x = x + F.linear(out, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"]) * sd[p + "ls1"]
        h = vit_norm(x, sd, p + "norm2", v)
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        x = x + h * sd[p + "ls2"]
    return x


def pixel_shuffle_v2(x, scale):
    n, w, h, c = x.shape
    x = x.view(n, w, int(h * scale), int(c / scale)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3).contiguous()


def image_embeddings(pixels, sd, cfg):
    x = intern_vit(pixels, sd, cfg["vision_config"])[:, 1:]
    side = int(math.isqrt(x.shape[1]))
    x = pixel_shuffle_v2(x.reshape(x.shape[0], side, side, -1), cfg["downsample_ratio"])
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    x = F.layer_norm(x, (x.shape[-1],), sd["mlp1.0.weight"], sd["mlp1.0.bias"])
    x = F.linear(F.gelu(F.linear(x, sd["mlp1.1.weight"], sd["mlp1.1.bias"])), sd["mlp1.3.weight"], sd["mlp1.3.bias"])
    return x.reshape(-1, x.shape[-1])


def rope(x, positions, theta):
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = positions[:, None].float() * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    rotated = torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * cos + rotated * sin


def decoder_logits(ids, image_embeds, image_token_id, sd, t):
    internlm = t["model_type"] == "internlm2"
    emb = sd["language_model.model.tok_embeddings.weight" if internlm else "language_model.model.embed_tokens.weight"]
    x = emb[ids].clone()
    x[ids == image_token_id] = image_embeds
    n, d = x.shape
    heads, kv = t["num_attention_heads"], t["num_key_value_heads"]
    hd, groups = d // heads, heads // kv
    pos = torch.arange(n)
    mask = torch.full((n, n), float("-inf")).triu(1)
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        h = rms_norm(x, sd[p + ("attention_norm.weight" if internlm else "input_layernorm.weight")], t["rms_norm_eps"])
        if internlm:  # fused rows: per kv head [q x groups, k, v]
            qkv = F.linear(h, sd[p + "attention.wqkv.weight"]).view(n, kv, groups + 2, hd)
            q = qkv[:, :, :groups].reshape(n, heads, hd)
            k, v = qkv[:, :, groups], qkv[:, :, groups + 1]
        else:
            q = F.linear(h, sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.q_proj.bias"]).view(n, heads, hd)
            k = F.linear(h, sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.k_proj.bias"]).view(n, kv, hd)
            v = F.linear(h, sd[p + "self_attn.v_proj.weight"], sd[p + "self_attn.v_proj.bias"]).view(n, kv, hd)
        q = rope(q.transpose(0, 1), pos, t["rope_theta"])
        k = rope(k.transpose(0, 1), pos, t["rope_theta"]).repeat_interleave(groups, 0)
        v = v.transpose(0, 1).repeat_interleave(groups, 0)
        att = (q @ k.transpose(-2, -1) / math.sqrt(hd) + mask).softmax(-1)
        out = (att @ v).transpose(0, 1).reshape(n, d)
        x = x + F.linear(out, sd[p + ("attention.wo.weight" if internlm else "self_attn.o_proj.weight")])
        h = rms_norm(x, sd[p + ("ffn_norm.weight" if internlm else "post_attention_layernorm.weight")], t["rms_norm_eps"])
        if internlm:
            gate, up, down = sd[p + "feed_forward.w1.weight"], sd[p + "feed_forward.w3.weight"], sd[p + "feed_forward.w2.weight"]
        else:
            gate, up, down = sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"], sd[p + "mlp.down_proj.weight"]
        x = x + F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), down)
    x = rms_norm(x, sd["language_model.model.norm.weight"], t["rms_norm_eps"])
    return F.linear(x, sd["language_model.output.weight" if internlm else "language_model.lm_head.weight"])


# --------------------------------------------------------------------- tests
def test_split_wqkv_takes_query_key_value_rows_per_kv_group():
    heads, kv, hd = 4, 2, 3
    groups = heads // kv
    labels = torch.tensor([[h, s, r] for h in range(kv) for s in range(groups + 2) for r in range(hd)]).float()
    q, k, v = split_wqkv(labels, heads, kv)
    assert q.shape == (heads * hd, 3) and k.shape == (kv * hd, 3) and v.shape == (kv * hd, 3)
    assert q[:, 1].max() < groups and (k[:, 1] == groups).all() and (v[:, 1] == groups + 1).all()
    assert q[:, 0].tolist() == [0] * (groups * hd) + [1] * (groups * hd)  # query heads stay with their kv head


@pytest.mark.parametrize(
    "backbone,norm_type,qk_norm,shards",
    [("internlm2", "rms_norm", True, 3), ("qwen2", "layer_norm", False, 1)],
)
def test_converted_model_gives_the_original_logits(tmp_path, backbone, norm_type, qk_norm, shards):
    from transformers import InternVLForConditionalGeneration

    from inference.engine.local import LocalEngine
    from inference.engine.processor import load_processor

    src = tmp_path / f"XMedGPT-{backbone}"
    cfg, sd = write_original(src, backbone, norm_type, qk_norm, shards)
    steps: list[float] = []
    report = convert_checkpoint(src, tmp_path / "native", progress=lambda m, f: steps.append(f),
                                max_shard_bytes=60_000)
    assert report.backbone == backbone and report.shards > 1 and steps[-1] == 1.0
    assert (tmp_path / "native" / "model.safetensors.index.json").is_file()

    processor = load_processor(tmp_path / "native")
    model = InternVLForConditionalGeneration.from_pretrained(tmp_path / "native", dtype=torch.float32).eval()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where is the nodule?"}]}]
    text = processor.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    image = (torch.rand(40, 70, 3, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8).numpy()
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    assert inputs["pixel_values"].shape[0] > 1  # tiled
    with torch.no_grad():
        native = model(**inputs).logits[0]
        reference = decoder_logits(inputs["input_ids"][0], image_embeddings(inputs["pixel_values"], sd, cfg),
                                   model.config.image_token_id, sd, cfg["llm_config"])
    assert native.shape == reference.shape
    assert torch.allclose(native, reference, atol=2e-4, rtol=1e-4), (native - reference).abs().max()
    counted = memory.count_parameters(json.loads((tmp_path / "native" / "config.json").read_text())).total
    assert counted == sum(p.numel() for p in model.parameters()) == report.parameters

    engine = LocalEngine.from_folder(tmp_path / "native", device="cpu")
    assert engine.model_id == f"XMedGPT-{backbone}"
    assert engine.generate(engine_request(image)).token_ids


def engine_request(image):
    from inference.types import ChatRequest

    return ChatRequest("Where is the nodule?", image, max_new_tokens=3)


def test_refuses_non_original_and_incomplete_checkpoints(tmp_path, tiny_model_dir):
    with pytest.raises(ConversionError, match="already in the native format"):
        convert_checkpoint(tiny_model_dir, tmp_path / "out")
    src = tmp_path / "broken"
    cfg, sd = write_original(src, "internlm2", "rms_norm", False, 1)
    sd.pop("language_model.output.weight")
    save_file(sd, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match="lacks 1 tensors, e.g. lm_head.weight"):
        convert_checkpoint(src, tmp_path / "out2")
    with pytest.raises(ConversionError, match="not empty"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("x")
        convert_checkpoint(src, tmp_path / "full")


def test_convert_checkpoint_command(tmp_path):
    from app.cli import main

    src = tmp_path / "orig"
    write_original(src, "qwen2", "layer_norm", True, 1)
    assert main(["convert-checkpoint", str(src), str(tmp_path / "native")]) == 0
    assert (tmp_path / "native" / "model.safetensors").is_file()
    assert main(["convert-checkpoint", str(src), str(tmp_path / "native")]) == 1  # not empty: clear refusal


# --------------------------------------------------------------------- sentencepiece tokenizer (InternLM2's kind)
ADDED = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
SAMPLES = [
    "Structure identification: axial CT of the chest.",
    "<ref>nodule</ref><box>[[120,200,180,260]]</box> in the  right upper lobe\n",
    "<|im_start|>user\n<img><IMG_CONTEXT></img>\nWhere is the lesion?<|im_end|>\n",
    "肺结节 8 mm, Hounsfield −20 HU; café",  # byte fallback for unseen characters
    "  leading spaces and trailing  ",
]


def write_sentencepiece_tokenizer(folder: Path, add_dummy_prefix: bool) -> int:
    spm = pytest.importorskip("sentencepiece")
    import io

    from training.model_factory import _CORPUS

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.splitlines() * 3), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=add_dummy_prefix, normalization_rule_name="identity",
        remove_extra_whitespaces=False, user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    size = sp.get_piece_size()
    decoder = {str(i): {"content": sp.id_to_piece(i), "special": True} for i in range(3)}
    decoder.update({str(sp.piece_to_id(t)): {"content": t, "special": True} for t in ("<|im_start|>", "<|im_end|>")})
    decoder.update({str(size + i): {"content": t, "special": True} for i, t in enumerate(ADDED)})
    config = {"tokenizer_class": "InternLM2Tokenizer", "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
              "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "</s>", "added_tokens_decoder": decoder}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return size + len(ADDED)


def reference_ids(sp, text: str, added: dict[str, int]) -> list[int]:
    """InternLM2Tokenizer's behaviour: split on added tokens, sentencepiece each piece, bos first."""
    import re as _re

    pattern = _re.compile("(" + "|".join(_re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")")
    ids = [sp.bos_id()]
    for part in pattern.split(text):
        if part in added:
            ids.append(added[part])
        elif part:
            ids.extend(sp.encode(part))
    return ids


@pytest.mark.parametrize("add_dummy_prefix", [False, True])
def test_sentencepiece_tokenizer_converts_to_identical_ids(tmp_path, add_dummy_prefix):
    spm = pytest.importorskip("sentencepiece")
    from inference.convert_tokenizer import sentencepiece_to_tokenizer

    write_sentencepiece_tokenizer(tmp_path, add_dummy_prefix)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    fast = sentencepiece_to_tokenizer(tmp_path / "tokenizer.model", config)
    added = {t["content"]: int(i) for i, t in config["added_tokens_decoder"].items() if int(i) > 2}
    for text in SAMPLES:
        expected = reference_ids(sp, text, added)
        assert fast.encode(text).ids == expected, text
        if not add_dummy_prefix:
            assert fast.decode(expected[1:], skip_special_tokens=False) == text


def test_internlm2_checkpoint_with_sentencepiece_tokenizer_converts_and_runs(tmp_path):
    pytest.importorskip("sentencepiece")
    from inference.engine.local import LocalEngine

    src = tmp_path / "XMedGPT-8B-tiny"
    src.mkdir()
    vocab = write_sentencepiece_tokenizer(src, add_dummy_prefix=False)
    cfg = original_config("internlm2", vocab, "rms_norm", False)
    (src / "config.json").write_text(json.dumps(cfg))
    save_file(original_weights(cfg, seed=3), str(src / "model.safetensors"))
    convert_checkpoint(src, tmp_path / "native")
    engine = LocalEngine.from_folder(tmp_path / "native", device="cpu")
    tok = engine.tokenizer
    assert engine.model.config.image_token_id == vocab - len(ADDED) + 2  # <IMG_CONTEXT> at its original id
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") == engine.model.generation_config.eos_token_id
    image = (torch.rand(30, 30, 3) * 255).to(torch.uint8).numpy()
    from inference.types import ChatRequest

    inputs = engine.encode([ChatRequest("Where is the nodule?", image)])
    text = tok.decode(inputs["input_ids"][0], skip_special_tokens=False)
    assert text.startswith("<s><|im_start|>user\n<img><IMG_CONTEXT>")  # InternLM2 prompts start with bos
    assert "Where is the nodule?<|im_end|>" in text
    assert engine.generate(ChatRequest("Where is the nodule?", image, max_new_tokens=3)).token_ids
