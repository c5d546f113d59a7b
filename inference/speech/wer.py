"""Word error rate: (substitutions + deletions + insertions) / reference words.

Words are compared after lower-casing and dropping punctuation (hyphens and
decimal points inside words are kept, so "0.5" and "ground-glass" stay whole).
"""

from __future__ import annotations

import re

_PUNCT = re.compile(r"(?<!\d)[.](?!\d)|[,;:!?\"()\[\]]|(?<=\w)'(?=\s|$)")


def words(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (one row of the dynamic-programming table at a time)."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1]


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
