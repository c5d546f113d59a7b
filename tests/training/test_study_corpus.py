"""The study corpus (issue #14): 512-px slices of phantom CT studies as the viewer renders them in the
reader's windows, radiographs, empty slices, five-step targets that agree with themselves, DPO pairs that
reject self-contradicting chains; and the demo_model_512 recipe at micro scale with dynamic tiling."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from app.synthetic.truth import LesionTruth
from inference.evaluation.sizes import size_bucket
from inference.parsing import parse_answer
from inference.types import STEP_NAMES
from training import phantom_text as txt
from training.data_formats import validate_jsonl, validate_meta
from training.study_corpus import StudyCorpusConfig, main, write_study_corpus

REPO = Path(__file__).resolve().parents[2]
SEED = 4242  # a seed no committed corpus uses


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    cfg = StudyCorpusConfig(studies=4, seed=SEED, n_slices=60, slices_per_study=6, windows_per_slice=3, xrays=2)
    return write_study_corpus(tmp_path_factory.mktemp("study-corpus"), cfg).out


def _records(folder: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (folder / f"{name}.jsonl").read_text().splitlines()]


def _steps(text: str) -> dict[int, str]:
    parts = re.split(r"^Step (\d): [^\n]*\n", text, flags=re.M)
    return {int(parts[i]): parts[i + 1].strip() for i in range(1, len(parts), 2)}


def test_records_are_valid_512_px_slices_in_several_windows_with_empty_slices(corpus):
    meta = validate_meta(corpus / "meta.json")
    assert set(meta) == {"phantom_grounding", "phantom_vqa", "phantom_report", "phantom_reasoning"}
    assert validate_jsonl(corpus / "annotations.jsonl", "annotation") > 0
    assert validate_jsonl(corpus / "preference.jsonl", "preference") > 0
    anns = _records(corpus, "annotations")
    assert all(a["width"] == a["height"] == 512 for a in anns)
    windows = {a["source"].get("window") for a in anns if "study" in a["source"]}
    assert len(windows) >= 3 and windows <= {"soft_tissue", "lung", "liver", "bone", "default"}
    assert any(a["kind"] == "xray" for a in anns)
    ct = [a for a in anns if a["kind"] != "xray"]
    assert any(not a["lesions"] for a in ct) and any(a["lesions"] for a in ct)
    spacing = ct[0]["pixel_spacing_mm"]
    assert spacing == pytest.approx(380 / 512, abs=1e-3)  # the viewer's 0.74 mm/px
    for a in ct:
        for les in a["lesions"]:
            t = LesionTruth.from_dict(les)
            assert t.to_dict() == les
            x0, y0, x1, y1 = t.box
            assert 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512 and all(0 <= v <= 1000 for v in t.box_1000)
            assert t.size_mm == pytest.approx(max(x1 - x0, y1 - y0) * spacing, abs=0.06)  # its size on this slice
            assert t.size_mm >= 4.0 and les["size_class"] == size_bucket(t.size_mm)
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["generator"] == "training.study_corpus" and manifest["config"]["seed"] == SEED
    assert manifest["counts"]["annotations"] == len(anns)


def test_windows_decide_what_a_slice_shows(corpus):
    """A ground-glass nodule is no target in soft tissue window; lung-window targets hold every lung lesion
    the slice shows, and the five steps only name lesions of the slice's truth."""
    anns = _records(corpus, "annotations")
    for a in anns:
        if a["source"].get("window") in ("soft_tissue", "default", "liver"):
            assert all(les["density"] != "ground-glass" for les in a["lesions"])
    assert any(a["hidden_lesions"] for a in anns)  # some lesion is crossed but not shown in some window


