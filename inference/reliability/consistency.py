"""Does the reasoning agree with itself? A rule-based check of the five steps (issue #13).

The model reasons in five steps (structure identification → region localization →
detailed description → holistic analysis → report synthesis). A step that says
"42 mm mass in the right middle lobe" followed by a synthesis that says "No pulmonary
nodule or mass" is wrong whatever the reliability index says; so is a "No mass" that
goes on to describe one. :func:`check_steps` finds such answers with a small, explicit
rule set (regular expressions and word lists, no model), and says what it found in
words a radiologist reads at a glance.

Claims taken from each step (sentence by sentence; a clause is cut at ``;``):

* **lesions**: each lesion noun (nodule, mass, lesion, opacity, consolidation,
  tumour, cyst, metastasis, …) outside a negation is one mention, with what its
  clause says about it: size (``7 mm``, ``2.5 cm``, ``12 x 8 mm`` → the largest
  dimension, in mm), side (right/left/bilateral, only when attached to an organ or
  lobe, ``on the right`` or ``right-sided``), location (lung lobe or zone, hepatic lobe
  or segment, kidney, …) and density (hypo-/hyper-/isodense, fat, cavitary, calcified,
  solid/ground-glass). "The largest is 21 mm in the left lower lobe" is a mention too.
  A clause without a lesion noun ("…; hypodense, medium (14 mm)") adds to the mention
  before it in the same sentence.
* **counts**: a number or number word right before a lesion noun ("Two pulmonary
  lesions", "a single lesion", "3 nodules", "multiple nodules" = at least two), with
  its scope (organ, side). In step 2 the boxes drawn for lesion phrases count too.
* **negations**: "no / without / negative for / free of / absence of" followed by a
  lesion noun within a few words ("No pulmonary nodule or mass", "no focal liver
  lesion", "The image shows no abnormality"), or "the nodule is not seen / absent".
  A qualifier makes it partial and it is ignored: "no *other* / *new* / *additional* /
  *suspicious* / *significant* nodule". Its scope is the organ and side it names
  ("no nodule in the left lung" says nothing about the right).

A contradiction is reported between two finding-bearing steps (2, 3, 4) or one of
them and the synthesis (5), and inside one step where one sentence contradicts
itself. Kinds:

* ``negation`` — a step reports no lesion where another reports one (in scope);
* ``count`` — explicit counts disagree, a count is lower than the lesions another step
  describes as clearly different ones, a count differs from the boxes of step 2,
  or a count of lesions meets a step that reports none;
* ``side``, ``size``, ``location``, ``density`` — the lesions of two steps are paired
  one to one where nothing known about them disagrees (a largest matching). A lesion
  left without a partner in one step and one left over in the other that differ in
  exactly one attribute are the same lesion described two ways: on the right in one
  step and on the left in the other (``side``); more than 30 % *and* more than 5 mm
  apart (``size``); of the same size in another lobe or organ (``location``); opposite
  densities (hypodense/hyperdense/isodense, solid/ground-glass, calcified/non-calcified,
  ``density``). When a step describes exactly as many lesions as the answer counts in
  all, any lesion of another step that none of them can be is compared with all of
  them. Opposite densities inside one mention ("hyperdense …; hypodense") count too.

False alarms are avoided on purpose: a lesion one step leaves out is no contradiction
(step 4 naming only the largest of three is normal), different lesions of different
sizes are normal, repeats of one lesion (findings and impression) are folded, and step 1
(normal structures such as "right lung, left lung") is never read for lesion claims.
Anything the rules do not understand is left alone.

A free answer without steps (``Locate mass`` → "No mass. A 3 cm mass in the left
lung.") is checked by :func:`check_answer_text`; its contradictions have ``steps ==
(0, 0)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from inference.parsing import STEP_NAME_GROUPS, STEP_NAME_PATTERNS
from inference.phrases import split_sentences, strip_grounding
from inference.types import STEP_NAMES, Box, ReasoningStep

#: Sizes of "the same" lesion may differ by up to this ratio or this many mm.
SIZE_RATIO = 1.3
SIZE_MIN_MM = 5.0
#: Steps that carry findings; step 1 (structures) is never read for lesion claims.
FINDING_STEPS = (2, 3, 4, 5)

# ----------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class Contradiction:
    kind: str  # "count" | "side" | "location" | "size" | "density" | "negation"
    steps: tuple[int, int]  # the two 1-based steps that disagree ((k, k): inside step k; (0, 0): a free answer)
    message: str  # e.g. "the reasoning contradicts itself: step 4 reports a 42 mm mass, step 5 reports none"


@dataclass(frozen=True)
class StepCheck:
    missing_steps: tuple[int, ...]  # steps absent or empty
    leaked_headers: tuple[int, ...]  # steps whose text contains another step's header
    contradictions: tuple[Contradiction, ...]

    @property
    def ok(self) -> bool:
        """Nothing missing, leaked or contradicting."""
        return not (self.missing_steps or self.leaked_headers or self.contradictions)

    def messages(self) -> list[str]:
        """Each problem in words a radiologist understands."""
        out: list[str] = []
        if self.missing_steps:
            names = [f"step {i} ({STEP_NAMES[i - 1].lower()})" if 1 <= i <= len(STEP_NAMES) else f"step {i}"
                     for i in self.missing_steps]
            verb = "is" if len(names) == 1 else "are"
            out.append(f"the reasoning is incomplete: {_join(names)} {verb} missing")
        if self.leaked_headers:
            which = _join([f"step {i}" for i in self.leaked_headers])
            out.append(f"the steps run into each other: {which} contains another step's heading, "
                       "so part of its text may belong to another step")
        out.extend(c.message for c in self.contradictions)
        return out


def check_steps(steps: Sequence[ReasoningStep], expected: int = 5, answer_text: str = "") -> StepCheck:
    """Check the parsed reasoning steps of one answer.

    ``expected`` is how many steps the task asks for (5 for the reasoning tasks; 0 when
    the answer is not meant to have steps). ``answer_text`` is the whole answer as the
    reader sees it (grounding tags removed or not); it is read only when there are no
    steps at all, as a free answer (:func:`check_answer_text`).
    """
    by_index: dict[int, ReasoningStep] = {}
    for s in steps:
        if s.index not in by_index or not _has_words(by_index[s.index].text):
            by_index[s.index] = s
    missing = tuple(i for i in range(1, expected + 1)
                    if i not in by_index or not _has_words(strip_grounding(by_index[i].text)))
    leaked = tuple(sorted(i for i, s in by_index.items() if _leaks_header(s.index, s.text)))
    if not by_index:
        return StepCheck(missing, leaked, check_answer_text(answer_text) if answer_text.strip() else ())
    claims = [_step_claims(by_index[i]) for i in sorted(by_index) if i in FINDING_STEPS]
    return StepCheck(missing, leaked, tuple(_contradictions(claims)))


def check_answer_text(text: str) -> tuple[Contradiction, ...]:
    """Contradictions inside a free answer (no steps), e.g. "No mass. A 3 cm mass in the left lung."

    Only what one text cannot mean both ways is reported: a negation and a lesion it
    covers, counts that disagree, and opposite densities for one lesion. Two lesions
    of different sizes or sides in one text are just two lesions.
    """
    if not text or not text.strip():
        return ()
    claims = _text_claims(0, text, phrases=())
    return tuple(_contradictions([claims]))


# ----------------------------------------------------------------------------- vocabulary

#: lesion nouns: regex → singular name
_NOUNS: dict[str, str] = {
    r"nodules?": "nodule",
    r"mass(?:es)?": "mass",
    r"lesions?": "lesion",
    r"opacit(?:y|ies)": "opacity",
    r"consolidations?": "consolidation",
    r"tumou?rs?": "tumour",
    r"cysts?": "cyst",
    r"metastas[ie]s": "metastasis",
    r"neoplasms?": "neoplasm",
    r"abscess(?:es)?": "abscess",
    r"granulomas?": "granuloma",
    r"infiltrates?": "infiltrate",
    r"hypodensit(?:y|ies)": "hypodensity",
    r"hyperdensit(?:y|ies)": "hyperdensity",
    r"abnormalit(?:y|ies)": "abnormality",  # only read in negations
    r"findings?": "finding",  # only read in negations
}
#: nouns a negation of which covers every lesion noun
_GENERIC = frozenset({"lesion", "abnormality", "finding"})
#: nouns never read as a positive lesion mention ("FINDINGS:", "an abnormality")
_NEGATION_ONLY = frozenset({"abnormality", "finding"})
#: a generic "lesion" is covered by a negation of any of these ("No pulmonary nodule or mass")
_FOCAL = frozenset({"nodule", "mass", "tumour", "neoplasm", "metastasis"})

_NOUN_ALT = "|".join(f"(?:{p})" for p in _NOUNS)
_NOUN_RE = re.compile(r"(?<![a-z-])(?P<noun>" + _NOUN_ALT + r")(?![a-z-])", re.I)
#: what a lesion noun is not when these words surround it
_NOT_A_LESION_AFTER = re.compile(r"^\s*(?:effect|index|-like)\b", re.I)
_NOT_A_LESION_BEFORE = re.compile(r"\b(?:body|muscle|bone|lean|fat|skeletal)\s*$", re.I)

_NUMBER_WORDS = {"one": 1, "single": 1, "solitary": 1, "two": 2, "both": 2, "three": 3, "four": 4, "five": 5,
                 "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_VAGUE_MANY = {"multiple": 2, "several": 2, "numerous": 2, "many": 2, "few": 2, "innumerable": 2, "various": 2}
_COUNT_RE = re.compile(
    r"(?<![\w.\-])(?P<num>\d{1,2}|" + "|".join(list(_NUMBER_WORDS) + list(_VAGUE_MANY)) + r")\s+"
    r"(?P<mods>(?:[a-z][a-z\-]*\s+){0,3}?)(?P<noun>" + _NOUN_ALT + r")(?![a-z-])",
    re.I,
)
#: words that end a count's modifiers ("one on the right", "14 mm nodule")
_COUNT_STOP = frozenset("mm cm in of on at with and or to from x by the a an is are was were".split())
#: a number after these words is a label, not a count ("segment 4 lesion", "Lung-RADS 3 nodule")
_LABEL_BEFORE = re.compile(r"\b(?:segment|segments|series|image|slice|level|grade|type|category|class|rads|step|"
                           r"figure|fig|bosniak|stage)\s*[\-:]?\s*$", re.I)

_NEG_CUE = re.compile(r"\b(?:no|without|negative\s+for|free\s+of|absence\s+of|nor)\b", re.I)
#: words allowed between a negation cue and its noun ("no [definite focal] lesion")
_NEG_FILLER = re.compile(r"^(?:evidence|sign|signs|suspicion|of|any|definite|discrete|focal|obvious|measurable|"
                         r"visible|detectable|identifiable|convincing|pulmonary|lung|liver|hepatic|renal|"
                         r"kidney|adrenal|splenic|pancreatic|cerebral|brain|intracranial|breast|"
                         r"space-occupying|mass-like|nodular|round|soft-tissue|soft|tissue|parenchymal|"
                         r"intrapulmonary|intrahepatic|or|and|nor)$", re.I)
#: a qualifier that makes a negation partial ("no other nodule") — such a negation is ignored
_PARTIAL = frozenset("other additional further new second more another suspicious significant enlarged large "
                     "larger dominant acute residual remaining else similar such concerning worrisome "
                     "growing interval enhancing cystic small tiny".split())
#: a qualifier after the noun makes a negation partial too ("no nodule larger than 6 mm")
_PARTIAL_AFTER = re.compile(r"^\s*(?:larger|greater|bigger|more|over|above|exceeding|measuring|of\s+concern|"
                            r"suspicious|requiring|to\s+suggest|elsewhere|>|≥)", re.I)
_POSTPOSED_NEG = re.compile(
    r"^[^.;]{0,40}?\b(?:is|are|was|were)\s+(?:now\s+)?(?:absent|not\s+(?:seen|identified|visuali[sz]ed|"
    r"demonstrated|present|detected|appreciated)|no\s+longer\s+(?:seen|visible|present|identified)|resolved)\b",
    re.I,
)

_SIZE_RE = re.compile(
    r"(?<![\w.])(?P<a>\d+(?:[.,]\d+)?)\s*(?:(?:mm|cm)\s*)?"
    r"(?:[x×*]\s*(?P<b>\d+(?:[.,]\d+)?)\s*(?:(?:mm|cm)\s*)?)?"
    r"(?:[x×*]\s*(?P<c>\d+(?:[.,]\d+)?)\s*)?(?P<unit>mm|cm|millimet(?:er|re)s?|centimet(?:er|re)s?)(?![a-z])",
    re.I,
)

#: density words → normalised value (longest first where they overlap)
_DENSITY_WORDS: tuple[tuple[str, str], ...] = (
    (r"part[\s-]*solid|semi[\s-]*solid|sub[\s-]*solid|mixed[\s-]+(?:solid|density|attenuation)", "part-solid"),
    (r"non[\s-]*solid", "ground-glass"),
    (r"non[\s-]*calcified|uncalcified", "non-calcified"),
    (r"ground[\s-]*glass", "ground-glass"),
    (r"solid", "solid"),
    (r"hypo[\s-]*dense|hypo[\s-]*attenuating|low[\s-]+(?:attenuation|density)", "hypodense"),
    (r"hyper[\s-]*dense|hyper[\s-]*attenuating|high[\s-]+(?:attenuation|density)", "hyperdense"),
    (r"iso[\s-]*dense|iso[\s-]*attenuating", "isodense"),
    (r"fat[\s-]*containing|fatty|fat[\s-]+density|containing\s+fat|macroscopic\s+fat", "fat"),
    (r"cavitary|cavitating|cavitated|air[\s-]*containing|gas[\s-]*containing|air[\s-]*filled", "cavitary"),
    (r"calcified|calcific|densely\s+calcified", "calcified"),
)
_DENSITY_RE = re.compile(
    r"(?<![a-z-])(?:" + "|".join(f"(?P<d{i}>{p})" for i, (p, _) in enumerate(_DENSITY_WORDS)) + r")(?![a-z])",
    re.I,
)
#: a density word about part of a lesion ("with a hyperdense rim") says nothing about the whole
_PART_OF_LESION = re.compile(r"^\s*(?:rim|rims|wall|walls|capsule|cent(?:er|re)|core|components?|portions?|parts?|"
                             r"areas?|foci|focus|septa|septations?|halo|enhancement|periphery|spots?|"
                             r"calcifications?|margins?|content|contents|fluid|organ|organs)\b", re.I)
#: opposite densities: one lesion cannot be two values of one group
_DENSITY_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"hypodense", "hyperdense", "isodense"}),
    frozenset({"solid", "ground-glass"}),
    frozenset({"calcified", "non-calcified"}),
)

_SIDE_WORD = r"(?P<side>right|left|bilateral|both)"
_LOCATIONS: tuple[tuple[re.Pattern[str], str | None, str | None], ...] = tuple(
    (re.compile(p, re.I), organ, part) for p, organ, part in (
        # lung lobes and radiograph zones
        (r"\b(?:" + _SIDE_WORD + r"\s+)?(?P<part>upper|middle|lower|mid)\s+(?:lung\s+)?(?P<kind>lobe|zone)s?\b",
         "lung", None),
        (r"\b(?:" + _SIDE_WORD + r"\s+)?(?:lingula|lingular)\b", "lung", "lingula"),
        # liver
        (r"\b" + _SIDE_WORD + r"\s+(?:hepatic\s+lobe|lobe\s+of\s+the\s+liver|liver\s+lobe|lobe\s+of\s+liver)\b",
         "liver", "hepatic lobe"),
        (r"\bcaudate\s+lobe\b", "liver", "caudate lobe"),
        (r"\b(?:liver|hepatic)\s+segments?\s+(?P<seg>[1-8][ab]?|i{1,3}|iv[ab]?|v|vi{1,3})\b", "liver", "segment"),
        (r"\bsegments?\s+(?P<seg>[1-8][ab]?|i{1,3}|iv[ab]?|v|vi{1,3})\s+of\s+the\s+liver\b", "liver", "segment"),
        (r"\bliver\s+dome\b", "liver", "dome"),
        # brain lobes
        (r"\b(?:" + _SIDE_WORD + r"\s+)?(?P<part>frontal|parietal|temporal|occipital)\s+lobe\b", "brain", None),
        (r"\b" + _SIDE_WORD + r"\s+(?:cerebral\s+)?hemisphere\b", "brain", "hemisphere"),
        # paired organs and regions
        (r"\b" + _SIDE_WORD + r"\s+(?:lung|hemithorax|hilum|hilar\s+region)\b", "lung", None),
        (r"\b" + _SIDE_WORD + r"\s+(?:lung\s+)?(?P<part>base|apex)\b", "lung", None),
        (r"\b" + _SIDE_WORD + r"\s+(?:kidney|renal)\b", "kidney", None),
        (r"\b" + _SIDE_WORD + r"\s+adrenal\b", "adrenal", None),
        (r"\b" + _SIDE_WORD + r"\s+breast\b", "breast", None),
        (r"\b" + _SIDE_WORD + r"\s+(?:ovary|ovarian)\b", "ovary", None),
        (r"\b" + _SIDE_WORD + r"\s+thyroid\s+lobe\b", "thyroid", None),
    )
)
_LOBE_ABBREV = re.compile(r"\b(?P<abbr>RUL|RML|RLL|LUL|LLL)\b")
_ABBREV = {"RUL": ("right", "upper lobe"), "RML": ("right", "middle lobe"), "RLL": ("right", "lower lobe"),
           "LUL": ("left", "upper lobe"), "LLL": ("left", "lower lobe")}
_ORGAN_WORDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(r"(?<![a-z-])(?:" + p + r")(?![a-z])", re.I), organ) for p, organ in (
        (r"lungs?|pulmonary|intrapulmonary|hemithorax|pleural?", "lung"),
        (r"liver|hepatic|intrahepatic", "liver"),
        (r"kidneys?|renal", "kidney"),
        (r"adrenals?", "adrenal"),
        (r"brain|cerebral|intracranial|cerebellar", "brain"),
        (r"breasts?", "breast"),
        (r"pancreas|pancreatic", "pancreas"),
        (r"spleen|splenic", "spleen"),
        (r"thyroid", "thyroid"),
    )
)
_LOOSE_SIDE = re.compile(r"\b(?:on\s+the\s+(?P<a>right|left)(?:\s+side)?(?!\s*[a-z]*\s*(?:lobe|lung|kidney))|"
                         r"(?P<b>right|left)[\s-]+sided|(?P<c>bilateral(?:ly)?|on\s+both\s+sides))\b", re.I)
_ON_PRIOR = re.compile(r"\s*(?:on|in|at)\s+(?:the\s+)?(?:prior|previous|earlier|last)", re.I)
_LARGEST = re.compile(r"\b(?:the\s+)?(?:largest|biggest|dominant|index)\b", re.I)

#: a heading of another step inside a step's text
_NAMED_HEADER = re.compile(
    r"(?P<name>" + STEP_NAME_GROUPS + r")\s*[:：]", re.I)
_LINE_NAMED_HEADER = re.compile(
    r"^[ \t>#*_]*(?:\d[.)]\s*)?(?P<name>" + STEP_NAME_GROUPS + r")[ \t*_]*$", re.I | re.M)
_NUMBERED_HEADER = re.compile(
    r"\bstep\s*(?P<num>[1-5])(?![0-9])\s*(?::|[-–—)]\s|\.?\s*(?:" + "|".join(STEP_NAME_PATTERNS) + r"))", re.I)
_LINE_NUMBERED_HEADER = re.compile(r"^[ \t>#*_]*step\s*(?P<num>[1-5])(?![0-9])\s*[.)]?[ \t*_]*$", re.I | re.M)


# ----------------------------------------------------------------------------- claims


@dataclass
class _Mention:
    """One lesion a step describes (a positive mention)."""

    step: int
    noun: str
    sizes: list[float] = field(default_factory=list)
    side: str | None = None  # right | left | bilateral
    organ: str | None = None
    part: str | None = None  # "upper lobe", "hepatic lobe", "segment 4", …
    where: str = ""  # the location as written, for messages
    densities: set[str] = field(default_factory=set)
    implicit: bool = False  # "the largest is 21 mm in …"

    @property
    def size(self) -> float | None:
        """The lesion's size in mm; None when unknown or when the mention gives sizes that disagree."""
        if not self.sizes:
            return None
        lo, hi = min(self.sizes), max(self.sizes)
        return hi if _sizes_agree(lo, hi) else None

    @property
    def conflicting_densities(self) -> tuple[str, str] | None:
        for group in _DENSITY_GROUPS:
            found = sorted(self.densities & group)
            if len(found) > 1:
                return found[0], found[1]
        return None

    def describe(self, with_size: bool = True) -> str:
        if self.implicit:
            head = "the largest lesion"
            if with_size and self.size is not None:
                head += f" ({_mm(self.size)})"
        else:
            words = []
            if with_size and self.size is not None:
                words.append(_mm(self.size))
            words.extend(d for d in sorted(self.densities) if d not in self.noun)
            words.append(self.noun)
            head = _with_article(" ".join(words))
        return f"{head} in the {self.where}" if self.where else head


