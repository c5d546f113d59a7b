"""Dictated text for radiology: spoken punctuation, numbers and units, voice commands.

Qt-free. The dictation widget hands each Whisper transcript to
:meth:`Dictation.handle`, which returns a :class:`DictationResult`: either a
voice command id (from ``resources/dictation/commands.yaml``) or text, cleaned
up the way a PowerScribe user expects, for a target (``"query"`` or
``"report"``).

Text rules (:func:`normalize_dictation`):

* spoken punctuation and layout: "period"/"full stop", "comma", "semicolon",
  "question mark", "open/close parenthesis", "hyphen", "new line",
  "new paragraph" (Whisper's own punctuation next to them is replaced).
  "colon" is anatomy in radiology and stays a word.
* numbers with units: "five millimeters" → "5 mm", "point five centimeters" →
  "0.5 cm", "three point two by two point one centimeters" → "3.2 x 2.1 cm";
  Whisper's digits too ("5-millimeter" → "5 mm"). Numbers without a unit are
  left as spoken.
* laterality and abbreviations are kept as said; abbreviations listed in
  capitals in the vocabulary file are written in capitals ("ct" → "CT").

:func:`fit_to_cursor` then fits the text to what precedes the report cursor
(separating space, capital at a sentence start, lower case mid-sentence).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.core.errors import XMedError
from inference.resources import resource

log = logging.getLogger(__name__)

RESOURCE_DIR = resource("dictation")
VOCABULARY_FILE = RESOURCE_DIR / "vocabulary.txt"
COMMANDS_FILE = RESOURCE_DIR / "commands.yaml"
TARGETS = ("query", "report")
PROMPT_MAX_CHARS = 720  # Whisper keeps the last ~223 prompt tokens (the test counts them)
# Said before a command without meaning anything ("and next image", "okay, sign report").
_LEADING_FILLERS = {"please", "and", "um", "uh", "er", "okay", "ok", "so", "now", "the"}

SPOKEN_MARKS: dict[tuple[str, ...], str] = {
    ("period",): ".", ("full", "stop"): ".", ("comma",): ",", ("semicolon",): ";",
    ("question", "mark"): "?", ("exclamation", "mark"): "!", ("exclamation", "point"): "!",
    ("hyphen",): "-", ("open", "parenthesis"): "(", ("close", "parenthesis"): ")",
    ("open", "paren"): "(", ("close", "paren"): ")",
    ("new", "line"): "\n", ("newline",): "\n", ("next", "line"): "\n",
    ("new", "paragraph"): "\n\n", ("next", "paragraph"): "\n\n",
    ("colon",): ":",  # only straight after a report heading ("impression colon"); see _after_heading
}
_REPLACES_GUESS = {".", ",", ";", ":", "?", "!"}
HEADINGS = {"impression", "findings", "comparison", "technique", "history", "indication",
            "conclusion", "recommendation", "recommendations", "clinical"}
_MAX_MARK_WORDS = max(len(k) for k in SPOKEN_MARKS)
_SENTENCE_END = {".", "?", "!", "\n", "\n\n"}

UNITS: dict[str, str] = {
    "millimeter": "mm", "millimeters": "mm", "millimetre": "mm", "millimetres": "mm", "mm": "mm",
    "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm", "cm": "cm",
    "milliliter": "mL", "milliliters": "mL", "millilitre": "mL", "millilitres": "mL", "ml": "mL",
    "cc": "cc", "ccs": "cc", "hounsfield": "HU", "hu": "HU",
}
_ONES = {"zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
         "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
         "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
         "eighty": 80, "ninety": 90}
_DIGITS_RE = re.compile(r"^\d*\.?\d+$")
_HYPHEN_UNIT_RE = re.compile(r"^(\d*\.?\d+)-?([a-z]+)$", re.IGNORECASE)  # "5-millimeter", "5mm"
_TOKEN_RE = re.compile(r"^([\"'(\[]*)(.*?)([.,;:!?\"')\]]*)$", re.DOTALL)


class DictationConfigError(XMedError):
    """The dictation vocabulary or voice-command file cannot be used."""


@dataclass(frozen=True)
class VoiceCommand:
    id: str
    description: str
    phrases: tuple[str, ...]
    #: named in Whisper's initial prompt; ``prompt: false`` in the table for a phrase Whisper writes in
    #: a form the phrases already match ("pre-read", "preread"), so the prompt keeps its vocabulary
    in_prompt: bool = True


@dataclass(frozen=True)
class DictationResult:
    """A voice command (``command`` set, ``text`` empty) or text for ``target``."""

    text: str = ""
    target: str = "report"
    command: str | None = None
    raw: str = ""

    @property
    def is_command(self) -> bool:
        return self.command is not None


# ---- configuration files --------------------------------------------------------


def load_vocabulary(path: Path = VOCABULARY_FILE) -> list[str]:
    """Terms from the vocabulary file (one per line, '#' comments), in file order."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DictationConfigError(f"The dictation vocabulary {path} cannot be read: {exc.strerror}.") from exc
    terms = [line.split("#", 1)[0].strip() for line in lines]
    return list(dict.fromkeys(t for t in terms if t))


