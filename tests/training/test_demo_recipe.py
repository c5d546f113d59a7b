"""The demo-model recipe end to end at micro scale: phantoms → tokenizer/skeleton → SFT → reasoning SFT →
DPO → held-out eval → model folder with its card; stopping and continuing skips finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference.engine.local import LocalEngine
from inference.types import ChatRequest
from training.demo_model import MAX_MODEL_BYTES, build_demo_tokenizer, main

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "training" / "configs" / "demo_model_micro.yaml"


def test_tokenizer_has_one_token_per_digit_and_the_internvl_tokens():
    lines = ["<ref>nodule</ref><box>[[120, 473, 349, 492]]</box>", "Step 2: Region localization"] * 20
    tok = build_demo_tokenizer(lines, vocab_size=300)
    pieces = tok.tokenize("[[120, 473]]")
    digit_tokens = [p for p in pieces if any(c.isdigit() for c in p)]
    assert len(digit_tokens) == 6 and all(sum(c.isdigit() for c in p) == 1 for p in digit_tokens)
    for special in ("<ref>", "</ref>", "<box>", "</box>", "<IMG_CONTEXT>", "<img>", "</img>", "<|im_end|>"):
        assert len(tok.tokenize(special)) == 1, special
    assert tok.decode(tok("<ref>x</ref><box>[[1, 2, 3, 4]]</box>")["input_ids"]) == \
        "<ref>x</ref><box>[[1, 2, 3, 4]]</box>"


def test_micro_recipe_runs_end_to_end_and_resumes(tmp_path):
    work, out = tmp_path / "work", tmp_path / "demo"
    args = ["--config", str(MICRO), "--work-dir", str(work), "--out", str(out)]
    assert main([*args, "--stop-after", "sft"]) == 0
    state = json.loads((work / "recipe_state.json").read_text())
    assert list(state["stages"]) == ["phantoms", "skeleton", "sft"]
    sft_model = work / "sft" / "final" / "model.safetensors"
    stamp = sft_model.stat().st_mtime_ns
    assert not out.exists()

    assert main(args) == 0  # continues: phantoms, skeleton and SFT are not redone
    assert sft_model.stat().st_mtime_ns == stamp
    state = json.loads((work / "recipe_state.json").read_text())
    assert list(state["stages"]) == ["phantoms", "skeleton", "sft", "reasoning", "dpo", "eval"]
    assert state["stages"]["sft"]["global_step"] == 2 and state["stages"]["dpo"]["global_step"] == 1

    card = json.loads((out / "model_card.json").read_text())
    assert card["trained"] is True and "Not a medical device" in card["intended_use"]
    assert card["seeds"] == {"train_corpus": 0, "held_out_corpus": 7, "model_init": 0, "calibration_corpus": 11}
    assert card["data"]["train"]["grounding"] == 4 and card["data"]["held_out"]["grounding"] == 3
    assert any(c.startswith("python -m training.sft") for c in card["commands"])
    assert any(c.startswith("python -m training.dpo") for c in card["commands"])
    assert any(c.startswith("xmedgpt eval") for c in card["commands"])
    assert card["wall_time_s"] > 0
    metrics = card["metrics"]
    assert metrics["images"] == 2 and "localization" in metrics and "vqa" in metrics
    assert json.loads((out / "eval.json").read_text()) == metrics
    assert "Held-out evaluation" in (out / "MODEL_CARD.md").read_text()
    # trained and held out on the configured lesion sizes; also measured on the generator's default sizes
    assert card["data"]["corpus"]["lesion_mm"] == [20.0, 40.0]
    from app.synthetic.cases import CorpusConfig

    assert CorpusConfig.from_dict(card["data"]["corpus"]).as_dict() == card["data"]["corpus"]
    assert any("--lesion-mm 20 40" in c for c in card["commands"])
    lesions = [les for line in (work / "phantoms-eval" / "annotations.jsonl").read_text().splitlines()
               for les in json.loads(line)["lesions"]]
    assert all(18.0 <= les["size_mm"] <= 40.5 for les in lesions)  # a slice may cut a lesion below its diameter
    assert card["metrics_default_sizes"]["images"] == 2 and "localization" in card["metrics_default_sizes"]
    assert "Outside the training sizes" in (out / "MODEL_CARD.md").read_text()
    # what it cannot do, from its own measurements (a 2-step micro model is under every bar)
    card_text = (out / "MODEL_CARD.md").read_text()
    assert "## What it cannot do" in card_text and "synthetic phantoms only" in card_text
    assert card["known_limits"] == []
    # the model's own reliability tiers, from a third seed, are what the viewer will use with it
    from inference.reliability.scoring import load_thresholds, thresholds_for

    assert thresholds_for(out) == load_thresholds(out / "reliability_calibration.json") and thresholds_for(out).calibrated
    assert set(card["reliability_calibration"]["auroc"]) >= {"discrete", "rao_blackwell", "confidence_weighted"}
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) <= MAX_MODEL_BYTES

    engine = LocalEngine.from_folder(out, device="cpu", quantization="none")
    assert engine.describe().startswith("XMedGPT demo (micro test)")
    assert engine.generate(ChatRequest(prompt="Is there a lesion?", max_new_tokens=3)).finish_reason in ("stop",
                                                                                                          "length")


def test_a_recipe_can_end_with_a_grounding_stage_that_shows_the_lesion_free_answers_again(tmp_path):
    from safetensors.torch import load_file

    work, out = tmp_path / "work", tmp_path / "demo"
    args = ["--config", str(MICRO), "--work-dir", str(work), "--out", str(out),
            "--set", "grounding_mix={phantom_grounding: 1, phantom_grounding_empty: 2}",
            "--set", "stage_overrides.grounding=[train.max_steps=2, train.lr=1.0e-2]"]
    assert main([*args, "--stop-after", "grounding"]) == 0
    state = json.loads((work / "recipe_state.json").read_text())
    assert list(state["stages"]) == ["phantoms", "skeleton", "sft", "reasoning", "dpo", "grounding"]
    # it trains the DPO stage's model on the grounding answers, the lesion-free ones three times over
    stage = state["stages"]["grounding"]
    assert stage["global_step"] == 2 and f"model.path={work / 'dpo' / 'final'}" in stage["overrides"]
    meta = json.loads((work / "phantoms-train" / "meta_grounding_final.json").read_text())
    assert {k: v["repeat_time"] for k, v in meta.items()} == {"phantom_grounding": 1, "phantom_grounding_empty": 2}
    assert main(args) == 0  # the card is the grounding stage's model, and its commands say how it was made
    trained = load_file(work / "grounding" / "final" / "model.safetensors")
    shipped, before = load_file(out / "model.safetensors"), load_file(work / "dpo" / "final" / "model.safetensors")
    assert all(torch.equal(shipped[k], trained[k]) for k in trained)
    assert any(not torch.equal(trained[k], before[k]) for k in trained)
    card = json.loads((out / "model_card.json").read_text())
    assert any("meta_grounding_final.json" in c for c in card["commands"])


def test_held_out_seed_must_differ(tmp_path):
    assert main(["--config", str(MICRO), "--work-dir", str(tmp_path / "w"), "--set", "eval.seed=0"]) == 1


def test_app_prompt_sets_use_the_workstation_prompts(tmp_path):
    from inference.prompts import Task, build_prompt
    from training.data import chat_segments
    from training.demo_model import write_app_prompt_sets
    from training.phantoms import write_corpus

    corpus = write_corpus(tmp_path / "c", n=2, seed=4, size=64).out
    entries = write_app_prompt_sets(corpus)
    reasoning = [json.loads(x) for x in (corpus / "app_reasoning.jsonl").read_text().splitlines()]
    vqa = [json.loads(x) for x in (corpus / "app_vqa.jsonl").read_text().splitlines()]
    assert entries["app_reasoning"]["length"] == len(reasoning) == 2
    assert reasoning[0]["conversations"][0]["value"] == build_prompt(Task.REASONING).system
    assert "Step 2: Region localization" in reasoning[0]["conversations"][1]["value"]
    assert vqa[0]["conversations"][0]["value"].endswith("Answer in a few words, without explanation.")
    assert chat_segments(reasoning[0]["conversations"])[0][0].startswith("<|im_start|>system\nYou are XMedGPT")


def test_the_five_steps_are_taught_under_every_question_the_workstation_sends(tmp_path):
    """Trained under "Analyse this image." only, the demo model answered the trust evaluation's "Describe the
    findings." with broken steps: the app-prompt set cycles through the workstation's questions, the viewer's presets
    among them."""
    from app.assistant.session import PRESET_QUESTIONS
    from app.assistant.trust_eval import DEFAULT_QUESTION
    from inference.prompts import REASONING_QUESTIONS, Task, build_prompt, infer_task
    from training.demo_model import write_app_prompt_sets
    from training.phantoms import write_corpus

    sent = [q for _, q in PRESET_QUESTIONS if infer_task(q) is Task.REASONING] + [DEFAULT_QUESTION]
    assert sent and set(sent) <= set(REASONING_QUESTIONS)
    corpus = write_corpus(tmp_path / "c", n=len(REASONING_QUESTIONS), seed=5, size=64).out

    def users() -> list[str]:
        return [json.loads(x)["conversations"][1]["value"]
                for x in (corpus / "app_reasoning.jsonl").read_text().splitlines()]

    write_app_prompt_sets(corpus, "all")  # run 5b's recipe
    for q in REASONING_QUESTIONS:
        assert any(u.endswith(build_prompt(Task.REASONING, q).user) for u in users()), q
    write_app_prompt_sets(corpus)  # runs 1-5 (so their recipes still make the models they made)
    assert all(u.endswith(build_prompt(Task.REASONING, "").user) for u in users())


DEMO = REPO / "resources" / "models" / "demo"


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO / "model_card.json").is_file(), reason="the demo model is not built (make demo-model)")
def test_committed_demo_model_reads_a_fresh_sample_study_as_the_viewer_shows_it(tmp_path):
    """What holds of the committed model on what the viewer shows (its card says what it cannot do: issue #14's
    bars, IoU >= 0.5 for lesions >= 10 mm, are not met, and how well it boxes large lesions varies from study to
    study, 0.00-0.38 mean IoU on fresh seeds): on a 60-slice sample study from a seed the card does not list,
    every slice in the soft-tissue and lung windows at 512 px, it calls lesion-free slices empty and draws few
    boxes where there is nothing (the 224-px model it replaced: 0.54 called empty, 0.74 false boxes per slice on
    such a study), and it boxes something of a lesion on some slices."""
    from app.commands.eval import main as eval_main
    from app.synthetic.sample import write_ct_study

    card = json.loads((DEMO / "model_card.json").read_text())
    assert card.get("trained") is True and card["data"]["corpus"]["kind"] == "study"
    assert card["data"]["image_size"] == 512 and card["spec"]["max_tiles"] == 1
    used = {v for v in card.get("seeds", {}).values() if isinstance(v, int)}
    seed = next(s for s in range(1000, 2000) if s not in used)
    study = write_ct_study(tmp_path / "study", n_slices=60, size=512, seed=seed)
    out = tmp_path / "eval.json"
    assert eval_main(["--data", str(study), "--model", str(DEMO), "--json", str(out), "--samples", "0",
                      "--window", "soft_tissue,lung", "--tasks", "grounding", "--device", "cpu",
                      "--quantization", "none"]) == 0
    loc = json.loads(out.read_text())["localization"]
    assert loc["empty_images"] > 20 and loc["empty_correct"] >= 0.75, loc
    assert loc["false_positives_per_image"] <= 0.35, loc
    assert loc["lesions"] > 10 and loc["mean_iou"] > 0.0, loc


@pytest.mark.skipif(not (DEMO / "model_card.json").is_file(), reason="the demo model is not built (make demo-model)")
def test_committed_demo_model_carries_its_own_reliability_calibration():
    """The tiers the viewer uses with the demo model are calibrated for it; other models keep the defaults."""
    from inference.engine.local import LocalEngine
    from inference.reliability.scoring import (
        CALIBRATION_FILE,
        load_thresholds,
        thresholds_for,
    )

    engine = LocalEngine.from_folder(DEMO, device="cpu", quantization="none")
    assert engine.folder == DEMO
    own = thresholds_for(engine.folder)
    assert own.calibrated and own == load_thresholds(DEMO / "reliability_calibration.json")
    assert thresholds_for(None) == load_thresholds(CALIBRATION_FILE) and not thresholds_for(None).calibrated
    card = json.loads((DEMO / "reliability_calibration.json").read_text())
    assert card["metrics"]["per_estimator"]["confidence_weighted"]["n"] >= 500


def test_the_card_says_what_the_model_cannot_do_from_its_own_measurements(tmp_path, capsys):
    """Issue #14: the model card says what the model still cannot do -- each of the issue's bars it misses, the
    sample-study windows where it boxes nothing, and the recipe's known limits measured elsewhere; a model that
    clears a bar gets no sentence for it."""
    from training.demo_model import BARS, card_limits

    def card(medium, large, small, empty, contradictions, liver_iou, known=()):
        loc = {"per_bucket": {"small": {"n": 5, "mean_iou": small}, "medium": {"n": 5, "mean_iou": medium},
                              "large": {"n": 5, "mean_iou": large}}, "empty_correct": empty}
        return {"metrics": {"localization": loc, "reasoning_consistency": {"contradiction_rate": contradictions}},
                "metrics_sample_study": {"per_group": {
                    "liver": {"localization": {"lesions": 4, "mean_iou": liver_iou}},
                    "lung": {"localization": {"lesions": 4, "mean_iou": 0.4}}}},
                "known_limits": list(known)}

    weak = card_limits(card(0.04, 0.33, 0.0, 0.85, 0.08, 0.0, known=["Misses the sample's mass."]))
    text = " ".join(weak)
    assert "0.04 (10-20 mm), 0.33 (>= 20 mm) against the 0.5" in text
    assert "under 10 mm (held-out mean IoU 0.00" in text and "85% of lesion-free slices" in text
    assert "in 8% of its five-step answers" in text and "in the liver window." in text and "lung" not in text
    assert weak[-2] == "Misses the sample's mass." and "synthetic phantoms only" in weak[-1]
    strong = card_limits(card(0.6, 0.7, 0.35, 0.95, 0.02, 0.3))
    assert len(strong) == 1 and "synthetic phantoms only" in strong[0]  # every bar cleared: only the caveat
    assert BARS == {"iou_10mm": 0.5, "iou_small": 0.3, "empty": 0.9, "contradictions": 0.05}
    # the card is written again from model_card.json (the recipe's last step, or by hand)
    folder = tmp_path / "m"
    folder.mkdir()
    assert main(["--card", str(folder)]) == 1 and "no model_card.json" in capsys.readouterr().err


@pytest.mark.skipif(not (DEMO / "model_card.json").is_file(), reason="the demo model is not built (make demo-model)")
def test_the_committed_card_is_its_model_card_json_rendered(tmp_path):
    """MODEL_CARD.md is written from model_card.json, never by hand: its "What it cannot do" names what the model
    does with the sample's mass (a known limit) and the bars the committed model misses; its pre-read section gives
    the operating point the folder ships (preread_operating_point.json) and what it measured on other studies."""
    import shutil

    from training.demo_model import write_card_markdown

    for name in ("model_card.json", "MODEL_CARD.md"):
        shutil.copy2(DEMO / name, tmp_path / name)
    assert write_card_markdown(tmp_path).read_text() == (DEMO / "MODEL_CARD.md").read_text()
    text = (DEMO / "MODEL_CARD.md").read_text()
    assert "## What it cannot do" in text and "32 mm right lower lobe mass" in text
    from app.assistant.preread import operating_point_for

    point = operating_point_for(DEMO)
    card = json.loads((DEMO / "model_card.json").read_text())
    assert point is not None and 0.0 < point.min_score < 1.0 and point.fp_per_volume == 1.0
    assert card["preread"]["operating_point"]["min_score"] == point.min_score
    assert f"scoring >= {point.min_score:.4f}" in text and "## Series pre-read" in text
    for row in card["preread"]["measured"]:  # measured on studies it was not fitted on
        assert "8201" not in row["data"] and f"| {row['data']} | {row['lesions']} |" in text


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO / "model_card.json").is_file(), reason="the demo model is not built (make demo-model)")
def test_committed_demo_model_boxes_the_bundled_samples_mass_and_liver_lesion():
    """Issue #14: what `make run` opens. Asked the grounding question (the pre-read's sweep) on the bundled sample's
    slices as the viewer renders them, the committed model boxes the 32 mm right lower lobe mass (slices 17-19,
    1-based) and the 24 mm liver lesion (slices 26-28) in the soft-tissue window (IoU >= 0.3 on a slice of each), and
    puts a box on the mass in the lung window too (its centre inside the mass; the card says the box is too small)."""
    from app.assistant.preread import LUNG, SOFT_TISSUE
    from app.commands.analyze import load_engine
    from app.dicom.display import render
    from app.dicom.loader import load_series
    from app.dicom.scan import scan
    from app.synthetic.sample import load_ground_truth
    from inference.imaging import prepare_model_image
    from inference.parsing import parse_answer
    from inference.prompts import grounding_question
    from inference.types import Box

    sample = REPO / "resources" / "sample" / "ct-demo"
    volume = load_series(scan([sample]).all_series()[0])
    truth = load_ground_truth(sample)
    engine, spec = load_engine(DEMO, "cpu", "auto")

    def boxes(k: int, window) -> list[Box]:
        image = prepare_model_image(render(volume, k, window), spec, pixel_spacing=volume.geometry.spacing)
        answer = engine.generate(ChatRequest(prompt=grounding_question(), image=image.rgb, max_new_tokens=96))
        return [image.transform.norm_to_source(b) for g in parse_answer(answer.text).groundings
                for b in g.phrase.boxes]

    def lesion_boxes(lesion_id: str) -> dict[int, Box]:
        return {row["index"]: Box(b["x0"], b["y0"], b["x1"], b["y1"]) for row in truth["slices"]
                for b in row["boxes"] if b["lesion_id"] == lesion_id}

    mass, liver = lesion_boxes("L3"), lesion_boxes("L5")
    assert sorted(mass) == [16, 17, 18] and sorted(liver) == [25, 26, 27]
    best = {name: max(b.iou(t) for k, t in lesion.items() for b in boxes(k, SOFT_TISSUE) or [Box(0, 0, 1, 1)])
            for name, lesion in (("mass", mass), ("liver", liver))}
    assert best["mass"] >= 0.3 and best["liver"] >= 0.3, best

    def inside(b: Box, t: Box) -> bool:
        cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
        return t.x0 <= cx <= t.x1 and t.y0 <= cy <= t.y1

    assert any(inside(b, t) for k, t in mass.items() for b in boxes(k, LUNG))


@pytest.mark.skipif(not (DEMO / "model_card.json").is_file(), reason="the demo model is not built (make demo-model)")
def test_the_recipe_fits_the_preread_operating_point_and_measures_it_on_other_studies(tmp_path):
    """The card's last step (eval.preread_fit_seeds): studies of those seeds pre-read, the operating point fitted and
    written into the model folder, then measured on the held seeds' studies -- the card's "Series pre-read"."""
    import shutil

    from app.assistant.preread import operating_point_for
    from training.demo_model import DemoConfig, _preread_markdown, preread_eval

    model = tmp_path / "model"
    shutil.copytree(DEMO, model)
    (model / "preread_operating_point.json").unlink()
    config = DemoConfig(out=str(model))
    config.eval.preread_fit_seeds, config.eval.preread_held_seeds = [4101], [4102, 4103]
    config.eval.preread_slices, config.eval.preread_size, config.eval.preread_fp = 16, 128, 50.0
    commands: list[str] = []
    section = preread_eval(config, model, tmp_path / "preread", commands)
    point = operating_point_for(model)
    assert point is not None and point.fp_per_volume == 50.0
    assert section["operating_point"]["min_score"] == point.min_score
    assert section["operating_point"]["fitted_on"].endswith("S = 4101")
    (row,) = section["measured"]
    assert row["data"] == "seeds 4102-4103" and row["volumes"] == 2 and row["lesions"] > 0
    assert {"sensitivity", "by_size", "fp_per_volume", "cpm"} <= set(row)
    assert any("--fit-operating-point 50" in c for c in commands) and any("--seed $s" in c for c in commands)
    assert "## Series pre-read" in _preread_markdown(section) and "seeds 4102-4103" in _preread_markdown(section)
    config.eval.preread_fit_seeds = []
    assert preread_eval(config, model, tmp_path / "preread", commands) is None  # off unless asked