@dataclass
class _Count:
    step: int
    n: int
    at_least: bool  # "multiple nodules" = at least n
    noun: str
    organ: str | None
    side: str | None
    text: str

    @property
    def generic(self) -> bool:
        return self.noun in _GENERIC


@dataclass
class _Negation:
    step: int
    nouns: frozenset[str]
    organ: str | None
    side: str | None
    part: str | None
    text: str
    densities: frozenset[str] = frozenset()  # "no solid nodule" says nothing about a part-solid one

    @property
    def generic(self) -> bool:
        return bool(self.nouns & _GENERIC)


@dataclass
class _Claims:
    step: int
    mentions: list[_Mention] = field(default_factory=list)
    counts: list[_Count] = field(default_factory=list)
    negations: list[_Negation] = field(default_factory=list)
    boxes: int = 0  # distinct boxes drawn for lesion phrases (step 2)
    boxes_singular: bool = True  # every boxed lesion phrase names one lesion


def _step_claims(step: ReasoningStep) -> _Claims:
    return _text_claims(step.index, step.text, step.phrases)


def _text_claims(index: int, text: str, phrases: Iterable) -> _Claims:
    claims = _Claims(index)
    clean = strip_grounding(text)
    for sentence in split_sentences(clean):
        _read_sentence(claims, sentence)
    boxes: list[tuple[str, Box]] = []  # a box drawn again for the same phrase (or the very same box) counts once
    singular = True
    for p in phrases:
        nouns = [m for m in _NOUN_RE.finditer(p.phrase) if _noun_name(m.group("noun")) not in _NEGATION_ONLY]
        if not nouns or _NEG_CUE.search(p.phrase):
            continue
        if any(_is_plural(m.group("noun")) for m in nouns):
            singular = False
        key = " ".join(p.phrase.lower().split())
        for b in p.boxes:
            if all(b.iou(o) < (0.8 if key == k else 0.95) for k, o in boxes):
                boxes.append((key, b))
    claims.boxes = len(boxes)
    claims.boxes_singular = singular
    return claims


