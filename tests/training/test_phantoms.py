"""The phantom corpus: reproducible, and every file agrees with the ground truth of its cases.

The cases themselves (variety, boxes against pixels) are tested in tests/app/synthetic/test_cases.py.
"""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from app.dicom.png import read_png
from app.synthetic.cases import make_case
from app.synthetic.truth import LesionTruth
from inference.evaluation.sizes import size_bucket
from inference.parsing import parse_answer
from inference.types import STEP_NAMES, Box
from training.phantoms import main, write_corpus

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


def test_boxes_on_the_1000_scale_match_the_pixel_boxes(corpus):
    for a in _jsonl(corpus / "annotations.jsonl"):
        for les in a["lesions"]:
            x0, y0, x1, y1 = les["box"]
            assert 0 <= x0 < x1 <= a["width"] and 0 <= y0 < y1 <= a["height"]
            scaled = np.array(les["box"]) * 1000 / a["width"]
            assert np.abs(np.array(les["box_1000"]) - scaled).max() <= 1.0
            assert size_bucket(les["size_mm"]) == les["size_class"]
            assert LesionTruth.from_dict(les).to_dict() == les  # the one ground-truth record, as written


def test_annotations_are_the_cases_the_generator_makes(corpus):
    ann = _jsonl(corpus / "annotations.jsonl")
    assert len(ann) == N
    for i, a in enumerate(ann):
        case = make_case(11, i)
        assert a["image"] == f"images/{case.name}.png" and a["kind"] == case.kind
        assert np.array_equal(read_png(corpus / a["image"]), case.image)
        assert a["lesions"] == [t.to_dict() for t in case.lesions]


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
