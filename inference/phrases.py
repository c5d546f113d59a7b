"""Grounded phrases and the sentences that hold them: one rule for every part of the app.

The assistant names a finding by its phrase (:func:`phrase_key`), links it to the
sentence that mentions it (:func:`sentence_with`) and has that sentence checked
for reliability; the report takes the same sentence as the finding's text and
tints the impression sentence by sentence (:func:`sentence_spans`). Because all
of them cut text here, the sentence a link shows, the one that was checked and
the report's finding are the same.

A sentence ends at ``.``, ``!`` or ``?`` followed by white space (or the end of
the text), and at a line break (list items, the reader's lines). A full stop
inside a number (``2.5 cm``) or after a common abbreviation (``approx. 3 cm``,
``Dr. Smith``, ``e.g. a nodule``) does not end a sentence.
"""

from __future__ import annotations

import re

#: words whose full stop does not end a sentence (lower case, without the final stop)
ABBREVIATIONS = frozenset({
    "approx", "appr", "ca", "cf", "dr", "e.g", "i.e", "fig", "incl", "max", "mr", "mrs", "ms", "prof",
    "resp", "vs",
})

_END = re.compile(r"[.!?]+(?=\s|$)|\n")
_TAG = re.compile(r"</?ref>|<box>.*?</box>|\[\[[\d\s,.\[\]]*\]\]", re.S)
_OPENERS = "([{\"'"


def phrase_key(phrase: str) -> str:
    """How a grounded phrase names its finding: spaces folded, case-insensitive."""
    return " ".join(phrase.split()).casefold()


def names(word: str, text: str) -> bool:
    """Whether ``text`` names ``word`` as a whole word, singular or plural, any case ("mass" in "Two masses.",
    "nodule" in "nodules"; not "mass" in "massive")."""
    return re.search(rf"\b{re.escape(word)}(?:es|s)?\b", text, re.IGNORECASE) is not None


def strip_grounding(text: str) -> str:
    """``text`` without ``<ref>`` tags, ``<box>…</box>`` and bare ``[[…]]`` box lists (runs of spaces folded)."""
    return re.sub(r"[ \t]{2,}", " ", _TAG.sub("", text))


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, without the white space around it."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _END.finditer(text):
        if m.group() == "." and _abbreviation_before(text, start, m.start()):
            continue
        _add_span(spans, text, start, m.end())
        start = m.end()
    _add_span(spans, text, start, len(text))
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (see the module docstring for where one ends)."""
    return [text[a:b] for a, b in sentence_spans(text)]


def sentence_with(text: str, phrase: str) -> str:
    """The first sentence of ``text`` (grounding tags removed) that mentions ``phrase``
    (compared as :func:`phrase_key`); empty when none does."""
    needle = phrase_key(phrase)
    for sentence in split_sentences(strip_grounding(text)):
        if needle in phrase_key(sentence):
            return sentence
    return ""


def _abbreviation_before(text: str, start: int, stop: int) -> bool:
    words = text[start:stop].split()
    return bool(words) and words[-1].lstrip(_OPENERS).lower() in ABBREVIATIONS


def _add_span(spans: list[tuple[int, int]], text: str, a: int, b: int) -> None:
    piece = text[a:b]
    if piece.strip():
        a += len(piece) - len(piece.lstrip())
        spans.append((a, a + len(piece.strip())))