def test_five_step_targets_agree_with_each_other_and_the_truth(corpus):
    anns = {a["image"]: a for a in _records(corpus, "annotations")}
    checked = 0
    for rec in _records(corpus, "reasoning"):
        ann = anns[rec["image"]]
        answer = rec["conversations"][1]["value"]
        steps = _steps(answer)
        assert sorted(steps) == [1, 2, 3, 4, 5]
        assert [ln.split(": ", 1)[1] for ln in re.findall(r"^Step \d: .*$", answer, flags=re.M)] == list(STEP_NAMES)
        lesions = ann["lesions"]
        boxes = [b for g in parse_answer(steps[2]).groundings for b in g.phrase.boxes]
        assert [[round(v) for v in (b.x0, b.y0, b.x1, b.y1)] for b in boxes] == [les["box_1000"] for les in lesions]
        assert len(re.findall(r"^L\d+: ", steps[3], flags=re.M)) == len(lesions)
        for les in lesions:  # step 3 and step 5 give the same size and side for each lesion
            size = f"{les['size_mm']:.0f} mm"
            assert size in steps[3] and size in steps[5] and les["location"] in steps[5]
            assert les["density"] in steps[3]
        if not lesions:
            assert "No focal lesion is localized." in steps[2] and "IMPRESSION: No focal lesion." in steps[5]
        elif len(lesions) > 1:
            assert txt.COUNT_WORDS[len(lesions)] in steps[4] and txt.COUNT_WORDS[len(lesions)] in steps[5]
        checked += 1
    assert checked == len(anns)


NO_CHECKER = importlib.util.find_spec("inference.reliability.consistency") is None
NO_CHECKER_REASON = ("inference/reliability/consistency.py (check_steps) is not there; the targets' agreement is "
                     "asserted by test_five_step_targets_agree_with_each_other_and_the_truth")


@pytest.mark.skipif(NO_CHECKER, reason=NO_CHECKER_REASON)
def test_targets_pass_the_consistency_checker_and_contradicting_chains_do_not(corpus):
    from inference.reliability.consistency import check_steps

    for rec in _records(corpus, "reasoning"):
        check = check_steps(parse_answer(rec["conversations"][1]["value"]).steps)
        assert check.ok, (rec["image"], check.messages())
    flagged = [not check_steps(parse_answer(p["rejected"]).steps).ok for p in _records(corpus, "preference")
               if p["error"] in ("count_mismatch", "side_mismatch", "size_mismatch", "density_mismatch",
                                 "missing_step")]
    assert flagged and sum(flagged) >= 0.8 * len(flagged)


def test_preference_pairs_reject_contradicting_chains_and_wrong_boxes(corpus):
    pairs = _records(corpus, "preference")
    kinds = {p["error"] for p in pairs}
    assert kinds & set(txt.CHAIN_ERRORS) and kinds & set(txt.BOX_ERRORS)
    for p in pairs:
        chosen, rejected = _steps(p["chosen"]), _steps(p["rejected"])
        headings = re.findall(r"^Step (\d):", p["rejected"], flags=re.M)
        if p["error"] == "missing_step":
            assert len(headings) == 4 and len(set(headings)) == 4
        elif p["error"] == "repeated_step":
            assert len(headings) == 6 and len(set(headings)) == 5
        elif p["error"] in txt.CHAIN_ERRORS:  # boxes and steps 1-4 right, the report contradicts them
            assert [rejected[k] for k in (1, 2, 3, 4)] == [chosen[k] for k in (1, 2, 3, 4)]
            assert rejected[5] != chosen[5]


def test_grounding_pairs_reject_invented_moved_and_missed_boxes_under_the_grounding_question(corpus):
    """The pre-read sweep's mistakes as DPO pairs: on a lesion-free slice the only rejected answer is an invented
    lesion; where there are lesions, a moved box or a missed lesion too. Same prompt as the SFT grounding record."""
    pairs = _records(corpus, "grounding_preference")
    grounding = {r["image"]: r for r in _records(corpus, "grounding")}
    truth = {a["image"]: a["lesions"] for a in _records(corpus, "annotations")}
    assert {p["error"] for p in pairs} == {"hallucinated_lesion", "wrong_box", "missed_lesion"}
    lesion_free = [r for r in grounding.values() if not truth[r["image"]]]
    assert lesion_free and len(lesion_free) + 10 < len(pairs) < len(grounding)  # one per lesion-free slice, most
    assert all(p["rejected"] != "No lesion is seen." for p in pairs)  # never the empty answer itself (run 13d)
    for p in pairs:
        conv = grounding[p["image"]]["conversations"]
        assert p["prompt"] == conv[0]["value"] and p["chosen"] == conv[1]["value"] != p["rejected"]
        chosen = [b for g in parse_answer(p["chosen"]).phrases for b in g.boxes]
        rejected = [b for g in parse_answer(p["rejected"]).phrases for b in g.boxes]
        true_boxes = {tuple(t["box_1000"]) for t in truth[p["image"]]}
        assert {(b.x0, b.y0, b.x1, b.y1) for b in chosen} == true_boxes
        if not true_boxes:
            assert p["error"] == "hallucinated_lesion" and len(rejected) == 1
        if p["error"] == "hallucinated_lesion":  # the true boxes, and one that touches none of them
            assert len(rejected) == len(chosen) + 1
            assert all(rejected[-1].iou(b) == 0.0 for b in chosen)
        elif p["error"] == "missed_lesion":
            assert len(rejected) == len(chosen) - 1 >= 1
        else:
            assert len(rejected) == len(chosen) and rejected != chosen


