"""Dense pretraining of the vision tower (training.vision_pretrain) and its transplant into a demo model
(training.demo_model.transplant_vision): the targets decode back to the boxes, the detector learns boxes it is
shown, a resumed run is the run it continues, and the transplanted model reads images through the tower it was
given with the language model it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inference.types import Box
from training import vision_pretrain as vp
from training.study_corpus import StudyCorpusConfig, write_study_corpus

SEED = 5151  # a seed no committed corpus uses


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    cfg = StudyCorpusConfig(studies=2, seed=SEED, n_slices=60, slices_per_study=6, windows_per_slice=1, xrays=0,
                            empty_fraction=0.2)
    return write_study_corpus(tmp_path_factory.mktemp("dense-corpus"), cfg).out


def test_targets_decode_back_to_the_boxes_they_were_made_from():
    lesions = [[((0.10, 0.20, 0.30, 0.35), 12.0), ((0.62, 0.55, 0.70, 0.61), 6.0)], []]
    obj, reg = vp.targets(lesions, 8)
    assert obj[0].sum() == 2 and obj[1].sum() == 0
    logits = torch.cat([(obj * 40 - 20)[..., None], reg], dim=-1)  # sure where a centre is, sure of none elsewhere
    boxes = vp.decode(logits)
    assert boxes[1] == []
    got = sorted(boxes[0])
    for want, have in zip(sorted(b for b, _ in lesions[0]), got):
        assert np.allclose(want, have, atol=1e-6)
    scored = vp.score(boxes, lesions)
    assert scored["all"]["mean_iou"] == pytest.approx(1.0) and scored["empty"]["called_empty"] == 1.0
    assert scored["medium"]["lesions"] == 1 and scored["small"]["lesions"] == 1
    # a box drawn beside the lesion scores its overlap, none scores 0, a box on an empty image is a false box
    scored = vp.score([[(0.2, 0.2, 0.4, 0.35)], [(0.5, 0.5, 0.6, 0.6)]], [lesions[0][:1], []])
    beside = Box(0.10, 0.20, 0.30, 0.35).iou(Box(0.2, 0.2, 0.4, 0.35))
    assert scored["all"]["mean_iou"] == pytest.approx(beside, abs=1e-4)
    assert scored["empty"]["called_empty"] == 0.0 and scored["empty"]["false_boxes_per_image"] == 1.0


def test_token_targets_say_each_token_s_lesion_box_in_image_coordinates():
    # two centres in the first of 2 x 2 tokens (the larger lesion's box kept), one in the last, none in the others
    lesions = [[((0.05, 0.05, 0.15, 0.15), 8.0), ((0.10, 0.10, 0.40, 0.45), 30.0), ((0.6, 0.7, 0.9, 0.8), 20.0)],
               []]
    obj, reg = vp.token_targets(lesions, 2)
    assert obj.tolist() == [[1, 0, 0, 1], [0, 0, 0, 0]]
    assert reg[0, 0].tolist() == pytest.approx([0.10, 0.10, 0.40, 0.45])
    logits = torch.cat([(obj * 40 - 20)[..., None], reg], dim=-1)
    boxes = vp.decode_tokens(logits)
    assert boxes[1] == [] and len(boxes[0]) == 2
    assert np.allclose(boxes[0][1], (0.6, 0.7, 0.9, 0.8))
    # the token order is InternVL's: token k holds the patches of row k // side, column k % side
    from training.demo_model import _shuffled_patches

    layout = _shuffled_patches(8, 0.25)
    assert {p[0] // 4 for p in layout[(1, 0)]} == {1} and {p[1] // 4 for p in layout[(1, 0)]} == {0}
    # and each patch's own position, which the token head's tower is also trained to say, in the tower's order
    det = vp.DenseDetector(vp.vision_config_like(Path(__file__).resolve().parents[2] / "resources" / "models" / "demo",
                                                 56, 14), [0.5] * 3, [0.5] * 3, token_head=(0.5, 16), position=True)
    assert det.position.tolist() == [[(c + 0.5) / 4, (r + 0.5) / 4] for r in range(4) for c in range(4)]
    assert float(vp.position_loss(det.position[None], det.position, 4.0)) == 0.0


def test_the_corpus_loads_as_the_processor_sizes_it(corpus):
    loaded = vp.load_corpus(corpus, 56)
    anns = [json.loads(x) for x in (corpus / "annotations.jsonl").read_text().splitlines()]
    assert loaded.images.shape == (len(anns), 56, 56) and loaded.images.dtype == torch.uint8
    first = next(i for i, a in enumerate(anns) if a["lesions"])
    (x0, y0, x1, y1), mm = loaded.lesions[first][0]
    box = anns[first]["lesions"][0]["box"]
    assert (x0 * anns[first]["width"], y1 * anns[first]["height"]) == pytest.approx((box[0], box[3]))
    assert mm == anns[first]["lesions"][0]["size_mm"]
    assert any(not les for les in loaded.lesions)  # lesion-free slices stay in, with no target
    assert (corpus / "dense-56-all.pt").is_file()  # cached for the next run
    assert torch.equal(vp.load_corpus(corpus, 56).images, loaded.images)
    # a corpus written again (here: one slice fewer) is read again, not taken from the cache
    lines = (corpus / "annotations.jsonl").read_text().splitlines(keepends=True)
    (corpus / "annotations.jsonl").write_text("".join(lines[:-1]))
    try:
        assert len(vp.load_corpus(corpus, 56).lesions) == len(lines) - 1
    finally:
        (corpus / "annotations.jsonl").write_text("".join(lines))


def test_the_detector_learns_the_boxes_it_is_shown_and_a_resumed_run_is_the_run_it_continues(
        corpus, tiny_model_dir, tmp_path):
    like = tiny_model_dir
    kw = dict(image_size=56, patch=14, eval_dir=corpus, batch=8, lr=3e-3, seed=3, save_every=10)
    before = vp.pretrain(corpus, tmp_path / "none", like, steps=1, **kw)["held_out"]
    learnt = vp.pretrain(corpus, tmp_path / "straight", like, steps=300, **kw)
    # the corpus it was trained on, scored: boxes where the lesions are, and lesion-free slices left empty
    assert learnt["steps"] == 300 and learnt["grid"] == 4
    assert learnt["held_out"]["all"]["mean_iou"] > max(0.5, 4 * (before["all"]["mean_iou"] or 0))
    assert learnt["held_out"]["empty"]["called_empty"] >= 0.5
    # 150 steps, then the same command continued to 300, gives the same weights as 300 in one go
    vp.pretrain(corpus, tmp_path / "resumed", like, steps=150, **kw)
    again = vp.pretrain(corpus, tmp_path / "resumed", like, steps=300, **kw)
    assert again["held_out"] == learnt["held_out"]
    a = load_file(tmp_path / "straight" / "vision_tower" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "vision_tower" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [100, 200, 300]


def test_the_token_head_learns_the_boxes_and_becomes_the_projector(corpus, tiny_model_dir, tmp_path):
    from transformers import InternVLForConditionalGeneration

    from training.demo_model import transplant_vision

    kw = dict(image_size=56, patch=14, eval_dir=corpus, batch=8, lr=3e-3, seed=3, save_every=10, ratio=0.5)
    before = vp.pretrain(corpus, tmp_path / "none", tiny_model_dir, steps=1, readout="token", **kw)["held_out"]
    learnt = vp.pretrain(corpus, tmp_path / "tok", tiny_model_dir, steps=300, readout="token", position=True, **kw)
    tokens = learnt["held_out"]["tokens"]
    assert learnt["readout"] == "token" and learnt["position"] and (tmp_path / "tok" / "token_head.pt").is_file()
    assert tokens["all"]["mean_iou"] > max(0.3, 4 * (before["tokens"]["all"]["mean_iou"] or 0))
    # the tower was also taught where each patch is: its position head says so
    det = vp.DenseDetector(vp.vision_config_like(tiny_model_dir, 56, 14), *vp.processor_stats(tiny_model_dir),
                           token_head=(0.5, 32), position=True)
    state = torch.load(tmp_path / "tok" / "checkpoint.pt", weights_only=False)
    det.tower.load_state_dict(state["tower"])
    det.where.load_state_dict(state["where"])
    with torch.inference_mode():
        where = det.forward(vp.load_corpus(corpus, 56).images[:4])[2]
    assert float((where - det.position).abs().mean()) < 0.1  # a quarter of a patch on a 4 x 4 grid is 0.0625
    # a run continued with another readout, or without the position head, is refused rather than mixed
    with pytest.raises(ValueError, match="readout"):
        vp.pretrain(corpus, tmp_path / "tok", tiny_model_dir, steps=310, readout="cell", position=True, **kw)
    with pytest.raises(ValueError, match="position"):
        vp.pretrain(corpus, tmp_path / "tok", tiny_model_dir, steps=310, readout="token", **kw)
    # the head's norm and first layer are the new projector's; its last layer is drawn afresh
    cfg = transplant_vision(tmp_path / "model", tiny_model_dir, tmp_path / "tok" / "vision_tower", 0.5,
                            token_head=tmp_path / "tok" / "token_head.pt")
    assert cfg["image_seq_length"] == 4
    head = torch.load(tmp_path / "tok" / "token_head.pt")
    model = InternVLForConditionalGeneration.from_pretrained(tmp_path / "model").state_dict()
    for k in ("layer_norm.weight", "layer_norm.bias", "linear_1.weight", "linear_1.bias"):
        assert torch.equal(model[f"model.multi_modal_projector.{k}"], head[k])
    with pytest.raises(Exception, match="does not fit the projector"):
        transplant_vision(tmp_path / "bad", tiny_model_dir, tmp_path / "tok" / "vision_tower", 0.25,
                          token_head=tmp_path / "tok" / "token_head.pt")


def test_a_transplanted_model_reads_through_the_new_tower_and_writes_with_the_old_language_model(
        tiny_model_dir, tmp_path):
    from transformers import InternVLForConditionalGeneration

    from inference.engine.local import LocalEngine
    from inference.types import ChatRequest
    from training.demo_model import transplant_vision

    det = vp.DenseDetector(vp.vision_config_like(tiny_model_dir, 112, 14), *vp.processor_stats(tiny_model_dir))
    det.tower.save_pretrained(tmp_path / "tower")
    cfg = transplant_vision(tmp_path / "model", tiny_model_dir, tmp_path / "tower", 0.25)
    assert cfg["image_seq_length"] == 4 and cfg["vision_config"]["image_size"] == [112, 112]
    new = InternVLForConditionalGeneration.from_pretrained(tmp_path / "model").state_dict()
    old = InternVLForConditionalGeneration.from_pretrained(tiny_model_dir).state_dict()
    tower = det.tower.state_dict()
    assert all(torch.equal(new[f"model.vision_tower.{k}"], v) for k, v in tower.items())
    language = [k for k in old if k.startswith(("model.language_model.", "lm_head."))]
    assert language and all(torch.equal(new[k], old[k]) for k in language)
    # the projector's input grew with the shuffle (4 x 4 patches per token instead of 2 x 2): drawn afresh
    assert new["model.multi_modal_projector.linear_1.weight"].shape[1] == 16 * tower[
        "embeddings.patch_embeddings.projection.weight"].shape[0]
    key = "model.multi_modal_projector.linear_2.weight"
    assert new[key].shape == old[key].shape
    pre = json.loads((tmp_path / "model" / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 112, "width": 112}
    engine = LocalEngine.from_folder(tmp_path / "model", device="cpu")
    image = np.zeros((300, 300, 3), np.uint8)
    inputs = engine.encode([ChatRequest(prompt="Where?", image=image)])
    tokens = int((inputs["input_ids"] == engine.model.config.image_token_id).sum())
    assert tokens and tokens % 4 == 0  # 4 per tile (the tiny model tiles up to 6 + a thumbnail)
    answer = engine.generate(ChatRequest(prompt="Where?", image=image, max_new_tokens=4))
    assert answer.finish_reason in {"stop", "length"}
    with pytest.raises(Exception, match="does not shuffle"):
        transplant_vision(tmp_path / "bad", tiny_model_dir, tmp_path / "tower", 0.3)


def test_the_recipe_pretrains_a_tower_transplants_it_and_trains_stage_1_through_it(tmp_path):
    from transformers import InternVLForConditionalGeneration

    from training.demo_model import SpecSection, build_skeleton
    from training.demo_model import main as recipe

    micro = Path(__file__).resolve().parents[2] / "training" / "configs" / "demo_model_512_micro.yaml"
    spec = SpecSection(vocab_size=400, text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1,
                       text_intermediate=64, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
                       image_size=56, patch_size=14, max_tiles=4)
    base = build_skeleton(tmp_path / "base", spec, ["a mass in the right lung 12 mm", "No lesion is seen."], "base")
    work = tmp_path / "work"
    args = ["--config", str(micro), "--work-dir", str(work), "--out", str(tmp_path / "demo"),
            "--set", f"init_from={base}", "--set", "vision.minutes=0.02", "--set", "vision.image_size=112",
            "--set", "spec.image_size=112", "--set", "spec.downsample_ratio=0.25"]
    assert recipe([*args, "--set", "vision.readout=token", "--stop-after", "sft"]) == 0
    state = json.loads((work / "recipe_state.json").read_text())["stages"]
    assert state["vision"]["vision"]["readout"] == "token"
    head = torch.load(work / "vision" / "token_head.pt")
    assert state["vision"]["vision"]["grid"] == 8 and state["vision"]["vision"]["steps"] > 0
    assert state["skeleton"]["vision_tower"].endswith("vision_tower")
    cfg = json.loads((work / "skeleton" / "config.json").read_text())
    assert cfg["vision_config"]["image_size"] == [112, 112] and cfg["image_seq_length"] == 4
    assert json.loads((work / "skeleton" / "model_card.json").read_text())["trained"] is False
    tower = load_file(work / "vision" / "vision_tower" / "model.safetensors")
    skeleton = InternVLForConditionalGeneration.from_pretrained(work / "skeleton").state_dict()
    assert all(torch.equal(skeleton[f"model.vision_tower.{k}"], v) for k, v in tower.items())
    assert torch.equal(skeleton["model.multi_modal_projector.linear_1.weight"], head["linear_1.weight"])
    # stage 1 trained the transplanted model (the tower frozen or not, as the sft overrides say)
    assert (work / "sft" / "final" / "model.safetensors").is_file()
    # the vision stage is done: running again does not train the tower again
    before = (work / "vision" / "checkpoint.pt").stat().st_mtime_ns
    assert recipe([*args, "--set", "vision.readout=token", "--stop-after", "sft"]) == 0
    assert (work / "vision" / "checkpoint.pt").stat().st_mtime_ns == before
    assert recipe([*args, "--work-dir", str(tmp_path / "w3"), "--set", "vision.readout=grid",
                   "--stop-after", "vision"]) == 1
    # a tower whose tile the spec does not describe is refused, in words
    assert recipe([*args, "--work-dir", str(tmp_path / "w2"), "--set", "spec.image_size=56",
                   "--stop-after", "vision"]) == 1