def _noun_name(word: str) -> str:
    w = word.lower()
    for pattern, name in _NOUNS.items():
        if re.fullmatch(pattern, w):
            return name
    return w


def _is_plural(word: str) -> bool:
    w = word.lower()
    return w.endswith(("s", "ies", "ses")) and not w.endswith(("mass", "abscess", "metastasis", "sis"))


def _read_sentence(claims: _Claims, sentence: str) -> None:
    last: _Mention | None = None
    for clause in re.split(r";|\bbut\b|\bwhereas\b|\bhowever\b", sentence, flags=re.I):
        if not clause.strip():
            continue
        negated = _read_negations(claims, clause)
        nouns = [m for m in _NOUN_RE.finditer(clause)
                 if not any(a <= m.start() < b for a, b in negated) and _is_lesion_noun(clause, m)]
        if not nouns:
            if _LARGEST.search(clause) and _SIZE_RE.search(clause):
                m = _Mention(claims.step, "lesion", implicit=True)
                _read_attributes(m, clause)
                claims.mentions.append(m)
                last = m
            elif last is not None and not negated:
                _read_attributes(last, clause, location=last.where == "")
            continue
        bounds = _segments(clause, nouns)
        for m, (a, b) in zip(nouns, bounds):
            segment = clause[a:b]
            noun = _noun_name(m.group("noun"))
            count = _read_count(claims, clause, m)
            if noun in _NEGATION_ONLY:
                continue
            plural = _is_plural(m.group("noun"))
            if plural and (count is None or count.n != 1):
                continue  # a group ("two nodules", "nodules"): a count, not one lesion
            mention = _Mention(claims.step, noun)
            _read_attributes(mention, segment)
            claims.mentions.append(mention)
            last = mention