@pytest.mark.parametrize("error", txt.CHAIN_ERRORS)
def test_each_chain_error_contradicts_step_2_or_breaks_the_chain(error):
    from app.synthetic.cases import make_case

    case = next(c for c in (make_case(SEED, i, 224) for i in range(50)) if len(c.lesions) == 1 and c.kind != "xray")
    t = case.lesions[0]
    kind, text = txt.rejected_reasoning(case, np.random.default_rng(0), (error,))
    steps = _steps(text)
    assert kind == error
    if error == "count_mismatch":
        assert "Two" in steps[5] and "A single lesion" in steps[4]
    elif error == "side_mismatch":
        other = "left" if t.side == "right" else "right"
        assert t.location.replace(t.side, other) in steps[5] and t.location in steps[3]
    elif error == "size_mismatch":
        assert f"{t.size_mm:.0f} mm" in steps[3] and f"{t.size_mm:.0f} mm" not in steps[5]
    elif error == "density_mismatch":
        assert t.kind in steps[3] and t.kind not in steps[5].split("IMPRESSION")[0]
    elif error == "missing_step":
        assert len(steps) == 4
    else:
        assert len(re.findall(r"^Step \d:", text, flags=re.M)) == 6
    if not NO_CHECKER and error != "repeated_step":  # the checker folds a repeated step (no contradiction)
        from inference.reliability.consistency import check_steps

        assert not check_steps(parse_answer(text).steps).ok


def test_default_preference_errors_keep_the_phantom_corpus_bytes():
    from app.synthetic.cases import make_case

    for i in range(20):
        case = make_case(7, i, 96)
        error, wrong = txt.corrupt(case, np.random.default_rng([7, i]))
        assert txt.rejected_reasoning(case, np.random.default_rng([7, i])) == (error, txt.reasoning_answer(case, wrong))


def test_same_seed_same_bytes_new_seed_new_cases(tmp_path):
    args = ["--studies", "2", "--n-slices", "30", "--slices-per-study", "2", "--xrays", "1"]
    assert main(["--out", str(tmp_path / "a"), "--seed", "3", *args]) == 0
    assert main(["--out", str(tmp_path / "b"), "--seed", "3", "--workers", "2", *args]) == 0  # same bytes
    assert main(["--out", str(tmp_path / "c"), "--seed", "5", *args]) == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for name in files:
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name
    assert (tmp_path / "a" / "images/000000.png").read_bytes() != (tmp_path / "c" / "images/000000.png").read_bytes()
    assert main(["--out", str(tmp_path / "d"), "--studies", "1", "--windows", "lung,nope"]) == 1


def test_slices_render_as_the_viewer_renders_them(tmp_path):
    """render_stored on a study's stored values == app.dicom.display.render of the written DICOM files."""
    from app.dicom.display import render
    from app.dicom.loader import load_series
    from app.dicom.scan import scan
    from app.synthetic.sample import write_ct_study
    from app.synthetic.volumes import STUDY_WINDOWS, render_stored, study_window

    write_ct_study(tmp_path / "s", n_slices=3, size=128, seed=SEED)
    volume = load_series(scan(tmp_path / "s").all_series()[0])
    for k in range(3):
        stored = np.asarray(volume.frames[k]).astype(np.uint16)
        for name in STUDY_WINDOWS:
            assert np.array_equal(render_stored(stored, study_window(name)), render(volume, k, study_window(name)))


