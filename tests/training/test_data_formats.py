"""Validators accept the documented formats and reject each kind of breakage with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.dicom.png import write_png
from training.data_formats import (
    DataFormatError,
    check_grounding,
    check_jsonl,
    check_meta,
    main,
    validate_jsonl,
    validate_meta,
)
from training.phantoms import write_corpus

GOOD_CONV = {
    "image": "images/a.png",
    "conversations": [
        {"from": "human", "value": "<image>\nLocate every lesion."},
        {"from": "gpt", "value": "<ref>solid nodule in the right upper lobe</ref><box>[[120, 200, 180, 260]]</box>"},
    ],
}
GOOD_PREF = {
    "image": "images/a.png",
    "prompt": "<image>\nLocate every lesion.",
    "chosen": "<ref>nodule</ref><box>[[120, 200, 180, 260]]</box>",
    "rejected": "<ref>nodule</ref><box>[[620, 200, 680, 260]]</box>",
}
GOOD_AUDIO = {
    "audio": "audio/a.wav",
    "image": "images/a.png",
    "conversations": [{"from": "human", "value": "<image>\n<audio>"}, {"from": "gpt", "value": "yes"}],
}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    write_png(tmp_path / "images" / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").write_bytes(b"RIFF")
    return tmp_path


def _write(folder: Path, name: str, records: list) -> Path:
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _broken(rec: dict, **changes) -> dict:
    out = json.loads(json.dumps(rec))
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _turns(human: str, gpt: str) -> list[dict]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


CONVERSATION_BREAKAGES = {
    "not JSON": ('{"image": "images/a.png", "conversations": [', "not valid JSON"),
    "empty line": ("   ", "empty line"),
    "not an object": ('["images/a.png"]', "must be a JSON object"),
    "no conversations": (_broken(GOOD_CONV, conversations=None), "'conversations' must be a non-empty list"),
    "gpt speaks first": (_broken(GOOD_CONV, conversations=list(reversed(GOOD_CONV["conversations"]))),
                         "expected 'human'"),
    "unanswered question": (_broken(GOOD_CONV, conversations=GOOD_CONV["conversations"][:1]),
                            "must end with a gpt turn"),
    "empty answer": (_broken(GOOD_CONV, conversations=_turns("<image>\nWhat?", "  ")), "empty or missing 'value'"),
    "no image placeholder": (_broken(GOOD_CONV, conversations=_turns("What is shown?", "A lung.")),
                             "0 <image> placeholders"),
    "two placeholders": (_broken(GOOD_CONV, conversations=_turns("<image>\n<image>\nWhat?", "A lung.")),
                         "2 <image> placeholders"),
    "placeholder without image": (_broken(GOOD_CONV, image=None), "placeholder but no 'image'"),
    "image in the answer": (_broken(GOOD_CONV, conversations=_turns("<image>\nWhat?", "<image> lung")),
                            "gpt turn 1 contains <image>"),
    "box beyond 1000": (_broken(GOOD_CONV, conversations=_turns("<image>\nWhere?",
                                                                "<ref>n</ref><box>[[10, 20, 1200, 40]]</box>")),
                        "outside 0–1000"),
    "corners swapped": (_broken(GOOD_CONV, conversations=_turns("<image>\nWhere?",
                                                                "<ref>n</ref><box>[[300, 20, 100, 40]]</box>")),
                        "x1 < x2"),
    "three numbers": (_broken(GOOD_CONV, conversations=_turns("<image>\nWhere?",
                                                              "<ref>n</ref><box>[[10, 20, 30]]</box>")),
                      "3 numbers instead of 4"),
    "fractions": (_broken(GOOD_CONV, conversations=_turns("<image>\nWhere?",
                                                          "<ref>n</ref><box>[[0.1, 0.2, 0.3, 0.4]]</box>")),
                  "must hold integers"),
    "unclosed ref": (_broken(GOOD_CONV, conversations=_turns("<image>\nWhere?", "<ref>nodule <box>[[1, 2, 3, 4]]</box>")),
                     "<ref> not closed"),
    "ref without box": (_broken(GOOD_CONV, conversations=_turns("<image>\nWhere?", "<ref>nodule</ref> on the right")),
                        "is not followed by <box>"),
    "missing image file": (_broken(GOOD_CONV, image="images/missing.png"), "image file not found"),
}


@pytest.mark.parametrize("breakage", sorted(CONVERSATION_BREAKAGES))
def test_conversation_breakage_is_reported_on_its_line(folder, breakage):
    record, expected = CONVERSATION_BREAKAGES[breakage]
    path = _write(folder, "data.jsonl", [GOOD_CONV, GOOD_CONV, record, GOOD_CONV])
    count, problems = check_jsonl(path, "conversation")
    assert problems, breakage
    assert {p.line for p in problems} == {3}, [str(p) for p in problems]
    assert any(expected in p.message for p in problems), [str(p) for p in problems]
    with pytest.raises(DataFormatError, match=r"data\.jsonl:3: "):
        validate_jsonl(path, "conversation")


def test_valid_files_pass(folder):
    assert validate_jsonl(_write(folder, "c.jsonl", [GOOD_CONV] * 3), "conversation") == 3
    assert validate_jsonl(_write(folder, "p.jsonl", [GOOD_PREF]), "preference") == 1
    assert validate_jsonl(_write(folder, "a.jsonl", [GOOD_AUDIO]), "audio") == 1
    text_only = {"conversations": _turns("What is a nodule?", "A small round opacity.")}
    assert validate_jsonl(_write(folder, "t.jsonl", [text_only]), "conversation") == 1
    multi = _broken(GOOD_CONV, image=["images/a.png", "images/a.png"],
                    conversations=_turns("<image>\n<image>\nCompare.", "Unchanged."))
    assert validate_jsonl(_write(folder, "m.jsonl", [multi]), "conversation") == 1


@pytest.mark.parametrize("record, expected", [
    (_broken(GOOD_PREF, rejected=None), "'rejected' must be a non-empty string"),
    (_broken(GOOD_PREF, rejected=GOOD_PREF["chosen"]), "identical"),
    (_broken(GOOD_PREF, prompt="Locate every lesion."), "0 <image> placeholders in the prompt"),
    (_broken(GOOD_PREF, rejected="<ref>nodule</ref><box>[[620, 200, 580, 260]]</box>"), "rejected: box"),
    (_broken(GOOD_PREF, image=""), "'image' must be a non-empty path"),
])
def test_preference_breakage(folder, record, expected):
    path = _write(folder, "pref.jsonl", [GOOD_PREF, record])
    _, problems = check_jsonl(path, "preference")
    assert problems and all(p.line == 2 for p in problems)
    assert any(expected in p.message for p in problems), [str(p) for p in problems]


@pytest.mark.parametrize("record, expected", [
    (_broken(GOOD_AUDIO, audio=None), "'audio' must be the path"),
    (_broken(GOOD_AUDIO, audio="audio/a.txt"), "must be one of .wav"),
    (_broken(GOOD_AUDIO, audio="audio/gone.wav"), "audio file not found"),
    (_broken(GOOD_AUDIO, conversations=_turns("<image>\nIs there a lesion?", "yes")), "exactly one <audio>"),
])
def test_audio_breakage(folder, record, expected):
    path = _write(folder, "audio.jsonl", [record])
    _, problems = check_jsonl(path, "audio")
    assert problems and all(p.line == 1 for p in problems)
    assert any(expected in p.message for p in problems), [str(p) for p in problems]


def test_annotation_box_outside_the_image_is_rejected(folder):
    good = {"image": "images/a.png", "width": 8, "height": 8, "lesions": [{"box": [1, 1, 4, 4]}]}
    bad = {"image": "images/a.png", "width": 8, "height": 8, "lesions": [{"box": [1, 1, 9, 4]}]}
    _, problems = check_jsonl(_write(folder, "ann.jsonl", [good, bad]), "annotation")
    assert [p.line for p in problems] == [2] and "outside the 8×8 image" in problems[0].message


def _meta(folder: Path, **entry) -> Path:
    base = {"root": ".", "annotation": "c.jsonl", "data_augment": False, "repeat_time": 2, "length": 2}
    base.update(entry)
    base = {k: v for k, v in base.items() if v is not None}
    path = folder / "meta.json"
    path.write_text(json.dumps({"phantom": base}, indent=2))
    return path


def test_meta_accepts_a_good_listing_and_rejects_bad_ones(folder):
    _write(folder, "c.jsonl", [GOOD_CONV, GOOD_CONV])
    assert validate_meta(_meta(folder))["phantom"]["repeat_time"] == 2
    cases = {
        "repeat_time": (dict(repeat_time=0), "'repeat_time' must be a positive number"),
        "repeat as text": (dict(repeat_time="2"), "'repeat_time' must be a positive number"),
        "length": (dict(length=5), "'length' is 5 but c.jsonl holds 2 records"),
        "annotation": (dict(annotation="gone.jsonl"), "annotation file not found"),
        "root": (dict(root=None), "'root' must be a path"),
    }
    for name, (change, expected) in cases.items():
        _, problems = check_meta(_meta(folder, **change))
        assert any(expected in p.message for p in problems), (name, [str(p) for p in problems])
    broken = folder / "bad.json"
    broken.write_text('{\n  "phantom": {\n    "root": "."\n    "annotation": "c.jsonl"\n  }\n}\n')
    _, problems = check_meta(broken)
    assert problems[0].line == 4 and "not valid JSON" in problems[0].message


def test_meta_reports_bad_lines_inside_the_annotation_files(folder):
    _write(folder, "c.jsonl", [GOOD_CONV, _broken(GOOD_CONV, image="images/missing.png")])
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: image file not found"):
        validate_meta(_meta(folder))


def test_grounding_checker_accepts_several_boxes_and_plain_text():
    assert check_grounding("No lesion is seen.") == []
    assert check_grounding("<ref>two nodules</ref><box>[[1, 2, 30, 40], [500, 500, 600, 620]]</box> and text") == []
    assert check_grounding("</box>") == ["</box> without its opening tag"]


def test_generated_phantom_corpus_passes_every_validator(tmp_path, capsys):
    out = write_corpus(tmp_path, n=10, seed=2).out
    meta = validate_meta(out / "meta.json")
    assert set(meta) == {"phantom_grounding", "phantom_vqa", "phantom_report", "phantom_reasoning"}
    assert validate_jsonl(out / "preference.jsonl", "preference") == 10
    assert validate_jsonl(out / "annotations.jsonl", "annotation") == 10
    rc = main([str(out / "meta.json"), str(out / "preference.jsonl"), str(out / "reasoning.jsonl")])
    assert rc == 0, capsys.readouterr().out
    bad = out / "reasoning.jsonl"
    lines = bad.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if "<box>[[" in line)
    lines[k] = lines[k].replace("<box>[[", "<box>[[-5, ", 1)
    bad.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main([str(bad)]) == 1
    assert f"reasoning.jsonl:{k + 1}: gpt turn 1: box [-5," in capsys.readouterr().out
