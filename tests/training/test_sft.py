"""SFT launch script: data/collation details, and 2 real training steps per mode that write,
reload and resume checkpoints (tiny model, 64 px phantoms, seconds on a CPU core)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import InternVLForConditionalGeneration

from inference.engine.processor import load_processor
from inference.errors import XMedError
from tests.training.weights import same_weights
from training.config import ConfigError, SFTConfig, load_config
from training.data import (
    IGNORE_INDEX,
    ConversationDataset,
    chat_segments,
    load_samples,
    pad_batch,
)
from training.model_factory import build_tiny_model
from training.phantoms import write_corpus
from training.sft import main

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "training" / "configs" / "sft_micro.yaml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("phantoms"), n=3, seed=5, size=64).out


def _run(tiny: Path, corpus: Path, out: Path, *extra: str) -> int:
    return main(["--config", str(MICRO), "--set", f"model.path={tiny}", "--set", f"data.meta={corpus / 'meta.json'}",
                 "--set", f"train.output_dir={out}", *extra])


def _state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def test_labels_cover_only_the_assistant_turns(tiny, corpus):
    processor = load_processor(tiny)
    rec = {"image": "images/000000.png", "conversations": [
        {"from": "system", "value": "You are a radiologist."},
        {"from": "human", "value": "<image>\nIs there a lesion?"}, {"from": "gpt", "value": "yes"},
        {"from": "human", "value": "Where?"}, {"from": "gpt", "value": "<ref>nodule</ref><box>[[1, 2, 30, 40]]</box>"}]}
    from training.data import Sample

    item = ConversationDataset([Sample(rec, corpus, "t:1")], processor, 4096)[0]
    tok = processor.tokenizer
    trained = [t for t, lab in zip(item["input_ids"].tolist(), item["labels"].tolist()) if lab != IGNORE_INDEX]
    assert tok.decode(trained, skip_special_tokens=False) == \
        "yes<|im_end|><ref>nodule</ref><box>[[1, 2, 30, 40]]</box><|im_end|>"
    ids = item["input_ids"].tolist()
    n_image = sum(1 for t in ids if t == processor.image_token_id)
    assert n_image == processor.image_seq_length * item["pixel_values"].shape[0]
    # the prompt is the chat template the engine uses at inference
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\nYou are a radiologist.<|im_end|>\n<|im_start|>user\n<img>")
    assert "<|im_start|>assistant\nyes<|im_end|>\n<|im_start|>user\nWhere?" in text


def test_chat_segments_match_the_chat_template(tiny):
    processor = load_processor(tiny)
    conv = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    text = "".join(t for t, _ in chat_segments(conv))
    expected = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
         {"role": "assistant", "content": "A"}], tokenize=False)
    assert text == expected


def test_repeat_factors_and_padding(tmp_path, corpus):
    meta = json.loads((corpus / "meta.json").read_text())
    meta["phantom_grounding"]["repeat_time"] = 2
    meta["phantom_vqa"]["repeat_time"] = 0.5
    (corpus / "meta2.json").write_text(json.dumps(meta))
    samples = load_samples(corpus / "meta2.json", ["phantom_grounding", "phantom_vqa"])
    n_vqa = meta["phantom_vqa"]["length"]
    assert len(samples) == 2 * 3 + round(n_vqa * 0.5)
    batch = pad_batch([{"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
                       {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_config_rejects_unknown_keys_and_bad_types(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stpes: 3\n")
    with pytest.raises(ConfigError, match="train.max_stpes"):
        load_config(bad, SFTConfig)
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(MICRO, SFTConfig, ["train.batch_size=two"])
    cfg = load_config(MICRO, SFTConfig, ["train.lr=2e-4", "lora.modules=[q_proj]"])
    assert cfg.train.lr == pytest.approx(2e-4) and cfg.lora.modules == ["q_proj"]
    with pytest.raises(XMedError):
        load_samples(tmp_path / "missing.json")


def test_full_sft_two_steps_writes_reloadable_checkpoint_and_resumes(tiny, corpus, tmp_path):
    out = tmp_path / "run"
    assert _run(tiny, corpus, out) == 0
    ckpt = out / "checkpoint-2"
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "tokenizer.json", "processor_config.json"):
        assert (ckpt / name).is_file(), name
    assert _state(ckpt)["global_step"] == 2
    base = InternVLForConditionalGeneration.from_pretrained(tiny)
    trained = InternVLForConditionalGeneration.from_pretrained(out / "final")
    changed = [n for n, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert any("language_model" in n for n in changed) and any("vision_tower" in n for n in changed)
    load_processor(ckpt)  # the checkpoint is a complete model folder

    assert _run(tiny, corpus, out, "--resume", "--set", "train.max_steps=3") == 0
    assert _state(out / "checkpoint-3")["global_step"] == 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3]  # the resumed run logged step 3 only: it continued, not restarted
    card = json.loads((out / "final" / "model_card.json").read_text())
    assert card["global_step"] == 3 and card["trained"] is True

    # resuming continues from the checkpoint's weights, not the base's: 2 + 1 steps == 3 steps
    straight = tmp_path / "straight"
    assert _run(tiny, corpus, straight, "--set", "train.max_steps=3") == 0
    assert same_weights(out / "final", straight / "final")


def test_group_by_length_batches_records_of_similar_length(tiny, corpus, tmp_path):
    """Short grounding answers are not padded to the longest reasoning chain in the corpus."""
    from transformers import Trainer

    from training.config import TrainSection
    from training.data import Collator
    from training.trainer import trainer_class, training_arguments

    processor = load_processor(tiny)
    # 8 copies: transformers groups within megabatches of up to 50 batches, a quarter of the data at most
    dataset = ConversationDataset(load_samples(corpus / "meta.json") * 8, processor, 4096)
    lengths = dataset.lengths()
    exact = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    assert all(abs(a - e) <= 8 for a, e in zip(lengths, exact))  # close enough to sort by, without images
    batch = 4
    args = training_arguments(TrainSection(output_dir=str(tmp_path), batch_size=batch, group_by_length=True,
                                           max_steps=1, progress=False))
    model = InternVLForConditionalGeneration.from_pretrained(tiny)
    trainer = trainer_class(Trainer)(model=model, args=args, train_dataset=dataset,
                                     data_collator=Collator(processor.tokenizer.pad_token_id))
    order = list(trainer._get_train_sampler())
    assert sorted(order) == list(range(len(dataset)))
    padded = sum(batch * max(exact[i] for i in order[k:k + batch]) for k in range(0, len(order), batch))
    rand = torch.randperm(len(exact), generator=torch.Generator().manual_seed(0)).tolist()  # the default sampler
    shuffled = sum(batch * max(exact[i] for i in rand[k:k + batch]) for k in range(0, len(rand), batch))
    assert padded < 0.8 * shuffled

    # grouped batches are not averaged per batch: summed token loss / expected trained tokens per step,
    # so a short answer's tokens weigh the same in a batch of short answers as in a mixed one
    fixed = trainer.expected_step_tokens()
    answers = [sum(1 for t in dataset[i]["labels"] if t != IGNORE_INDEX) for i in range(len(dataset))]
    assert fixed == pytest.approx(batch * sum(answers) / len(answers), rel=0.05)
    short = sorted(range(len(dataset)), key=lambda i: answers[i])[:batch]
    inputs = pad_batch([dataset[i] for i in short], processor.tokenizer.pad_token_id)
    model.train()
    with torch.no_grad():
        grouped = trainer.compute_loss(model, dict(inputs))
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    token_nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), inputs["labels"][:, 1:].flatten(),
                                                  ignore_index=IGNORE_INDEX, reduction="sum")
    assert float(grouped) == pytest.approx(float(token_nll) / fixed, rel=1e-4)


def test_length_grouped_batches_come_in_random_order():
    """Every batch holds records of one length class, and long and short batches alternate at random
    (transformers' sampler runs 25 long batches, then 25 short ones, per megabatch)."""
    from training.data import LengthGroupedBatches

    torch.manual_seed(0)
    lengths = [300 if i % 2 else 20 for i in range(403)]  # 403: one short batch at the end
    order = list(LengthGroupedBatches(lengths, batch_size=4, mega=50))
    assert sorted(order) == list(range(403))
    batches = [order[k:k + 4] for k in range(0, 400, 4)]
    kinds = [{lengths[i] for i in b} for b in batches]
    assert sum(len(k) > 1 for k in kinds) <= 2  # at most the megabatch seams mix the two
    long = [300 in k for k in kinds]
    switches = sum(a != b for a, b in zip(long, long[1:]))
    assert switches > 25  # ~50 for random order; 2 when sorted within each megabatch
    assert order[400:] and len(order[400:]) == 3


def test_lora_with_gradient_checkpointing_merges_into_a_plain_model(tiny, corpus, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert _run(tiny, corpus, out, "--set", "train.mode=lora", "--set", "train.gradient_checkpointing=true",
                "--set", "train.freeze_vision=true", "--set", "lora.r=4") == 0
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    base = InternVLForConditionalGeneration.from_pretrained(tiny).state_dict()
    merged = InternVLForConditionalGeneration.from_pretrained(out / "final").state_dict()
    assert merged.keys() == base.keys()  # no lora_ leftovers
    changed = {n for n, p in merged.items() if not torch.equal(p, base[n])}
    assert any("language_model" in n and "q_proj" in n for n in changed)
    assert any("multi_modal_projector" in n for n in changed)  # trained fully beside the adapters
    assert not any("vision_tower" in n for n in changed)  # frozen


def test_qlora_runs_on_nf4_base(tiny, corpus, tmp_path):
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("peft")
    out = tmp_path / "qlora"
    assert _run(tiny, corpus, out, "--set", "train.mode=qlora", "--set", "train.max_steps=1",
                "--set", "lora.r=4") == 0
    base = InternVLForConditionalGeneration.from_pretrained(tiny).state_dict()
    merged = InternVLForConditionalGeneration.from_pretrained(out / "final").state_dict()
    assert merged["model.language_model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32
    assert not torch.equal(merged["model.language_model.layers.0.self_attn.q_proj.weight"],
                           base["model.language_model.layers.0.self_attn.q_proj.weight"])


# ----------------------------------------------------------------------------- configs and launch wrappers


def _config_class(stage: str):
    from training.audio_posttrain import AudioConfig
    from training.dpo import DPOConfig

    return {"sft": SFTConfig, "reasoning": SFTConfig, "dpo": DPOConfig, "audio": AudioConfig}[stage]


def test_every_shipped_config_loads_and_names_existing_deepspeed_files():
    import yaml

    from training.config import from_dict
    from training.demo_model import DemoConfig

    configs = sorted((REPO / "training" / "configs").glob("*.yaml"))
    assert len(configs) >= 10
    for path in configs:
        data = yaml.safe_load(path.read_text())
        if path.name.startswith("demo_model"):
            cfg = from_dict(DemoConfig, data)
            for stage_cfg in (cfg.sft_config, cfg.reasoning_config, cfg.dpo_config):
                assert (REPO / stage_cfg).is_file(), stage_cfg
            continue
        cfg = load_config(path, _config_class(data["stage"]))
        if cfg.train.deepspeed:
            ds = json.loads((REPO / cfg.train.deepspeed).read_text())
            assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled in from the YAML by transformers
        if "8b" in path.name and cfg.train.mode != "qlora":
            assert cfg.train.bf16 and cfg.train.gradient_checkpointing
            assert cfg.train.deepspeed.endswith("zero1.json")  # the InternVL recipe: ZeRO-1 up to 8B
    z1 = json.loads((REPO / "training/configs/deepspeed/zero1.json").read_text())
    z3 = json.loads((REPO / "training/configs/deepspeed/zero3.json").read_text())
    assert z1["zero_optimization"]["stage"] == 1 and z3["zero_optimization"]["stage"] == 3
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.slow
def test_cluster_wrapper_runs_two_steps_through_torchrun(tiny, corpus, tmp_path):
    import os
    import socket
    import subprocess

    with socket.socket() as sock:  # a free port: a fixed one collides with another test run on this machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "torchrun"
    env = {**os.environ, "GPUS_PER_NODE": "1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(["bash", str(REPO / "training/launch/sft.sh"), str(MICRO), "--set", f"model.path={tiny}",
                           "--set", f"data.meta={corpus / 'meta.json'}", "--set", f"train.output_dir={out}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 node(s) x 1 process(es)" in proc.stderr
    assert _state(out / "checkpoint-2")["global_step"] == 2
    InternVLForConditionalGeneration.from_pretrained(out / "final")


def test_every_stage_has_a_wrapper_naming_a_real_module():
    import importlib
    import re
    import subprocess

    for name, module in (("sft", "training.sft"), ("dpo", "training.dpo"), ("audio", "training.audio_posttrain")):
        script = REPO / "training" / "launch" / f"{name}.sh"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        assert re.search(rf"run_stage\.sh\" {re.escape(module)} ", script.read_text())
        assert callable(importlib.import_module(module).main)
    assert subprocess.run(["bash", "-n", str(REPO / "training/launch/run_stage.sh")]).returncode == 0


def test_fast_image_expansion_equals_the_processor(tiny, corpus):
    from PIL import Image

    from training.data import expand_images

    processor = load_processor(tiny)
    text = "<|im_start|>user\n<IMG_CONTEXT>\nFirst and <IMG_CONTEXT> second<|im_end|>\n"
    images = [Image.open(corpus / "images" / "000000.png").convert("RGB"), Image.new("RGB", (150, 60), "white")]
    ref = processor(text=[text], images=images, return_tensors="pt")
    expanded, tiles = expand_images(processor, text, images)
    assert processor.tokenizer(expanded, add_special_tokens=False)["input_ids"] == ref["input_ids"][0].tolist()
    assert torch.equal(tiles, ref["pixel_values"])