def _is_lesion_noun(text: str, m: re.Match[str]) -> bool:
    return not (_NOT_A_LESION_AFTER.match(text[m.end():]) or _NOT_A_LESION_BEFORE.search(text[: m.start()]))


def _segments(clause: str, nouns: list[re.Match[str]]) -> list[tuple[int, int]]:
    """The part of the clause each lesion noun owns: split between two nouns where a new
    noun phrase starts ("… right upper lobe and a 12 mm mass …")."""
    cuts = [0]
    for prev, nxt in zip(nouns, nouns[1:]):
        between = clause[prev.end(): nxt.start()]
        split = None
        for sm in re.finditer(r"(?:,|\band\b|\bwith\b|\bplus\b|\bas well as\b|\bwhile\b|\bor\b)\s+"
                              r"(?=(?:a|an|the|one|two|three|another|several|multiple|\d)\b)", between, re.I):
            split = sm.start()
        if split is None:
            # no conjunction: the words just before the next noun are its modifiers
            words = list(re.finditer(r"\S+", between))
            keep = 0
            for w in reversed(words):
                if keep >= 4 or re.search(r"[,()]", w.group()) or w.group().lower() in ("in", "of", "at", "on"):
                    break
                keep += 1
            split = words[len(words) - keep].start() if keep and keep <= len(words) else len(between)
        cuts.append(prev.end() + split)
    cuts.append(len(clause))
    return [(cuts[i], cuts[i + 1]) for i in range(len(nouns))]


