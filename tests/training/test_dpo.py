"""DPO launch script (trl DPOTrainer on InternVL): 2 real steps, reference from memory, resume, MPO + LoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import InternVLForConditionalGeneration

from inference.engine.processor import load_processor
from tests.training.weights import same_weights
from training.config import ConfigError
from training.dpo import DPOSection, chat_prompt, losses, main, preference_dataset
from training.model_factory import build_tiny_model
from training.phantoms import write_corpus

pytest.importorskip("trl")

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "training" / "configs" / "dpo_micro.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("phantoms"), n=3, seed=8, size=64).out


def _run(tiny: Path, corpus: Path, out: Path, *extra: str) -> int:
    return main(["--config", str(MICRO), "--set", f"model.path={tiny}",
                 "--set", f"data.meta={corpus / 'preference.jsonl'}", "--set", f"train.output_dir={out}", *extra])


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_prompt_is_the_chat_template_the_engine_uses(tiny):
    processor = load_processor(tiny)
    expected = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Analyse."}]}],
        tokenize=False, add_generation_prompt=True)
    assert chat_prompt("<image>\nAnalyse.") == expected


def test_preference_dataset_and_loss_mixes(corpus):
    ds = preference_dataset(corpus / "preference.jsonl")
    assert len(ds) == 3
    row = ds[0]
    assert row["prompt"].count("<IMG_CONTEXT>") == 1 and row["chosen"].endswith("<|im_end|>")
    assert row["chosen"] != row["rejected"] and len(row["images"]) == 1
    assert losses(DPOSection(mpo=True)) == (["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0])
    with pytest.raises(ConfigError):
        losses(DPOSection(loss_types=["sigmoid", "sft"], loss_weights=[1.0]))


def test_preference_dataset_loads_a_seeded_subset_when_asked(corpus):
    """DPO keeps every tokenized pair's pixels in memory: the 512-px demo recipe loads only what it trains on."""
    two = preference_dataset(corpus / "preference.jsonl", seed=5, max_samples=2)
    assert len(two) == 2
    assert [r["chosen"] for r in two] == [r["chosen"] for r in preference_dataset(corpus / "preference.jsonl", seed=5,
                                                                                   max_samples=2)]
    assert len(preference_dataset(corpus / "preference.jsonl", max_samples=10)) == 3  # more than there are: all


def test_full_dpo_two_steps_reference_in_memory_and_resume(tiny, corpus, tmp_path):
    out = tmp_path / "dpo"
    assert _run(tiny, corpus, out) == 0
    rows = [r for r in _rows(out) if "loss" in r]
    # step 1: the policy equals its reference, so the sigmoid loss is exactly ln 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert rows[1]["rewards/margins"] != 0.0  # the policy moved away from the frozen copy
    ckpt = out / "checkpoint-2"
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "tokenizer.json").is_file()
    base = InternVLForConditionalGeneration.from_pretrained(tiny).state_dict()
    final = InternVLForConditionalGeneration.from_pretrained(out / "final").state_dict()
    assert any(not torch.equal(final[k], base[k]) for k in base)
    card = json.loads((out / "final" / "model_card.json").read_text())
    assert card["stage"] == "dpo" and card["global_step"] == 2

    assert _run(tiny, corpus, out, "--resume", "--set", "train.max_steps=3") == 0
    steps = [r["step"] for r in _rows(out) if "loss" in r]
    assert steps == [1, 2, 3]
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    # the resumed run continued from checkpoint-2's policy (the reference stays the base): 2 + 1 == 3 steps
    straight = tmp_path / "straight"
    assert _run(tiny, corpus, straight, "--set", "train.max_steps=3") == 0
    assert same_weights(out / "final", straight / "final")


def test_mpo_losses_with_lora(tiny, corpus, tmp_path):
    out = tmp_path / "mpo"
    assert _run(tiny, corpus, out, "--set", "train.mode=lora", "--set", "dpo.mpo=true", "--set", "lora.r=4",
                "--set", "train.max_steps=1") == 0
    first = next(r for r in _rows(out) if "loss" in r)
    # 0.8·ln2 (sigmoid) + 0.2·bco_pair + 1.0·NLL of the chosen answers: far above ln 2 for a random model
    assert first["loss"] > 1.0
    merged = InternVLForConditionalGeneration.from_pretrained(out / "final").state_dict()
    assert not any("lora_" in k for k in merged)