def test_micro_512_recipe_runs_end_to_end_with_tiling(tmp_path):
    from training.data import ConversationDataset, load_samples
    from training.demo_model import main as recipe

    work, out = tmp_path / "work", tmp_path / "demo"
    micro = REPO / "training" / "configs" / "demo_model_512_micro.yaml"
    assert recipe(["--config", str(micro), "--work-dir", str(work), "--out", str(out)]) == 0
    pre = json.loads((work / "skeleton" / "preprocessor_config.json").read_text())
    assert pre["max_patches"] == 4 and pre["crop_to_patches"] is True
    # the training collator tiles a 512-px slice like the inference processor: 2x2 tiles + a thumbnail
    from inference.engine.processor import load_processor

    processor = load_processor(work / "skeleton")
    ds = ConversationDataset(load_samples(work / "phantoms-train" / "meta.json"), processor, 2048)
    item = ds[0]
    assert item["pixel_values"].shape[0] == 5
    tokens = int((item["input_ids"] == processor.image_token_id).sum())
    assert tokens == 5 * processor.image_seq_length
    card = json.loads((out / "model_card.json").read_text())
    assert card["data"]["corpus"]["kind"] == "study" and card["spec"]["max_tiles"] == 4
    assert any(c.startswith("python -m training.study_corpus") for c in card["commands"])
    study = card["metrics_sample_study"]
    assert set(study["per_group"]) == {"soft_tissue", "lung"}
    assert "window lung (grounding)" in (out / "MODEL_CARD.md").read_text()


def test_lesion_slices_can_be_shown_only_in_windows_where_a_lesion_shows(tmp_path):
    """visible_window_share 1: a slice crossing a lesion is never a target that says "no lesion" because the
    window hides it; empty slices stay in proportion to the lesion slices taken."""
    cfg = StudyCorpusConfig(studies=3, seed=SEED + 1, n_slices=60, slices_per_study=10, empty_fraction=0.2,
                            windows_per_slice=1, visible_window_share=1.0, xrays=0)
    out = write_study_corpus(tmp_path / "c", cfg).out
    anns = _records(out, "annotations")
    crossing = [a for a in anns if a["hidden_lesions"] or a["lesions"]]
    assert crossing and all(a["lesions"] for a in crossing)
    empty = [a for a in anns if not a["lesions"] and not a["hidden_lesions"]]
    assert 0 < len(empty) <= 0.35 * len(anns)
    assert "--visible-window-share 1" in cfg.cli_flags()
    with pytest.raises(Exception, match="share"):
        StudyCorpusConfig(visible_window_share=1.5)