def _read_count(claims: _Claims, clause: str, noun: re.Match[str]) -> _Count | None:
    for m in _COUNT_RE.finditer(clause):
        if m.end() != noun.end():
            continue
        mods = m.group("mods").split()
        if any(w.lower() in _COUNT_STOP or w.lower() in _NUMBER_WORDS or w.lower() in _VAGUE_MANY for w in mods):
            return None
        if _LABEL_BEFORE.search(clause[: m.start()]):
            return None
        word = m.group("num").lower()
        at_least = word in _VAGUE_MANY
        n = int(word) if word.isdigit() else (_VAGUE_MANY.get(word) or _NUMBER_WORDS[word])
        if n == 0:
            return None
        # the scope is what the count's own words say: "two pulmonary lesions on the left side",
        # not a parenthesis after it ("two lesions (one on the right, one on the left)")
        tail = re.split(r"[(,;:]|\bthe\s+largest\b", clause[m.end():], maxsplit=1)[0]
        probe = _Mention(claims.step, _noun_name(m.group("noun")))
        _read_location(probe, m.group("mods") + m.group("noun") + tail)
        count = _Count(claims.step, n, at_least, probe.noun, probe.organ, probe.side, m.group().strip())
        claims.counts.append(count)
        return count
    return None


def _read_negations(claims: _Claims, clause: str) -> list[tuple[int, int]]:
    """Record the clause's negations; returns the spans they cover (their nouns are not lesions).

    A partial negation ("no other nodule") covers its noun too but is not recorded.
    """
    spans: list[tuple[int, int]] = []
    for cue in _NEG_CUE.finditer(clause):
        if any(a <= cue.start() < b for a, b in spans):
            continue
        rest = clause[cue.end():]
        nouns: list[str] = []
        fillers: list[str] = []
        densities: set[str] = set()
        partial = False
        end = 0  # end of the last noun, in ``rest``
        prev = 0  # end of the last word read
        for w in list(re.finditer(r"[A-Za-z][A-Za-z\-]*", rest))[:10]:
            gap = rest[prev: w.start()]
            if re.search(r"[.:;()\[\]]", gap):
                break
            word = w.group().lower()
            if "," in gap and not (nouns and (_NOUN_RE.fullmatch(word) or word in ("or", "and", "nor"))):
                break
            prev = w.end()
            if _NOUN_RE.fullmatch(word):
                if _NOT_A_LESION_AFTER.match(rest[w.end():]):
                    break
                nouns.append(_noun_name(word))
                end = w.end()
                continue
            if word in _PARTIAL:
                partial = True
                continue
            if _NEG_FILLER.match(word):
                fillers.append(word)
                continue
            dm = _DENSITY_RE.fullmatch(word)
            if dm:
                densities.add(next(v for i, (_, v) in enumerate(_DENSITY_WORDS) if dm.group(f"d{i}")))
                continue
            break
        if not nouns:
            continue
        span_end = cue.end() + end
        spans.append((cue.start(), span_end))
        if partial or _PARTIAL_AFTER.match(clause[span_end:]):
            continue
        neg = _Negation(claims.step, frozenset(nouns), None, None, None, clause[cue.start(): span_end].strip(),
                        frozenset(densities))
        for w in fillers:
            for rx, organ in _ORGAN_WORDS:
                if rx.fullmatch(w):
                    neg.organ = organ
        after = clause[span_end:]
        pp = re.match(r"\s*(?:(?:is|are|was|were)\s+\w+\s+)?(?:in|within|of|at|involving|on)\s+(?:the\s+)?",
                      after, re.I)
        if pp:
            probe = _Mention(claims.step, "lesion")
            _read_location(probe, re.split(r"[,;(]", after[: pp.end() + 40])[0])
            neg.side = probe.side if probe.side != "bilateral" else None
            neg.organ = probe.organ or neg.organ
            neg.part = probe.part
        claims.negations.append(neg)
    # "the nodule is not seen", "the lesion is absent"
    for m in _NOUN_RE.finditer(clause):
        if any(a <= m.start() < b for a, b in spans):
            continue
        tail = clause[m.end():]
        pm = _POSTPOSED_NEG.match(tail)
        if pm is None or _ON_PRIOR.match(tail[pm.end():]):
            continue
        spans.append((m.start(), m.end()))
        if re.search(r"\b(?:other|additional|further|new|second|another)\b", clause[: m.start()], re.I):
            continue
        probe = _Mention(claims.step, _noun_name(m.group("noun")))
        _read_attributes(probe, clause[: m.end() + pm.end()])
        claims.negations.append(_Negation(claims.step, frozenset({probe.noun}), probe.organ,
                                          probe.side if probe.side != "bilateral" else None, probe.part,
                                          clause[: m.end() + pm.end()].strip(), frozenset(probe.densities)))
    return spans


