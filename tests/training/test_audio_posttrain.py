"""Audio post-training: Whisper encoder + projector into the LLM, 2 real steps, save/reload, resume, LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import InternVLForConditionalGeneration

from tests.audio_model import write_tone
from training.audio_posttrain import (
    AUDIO_CONTEXT,
    AudioProjector,
    load_audio_model,
    main,
    read_audio,
)
from training.data import pad_batch
from training.model_factory import build_tiny_model
from training.phantoms import write_corpus

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "training" / "configs" / "audio_micro.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def audio_data(tmp_path_factory) -> Path:
    """Audio JSONL as documented: a spoken question (tones here: no espeak-ng needed) + image + answer."""
    root = write_corpus(tmp_path_factory.mktemp("phantoms"), n=3, seed=2, size=64).out
    (root / "audio").mkdir()
    lines = []
    for i, (freq, answer) in enumerate([(300.0, "yes"), (900.0, "no"), (600.0, "2")]):
        write_tone(root / "audio" / f"{i}.wav", freq)
        lines.append({"audio": f"audio/{i}.wav", "image": f"images/{i:06d}.png", "transcript": "question",
                      "conversations": [{"from": "human", "value": "<image>\n<audio>"},
                                        {"from": "gpt", "value": answer}]})
    (root / "audio.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def _run(tiny: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["--config", str(MICRO), "--set", f"model.path={tiny}", "--set", f"data.meta={data / 'audio.jsonl'}",
                 "--set", f"train.output_dir={out}", *extra])


def test_read_audio_resamples_to_16k(tmp_path):
    write_tone(tmp_path / "a.wav", 440.0, seconds=1.0, rate=22050)
    x = read_audio(tmp_path / "a.wav")
    assert x.dtype == np.float32 and abs(len(x) - 16000) <= 1 and 0.25 < np.abs(x).max() <= 0.31


def test_projector_stacks_frames():
    p = AudioProjector(audio_dim=8, text_dim=16, stack=4)
    assert p(torch.zeros(2, 10, 8)).shape == (2, 2, 16)  # 10 frames → 2 tokens (the 2 left over are dropped)


def test_two_steps_train_only_the_projector_then_reload_and_resume(tiny, audio_data, tmp_path):
    out = tmp_path / "audio"
    assert _run(tiny, audio_data, out) == 0
    ckpt = out / "checkpoint-2"
    assert (ckpt / "optimizer.pt").is_file()
    assert json.loads((ckpt / "trainer_state.json").read_text())["global_step"] == 2
    final = out / "final"
    for name in ("audio_projector.safetensors", "audio_config.json", "audio_encoder/config.json",
                 "audio_encoder/model.safetensors", "audio_encoder/preprocessor_config.json"):
        assert (final / name).is_file(), name
    base = InternVLForConditionalGeneration.from_pretrained(tiny).state_dict()
    vlm = InternVLForConditionalGeneration.from_pretrained(final).state_dict()
    for k, v in base.items():  # LLM and vision frozen: only the new embedding row is extra
        if "embed_tokens" in k or k == "lm_head.weight":
            assert torch.equal(vlm[k][: v.shape[0]], v) and vlm[k].shape[0] == v.shape[0] + 1
        else:
            assert torch.equal(vlm[k], v), k

    model, processor, features = load_audio_model(final)
    assert processor.tokenizer.convert_tokens_to_ids(AUDIO_CONTEXT) == model.audio_token_id
    from training.audio_posttrain import AudioDataset
    from training.data import load_samples

    item = AudioDataset(load_samples(audio_data / "audio.jsonl"), processor, features, model.tokens_per_clip,
                        1024)[0]
    assert int((item["input_ids"] == model.audio_token_id).sum()) == model.tokens_per_clip
    batch = pad_batch([item], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        loss = model(**batch, input_features=item["input_features"]).loss
        silent = model(**batch, input_features=torch.zeros_like(item["input_features"])).loss
    assert torch.isfinite(loss) and loss != silent  # the answer's likelihood depends on the audio

    assert _run(tiny, audio_data, out, "--resume", "--set", "train.max_steps=3") == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2, 3]
    # the resumed run continued from checkpoint-2's projector: 2 + 1 steps == 3 steps
    straight = tmp_path / "straight"
    assert _run(tiny, audio_data, straight, "--set", "train.max_steps=3") == 0
    resumed = load_file(out / "final" / "audio_projector.safetensors")
    direct = load_file(straight / "final" / "audio_projector.safetensors")
    assert resumed.keys() == direct.keys()
    assert all(torch.allclose(resumed[k], direct[k], atol=1e-6) for k in direct)


def test_lora_on_the_llm(tiny, audio_data, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "audio-lora"
    assert _run(tiny, audio_data, out, "--set", "train.mode=lora", "--set", "lora.r=4",
                "--set", "train.max_steps=1") == 0
    base = InternVLForConditionalGeneration.from_pretrained(tiny).state_dict()
    vlm = InternVLForConditionalGeneration.from_pretrained(out / "final").state_dict()
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(vlm[q], base[q])  # LoRA merged into the LLM
    assert torch.equal(vlm["model.vision_tower.embeddings.patch_embeddings.projection.weight"],
                       base["model.vision_tower.embeddings.patch_embeddings.projection.weight"])
