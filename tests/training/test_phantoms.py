"""The phantom corpus: reproducible, varied, and every target agrees with the pixels it describes."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from app.dicom.png import read_png, write_png
from app.synthetic.anatomy import Anatomy, Lesion
from app.synthetic.xray import add_xray_lesions, render_xray
from inference.parsing import parse_answer
from inference.types import STEP_NAMES, Box
from training.phantoms import main, make_case, size_class, to_1000, write_corpus

N = 48


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n=N, seed=11).out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    a = _tree(write_corpus(tmp_path / "a", n=6, seed=3).out)
    b = _tree(write_corpus(tmp_path / "b", n=6, seed=3).out)
    c = _tree(write_corpus(tmp_path / "c", n=6, seed=4).out)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert a["images/000000.png"] != c["images/000000.png"]


def test_corpus_is_varied(corpus):
    ann = _jsonl(corpus / "annotations.jsonl")
    assert len(ann) == N
    assert {a["kind"] for a in ann} == {"ct_chest", "ct_abdomen", "xray"}
    counts = {len(a["lesions"]) for a in ann}
    assert counts == {0, 1, 2, 3}
    lesions = [les for a in ann for les in a["lesions"]]
    assert {les["size_class"] for les in lesions} == {"small", "medium", "large"}
    assert {les["side"] for les in lesions} == {"right", "left"}
    assert {les["organ"] for les in lesions} == {"lung", "liver"}
    assert {les["density"] for les in lesions} >= {"solid", "ground-glass", "hypodense", "hyperdense"}
    assert len({les["margin"] for les in lesions}) == 3
    sizes = [les["box"][2] - les["box"][0] for les in lesions]
    assert min(sizes) < 10 and max(sizes) > 25  # pixels: small and large lesions both present


def test_image_left_is_patient_right(corpus):
    for a in _jsonl(corpus / "annotations.jsonl"):
        for les in a["lesions"]:
            centre = (les["box"][0] + les["box"][2]) / 2
            assert (centre < a["width"] / 2) == (les["side"] == "right"), (a["image"], les)
            assert les["side"] in les["location"]


def test_boxes_on_the_1000_scale_match_the_pixel_boxes(corpus):
    for a in _jsonl(corpus / "annotations.jsonl"):
        for les in a["lesions"]:
            x0, y0, x1, y1 = les["box"]
            assert 0 <= x0 < x1 <= a["width"] and 0 <= y0 < y1 <= a["height"]
            scaled = np.array(les["box"]) * 1000 / a["width"]
            assert np.abs(np.array(les["box_1000"]) - scaled).max() <= 1.0
            assert size_class(les["size_mm"]) == les["size_class"]
    assert to_1000((0, 0, 1, 1), 224, 224) == (0, 0, 5, 5)


def test_lesions_are_visible_in_the_8bit_image_inside_their_boxes(corpus):
    contrasts: dict[str, list[float]] = {"ct": [], "xray": []}
    for a in _jsonl(corpus / "annotations.jsonl"):
        img = read_png(corpus / a["image"]).astype(np.float32)
        for les in a["lesions"]:
            x0, y0, x1, y1 = les["box"]
            w, h = x1 - x0, y1 - y0
            core = img[y0 + h // 3:y1 - h // 3, x0 + w // 3:x1 - w // 3]
            pad = max(3, w // 2)
            ring = img[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad].copy()
            ring[min(pad, y0):min(pad, y0) + h, min(pad, x0):min(pad, x0) + w] = np.nan
            contrasts["xray" if a["kind"] == "xray" else "ct"].append(
                abs(float(core.mean()) - float(np.nanmedian(ring))))
    # every CT lesion stands out; radiographs vary, as real nodules do, but stay visible on average
    assert min(contrasts["ct"]) >= 8.0, sorted(contrasts["ct"])[:5]
    assert np.median(contrasts["xray"]) >= 6.0 and min(contrasts["xray"]) > 1.0


def test_radiograph_lesion_changes_only_the_pixels_inside_its_box():
    anatomy = Anatomy()
    base = render_xray(anatomy, 160)
    lesion = Lesion("L1", "lung", "right middle zone", "right", "nodule", -70.0, 0.0, 150.0, 9.0, 9.0, 9.0, 40.0)
    with_lesion = add_xray_lesions(base, [lesion])
    changed = np.abs(with_lesion.values - base.values) > 1e-6
    x0, y0, x1, y1 = with_lesion.boxes["L1"]
    inside = np.zeros_like(changed)
    inside[y0 - 1:y1 + 1, x0 - 1:x1 + 1] = True
    assert changed.any() and not (changed & ~inside).any()
    assert changed[y0:y1, x0].any() and changed[y0:y1, x1 - 1].any()
    assert (x0 + x1) / 2 < 80  # the patient's right lung is on the image left
    assert abs((x1 - x0) * 400 / 160 - 18.0) <= 2 * 400 / 160  # 18 mm across


def test_reasoning_targets_parse_into_five_steps_with_the_true_boxes(corpus):
    ann = {a["image"]: a for a in _jsonl(corpus / "annotations.jsonl")}
    for rec in _jsonl(corpus / "reasoning.jsonl"):
        parsed = parse_answer(rec["conversations"][1]["value"])
        assert [s.title for s in parsed.steps] == list(STEP_NAMES) and not parsed.problems
        truth = [Box(*map(float, les["box_1000"])) for les in ann[rec["image"]]["lesions"]]
        grounded = [g for g in parsed.groundings]
        assert all(g.step == 2 for g in grounded)
        assert [g.phrase.boxes[0] for g in grounded] == truth
        if not truth:
            assert "No focal lesion" in parsed.steps[1].text


def test_grounding_and_report_targets_follow_the_truth(corpus):
    ann = {a["image"]: a for a in _jsonl(corpus / "annotations.jsonl")}
    for rec in _jsonl(corpus / "grounding.jsonl"):
        lesions = ann[rec["image"]]["lesions"]
        parsed = parse_answer(rec["conversations"][1]["value"])
        assert [tuple(int(v) for v in (g.phrase.boxes[0].x0, g.phrase.boxes[0].y0, g.phrase.boxes[0].x1,
                                        g.phrase.boxes[0].y1)) for g in parsed.groundings] == \
            [tuple(les["box_1000"]) for les in lesions]
    for rec in _jsonl(corpus / "report.jsonl"):
        lesions = ann[rec["image"]]["lesions"]
        report = rec["conversations"][1]["value"]
        assert report.startswith("FINDINGS:") and "\nIMPRESSION:" in report
        for les in lesions:
            assert les["location"] in report and f"{les['size_mm']:.0f} mm" in report
        if not lesions:
            assert "No focal lesion" in report


def test_vqa_answers_agree_with_the_annotations(corpus):
    ann = {a["image"]: a for a in _jsonl(corpus / "annotations.jsonl")}
    seen = set()
    for rec in _jsonl(corpus / "vqa.jsonl"):
        q, answer = rec["conversations"][0]["value"], rec["conversations"][1]["value"]
        lesions = ann[rec["image"]]["lesions"]
        largest = max(lesions, key=lambda les: les["size_mm"]) if lesions else None
        qtype = rec["question_type"]
        seen.add(qtype)
        if qtype == "presence":
            assert answer == ("yes" if lesions else "no")
        elif qtype == "count":
            assert answer == str(len(lesions))
        elif qtype == "laterality":
            side = "right" if "right" in q else "left"
            assert answer == ("yes" if any(les["side"] == side for les in lesions) else "no")
        else:
            assert largest is not None and answer == largest[{"size": "size_class"}.get(qtype, qtype)]
    assert seen == {"presence", "count", "laterality", "location", "size", "density", "margin"}


def test_preference_pairs_reject_each_kind_of_error(corpus):
    kinds = set()
    for rec in _jsonl(corpus / "preference.jsonl"):
        chosen, rejected = parse_answer(rec["chosen"]), parse_answer(rec["rejected"])
        assert rec["chosen"] != rec["rejected"] and rec["prompt"].startswith("<image>\n")
        good = [g.phrase.boxes[0] for g in chosen.groundings]
        bad = [g.phrase.boxes[0] for g in rejected.groundings]
        kind = rec["error"]
        kinds.add(kind)
        if kind == "missed_lesion":
            assert len(bad) == len(good) - 1
        elif kind == "hallucinated_lesion":
            assert len(bad) == len(good) + 1 and all(b.iou(g) == 0 for g in good for b in bad[-1:])
        elif kind == "wrong_box":
            moved = [b for b, g in zip(bad, good) if b != g]
            assert len(bad) == len(good) and len(moved) == 1
            assert all(moved[0].iou(g) == 0.0 for g in good)  # it points at no true lesion
        else:
            assert kind == "wrong_laterality" and len(bad) == len(good)
            pairs = list(zip(chosen.groundings, rejected.groundings))
            flipped = [(g, r) for g, r in pairs if g.phrase.phrase != r.phrase.phrase]
            assert len(flipped) == 1, "exactly one finding moves to the other side"
            g, r = flipped[0]
            other = {"right": "left", "left": "right"}
            assert r.phrase.phrase == " ".join(other.get(w, w) for w in g.phrase.phrase.split())
            gb, rb = g.phrase.boxes[0], r.phrase.boxes[0]
            assert (rb.x0, rb.x1, rb.y0, rb.y1) == (1000 - gb.x1, 1000 - gb.x0, gb.y0, gb.y1)
    assert kinds == {"missed_lesion", "hallucinated_lesion", "wrong_box", "wrong_laterality"}


def test_meta_lists_the_conversation_datasets_with_repeat_factors(corpus):
    meta = json.loads((corpus / "meta.json").read_text())
    assert set(meta) >= {"phantom_grounding", "phantom_vqa", "phantom_report", "phantom_reasoning"}
    for entry in meta.values():
        lines = (corpus / entry["annotation"]).read_text().splitlines()
        assert entry["length"] == len(lines) and entry["repeat_time"] >= 1
        first = json.loads(lines[0])
        assert (corpus / entry["root"] / first["image"]).is_file()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (make installs it)")
def test_spoken_queries_are_16khz_speech_of_the_question(tmp_path):
    out = write_corpus(tmp_path / "a", n=3, seed=5, audio=True).out
    again = write_corpus(tmp_path / "b", n=3, seed=5, audio=True).out
    records = _jsonl(out / "audio.jsonl")
    assert len(records) == 3
    for rec in records:
        assert rec["conversations"][0]["value"] == "<image>\n<audio>"
        with wave.open(str(out / rec["audio"])) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        assert 0.5 < len(pcm) / 16000 < 10 and np.abs(pcm).max() > 1000  # audible speech, not silence
        assert abs(len(pcm) / 16000 - rec["duration_s"]) < 0.01
        assert (out / rec["audio"]).read_bytes() == (again / rec["audio"]).read_bytes()


def test_cli_writes_a_corpus_and_refuses_nonsense(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "c"), "--n", "2", "--seed", "1", "--size", "96"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert read_png(tmp_path / "c" / "images" / "000001.png").shape == (96, 96)
    assert main(["--out", str(tmp_path / "d"), "--n", "0"]) == 1
    assert "at least 1 image" in capsys.readouterr().err


def test_contact_sheet_for_a_person_to_look_at(corpus, output_dir):
    """Saves test-output/phantom_corpus.png: images with their ground-truth boxes in red."""
    ann = _jsonl(corpus / "annotations.jsonl")[:24]
    tiles = []
    for a in ann:
        grey = read_png(corpus / a["image"])
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        for les in a["lesions"]:
            x0, y0, x1, y1 = les["box"]
            x0, y0 = max(x0 - 1, 0), max(y0 - 1, 0)
            x1, y1 = min(x1, a["width"] - 1), min(y1, a["height"] - 1)
            for ys, xs in ((slice(y0, y1 + 1), x0), (slice(y0, y1 + 1), x1), (y0, slice(x0, x1 + 1)),
                           (y1, slice(x0, x1 + 1))):
                rgb[ys, xs] = (255, 40, 40)
        tiles.append(rgb)
    rows = [np.hstack(tiles[i:i + 6]) for i in range(0, len(tiles), 6)]
    sheet = np.vstack(rows)
    write_png(output_dir / "phantom_corpus.png", sheet)
    assert sheet.std() > 20


def test_make_case_is_a_pure_function_of_seed_and_index():
    a, b = make_case(9, 17), make_case(9, 17)
    assert np.array_equal(a.image, b.image) and a.lesions == b.lesions


def test_config_narrows_kinds_lesion_count_and_size(tmp_path):
    out = tmp_path / "big"
    assert main(["--out", str(out), "--n", "12", "--seed", "8", "--kinds", "ct_chest,xray", "--max-lesions", "1",
                 "--lesion-mm", "25", "35"]) == 0
    ann = _jsonl(out / "annotations.jsonl")
    assert {a["kind"] for a in ann} <= {"ct_chest", "xray"}
    assert all(len(a["lesions"]) <= 1 for a in ann)
    sizes = [les["size_mm"] for a in ann for les in a["lesions"]]
    assert sizes and all(24.0 <= s <= 37.0 for s in sizes)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["lesion_mm"] == [25.0, 35.0]
    assert main(["--out", str(tmp_path / "x"), "--n", "1", "--kinds", "mri"]) == 1