def _read_attributes(m: _Mention, text: str, location: bool = True) -> None:
    for sm in _SIZE_RE.finditer(text):
        dims = [float(v.replace(",", ".")) for v in (sm.group("a"), sm.group("b"), sm.group("c")) if v]
        scale = 10.0 if sm.group("unit").lower().startswith(("cm", "cent")) else 1.0
        m.sizes.append(max(dims) * scale)
    for dm in _DENSITY_RE.finditer(text):
        if _PART_OF_LESION.match(text[dm.end():]) or re.search(r"\bwith\s+(?:a\s+|an\s+)?(?:\w+\s+)?$",
                                                               text[: dm.start()], re.I):
            continue
        value = next(v for i, (_, v) in enumerate(_DENSITY_WORDS) if dm.group(f"d{i}"))
        m.densities.add(value)
    if location:
        _read_location(m, text)


def _read_location(m: _Mention, text: str) -> None:
    best: tuple[int, str | None, str | None, str | None, str] | None = None
    for rx, organ, part in _LOCATIONS:
        for lm in rx.finditer(text):
            side = lm.groupdict().get("side")
            p = part
            if p is None:
                word = lm.groupdict().get("part")
                kind = lm.groupdict().get("kind")
                if word:
                    word = "middle" if word.lower() == "mid" else word.lower()
                    p = f"{word} {kind.lower()}" if kind else word
            if p == "segment":
                p = f"segment {_segment_number(lm.group('seg'))}"
            side_norm = None
            if side:
                side_norm = "bilateral" if side.lower() in ("bilateral", "both") else side.lower()
            cand = (lm.start(), organ, p, side_norm, " ".join(lm.group().split()).lower())
            if best is None or cand[0] < best[0]:
                best = cand
    for am in _LOBE_ABBREV.finditer(text):
        side, p = _ABBREV[am.group("abbr")]
        cand = (am.start(), "lung", p, side, f"{side} {p}")
        if best is None or cand[0] < best[0]:
            best = cand
    if best is not None:
        _, organ, part, side, where = best
        m.organ = m.organ or organ
        m.part = m.part or part
        m.side = m.side or side
        m.where = m.where or where
    if m.organ is None:
        for rx, organ in _ORGAN_WORDS:
            if rx.search(text):
                m.organ = organ
                break
    if m.side is None:
        loose = _LOOSE_SIDE.search(text)
        if loose:
            side = (loose.group("a") or loose.group("b") or "bilateral").lower()
            m.side = "bilateral" if side.startswith(("bilateral", "on both")) else side
    if not m.where and m.side in ("right", "left") and m.organ:
        m.where = f"{m.side} {m.organ}"


def _segment_number(seg: str) -> str:
    roman = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "iva": "4a", "ivb": "4b", "v": "5", "vi": "6", "vii": "7",
             "viii": "8"}
    s = seg.lower()
    return roman.get(s, s)


# ----------------------------------------------------------------------------- comparisons


def _sizes_agree(a: float, b: float) -> bool:
    lo, hi = sorted((a, b))
    return not (hi > SIZE_RATIO * lo and hi - lo > SIZE_MIN_MM)


def _densities_agree(a: set[str], b: set[str]) -> bool:
    if "part-solid" in a or "part-solid" in b:
        a = a - {"solid", "ground-glass"}
        b = b - {"solid", "ground-glass"}
    for group in _DENSITY_GROUPS:
        x, y = a & group, b & group
        if x and y and not (x & y):
            return False
    return True


def _compatible(a: _Mention, b: _Mention, ignore: str = "") -> bool:
    """Could ``a`` and ``b`` be the same lesion, judged on everything but ``ignore``?"""
    if ignore != "location":
        if a.organ and b.organ and a.organ != b.organ:
            return False
        if a.part and b.part and a.part != b.part:
            return False
    if ignore != "side" and not _sides_agree(a.side, b.side):
        return False
    if ignore != "size" and a.size is not None and b.size is not None and not _sizes_agree(a.size, b.size):
        return False
    if ignore != "density" and not _densities_agree(a.densities, b.densities):
        return False
    return True