def load_commands(path: Path = COMMANDS_FILE) -> list[VoiceCommand]:
    """Voice commands from the YAML table (see ``resources/dictation/commands.yaml``)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise DictationConfigError(f"The voice-command file {path} cannot be read: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise DictationConfigError(f"The voice-command file {Path(path).name} is not valid YAML.") from exc
    out: list[VoiceCommand] = []
    seen: dict[str, str] = {}
    for entry in data.get("commands", []) if isinstance(data, dict) else []:
        if not isinstance(entry, dict) or not entry.get("id") or not entry.get("phrases"):
            raise DictationConfigError(f"Every voice command in {Path(path).name} needs an id and phrases.")
        phrases = tuple(_command_key(str(p)) for p in entry["phrases"])
        for phrase in phrases:
            if phrase in seen and seen[phrase] != entry["id"]:
                raise DictationConfigError(
                    f"The voice phrase '{phrase}' is used by both '{seen[phrase]}' and '{entry['id']}'.")
            seen[phrase] = entry["id"]
        out.append(VoiceCommand(str(entry["id"]), str(entry.get("description", entry["id"])), phrases,
                                bool(entry.get("prompt", True))))
    return out


def build_initial_prompt(terms: list[str], command_phrases: list[str] | None = None,
                         max_chars: int = PROMPT_MAX_CHARS) -> str:
    """Whisper's initial prompt: a report opening naming the vocabulary, then the voice commands.

    Whisper keeps the *end* of a long prompt, so the command phrases go last and
    vocabulary terms are dropped (from the bottom of the list) to stay under ``max_chars``.
    """
    tail = ""
    if command_phrases:
        tail = " Voice commands: " + ", ".join(command_phrases) + "."
    prompt = "Radiology report dictation. Findings:"
    for term in terms:
        piece = f" {term},"
        if len(prompt) + len(piece) + len(tail) > max_chars:
            break
        prompt += piece
    if prompt.endswith(":"):
        prompt = prompt[: -len(" Findings:")]
    return prompt.rstrip(",") + ("" if prompt.endswith(".") else ".") + tail


# ---- commands ---------------------------------------------------------------------


def _command_key(text: str) -> str:
    words = re.sub(r"[^\w\s'-]", " ", text.lower()).split()
    while words and words[-1] == "please":
        words.pop()
    while words and words[0] in _LEADING_FILLERS:
        words.pop(0)
    return " ".join(words)


def match_command(text: str, commands: list[VoiceCommand]) -> str | None:
    """The command id when the whole utterance is one of its phrases, else None."""
    key = _command_key(text)
    if not key:
        return None
    for command in commands:
        if key in command.phrases:
            return command.id
    return None


# ---- text normalisation ------------------------------------------------------------


@dataclass
class _Word:
    lead: str
    core: str
    trail: str


def _tokens(text: str) -> list[_Word]:
    out = []
    for raw in text.split():
        m = _TOKEN_RE.match(raw)
        assert m is not None
        lead, core, trail = m.groups()
        if not core:  # a lone punctuation token
            core, trail = "", lead + trail
            lead = ""
        out.append(_Word(lead, core, trail))
    return out


def _apply_spoken_marks(words: list[_Word]) -> list[_Word | str]:
    items: list[_Word | str] = []
    i = 0
    while i < len(words):
        for n in range(_MAX_MARK_WORDS, 0, -1):
            key = tuple(w.core.lower() for w in words[i:i + n])
            if len(key) == n and key in SPOKEN_MARKS:
                mark = SPOKEN_MARKS[key]
                if key == ("colon",) and not _after_heading(items):
                    continue  # the bowel, not punctuation
                if mark in _REPLACES_GUESS and items and isinstance(items[-1], _Word):
                    items[-1].trail = items[-1].trail.rstrip(".,;:!?")  # Whisper's own guess
                if mark in _REPLACES_GUESS and items and isinstance(items[-1], str) and items[-1] in ".,;:?!":
                    items.pop()  # "comma, period": the last one said wins
                items.append(mark)
                i += n
                break
        else:
            word = words[i]
            if items and isinstance(items[-1], str) and items[-1] not in "(-":
                word.lead = word.lead.lstrip(".,;:!?")
            items.append(word)
            i += 1
        # punctuation Whisper attached to a spoken mark ("Period.") belongs to the mark itself
    return items


def _after_heading(items: list[_Word | str]) -> bool:
    """Whether the last item is a report heading word at the start of a line or sentence."""
    if not items or not isinstance(items[-1], _Word) or items[-1].core.lower() not in HEADINGS:
        return False
    before = items[-2] if len(items) > 1 else None
    return before is None or (isinstance(before, str) and before in _SENTENCE_END) or (
        isinstance(before, _Word) and before.trail[-1:] in (".", "?", "!"))


def _number_at(items: list[_Word | str], i: int) -> tuple[str, int] | None:
    """Parse a number (digits or words, with "point") starting at ``items[i]``; (text, next index)."""
    def core(j: int) -> str | None:
        if j < len(items) and isinstance(items[j], _Word):
            return items[j].core.lower()
        return None

    def ends_here(j: int) -> bool:  # punctuation after a word ends the number
        return isinstance(items[j], _Word) and bool(items[j].trail)

    word = core(i)
    if word is None:
        return None
    if _DIGITS_RE.match(word):
        text = word if not word.startswith(".") else "0" + word
        return text, i + 1
    whole: int | None = None
    j = i
    if word in _ONES or word in _TENS:
        total = 0
        while (w := core(j)) is not None:
            if w in _TENS and total % 100 == 0:
                total += _TENS[w]
            elif w in _ONES and (total % 10 == 0) and not (total % 100 and _ONES[w] >= 10):
                total += _ONES[w]
            elif w == "hundred" and 0 < total < 10:
                total *= 100
            else:
                break
            j += 1
            if ends_here(j - 1):
                return str(total), j
        whole = total
    if core(j) == "point" and not (j > i and ends_here(j - 1)):
        k = j + 1
        digits = ""
        while (w := core(k)) is not None and w in _ONES and _ONES[w] < 10:
            digits += str(_ONES[w])
            k += 1
            if ends_here(k - 1):
                break
        if digits:
            return f"{whole or 0}.{digits}", k
    if whole is None:
        return None
    return str(whole), j


def _apply_units(items: list[_Word | str]) -> list[_Word | str]:
    out: list[_Word | str] = []
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, _Word) and (m := _HYPHEN_UNIT_RE.match(item.core)) and m.group(2).lower() in UNITS:
            out.append(_Word(item.lead, f"{m.group(1)} {UNITS[m.group(2).lower()]}", item.trail))
            i += 1
            continue
        # a chain: NUMBER [by NUMBER [by NUMBER]] UNIT
        numbers: list[str] = []
        j = i
        lead = item.lead if isinstance(item, _Word) else ""
        while (parsed := _number_at(items, j)) is not None:
            number, j = parsed
            numbers.append(number)
            last = items[j - 1]
            if (isinstance(last, _Word) and last.trail) or j >= len(items):
                break
            nxt = items[j]
            if isinstance(nxt, _Word) and nxt.core.lower() in ("by", "x") and not nxt.trail:
                j += 1
                continue
            break
        unit = items[j] if numbers and j < len(items) else None
        prev_trail = items[j - 1].trail if numbers and isinstance(items[j - 1], _Word) else ""
        if isinstance(unit, _Word) and not prev_trail and unit.core.lower() in UNITS:
            symbol = UNITS[unit.core.lower()]
            if unit.core.lower() == "hounsfield" and j + 1 < len(items) and isinstance(items[j + 1], _Word) \
                    and items[j + 1].core.lower() in ("unit", "units"):
                unit = items[j + 1]
                j += 1
            out.append(_Word(lead, f"{' x '.join(numbers)} {symbol}", unit.trail))
            i = j + 1
            continue
        out.append(item)
        i += 1
    return out


def _recase_abbreviations(items: list[_Word | str], abbreviations: dict[str, str]) -> None:
    for item in items:
        if isinstance(item, _Word):
            fixed = abbreviations.get(item.core.lower())
            if fixed:
                item.core = fixed


def _assemble(items: list[_Word | str]) -> str:
    text = ""
    capitalise = False
    for item in items:
        if isinstance(item, str):
            if item.startswith("\n"):
                text = text.rstrip(" ") + item
            elif item == "(":
                text += ("" if not text or text.endswith(("\n", " ")) else " ") + "("
            elif item == "-":
                text = text.rstrip(" ") + "-"
            else:
                text = text.rstrip(" ") + item
            capitalise = item in _SENTENCE_END or (capitalise and item not in ",;")
            continue
        word = f"{item.lead}{item.core}{item.trail}"
        if capitalise and item.core[:1].islower():
            word = f"{item.lead}{item.core[:1].upper()}{item.core[1:]}{item.trail}"
        needs_space = text and not text.endswith(("\n", "(", "-", " "))
        text += (" " if needs_space else "") + word
        capitalise = bool(item.trail) and item.trail.rstrip("\"')]")[-1:] in (".", "?", "!")
    # spaces go, but a spoken "new paragraph" at either end is kept: it is layout for the cursor
    return "\n".join(line.strip() for line in text.split("\n")).strip(" ")


def normalize_dictation(text: str, abbreviations: dict[str, str] | None = None) -> str:
    """Radiology clean-up of one Whisper transcript (see the module docstring)."""
    items = _apply_spoken_marks(_tokens(text))
    items = _apply_units(items)
    if abbreviations:
        _recase_abbreviations(items, abbreviations)
    return _assemble(items)


def abbreviations_from(terms: list[str]) -> dict[str, str]:
    """Vocabulary terms written in capitals (CT, BI-RADS), keyed by their lower case."""
    return {t.lower(): t for t in terms if " " not in t and any(c.isalpha() for c in t)
            and t.upper() == t}


def fit_to_cursor(text: str, before: str, abbreviations: dict[str, str] | None = None) -> str:
    """Dictated ``text`` adjusted to the report text ``before`` the cursor.

    Adds the separating space, capitalises the first word at a sentence start and
    lower-cases Whisper's capital in mid-sentence (abbreviations and "I" excepted).
    """
    if not text:
        return text
    if text.startswith("\n"):
        return text
    tail = before.rstrip(" \t")
    sentence_start = not tail or tail.endswith(("\n", ".", "?", "!", ":"))
    first, _, rest = text.partition(" ")
    core = first.strip(".,;:!?\"'()")
    if sentence_start and first[:1].islower():
        first = first[:1].upper() + first[1:]
    elif (not sentence_start and first[:1].isupper() and core != "I" and not core.isupper()
          and core.lower() not in (abbreviations or {})):
        first = first[:1].lower() + first[1:]
    text = first + (" " + rest if rest else "")
    if text[:1] in ".,;:!?)":
        return text
    needs_space = bool(before) and not before[-1].isspace() and not before.endswith(("(", "-"))
    return (" " if needs_space else "") + text


# ---- the whole step ----------------------------------------------------------------


class Dictation:
    """Vocabulary, voice commands and text rules, loaded once from the resource files."""

    def __init__(self, vocabulary_file: Path = VOCABULARY_FILE, commands_file: Path = COMMANDS_FILE) -> None:
        self.vocabulary = load_vocabulary(vocabulary_file)
        self.commands = load_commands(commands_file)
        self.abbreviations = abbreviations_from(self.vocabulary)
        self.initial_prompt = build_initial_prompt(self.vocabulary,
                                                   [c.phrases[0] for c in self.commands if c.in_prompt])

    def handle(self, transcript: str, target: str = "report") -> DictationResult:
        """A voice command if the whole utterance is one, else normalised text for ``target``."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
        command = match_command(transcript, self.commands)
        if command is not None:
            log.info("voice command %s (%r)", command, transcript)
            return DictationResult(target=target, command=command, raw=transcript)
        return DictationResult(normalize_dictation(transcript, self.abbreviations), target, raw=transcript)

    def help_rows(self) -> list[tuple[str, str]]:
        """(phrases, description) for the Help dialog."""
        return [(" / ".join(f"“{p}”" for p in c.phrases), c.description) for c in self.commands]
