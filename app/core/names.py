"""How people, dates, windows and finding boxes are written: one rule, with the style named at each use.

DICOM person names (PN) are ``Family^Given^Middle^Prefix^Suffix`` (with optional
``=``-separated ideographic/phonetic groups, of which the first is shown). Two styles:

- ``NameStyle.LIST`` — family first, as a study list or image corner shows it:
  ``DOE^JOHN^^DR`` → ``DOE, JOHN`` (only family and given names);
- ``NameStyle.FULL`` — as a person is named in running text (a report, a signature):
  ``DOE^JOHN^^DR`` → ``DR JOHN DOE``.

DICOM dates (DA, ``YYYYMMDD``) are shown as ISO dates, ``2024-01-31``.
Window names, whether a preset's or a header's explanation, are shown in sentence case
(``Soft tissue``), and a finding's box on the image is labelled ``AI 1 · lesion · green``.
"""

from __future__ import annotations

from enum import Enum


class NameStyle(Enum):
    LIST = "list"
    FULL = "full"


def _components(pn: str) -> list[str]:
    return [p.strip() for p in (str(pn).split("=")[0].split("^") + [""] * 5)[:5]]


def person_name(pn: str, style: NameStyle) -> str:
    """A DICOM PN written in ``style``; a name without ``^`` is returned as it is (trimmed)."""
    text = str(pn)
    if "^" not in text:
        return text.split("=")[0].strip()
    family, given, middle, prefix, suffix = _components(text)
    if style is NameStyle.LIST:
        return f"{family}, {given}" if family and given else family or given
    return " ".join(x for x in (prefix, given, middle, family, suffix) if x)


def display_date(da: str) -> str:
    """DICOM DA ``"20240131"`` → ``"2024-01-31"``; anything else unchanged (trimmed)."""
    s = str(da).strip()
    if len(s) == 8 and s.isdigit():
        return f"{s[:4]}-{s[4:6]}-{s[6:]}"
    return s


def window_name(name: str) -> str:
    """A window's name as every view shows it: sentence case, ``"SOFT TISSUE"`` / ``"soft tissue"`` →
    ``"Soft tissue"``; a width/level name (``"400/40"``) unchanged."""
    s = " ".join(str(name).replace("_", " ").split())
    if not any(c.isalpha() for c in s):
        return s
    return s[:1].upper() + s[1:].lower()


def box_label(who: str, number: int, what: str, tier: str = "", *, limit: int = 32) -> str:
    """The label of a finding's box on the image, the one form everywhere: ``"AI 1 · lesion · green"``.

    ``who``: ``"AI"`` or ``"You"``; ``what``: the finding's type or phrase (shortened to ``limit``
    characters with "…"); ``tier``: its reliability tier, when known.
    """
    what = " ".join(str(what).split())
    if len(what) > limit:
        what = what[: limit - 1].rstrip() + "…"
    return " · ".join(x for x in (f"{who} {number}", what, tier) if x)


def approximate_ml(ml: float) -> str:
    """An approximate volume as a reader writes it: two significant figures, at least to a hundredth
    of a mL (``50.06`` → ``50 mL``, ``4.37`` → ``4.4 mL``, ``0.063`` → ``0.06 mL``)."""
    ml = float(ml)
    if abs(ml) >= 10:
        return f"{ml:.0f} mL"
    if abs(ml) >= 1:
        return f"{ml:.1f} mL"
    return f"{ml:.2f} mL"