def _sides_agree(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b or "bilateral" in (a, b)


def _distinct(mentions: Sequence[_Mention]) -> list[_Mention]:
    """Mentions that are pairwise certainly different lesions: a lower bound on how many there are."""
    best: list[_Mention] = []
    for start in range(len(mentions)):
        chosen: list[_Mention] = []
        for m in mentions[start:] + mentions[:start]:
            if all(not _compatible(m, c) for c in chosen):
                chosen.append(m)
        if len(chosen) > len(best):
            best = chosen
    return best


def _covered_by_negation(neg: _Negation, noun: str, organ: str | None, side: str | None,
                         part: str | None, densities: Iterable[str] = ()) -> bool:
    if not (neg.generic or noun in neg.nouns or (noun in _GENERIC and neg.nouns & _FOCAL)):
        return False
    densities = set(densities)
    if neg.densities and densities and not (neg.densities & densities):
        return False
    if neg.organ and organ and neg.organ != organ:
        return False
    if neg.part and part and neg.part != part:
        return False
    return _sides_agree(neg.side, side) and not (side == "bilateral" and neg.side)


def _count_covers(c: _Count, m: _Mention) -> bool:
    if not (c.generic or c.noun == m.noun or (c.noun in _FOCAL and m.noun in _GENERIC)):
        return False
    if c.organ and m.organ and c.organ != m.organ:
        return False
    return _sides_agree(c.side, m.side)


def _contradictions(all_claims: list[_Claims]) -> list[Contradiction]:
    found: dict[tuple[str, tuple[int, int]], Contradiction] = {}
    mentions = [m for c in all_claims for m in c.mentions]
    organs = {m.organ for m in mentions if m.organ}
    sole_organ = next(iter(organs)) if len(organs) == 1 else None
    sides = {m.side for m in mentions if m.side}

    def add(kind: str, a: int, b: int, message: str) -> None:
        key = (kind, (min(a, b), max(a, b)))
        if key not in found:
            found[key] = Contradiction(kind, key[1], message)

    free = len(all_claims) == 1 and all_claims[0].step == 0

    # inside one mention: opposite densities
    for c in all_claims:
        for m in c.mentions:
            pair = m.conflicting_densities
            if pair:
                where = f" in the {m.where}" if m.where else ""
                add("density", c.step, c.step,
                    _say(c.step, c.step, f"calls one {m.noun}{where} both {pair[0]} and {pair[1]}", ""))

    # negations against lesions and counts (also inside one step)
    for a in all_claims:
        for neg in a.negations:
            for b in all_claims:
                hits = [m for m in b.mentions
                        if _covered_by_negation(neg, m.noun, m.organ, m.side, m.part, m.densities)]
                if hits:
                    hit = max(hits, key=lambda m: (m.size is not None, bool(m.where), m.noun not in _GENERIC))
                    add("negation", b.step, a.step, _negation_message(a.step, b.step, hit, neg))
                    continue
                cnt = next((k for k in b.counts
                            if _covered_by_negation(neg, k.noun, k.organ, k.side, None)), None)
                if cnt is not None:
                    add("count", b.step, a.step, _say(b.step, a.step, f"counts {_count_words(cnt)}",
                                                      f"reports none (\"{neg.text}\")"))

    # counts against counts, against lesions described as clearly different, against step 2's boxes
    def scope(k: _Count) -> tuple[str | None, str | None]:
        organ = k.organ or sole_organ
        side = k.side
        if side in ("right", "left") and sides <= {side, "bilateral"}:
            side = None  # "two lesions on the right side" and every lesion is on the right: the total
        if side == "bilateral":
            side = None
        return organ, side

    for a in all_claims:
        for ka in a.counts:
            for b in all_claims:
                if b.step < a.step:
                    continue
                for kb in b.counts:
                    if kb is ka:
                        continue
                    msg = _count_conflict(ka, kb, scope(ka), scope(kb))
                    if msg:
                        add("count", a.step, b.step, msg)
            for b in all_claims:
                covered = [m for m in b.mentions if _count_covers(ka, m)]
                distinct = _distinct(covered)
                if not ka.at_least and len(distinct) > ka.n:
                    add("count", a.step, b.step,
                        _say(a.step, b.step, f"counts {_count_words(ka)}",
                             f"describes {len(distinct)} different ones ({_join([d.describe() for d in distinct])})"))
                if (b.boxes and a.step != b.step and scope(ka)[1] is None and (ka.generic or ka.noun in _FOCAL)
                        and (ka.organ is None or len(organs) <= 1)):
                    if (not ka.at_least and ka.n < b.boxes) or (b.boxes_singular and ka.n > b.boxes):
                        add("count", b.step, a.step,
                            _say(b.step, a.step, f"marks {_plural(b.boxes, 'lesion')} with boxes",
                                 f"counts {_count_words(ka)}"))

    if free:
        return list(found.values())

    # the same lesion in two steps: side, size, location, density
    lesions = {c.step: _cluster(c.mentions) for c in all_claims}
    totals = {k.n for c in all_claims for k in c.counts
              if not k.at_least and (k.generic or k.noun in _FOCAL) and scope(k)[1] is None
              and (k.organ is None or k.organ == sole_organ)}
    total = next(iter(totals)) if len(totals) == 1 else None
    steps = sorted(lesions)
    for i, a_step in enumerate(steps):
        for b_step in steps[i + 1:]:
            _compare_steps(lesions[a_step], lesions[b_step], add, total)
    return sorted(found.values(), key=lambda c: (c.steps, c.kind))


def _cluster(mentions: Sequence[_Mention]) -> list[_Mention]:
    """One step's mentions with exact repeats folded together (the findings and the
    impression of step 5 name the same lesion twice). Only repeats with the same size in
    the same place fold: two nodules of 7 and 8 mm stay two, and so do two lines of step 2
    (two boxes) that name no size."""
    out: list[_Mention] = []
    for m in mentions:
        for c in out:
            if (_compatible(m, c) and m.size is not None and c.size is not None and abs(m.size - c.size) < 0.5
                    and m.where == c.where and (m.densities <= c.densities or c.densities <= m.densities)):
                c.sizes.extend(m.sizes)
                c.densities |= m.densities
                c.side = c.side or m.side
                c.organ = c.organ or m.organ
                c.part = c.part or m.part
                if c.implicit and not m.implicit:
                    c.implicit, c.noun = False, m.noun
                break
        else:
            out.append(_Mention(m.step, m.noun, list(m.sizes), m.side, m.organ, m.part, m.where,
                                set(m.densities), m.implicit))
    return out


def _match(a: list[_Mention], b: list[_Mention]) -> tuple[set[int], set[int]]:
    """A largest one-to-one pairing of lesions of two steps that could be the same lesion;
    returns the indices left without a partner in ``a`` and in ``b``."""
    edges = {i: sorted((j for j, o in enumerate(b) if _compatible(m, o)),
                       key=lambda j: abs((b[j].size or 0.0) - (m.size or 0.0)))
             for i, m in enumerate(a)}
    partner: dict[int, int] = {}  # b index → a index

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in partner or augment(partner[j], seen):
                partner[j] = i
                return True
        return False

    for i in range(len(a)):
        augment(i, set())
    matched_a = set(partner.values())
    return {i for i in range(len(a)) if i not in matched_a}, {j for j in range(len(b)) if j not in partner}


def _compare_steps(la: list[_Mention], lb: list[_Mention], add, total: int | None = None) -> None:
    """Lesions of one step that no lesion of the other can be, but that one could be if a
    single attribute were not different: that attribute is the contradiction.

    Two lesions left over, one in each step, are compared (the other lesions pair up).
    When one step describes exactly as many lesions as the answer counts in all
    (``total``), it is complete: a lesion of the other step that none of its lesions can
    be is compared with all of them.
    """
    if not la or not lb:
        return
    free_a, free_b = _match(la, lb)
    used: set[int] = set()
    for i in sorted(free_a):
        m = la[i]
        for kind in ("side", "size", "location", "density"):
            j = next((j for j in sorted(free_b) if j not in used and _differs_only_in(kind, m, lb[j])), None)
            if j is None:
                continue
            used.add(j)
            add(kind, m.step, lb[j].step, _lesion_message(kind, m, lb[j]))
            break
    if total is None:
        return
    for complete, other, free in ((la, lb, free_b), (lb, la, free_a)):
        if len(complete) != total:
            continue
        for j in sorted(free):
            o = other[j]
            if any(_compatible(o, m) for m in complete):
                continue  # a repeat of a lesion the complete step describes
            for kind in ("side", "size", "location", "density"):
                m = next((m for m in complete if _differs_only_in(kind, m, o)), None)
                if m is not None:
                    add(kind, m.step, o.step, _lesion_message(kind, m, o))
                    break


def _differs_only_in(kind: str, m: _Mention, o: _Mention) -> bool:
    if not _compatible(m, o, ignore=kind):
        return False
    if kind == "side":
        return {m.side, o.side} == {"right", "left"}
    if kind == "size":
        return (m.size is not None and o.size is not None and not _sizes_agree(m.size, o.size)
                and bool(m.where or m.part) and bool(o.where or o.part))
    if kind == "location":
        return (m.size is not None and o.size is not None and bool(m.where) and bool(o.where)
                and m.where != o.where)
    return bool(m.densities) and bool(o.densities) and not _densities_agree(m.densities, o.densities)


def _lesion_message(kind: str, m: _Mention, o: _Mention) -> str:
    if kind == "side":
        return _say(m.step, o.step, f"puts {_subject(m, o)} on the {m.side}{_in_where(m)}",
                    f"on the {o.side}{_in_where(o)}")
    if kind == "size":
        return _say(m.step, o.step, f"gives {_subject(m, o, size=False)}{_at(m, o)} as {_mm(m.size or 0.0)}",
                    f"as {_mm(o.size or 0.0)}")
    if kind == "location":
        return _say(m.step, o.step, f"puts {_subject(m, o)} in the {m.where}", f"in the {o.where}")
    return _say(m.step, o.step, f"calls {_subject(m, o)}{_at(m, o)} {_density_word(m, o)}",
                _density_word(o, m))


def _at(m: _Mention, o: _Mention) -> str:
    where = m.where or o.where
    return f" in the {where}" if where else ""


def _count_conflict(a: _Count, b: _Count, sa: tuple[str | None, str | None],
                    sb: tuple[str | None, str | None]) -> str | None:
    """A message when two counts cannot both be true, else None."""
    if sa[1] != sb[1]:
        if sa[1] is not None and sb[1] is not None:
            return None  # counts on different sides
    if sa[0] and sb[0] and sa[0] != sb[0]:
        return None  # different organs
    same_noun = a.noun == b.noun or (a.generic and b.generic)
    same_scope = sa == sb
    if same_noun and same_scope:
        if a.at_least and b.at_least:
            return None
        if a.at_least or b.at_least:
            exact, vague = (b, a) if a.at_least else (a, b)
            if exact.n >= vague.n:
                return None
        elif a.n == b.n:
            return None
        return _say(a.step, b.step, f"counts {_count_words(a)}", f"counts {_count_words(b)}")
    # one count is a total over the other's scope or noun: the total cannot be smaller
    total, part = None, None
    if (a.generic and not b.generic) or (sa[1] is None and sb[1] is not None) or (sa[0] is None and sb[0]):
        total, part = a, b
    elif (b.generic and not a.generic) or (sb[1] is None and sa[1] is not None) or (sb[0] is None and sa[0]):
        total, part = b, a
    if total is None or total.at_least or part.at_least:
        return None
    if total.n < part.n:
        return _say(total.step, part.step, f"counts {_count_words(total)} in all", f"counts {_count_words(part)}")
    return None


# ----------------------------------------------------------------------------- headers


def _leaks_header(index: int, text: str) -> bool:
    for rx in (_NUMBERED_HEADER, _LINE_NUMBERED_HEADER):
        for m in rx.finditer(text):
            if int(m.group("num")) != index:
                return True
    for rx in (_NAMED_HEADER, _LINE_NAMED_HEADER):
        for m in rx.finditer(text):
            k = next(i for i in range(1, 6) if m.group(f"n{i}"))
            if k != index:
                return True
    return False


def _has_words(text: str) -> bool:
    return bool(re.search(r"[A-Za-z0-9]", text or ""))


# ----------------------------------------------------------------------------- wording


def _say(a: int, b: int, first: str, second: str) -> str:
    """"the reasoning contradicts itself: step a <first>, step b <second>" — or, inside one
    step or a free answer, "step 3 contradicts itself: it <first>, yet <second>"."""
    if a == b:
        who = "the answer" if a == 0 else f"step {a}"
        return f"{who} contradicts itself: it {first}" + (f", yet {second}" if second else "")
    return f"the reasoning contradicts itself: step {a} {first}, step {b} {second}"


def _negation_message(neg_step: int, pos_step: int, m: _Mention, neg: _Negation) -> str:
    what = "lesion" if neg.generic else " or ".join(sorted(neg.nouns))
    if neg_step == pos_step:
        return _say(neg_step, neg_step, f"says \"{neg.text}\"", f"describes {m.describe()}")
    return _say(pos_step, neg_step, f"reports {m.describe()}", f"reports no {what} (\"{neg.text}\")")


def _subject(m: _Mention, o: _Mention, size: bool = True) -> str:
    """How a message names a lesion both steps describe."""
    if m.implicit:
        return "the largest lesion"
    words = []
    s = m.size if m.size is not None else o.size
    if size and s is not None:
        words.append(_mm(s))
    words.append(m.noun)
    return "the " + " ".join(words)


def _in_where(m: _Mention) -> str:
    if m.where and m.side and m.where.startswith(m.side):
        rest = m.where[len(m.side):].strip()
        return f" ({m.where})" if rest else ""
    return f" ({m.where})" if m.where else ""


def _density_word(m: _Mention, other: _Mention) -> str:
    for group in _DENSITY_GROUPS:
        if m.densities & group and other.densities & group:
            return "/".join(sorted(m.densities & group))
    return "/".join(sorted(m.densities))


def _count_words(k: _Count) -> str:
    noun = k.noun if k.n == 1 and not k.at_least else _plural_noun(k.noun)
    n = f"at least {k.n}" if k.at_least else str(k.n)
    return f"{n} {noun}"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun if n == 1 else _plural_noun(noun)}"


def _plural_noun(noun: str) -> str:
    irregular = {"mass": "masses", "metastasis": "metastases", "opacity": "opacities", "abscess": "abscesses",
                 "abnormality": "abnormalities", "hypodensity": "hypodensities", "hyperdensity": "hyperdensities"}
    return irregular.get(noun, noun + "s")


def _mm(v: float) -> str:
    return f"{v:.0f} mm" if abs(v - round(v)) < 0.05 else f"{v:.1f} mm"


def _with_article(text: str) -> str:
    first = text.split()[0] if text.split() else ""
    vowel = first[:1].lower() in "aeiou" or re.match(r"(?:8|11|18)\b|8\d", first) is not None
    return ("an " if vowel else "a ") + text


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