def test_a_recipe_can_start_from_a_trained_model_of_the_same_size(tmp_path):
    from safetensors.torch import load_file

    from inference.errors import XMedError
    from training.demo_model import SpecSection, build_skeleton, skeleton_from

    spec = SpecSection(vocab_size=300, text_hidden=32, text_layers=1, text_intermediate=64, vision_hidden=32,
                       vision_layers=1, vision_intermediate=64, image_size=56, patch_size=14, max_tiles=1)
    base = build_skeleton(tmp_path / "base", spec, ["a mass in the right lung 12 mm"], "base")
    tiled = skeleton_from(tmp_path / "tiled", base, SpecSection(**{**spec.__dict__, "max_tiles": 4}), "tiled")
    a, b = load_file(base / "model.safetensors"), load_file(tiled / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (tiled / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()
    assert json.loads((tiled / "preprocessor_config.json").read_text())["max_patches"] == 4
    with pytest.raises(XMedError, match="text_hidden 32 != 64"):
        skeleton_from(tmp_path / "bad", base, SpecSection(**{**spec.__dict__, "text_hidden": 64}), "bad")


def test_a_trained_model_grows_into_a_larger_tile_reading_it_as_before(tmp_path):
    """skeleton_from with a larger image_size (run 8: 224 -> 448 px): the position embeddings are resized once
    and stored, so the grown model answers a 448-px tile exactly as the trained model does when InternVL
    resizes its embeddings on the fly; a tile that is not a larger whole multiple is refused."""
    import torch
    from transformers import InternVLForConditionalGeneration

    from inference.errors import XMedError
    from training.demo_model import SpecSection, build_skeleton, skeleton_from

    spec = SpecSection(vocab_size=300, text_hidden=32, text_layers=1, text_intermediate=64, vision_hidden=32,
                       vision_layers=1, vision_intermediate=64, image_size=56, patch_size=14, max_tiles=1)
    base = build_skeleton(tmp_path / "base", spec, ["a mass in the right lung 12 mm"], "base")
    grown = skeleton_from(tmp_path / "grown", base, SpecSection(**{**spec.__dict__, "image_size": 112}), "grown")
    cfg = json.loads((grown / "config.json").read_text())
    assert cfg["vision_config"]["image_size"] == [112, 112] and cfg["image_seq_length"] == 16  # 8 x 8 patches / 4
    assert json.loads((grown / "processor_config.json").read_text())["image_seq_length"] == 16
    assert json.loads((grown / "preprocessor_config.json").read_text())["size"] == {"height": 112, "width": 112}
    a = InternVLForConditionalGeneration.from_pretrained(base).eval()
    b = InternVLForConditionalGeneration.from_pretrained(grown).eval()
    assert b.model.vision_tower.embeddings.position_embeddings.shape[1] == 1 + 64
    torch.manual_seed(3)
    ids = torch.randint(10, 250, (1, 30))
    ids[0, 2:18] = a.config.image_token_id
    pixels = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(a(input_ids=ids, pixel_values=pixels).logits,
                              b(input_ids=ids, pixel_values=pixels).logits, atol=1e-5)
    for size in (28, 84):   # smaller; not a whole multiple
        with pytest.raises(XMedError, match="image_size"):
            skeleton_from(tmp_path / f"bad{size}", base, SpecSection(**{**spec.__dict__, "image_size": size}), "bad")


def test_crops_are_the_slice_at_its_own_scale_with_each_lesion_whole_or_absent(tmp_path):
    """--crop 224 (the zoom pass's view): each crop is the viewer's rendering of its slice cut at 1:1; its
    lesions are the slice's lesions wholly inside it, shifted; a shown lesion is never cut by a crop's side;
    crops around lesions and crops showing none are both there."""
    from app.synthetic.truth import to_1000
    from app.synthetic.volumes import random_study, render_stored, study_window

    cfg = StudyCorpusConfig(studies=4, seed=SEED, n_slices=60, slices_per_study=6, crop=224)
    out = write_study_corpus(tmp_path / "crops", cfg).out
    anns = _records(out, "annotations")
    assert anns and all(a["width"] == a["height"] == 224 and a["kind"] != "xray" for a in anns)  # no radiographs
    assert any(a["lesions"] for a in anns) and sum(not a["lesions"] for a in anns) >= len(anns) / 3
    studies = {}
    for a in anns:
        src = a["source"]
        x, y, c = src["crop"]
        assert c == 224 and 0 <= x <= 512 - c and 0 <= y <= 512 - c
        if src["study"] not in studies:
            studies[src["study"]] = random_study(SEED, src["study"], 60, 512, cfg.max_lesions)
        sl = studies[src["study"]].render(src["slice"])
        whole = render_stored(sl.stored, study_window(src["window"]))
        image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / a["image"]).convert("L"))
        assert np.array_equal(image, whole[y:y + c, x:x + c])
        shown = set()
        for les in a["lesions"]:
            x0, y0, x1, y1 = les["box"]
            assert 0 <= x0 < x1 <= c and 0 <= y0 < y1 <= c and tuple(les["box_1000"]) == to_1000(les["box"], c, c)
            shown.add((x0 + x, y0 + y, x1 + x, y1 + y))
        assert shown <= {tuple(b) for b in sl.boxes.values()}
        hidden = {tuple(h["box"]) for h in a["hidden_lesions"]}
        for box in sl.boxes.values():
            inside = x <= box[0] and y <= box[1] and box[2] <= x + c and box[3] <= y + c
            apart = box[2] <= x or box[0] >= x + c or box[3] <= y or box[1] >= y + c
            if not (inside or apart):  # cut by the crop: only a lesion this window does not show
                assert (max(0, box[0] - x), max(0, box[1] - y), min(c, box[2] - x), min(c, box[3] - y)) in hidden
    assert txt.grounding_answer([]) in (out / "grounding.jsonl").read_text()


