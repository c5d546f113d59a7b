"""Parse XMedGPT's grounded answers: ``<ref>``/``<box>`` groundings and the five steps.

Grounding format (InternVL): ``<ref>phrase</ref><box>[[x1, y1, x2, y2], ...]</box>``,
integers on a 0–1000 scale of the width and height of the image the model was
given. When a decoder skipped the special tokens, the same answer reads
``phrase[[x1, y1, x2, y2]]``; bare lists are parsed too and take their phrase
from the words just before them.

Nothing here raises on model output. Boxes are clamped to the scale and put in
order, or dropped; every adjustment or drop is written to
:attr:`ParsedAnswer.problems` with its reason. Steps are found by their headings
(``Step 2: Region localization``, ``## Holistic analysis``, ``3. Detailed
description:``…); steps the model left out are listed in ``missing_steps``.

:class:`StreamParser` parses while tokens arrive: each snapshot covers only the
text whose tags are complete, so a box once shown is never withdrawn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from inference.types import STEP_NAMES, Box, GroundedPhrase, ReasoningStep

#: Coordinates in grounded output are integers on 0..BOX_SCALE of the image's width/height.
BOX_SCALE = 1000

#: Longest phrase taken from the words before a bare ``[[…]]`` list.
_BARE_PHRASE_WORDS = 8
#: A ``[`` further back than this is not the start of a box still being streamed.
_MAX_BOX_CHARS = 400

_GROUNDING_TAGS = ("<ref>", "</ref>", "<box>", "</box>")
#: Tokens that end an answer (chat template, EOS) and image tokens that carry no text.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>")
_NOISE = re.compile(r"<\|[A-Za-z0-9_]{1,30}\|>|</?s>|</?img>|<IMG_CONTEXT>|<image>|</?quad>", re.I)
_ASSISTANT_TURN = re.compile(r"<\|im_start\|>\s*assistant\s*\n?", re.I)

_TOKEN = re.compile(
    r"(?P<ref><ref>(?P<phrase>(?:(?!<ref>|<box>).){0,300}?)</ref>)"
    r"|(?P<box><box>(?P<boxbody>(?:(?!<ref>|<box>).){0,600}?)</box>)"
    r"|(?P<bare>\[\s*\[[^\[\]<>]*\](?:\s*,\s*\[[^\[\]<>]*\])*\s*\])",
    re.S,
)
_INNER_LIST = re.compile(r"\[([^\[\]]*)\]")
_PHRASE_STOP = re.compile(r"[\n.;:!?()\]]")

_STEP_NAME_RE = {
    "Structure identification": r"structure\s+identification",
    "Region localization": r"region\s+locali[sz]ation",
    "Detailed description": r"detailed\s+description",
    "Holistic analysis": r"holistic\s+analysis",
    "Report synthesis": r"report\s+synthesis",
}
#: the five step names as patterns, in step order: the one spelling of each that every heading pattern uses
#: (here, and the leaked-heading check of inference.reliability.consistency)
STEP_NAME_PATTERNS = tuple(_STEP_NAME_RE[name] for name in STEP_NAMES)
#: the same as one alternation with a group per step, ``n1`` … ``n5``: which group matched is the step's number
STEP_NAME_GROUPS = "|".join(f"(?P<n{i}>{p})" for i, p in enumerate(STEP_NAME_PATTERNS, 1))
_HEADING = re.compile(
    r"^[ \t>]*(?:#{1,6}[ \t]*)?(?:[*_]{1,2}[ \t]*)?"
    r"(?:(?:step|stage)[ \t]*(?P<num>[1-5])(?![0-9])[ \t]*[:.)\-–—]?[ \t]*"
    r"|(?P<lnum>[1-5])[ \t]*[.)][ \t]+)?"
    r"(?:[*_]{1,2}[ \t]*)?\(?(?:" + STEP_NAME_GROUPS + r")?\)?[ \t]*(?:[*_]{1,2}[ \t]*)?"
    r"(?P<end>[:：]|[-–—](?=[ \t])|(?=\n))(?:[ \t]*[*_]{1,2})?",
    re.I | re.M,
)


#: A step heading inside running text ("… localized. Step 5: Report synthesis …"): "step N" with its
#: punctuation, and the step's name when one follows.
_NAMES_PLAIN = "|".join(STEP_NAME_PATTERNS)
_INLINE_HEADING = re.compile(
    # a step's name after its number, or followed by a colon ("Step 5: Report synthesis", "3. Detailed description:")
    r"(?:\b(?:step|stage)[ \t]*[1-5](?![0-9])[ \t]*[:.)\-–—]?[ \t]*|\b[1-5][.)][ \t]*)(?:" + _NAMES_PLAIN
    + r")[ \t]*[:：]?[ \t]*"
    r"|\b(?:" + _NAMES_PLAIN + r")[ \t]*[:：][ \t]*"
    # or a bare "Step 5:" before a sentence
    r"|\b(?:step|stage)[ \t]*[1-5](?![0-9])[ \t]*[:)\-–—][ \t]*(?=(?-i:[A-Z])|\n|$)",
    re.IGNORECASE,
)


def strip_step_headings(text: str) -> str:
    """``text`` without the step headings in it ("Step 5:", "Step 5: Report synthesis", "3. Detailed
    description:"), at a line's start or inside a sentence: what a step's own text is once the headings a
    model repeated in it are gone (the reliability pass still sees and reports them, on the raw steps)."""
    out = _INLINE_HEADING.sub("", _HEADING.sub("", text))
    return re.sub(r"[ \t]{2,}", " ", re.sub(r"(?m)^[ \t]+", "", out))


@dataclass(frozen=True)
class Grounding:
    """A grounded phrase and where it sits: its step (None before the first heading)
    and its character span in that step's text (or in the preamble)."""

    phrase: GroundedPhrase
    step: int | None
    start: int
    end: int


@dataclass
class ParsedAnswer:
    """The model's answer with tags removed, split into steps, boxes on the 0–1000 scale."""

    text: str  # the whole answer, tags removed
    preamble: str  # text before the first step heading (the whole answer when there are none)
    steps: list[ReasoningStep] = field(default_factory=list)
    groundings: list[Grounding] = field(default_factory=list)
    missing_steps: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def phrases(self) -> list[GroundedPhrase]:
        return [g.phrase for g in self.groundings]


# ----------------------------------------------------------------------------- formatting


def format_box(box: Box) -> str:
    return f"[{int(round(box.x0))}, {int(round(box.y0))}, {int(round(box.x1))}, {int(round(box.y1))}]"


def format_grounding(phrase: str, boxes: Sequence[Box]) -> str:
    """``<ref>phrase</ref><box>[[…], […]]</box>`` (boxes on the 0–1000 scale)."""
    inner = ", ".join(format_box(b) for b in boxes)
    return f"<ref>{phrase}</ref><box>[{inner}]</box>"


# ----------------------------------------------------------------------------- boxes


def normalize_box(values: Sequence[float]) -> tuple[Box | None, str | None]:
    """Validate four numbers as a 0–1000 box: returns (box, note) or (None, reason).

    Fractions (all values within 0..1, some not whole) are read as 0..1 and scaled;
    values outside the scale are clamped; swapped corners are put in order; boxes
    with no width or height after that are dropped.
    """
    if len(values) != 4:
        return None, f"has {len(values)} numbers instead of 4"
    if not all(math.isfinite(v) for v in values):
        return None, "has a coordinate that is not a number"
    notes: list[str] = []
    vals = [float(v) for v in values]
    if all(0.0 <= v <= 1.0 for v in vals) and any(v != int(v) for v in vals):
        vals = [v * BOX_SCALE for v in vals]
        notes.append("read as fractions of the image")
    clamped = [min(max(v, 0.0), float(BOX_SCALE)) for v in vals]
    if clamped != vals:
        notes.append(f"clamped to 0–{BOX_SCALE}")
    x0, y0, x1, y1 = clamped
    if x0 > x1 or y0 > y1:
        notes.append("corners swapped")
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None, "has no width or height" + (f" ({', '.join(notes)})" if notes else "")
    return Box(x0, y0, x1, y1), ", ".join(notes) or None


def _parse_box_list(body: str, phrase: str, problems: list[str]) -> list[Box]:
    boxes: list[Box] = []
    lists = _INNER_LIST.findall(body)
    if not lists:
        problems.append(f"dropped box for '{phrase}': no coordinates in {body.strip()[:40]!r}")
        return boxes
    for inner in lists:
        parts = [p.strip() for p in re.split(r"[,\s]+", inner.strip()) if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            problems.append(f"dropped box [{inner.strip()[:40]}] for '{phrase}': not numbers")
            continue
        box, note = normalize_box(values)
        if box is None:
            problems.append(f"dropped box [{inner.strip()[:40]}] for '{phrase}': {note}")
            continue
        if note:
            problems.append(f"adjusted box [{inner.strip()[:40]}] for '{phrase}': {note}")
        boxes.append(box)
    return boxes


# ----------------------------------------------------------------------------- cleaning


def _clean_phrase(raw: str) -> str:
    text = _NOISE.sub("", raw)
    for tag in _GROUNDING_TAGS:
        text = text.replace(tag, "")
    return " ".join(text.split())


def prepare_text(raw: str, prompt: str | None = None) -> str:
    """Cut what is not the answer: earlier chat turns, the end token and what follows
    it, image tokens, and an echo of the prompt at the start."""
    turns = list(_ASSISTANT_TURN.finditer(raw))
    text = raw[turns[-1].end():] if turns else raw
    ends = [i for i in (text.find(t) for t in _END_TOKENS) if i >= 0]
    if ends:
        text = text[: min(ends)]
    text = _NOISE.sub("", text)
    if prompt:
        text = text[_echo_length(text, _NOISE.sub("", prompt)):]
    return text


def _echo_length(text: str, prompt: str) -> int:
    """Length of the prefix of ``text`` that repeats ``prompt`` (whitespace and case
    ignored), or 0 when the answer does not start with the whole prompt."""
    i = j = 0
    n, m = len(text), len(prompt)
    while True:
        while i < n and text[i].isspace():
            i += 1
        while j < m and prompt[j].isspace():
            j += 1
        if j == m:
            return i if m else 0
        if i == n or text[i].casefold() != prompt[j].casefold():
            return 0
        i += 1
        j += 1


def _echo_pending(text: str, prompt: str) -> bool:
    """True while everything so far could still be the start of an echoed prompt."""
    a = "".join(text.split()).casefold()
    b = "".join(_NOISE.sub("", prompt).split()).casefold()
    return bool(a) and len(a) < len(b) and b.startswith(a)


# ----------------------------------------------------------------------------- the parser


def parse_answer(raw: str, prompt: str | None = None, *, final: bool = True) -> ParsedAnswer:
    """Parse a complete (``final``) or partial answer. Never raises."""
    text = prepare_text(raw, prompt)
    problems: list[str] = []
    clean_parts: list[str] = []
    length = 0
    # (phrase, boxes, start, end) in the cleaned text
    found: list[tuple[str, list[Box], int, int]] = []
    # the last <ref> and, once it has boxes, its index in ``found``
    pending_ref: tuple[str, int, int] | None = None
    pending_index: int | None = None
    pos = 0

    def emit(s: str) -> None:
        nonlocal length
        clean_parts.append(s)
        length += len(s)

    for m in _TOKEN.finditer(text):
        between = text[pos : m.start()]
        if between.strip():
            pending_ref, pending_index = None, None
        emit(_strip_loose_tags(between, problems))
        pos = m.end()
        if m.group("ref") is not None:
            phrase = _clean_phrase(m.group("phrase"))
            start = length
            emit(phrase)
            pending_ref, pending_index = (phrase, start, length), None
            continue
        body = m.group("boxbody") if m.group("box") is not None else m.group("bare")
        if pending_ref is not None:
            phrase, start, end = pending_ref
        else:
            floor = found[-1][3] if found else 0
            phrase, start, end = _phrase_before("".join(clean_parts), length, floor)
        boxes = _parse_box_list(body, phrase or "unnamed region", problems)
        if not boxes:
            continue
        if pending_ref is not None and pending_index is not None:
            found[pending_index][1].extend(boxes)  # <ref>x</ref><box>…</box><box>…</box>
        else:
            found.append((phrase, boxes, start, end))
            if pending_ref is not None:
                pending_index = len(found) - 1
    tail = text[pos:]
    truncated = _is_cut_off(tail)
    if truncated and final:
        problems.append("the answer stopped inside a grounding tag; the unfinished box was dropped")
    emit(_strip_loose_tags(tail, problems, cut_off_box=True))
    clean = "".join(clean_parts)
    return _split_steps(clean, found, problems, truncated, final)


def _strip_loose_tags(s: str, problems: list[str], cut_off_box: bool = False) -> str:
    """Remove grounding tags that are not part of a complete construct (and, at the
    end of the answer, an unfinished box)."""
    if cut_off_box:
        i = s.rfind("<box>")
        if i >= 0 and "</box>" not in s[i:]:
            s = s[:i]
        j = _open_bracket(s)
        if j is not None:
            s = s[:j]
    for tag in _GROUNDING_TAGS:
        s = s.replace(tag, "")
    return s


def _open_bracket(s: str) -> int | None:
    """Position of a ``[`` still open at the end of ``s`` (a box being written), if any.
    Only the last few hundred characters count: a box is never longer."""
    base = max(0, len(s) - _MAX_BOX_CHARS)
    depth = 0
    start = None
    for i in range(base, len(s)):
        ch = s[i]
        if ch == "[":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
    return start if depth > 0 else None


def _is_cut_off(tail: str) -> bool:
    last_ref, last_box = tail.rfind("<ref>"), tail.rfind("<box>")
    if last_ref >= 0 and "</ref>" not in tail[last_ref:]:
        return True
    if last_box >= 0 and "</box>" not in tail[last_box:]:
        return True
    j = _open_bracket(tail)
    return j is not None and tail[j:].lstrip("[ \t").startswith(tuple("0123456789-+.n["))


#: Linking words that end the phrase guessed for a bare ``[[…]]`` box (walking back from the box).
PHRASE_BREAK_WORDS = frozenset(
    "and or but with without in at on of to from by near within into onto over under "
    "is are was were be been shows show showing seen see there here which that "
    "demonstrates demonstrating reveals revealing involving".split()
)


def _phrase_before(clean: str, end: int, floor: int = 0) -> tuple[str, int, int]:
    """The noun phrase just before a bare box: the words back to punctuation, a line
    break, an earlier grounding or a linking word (``and``, ``in``, ``shows``…)."""
    window = clean[:end]
    stops = list(_PHRASE_STOP.finditer(window, floor))
    begin = stops[-1].end() if stops else floor
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", window[begin:])]
    kept: list[tuple[int, int]] = []
    for a, b in reversed(spans):
        word = window[begin + a : begin + b]
        if word.casefold() in PHRASE_BREAK_WORDS or len(kept) == _BARE_PHRASE_WORDS:
            break
        if word.endswith(",") and kept:
            break  # "…, spleen[[…]]": the comma ends the phrase
        kept.append((a, b))
    if not kept:
        return "", end, end
    start, stop = begin + kept[-1][0], begin + kept[0][1]
    return " ".join(window[start:stop].split()), start, stop


def _split_steps(
    clean: str,
    found: list[tuple[str, list[Box], int, int]],
    problems: list[str],
    truncated: bool,
    final: bool,
) -> ParsedAnswer:
    headings = _choose_headings(clean + ("\n" if final else ""))
    # segments: (step index or None, content start, content end)
    segments: list[tuple[int | None, int, int]] = []
    first = headings[0][1] if headings else len(clean)
    segments.append((None, 0, first))
    for k, (step, _hstart, hend) in enumerate(headings):
        nxt = headings[k + 1][1] if k + 1 < len(headings) else len(clean)
        segments.append((step, min(hend, len(clean)), nxt))

    steps: list[ReasoningStep] = []
    groundings: list[Grounding] = []
    preamble = ""
    seg_info: list[tuple[int | None, int, str]] = []  # step, offset of stripped text, text
    for step, a, b in segments:
        raw = clean[a:b]
        lead = len(raw) - len(raw.lstrip())
        text = raw.strip()
        seg_info.append((step, a + lead, text))
        if step is None:
            preamble = text
        else:
            steps.append(ReasoningStep(index=step, title=STEP_NAMES[step - 1], text=text))
    by_index = {s.index: s for s in steps}
    for phrase, boxes, start, end in found:
        gp = GroundedPhrase(phrase=phrase, boxes=tuple(boxes))
        owner = seg_info[0]
        for info, (_s, a, b) in zip(seg_info, segments):
            if a <= start < b or (start == end == b and info is seg_info[-1]):
                owner = info
        step, offset, text = owner
        s0 = min(max(start - offset, 0), len(text))
        s1 = min(max(end - offset, s0), len(text))
        groundings.append(Grounding(gp, step, s0, s1))
        if step is not None:
            by_index[step].phrases.append(gp)
    missing = [i for i in range(1, len(STEP_NAMES) + 1) if i not in by_index] if steps else []
    if final and steps and missing:
        names = ", ".join(STEP_NAMES[i - 1].lower() for i in missing)
        problems.append(f"the answer has no {names} step")
    return ParsedAnswer(
        text=clean.strip(),
        preamble=preamble,
        steps=steps,
        groundings=groundings,
        missing_steps=missing,
        problems=problems,
        truncated=truncated,
    )


def _choose_headings(text: str) -> list[tuple[int, int, int]]:
    """Step headings as (step, start, end): the longest run with rising step numbers,
    the latest such run when there are several (an echoed outline comes first)."""
    cands: list[tuple[int, int, int]] = []
    for m in _HEADING.finditer(text):
        step = next((i for i in range(1, len(STEP_NAMES) + 1) if m.group(f"n{i}")), None)
        if step is None and m.group("num"):
            step = int(m.group("num"))
        if step is None or m.end() == m.start():
            continue
        cands.append((step, m.start(), m.end()))
    n = len(cands)
    if n == 0:
        return []
    best = [1] * n
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, n):
            if cands[j][0] > cands[i][0]:
                best[i] = max(best[i], best[j] + 1)
    top = max(best)
    i = max(k for k in range(n) if best[k] == top)
    chosen = [cands[i]]
    while best[i] > 1:
        i = next(j for j in range(i + 1, n) if cands[j][0] > cands[i][0] and best[j] == best[i] - 1)
        chosen.append(cands[i])
    return chosen


# ----------------------------------------------------------------------------- streaming


class StreamParser:
    """Parse an answer while it streams.

    ``feed(piece)`` returns a snapshot of everything whose tags are complete;
    ``new_groundings`` lists the groundings that appeared in that snapshot; ``finish()``
    parses the whole text. Groundings only ever get added, never withdrawn.
    """

    def __init__(self, prompt: str | None = None) -> None:
        self.prompt = prompt
        self._parts: list[str] = []
        self._settled = -1
        self._snapshot = ParsedAnswer(text="", preamble="")
        self._seen = 0
        self.new_groundings: list[Grounding] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def feed(self, piece: str) -> ParsedAnswer:
        self._parts.append(piece)
        raw = self.text
        cut = settled_length(raw, self.prompt)
        self.new_groundings = []
        if cut != self._settled:
            self._settled = cut
            self._snapshot = parse_answer(raw[:cut], self.prompt, final=False)
            self.new_groundings = self._snapshot.groundings[self._seen :]
            self._seen = max(self._seen, len(self._snapshot.groundings))
        return self._snapshot

    def finish(self) -> ParsedAnswer:
        final = parse_answer(self.text, self.prompt, final=True)
        self.new_groundings = final.groundings[self._seen :]
        self._seen = len(final.groundings)
        self._snapshot = final
        return final


def settled_length(raw: str, prompt: str | None = None) -> int:
    """How much of a streaming answer can be parsed now without guessing at tags,
    boxes or an echoed prompt that are not finished yet."""
    if prompt and _echo_pending(_NOISE.sub("", raw), prompt):
        return 0
    cut = len(raw)
    i = raw.rfind("<")
    if i >= 0 and ">" not in raw[i:] and len(raw) - i <= 16:
        cut = i  # a tag being written
    for open_tag, close_tag in (("<ref>", "</ref>"), ("<box>", "</box>")):
        k = raw.rfind(open_tag, 0, cut)
        if k >= 0 and raw.find(close_tag, k) < 0:
            cut = min(cut, k)
    j = _open_bracket(raw[:cut])
    if j is not None:
        cut = j
    # a ref whose box may still follow
    k = raw.rfind("</ref>", 0, cut)
    if k >= 0 and not raw[k + len("</ref>") : cut].strip():
        cut = min(cut, raw.rfind("<ref>", 0, k) if raw.rfind("<ref>", 0, k) >= 0 else k)
    return cut
