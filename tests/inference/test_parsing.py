"""The grounded-answer parser: round trips, hostile text, streaming, echoes.

Property-based (hypothesis): whatever the model writes, the parser returns boxes
that are on the 0–1000 scale and in order, or says why it dropped them; what the
formatter writes comes back unchanged, whether it arrives at once or in pieces.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.parsing import (
    BOX_SCALE,
    PHRASE_BREAK_WORDS,
    StreamParser,
    format_grounding,
    normalize_box,
    parse_answer,
    strip_step_headings,
)
from inference.types import STEP_NAMES, Box

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# generated words are never linking words: a bare box's phrase is guessed back to one of them
word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=7).filter(
    lambda w: w not in PHRASE_BREAK_WORDS and w not in {"step", "stage"}
)
phrase_st = st.lists(word, min_size=1, max_size=4).map(" ".join)


@st.composite
def boxes_st(draw, max_boxes: int = 3) -> list[Box]:
    out = []
    for _ in range(draw(st.integers(1, max_boxes))):
        x0 = draw(st.integers(0, BOX_SCALE - 1))
        y0 = draw(st.integers(0, BOX_SCALE - 1))
        x1 = draw(st.integers(x0 + 1, BOX_SCALE))
        y1 = draw(st.integers(y0 + 1, BOX_SCALE))
        out.append(Box(x0, y0, x1, y1))
    return out


segment_st = st.one_of(
    st.lists(word, min_size=1, max_size=6).map(lambda ws: ("text", " ".join(ws) + ".")),
    st.tuples(phrase_st, boxes_st()).map(lambda pb: ("ground", pb)),
)

HEADINGS = (
    "Step {i}: {name}\n",
    "Step {i} - {name}:\n",
    "**Step {i}: {name}**\n",
    "{i}. {name}:\n",
    "## {name}\n",
    "{name}:\n",
    "### Step {i}. {name}\n",
    "Step {i} ({name}):\n",
    "**{name}**：\n",
)


@st.composite
def answer_st(draw):
    """A grounded five-step answer as (raw text, expected steps)."""
    chosen = sorted(draw(st.sets(st.integers(1, 5), min_size=1)))
    style = draw(st.sampled_from(HEADINGS))
    raw_parts = []
    expected = []
    for i in chosen:
        segs = draw(st.lists(segment_st, max_size=4))
        raw, clean, phrases = [], [], []
        for kind, val in segs:
            if kind == "text":
                raw.append(val)
                clean.append(val)
            else:
                phrase, boxes = val
                raw.append(format_grounding(phrase, boxes))
                clean.append(phrase)
                phrases.append((phrase, tuple(boxes)))
        raw_parts.append(style.format(i=i, name=STEP_NAMES[i - 1]) + " ".join(raw) + "\n")
        expected.append((i, " ".join(clean), phrases))
    return "".join(raw_parts), expected


def check_invariants(parsed) -> None:
    for g in parsed.groundings:
        assert g.phrase.boxes, "a grounding without boxes was reported"
        for b in g.phrase.boxes:
            assert all(math.isfinite(v) for v in (b.x0, b.y0, b.x1, b.y1))
            assert 0 <= b.x0 < b.x1 <= BOX_SCALE and 0 <= b.y0 < b.y1 <= BOX_SCALE
        host = parsed.preamble if g.step is None else next(s.text for s in parsed.steps if s.index == g.step)
        assert 0 <= g.start <= g.end <= len(host)
    idx = [s.index for s in parsed.steps]
    assert idx == sorted(set(idx)) and all(1 <= i <= 5 for i in idx)


@FAST
@given(answer_st())
def test_round_trip_of_generated_grounded_answers(case):
    raw, expected = case
    parsed = parse_answer(raw)
    assert [s.index for s in parsed.steps] == [e[0] for e in expected]
    for step, (i, text, phrases) in zip(parsed.steps, expected):
        assert step.title == STEP_NAMES[i - 1]
        assert step.text == text
        assert [(p.phrase, p.boxes) for p in step.phrases] == phrases
    for g in parsed.groundings:
        text = next(s.text for s in parsed.steps if s.index == g.step)
        assert text[g.start : g.end] == g.phrase.phrase
    assert parsed.missing_steps == [i for i in range(1, 6) if i not in [e[0] for e in expected]]
    assert not [p for p in parsed.problems if "box" in p]
    check_invariants(parsed)


FRAGMENTS = [
    "<ref>", "</ref>", "<box>", "</box>", "[[", "]]", "[", "]", ",", ", ", "1", "999", "-5", "2000",
    "nan", "inf", "1e999", "0.5", " ", "\n", "Step 2:", "Region localization", "## Holistic analysis\n",
    "<|im_end|>", "<|im_start|>assistant\n", "lesion", ":", "<", "<re", "</bo", "**",
]
hostile_st = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)), max_size=60).map("".join)


@FAST
@given(hostile_st)
def test_never_raises_and_boxes_are_always_valid(raw):
    parsed = parse_answer(raw)
    check_invariants(parsed)
    snapshot = parse_answer(raw, final=False)
    check_invariants(snapshot)


number_st = st.one_of(
    st.integers(-3000, 3000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "0.25", "abc"]),
)


@FAST
@given(st.lists(number_st, min_size=1, max_size=6))
def test_every_box_is_kept_ordered_clamped_or_dropped_with_a_reason(numbers):
    raw = f"A <ref>nodule</ref><box>[[{', '.join(numbers)}]]</box> was seen."
    parsed = parse_answer(raw)
    check_invariants(parsed)
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        values = None
    if parsed.groundings:
        (box,) = parsed.groundings[0].phrase.boxes
        assert values is not None and len(values) == 4
        fractions = all(0 <= v <= 1 for v in values) and any(v != int(v) for v in values)
        scaled = [v * BOX_SCALE if fractions else v for v in values]
        clamped = [min(max(v, 0), BOX_SCALE) for v in scaled]
        assert box == Box(min(clamped[0], clamped[2]), min(clamped[1], clamped[3]),
                          max(clamped[0], clamped[2]), max(clamped[1], clamped[3]))
        if clamped != values:
            assert any(p.startswith("adjusted box") for p in parsed.problems)
    else:
        assert any(p.startswith("dropped box") for p in parsed.problems), parsed.problems
    assert parsed.text == "A nodule was seen."


@FAST
@given(answer_st(), st.lists(st.integers(1, 12), min_size=1, max_size=80))
def test_streaming_in_any_pieces_gives_the_same_answer_and_never_withdraws_a_box(case, sizes):
    raw, _ = case
    parser = StreamParser()
    final = parse_answer(raw)
    final_phrases = [(g.phrase.phrase, g.phrase.boxes) for g in final.groundings]
    pos, k, shown = 0, 0, []
    while pos < len(raw):
        n = sizes[k % len(sizes)]
        k += 1
        snap = parser.feed(raw[pos : pos + n])
        pos += n
        now = [(g.phrase.phrase, g.phrase.boxes) for g in snap.groundings]
        assert now == final_phrases[: len(now)], "a snapshot showed a box the final answer does not have"
        assert now[: len(shown)] == shown, "a box shown earlier was withdrawn"
        shown.extend((g.phrase.phrase, g.phrase.boxes) for g in parser.new_groundings)
        assert shown == now
        check_invariants(snap)
    done = parser.finish()
    assert [(g.phrase.phrase, g.phrase.boxes) for g in done.groundings] == final_phrases
    assert [(s.index, s.text) for s in done.steps] == [(s.index, s.text) for s in final.steps]


@FAST
@given(st.lists(word, min_size=1, max_size=5).map(" ".join), phrase_st, boxes_st())
def test_bare_boxes_when_special_tokens_were_skipped(lead, phrase, boxes):
    inner = ", ".join(f"[{int(b.x0)}, {int(b.y0)}, {int(b.x1)}, {int(b.y1)}]" for b in boxes)
    raw = f"{lead} and {phrase}[{inner}] nearby."
    parsed = parse_answer(raw)
    assert [(g.phrase.phrase, g.phrase.boxes) for g in parsed.groundings] == [(phrase, tuple(boxes))]
    assert parsed.text == f"{lead} and {phrase} nearby."


@FAST
@given(answer_st(), st.data())
def test_truncated_answers_keep_only_whole_boxes(case, data):
    raw, _ = case
    cut = data.draw(st.integers(0, len(raw)))
    full = parse_answer(raw)
    part = parse_answer(raw[:cut])
    check_invariants(part)
    full_boxes = {b for g in full.groundings for b in g.phrase.boxes}
    assert {b for g in part.groundings for b in g.phrase.boxes} <= full_boxes


PROMPT = (
    "Analyse the image in five steps.\nStep 1: Structure identification\nStep 2: Region localization\n"
    "Step 3: Detailed description\nStep 4: Holistic analysis\nStep 5: Report synthesis\n"
    "Mark regions as <ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>."
)
ANSWER = (
    "Step 1: Structure identification\nAxial CT of the upper abdomen: liver, spleen, kidneys.\n"
    "Step 2: Region localization\nA <ref>hypodense lesion</ref><box>[[412, 300, 530, 420]]</box> in segment VII.\n"
    "Step 3: Detailed description\nWell defined, 2 cm, fluid density.\n"
    "Step 4: Holistic analysis\nMost consistent with a simple cyst.\n"
    "Step 5: Report synthesis\nSimple hepatic cyst; no follow-up needed.\n"
)


def test_prompt_echo_is_removed():
    plain = parse_answer(ANSWER)
    echoed = parse_answer(PROMPT + "\n" + ANSWER, prompt=PROMPT)
    assert [(s.index, s.text) for s in echoed.steps] == [(s.index, s.text) for s in plain.steps]
    assert echoed.phrases == plain.phrases
    assert not echoed.problems


def test_echoed_outline_without_prompt_loses_to_the_real_steps():
    # the model repeats the outline of the instructions before answering
    outline = "".join(f"Step {i}: {n}\n" for i, n in enumerate(STEP_NAMES, 1))
    parsed = parse_answer(outline + ANSWER)
    assert parsed.steps[1].text.startswith("A hypodense lesion in segment VII")
    assert parsed.steps[0].text.startswith("Axial CT")


def test_full_chat_transcript_is_cut_to_the_assistant_turn():
    raw = (
        "<|im_start|>user\n<image>\nLocate the lesion.<|im_end|>\n<|im_start|>assistant\n"
        "<ref>lesion</ref><box>[[10, 20, 30, 40]]</box><|im_end|><|im_start|>user\nthanks"
    )
    parsed = parse_answer(raw)
    assert parsed.text == "lesion"
    assert parsed.phrases[0].boxes == (Box(10, 20, 30, 40),)
    assert parsed.steps == []


def test_missing_steps_are_named():
    raw = "Step 1: Structure identification\nBrain MR.\nStep 5: Report synthesis\nNormal.\n"
    parsed = parse_answer(raw)
    assert parsed.missing_steps == [2, 3, 4]
    assert any("region localization" in p for p in parsed.problems)


def test_answer_cut_inside_a_box_is_marked_truncated():
    raw = "Step 2: Region localization\n<ref>mass</ref><box>[[100, 200, 3"
    parsed = parse_answer(raw)
    assert parsed.truncated and parsed.groundings == []
    assert parsed.steps[0].text == "mass"
    assert any("stopped inside" in p for p in parsed.problems)


def test_several_boxes_per_reference_and_repeated_box_tags():
    raw = "<ref>nodules</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box><box>[[9, 10, 11, 12]]</box>"
    (g,) = parse_answer(raw).groundings
    assert g.phrase.boxes == (Box(1, 2, 3, 4), Box(5, 6, 7, 8), Box(9, 10, 11, 12))


@pytest.mark.parametrize(
    "values, expected",
    [
        ((0.1, 0.2, 0.3, 0.4), Box(100, 200, 300, 400)),
        ((300, 400, 100, 200), Box(100, 200, 300, 400)),
        ((-20, 5, 1500, 50), Box(0, 5, 1000, 50)),
        ((5, 5, 5, 50), None),
        ((float("nan"), 1, 2, 3), None),
        ((1, 2, 3), None),
    ],
)
def test_normalize_box(values, expected):
    box, note = normalize_box(values)
    assert box == expected
    if expected is None or tuple(values) != (expected.x0, expected.y0, expected.x1, expected.y1):
        assert note


def test_stream_snapshot_waits_for_unfinished_tags():
    parser = StreamParser()
    parser.feed("A <ref>cyst</ref><bo")
    assert parser.feed("x>[[10, 20, 3").groundings == []
    snap = parser.feed("0, 40]]</box> seen")
    assert [g.phrase.phrase for g in parser.new_groundings] == ["cyst"]
    assert snap.text == "A cyst seen"


# ----------------------------------------------------------------------------- prompts ↔ parser


def test_answer_in_the_reasoning_prompts_own_format_parses_into_five_steps():
    from inference.prompts import ImageContext, Task, build_prompt, step_outline

    prompt = build_prompt(Task.REASONING, "Is there a liver lesion?", ImageContext("CT", "ABDOMEN", "portal venous"))
    assert step_outline() in prompt.user and "Is there a liver lesion?" in prompt.user
    assert "Image: CT ABDOMEN" in prompt.user
    # a model that follows the outline line by line, after echoing the whole prompt
    answer = "".join(f"{line}\nfinding {i}.\n" for i, line in enumerate(step_outline().splitlines(), 1))
    parsed = parse_answer(prompt.user + "\n" + answer, prompt=prompt.user)
    assert [(s.index, s.text) for s in parsed.steps] == [(i, f"finding {i}.") for i in range(1, 6)]
    assert parsed.problems == []


def test_every_prompt_carries_the_absent_structure_guardrail():
    from inference.prompts import Task, build_prompt

    for task in Task:
        p = build_prompt(task, "locate the right kidney" if task is Task.LOCATE else "anything?")
        assert "absent" in p.system and "give no box" in p.system
        assert "$" not in p.system + p.user  # every placeholder was filled
    locate = build_prompt(Task.LOCATE, "Locate the right kidney.")
    assert locate.target == "the right kidney"
    assert "<ref>the right kidney</ref>" in locate.user and "absent" in locate.user


@pytest.mark.parametrize(
    "question, task, target",
    [
        ("Locate the right kidney.", "locate", "the right kidney"),
        ("where is the lesion?", "locate", "the lesion"),
        ("Please find the left adrenal gland in this image", "locate", "the left adrenal gland"),
        ("Write a report", "report", ""),
        ("Is there free fluid?", "reasoning", ""),
        ("", "reasoning", ""),
    ],
)
def test_task_is_read_from_the_question(question, task, target):
    from inference.prompts import infer_task, locate_target

    assert infer_task(question).value == task
    assert locate_target(question) == target


def test_missing_prompt_file_is_a_readable_error(tmp_path):
    from inference.errors import XMedError
    from inference.prompts import Task, build_prompt

    with pytest.raises(XMedError, match="prompt file guardrail.txt is missing"):
        build_prompt(Task.VQA, "x", directory=tmp_path)


@pytest.mark.parametrize("text, expected", [
    ("Step 5: Report synthesis\nFINDINGS: A mass.", "\nFINDINGS: A mass."),
    ("No lesion. Step 2: Region localization No focal lesion.", "No lesion. No focal lesion."),
    ("A mass. 3. Detailed description: a 12 mm nodule.", "A mass. a 12 mm nodule."),
    ("Step 4 Holistic analysis: Two lesions.", "Two lesions."),
    ("Seen. Step 5: No change.", "Seen. No change."),
    # not headings: a step mentioned in a sentence, numbers in measurements
    ("A 12 mm nodule at step 2 of the protocol.", "A 12 mm nodule at step 2 of the protocol."),
    ("Seen at step 2. The mass grows.", "Seen at step 2. The mass grows."),
    ("3 lesions, 2) small.", "3 lesions, 2) small."),
])
def test_step_headings_are_cut_out_of_running_text(text, expected):
    assert strip_step_headings(text) == expected