def test_shifted_slices_are_the_study_moved_with_their_boxes(tmp_path):
    """--shift 32: each training slice is the viewer's rendering of its study slice moved by the offset its
    source records (air where the image came in), each shown lesion's box moved by the same offset; offsets
    vary in both directions; the recipe moves its training corpus only, never the held-out one."""
    from app.synthetic.truth import to_1000
    from app.synthetic.volumes import random_study, render_stored, study_window
    from training.demo_model import CorpusSection, StudySection
    from training.study_corpus import shifted

    cfg = StudyCorpusConfig(studies=3, seed=SEED, n_slices=60, slices_per_study=5, shift=32, xrays=0)
    out = write_study_corpus(tmp_path / "moved", cfg).out
    anns = _records(out, "annotations")
    offsets = {tuple(a["source"]["shift"]) for a in anns}
    assert len(offsets) > 3 and all(abs(dx) <= 32 and abs(dy) <= 32 for dx, dy in offsets)
    assert {dx < 0 for dx, _ in offsets} == {True, False} and {dy < 0 for _, dy in offsets} == {True, False}
    studies = {}
    for a in anns:
        src = a["source"]
        dx, dy = src["shift"]
        if src["study"] not in studies:
            studies[src["study"]] = random_study(SEED, src["study"], 60, 512, cfg.max_lesions)
        sl = studies[src["study"]].render(src["slice"])
        image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / a["image"]).convert("L"))
        moved = render_stored(shifted(sl, dx, dy).stored, study_window(src["window"]))
        assert np.array_equal(image, moved)
        whole = render_stored(sl.stored, study_window(src["window"]))
        ys, xs = slice(max(0, dy), 512 + min(0, dy)), slice(max(0, dx), 512 + min(0, dx))
        assert np.array_equal(image[ys, xs], whole[max(0, -dy):512 - max(0, dy), max(0, -dx):512 - max(0, dx)])
        for les in a["lesions"]:
            x0, y0, x1, y1 = les["box"]
            assert (x0 - dx, y0 - dy, x1 - dx, y1 - dy) in {tuple(b) for b in sl.boxes.values()}
            assert tuple(les["box_1000"]) == to_1000(les["box"], 512, 512)
    assert any(a["lesions"] for a in anns)
    # unmoved corpora carry no offset; the recipe moves the training corpus only
    plain = write_study_corpus(tmp_path / "plain", StudyCorpusConfig(studies=1, seed=SEED, n_slices=60,
                                                                      slices_per_study=3, xrays=0)).out
    assert all("shift" not in a["source"] for a in _records(plain, "annotations"))
    section = StudySection(shift=32)
    assert section.config(CorpusSection(), 1, 2, train=True).shift == 32
    assert section.config(CorpusSection(), 99, 2).shift == 0
    assert "--shift 32" in section.config(CorpusSection(), 1, 2, train=True).cli_flags()
    with pytest.raises(Exception, match="shift"):
        StudyCorpusConfig(shift=200)


def test_a_trained_model_grows_deeper_answering_exactly_as_before(tmp_path):
    """skeleton_from with more layers (run 12: the trained model underfits its own training slices): each
    trained layer is followed by new ones that add nothing yet (zero layer scale in the vision tower, zero
    output projections in the language model), so the grown model's logits are the trained model's; training
    then moves them (their gradients are not zero); a depth that is not a larger whole multiple is refused."""
    import torch
    from transformers import InternVLForConditionalGeneration

    from inference.errors import XMedError
    from training.demo_model import SpecSection, build_skeleton, skeleton_from

    spec = SpecSection(vocab_size=300, text_hidden=32, text_layers=2, text_intermediate=64, vision_hidden=32,
                       vision_layers=1, vision_intermediate=64, image_size=56, patch_size=14, max_tiles=1)
    base = build_skeleton(tmp_path / "base", spec, ["a mass in the right lung 12 mm"], "base")
    a = InternVLForConditionalGeneration.from_pretrained(base).eval()
    with torch.no_grad():   # a skeleton's layer scales are 0.1 and its projections random: make them matter
        for p in a.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a.save_pretrained(base)
    grown = skeleton_from(tmp_path / "grown", base,
                          SpecSection(**{**spec.__dict__, "vision_layers": 3, "text_layers": 4}), "grown")
    cfg = json.loads((grown / "config.json").read_text())
    assert cfg["vision_config"]["num_hidden_layers"] == 3 and cfg["text_config"]["num_hidden_layers"] == 4
    b = InternVLForConditionalGeneration.from_pretrained(grown).eval()
    assert len(b.model.vision_tower.encoder.layer) == 3 and len(b.model.language_model.layers) == 4
    torch.manual_seed(3)
    ids = torch.randint(10, 250, (1, 30))
    ids[0, 2:6] = a.config.image_token_id
    pixels = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        want = a(input_ids=ids, pixel_values=pixels).logits
        assert torch.allclose(want, b(input_ids=ids, pixel_values=pixels).logits, atol=1e-5)
    new_v, new_t = b.model.vision_tower.encoder.layer[1], b.model.language_model.layers[1]
    assert not new_v.lambda_1.any() and not new_t.self_attn.o_proj.weight.any()
    assert new_t.self_attn.q_proj.weight.abs().sum() > 0   # fresh, not zero: training can open the layer
    b.train()
    b(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
    assert new_v.lambda_1.grad.abs().sum() > 0 and new_t.self_attn.o_proj.weight.grad.abs().sum() > 0
    for layers in ({"vision_layers": 2, "text_layers": 3}, {"text_layers": 1}):
        with pytest.raises(XMedError, match="layers"):
            skeleton_from(tmp_path / "bad", base, SpecSection(**{**spec.__dict__, **layers}), "bad")


def test_a_trained_model_grows_a_finer_patch_grid_under_the_same_image_tokens(tmp_path):
    """skeleton_from with a larger tile and a smaller pixel shuffle ratio (run 13: 224 px at 0.5 -> 448 px at
    0.25): the language model reads as many image tokens as before, each now joining 4 x 4 finer patches; the
    projector gives each finer patch its parent's weights, shared out, so finer patches that read as their
    parents are projected exactly as the parents were. A ratio that changes the number of tokens is refused."""
    import torch
    from transformers import InternVLForConditionalGeneration

    from inference.errors import XMedError
    from training.demo_model import SpecSection, build_skeleton, skeleton_from

    spec = SpecSection(vocab_size=300, text_hidden=32, text_layers=1, text_intermediate=64, vision_hidden=32,
                       vision_layers=1, vision_intermediate=64, image_size=56, patch_size=14, max_tiles=1)
    base = build_skeleton(tmp_path / "base", spec, ["a mass in the right lung 12 mm"], "base")
    a = InternVLForConditionalGeneration.from_pretrained(base).eval()
    with torch.no_grad():   # a skeleton's layer norm is all ones: make each channel block differ
        for p in a.model.multi_modal_projector.parameters():
            p.add_(0.3 * torch.randn_like(p))
    a.save_pretrained(base)
    finer = SpecSection(**{**spec.__dict__, "image_size": 112, "downsample_ratio": 0.25})
    grown = skeleton_from(tmp_path / "grown", base, finer, "grown")
    cfg = json.loads((grown / "config.json").read_text())
    assert cfg["downsample_ratio"] == 0.25 and cfg["image_seq_length"] == 4   # 4 x 4 patches / 4 before, 8 x 8 / 16
    assert json.loads((grown / "processor_config.json").read_text())["image_seq_length"] == 4
    b = InternVLForConditionalGeneration.from_pretrained(grown).eval()
    torch.manual_seed(5)
    coarse = torch.randn(2, 4, 4, 32)   # vision features on the trained 4 x 4 grid
    fine = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)   # each finer patch reads as its parent

    def projected(model, features, ratio):
        x = model.model.pixel_shuffle(features, ratio)
        return model.model.multi_modal_projector(x.reshape(features.shape[0], -1, x.shape[-1]))

    with torch.no_grad():
        want, got = projected(a, coarse, 0.5), projected(b, fine, 0.25)
        assert torch.allclose(want, got, atol=1e-5)
        shuffled = coarse.clone()
        shuffled[:, 0, 0] = shuffled[:, 3, 3]   # a different patch in the first token changes it
        assert not torch.allclose(projected(b, shuffled.repeat_interleave(2, 1).repeat_interleave(2, 2), 0.25)[:, 0],
                                  want[:, 0], atol=1e-3)
    ids = torch.randint(10, 250, (1, 12))
    ids[0, 2:6] = b.config.image_token_id
    with torch.no_grad():   # the grown model runs as a whole: 112-px tiles, 4 image tokens
        assert b(input_ids=ids, pixel_values=torch.randn(1, 3, 112, 112)).logits.shape[:2] == (1, 12)
    with pytest.raises(XMedError, match="downsample_ratio"):   # 8 x 8 patches at 0.5: 16 tokens, not 4
        skeleton_from(tmp_path / "bad", base, SpecSection(**{**spec.__dict__, "downsample_ratio": 0.25}), "bad")


def test_the_sweep_asks_the_grounding_question_the_corpus_teaches():
    """The pre-read's sweep and xmedgpt eval ask the phantom corpus's first grounding prompt, word for word, with no
    system prompt (issue #15: asked under the system prompt, a model trained further answered a line of its
    five-step reasoning instead of boxing)."""
    from app.assistant.preread import sweep_prompt
    from inference.evaluation.harness import GROUNDING_PROMPT
    from training.phantom_text import GROUNDING_PROMPTS

    assert sweep_prompt() == (None, GROUNDING_PROMPTS[0]) and GROUNDING_PROMPT == GROUNDING_PROMPTS[0]


def test_the_dpo_stage_pools_the_pair_sets_the_recipe_names(tmp_path):
    from inference.errors import XMedError
    from training.demo_model import DemoConfig, _preference_file

    (tmp_path / "preference.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    assert DemoConfig().dpo_sets == ["preference"]
    assert _preference_file(tmp_path, ["preference"]) == tmp_path / "preference.jsonl"  # runs 1-13c: unchanged
    with pytest.raises(XMedError, match="grounding_preference.jsonl"):
        _preference_file(tmp_path, ["preference", "grounding_preference"])  # a corpus written before it existed
    (tmp_path / "grounding_preference.jsonl").write_text('{"g": 1}\n')
    pooled = _preference_file(tmp_path, ["preference", "grounding_preference"])
    assert [json.loads(x) for x in pooled.read_text().splitlines()] == [{"a": 1}, {"a": 2}, {"g": 1}]
    stamp = pooled.stat().st_mtime_ns
    os.utime(pooled, ns=(stamp - 10**9, stamp - 10**9))  # a resumed recipe: the same pairs, left as they are
    assert _preference_file(tmp_path, ["preference", "grounding_preference"]).stat().st_mtime_ns == stamp - 10**9
    (tmp_path / "grounding_preference.jsonl").write_text('{"g": 2}\n')  # rewritten corpus: pooled again
    _preference_file(tmp_path, ["preference", "grounding_preference"])
    assert pooled.read_text().splitlines()[-1] == '{"g": 2}'


def test_a_mix_can_show_the_lesion_free_grounding_answers_more_often(corpus, tmp_path):
    import shutil

    from inference.errors import XMedError
    from training.data import load_samples
    from training.demo_model import EMPTY_GROUNDING, _mix_meta

    work = tmp_path / "train"
    shutil.copytree(corpus, work)
    meta = _mix_meta(work, "meta_mix.json", {"phantom_grounding": 1, EMPTY_GROUNDING: 2})
    entries = json.loads(meta.read_text())
    assert set(entries) == {"phantom_grounding", EMPTY_GROUNDING} and entries[EMPTY_GROUNDING]["repeat_time"] == 2
    # the set is the corpus's own grounding records on the slices whose truth has no lesion, and nothing else
    free = {a["image"] for a in _records(work, "annotations") if not a["lesions"]}
    empty = _records(work, "grounding_empty")
    grounding = _records(work, "grounding")
    assert empty and len(empty) == sum(r["image"] in free for r in grounding) < len(grounding)
    assert all(r["image"] in free and "<box>" not in r["conversations"][1]["value"] for r in empty)
    validate_jsonl(work / "grounding_empty.jsonl", "conversation", root=work)
    # loaded through the meta file: lesion-free answers three times as often as the corpus drew them
    samples = load_samples(meta)
    assert len(samples) == len(grounding) + 2 * len(empty)
    # without the name the meta file is the corpus's sets only; a name the corpus lacks is refused
    assert EMPTY_GROUNDING not in json.loads(_mix_meta(work, "m2.json", {"phantom_grounding": 1}).read_text())
    with pytest.raises(XMedError, match="phantom_nothing"):
        _mix_meta(work, "m3.json", {"phantom_nothing": 1})
    # the same from the command line (the chain to the committed model writes its meta files so)
    from training.demo_model import main as demo_main

    assert demo_main(["--mix-meta", str(work), "m4.json", f"phantom_grounding=1,{EMPTY_GROUNDING}=2"]) == 0
    assert json.loads((work / "m4.json").read_text()) == entries
    for bad in ("phantom_grounding", "x=y", ""):
        assert demo_main(["--mix-meta", str(work), "m5.json", bad]) == 1
    assert demo_main(["--mix-meta", str(work), "../m5.json", "phantom_grounding=1"]) == 1
    assert demo_main(["--mix-meta", str(work), "m5.json", "phantom_nothing=1"]) == 1 and not (work / "m5.json").exists()
