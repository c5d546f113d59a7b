"""Does the question fit the image? A check before the assistant answers.

A question that names a structure the series cannot show ("locate the right kidney"
on a brain MR, "left lung" on a hand X-ray) gets a warning a radiologist reads at a
glance: "The question asks about the right kidney but this series is a BRAIN MR."
The model is asked too (the prompt's guardrail tells it to call such a structure
absent and give no box); boxes it still draws for a mismatched structure are
flagged by :meth:`GuardrailResult.flag`.

The image's region comes from BodyPartExamined, the series and study descriptions
and the modality (a mammogram is a breast), all of them together: a warning is only
given when none of them can hold the structure. When the header names no region
(no BodyPartExamined, a description such as "Series 3"), the frame itself is looked
at (:func:`app.assistant.body_region.estimate_region`: lung, skull, body size); its
warning says it was judged from the image. When neither can tell, nothing is warned
but the result says so: ``region_checked`` is False and ``region_note`` reads "Could
not check the body region: …", so a reliability light never claims the question was
checked against the image. The vocabulary lives in ``resources/anatomy.yaml``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml

from app.assistant.body_region import RegionEstimate, estimate_region
from app.core.errors import XMedError
from inference.resources import resource

log = logging.getLogger(__name__)

ANATOMY_FILE = resource("anatomy.yaml")

_SIDES = {"right": "right", "rt": "right", "left": "left", "lt": "left", "bilateral": "both", "both": "both"}
_SIDE_CHECK_REGIONS = frozenset({"upper_limb", "lower_limb", "breast"})
#: an image estimate less sure than this is not used ("could not check" instead)
MIN_IMAGE_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Region:
    id: str
    label: str
    terms: tuple[str, ...]
    covers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Structure:
    id: str
    label: str
    terms: tuple[str, ...]
    regions: frozenset[str]
    lateral: bool = False


@dataclass(frozen=True)
class Mention:
    """A structure named in a question, with its side when one was given."""

    structure: Structure
    side: str  # "right", "left", "both" or ""
    text: str  # as written

    @property
    def label(self) -> str:
        if self.side == "both":
            return f"both {self.structure.label}s"
        return f"the {self.side} {self.structure.label}" if self.side else f"the {self.structure.label}"


def _term_pattern(term: str) -> str:
    parts = [re.escape(p) for p in term.lower().split()]
    return r"[\s_]+".join(parts)


def _compile(terms: Iterable[str]) -> re.Pattern[str]:
    alts = sorted({_term_pattern(t) for t in terms}, key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(alts) + r")(?![a-z0-9])")


class AnatomyFileError(XMedError):
    pass


@dataclass
class Anatomy:
    """The region and structure vocabulary with its matchers."""

    regions: dict[str, Region]
    structures: dict[str, Structure]
    modalities: dict[str, dict]
    _region_res: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False)
    _structure_re: list[tuple[re.Pattern[str], Structure]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self._region_res = {rid: _compile(r.terms) for rid, r in self.regions.items() if r.terms}
        side = r"(?:(?P<side>right|rt|left|lt|bilateral|both)\.?[\s_]+(?:(?:upper|lower|middle)[\s_]+)?)?"
        self._structure_re = [
            (re.compile(r"(?<![a-z0-9])" + side + r"(?P<term>" + _compile(s.terms).pattern + r")"), s)
            for s in self.structures.values()
        ]

    @classmethod
    def load(cls, path: Path | None = None) -> "Anatomy":
        return _load(Path(path or ANATOMY_FILE))

    def regions_in(self, text: str) -> set[str]:
        """Region ids a header text names, with combined regions expanded."""
        t = text.lower().replace("_", " ")
        found = {rid for rid, rx in self._region_res.items() if rx.search(t)}
        return self.expand(found)

    def expand(self, ids: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for rid in ids:
            out.add(rid)
            out.update(self.regions[rid].covers if rid in self.regions else ())
        return out

    def mentions(self, text: str) -> list[Mention]:
        """Structures a question names, in order, longest wording first where they overlap."""
        t = text.lower()
        hits: list[tuple[int, int, int, Mention]] = []
        for rx, s in self._structure_re:
            for m in rx.finditer(t):
                side = _SIDES.get(m.group("side") or "", "")
                term = m.end("term") - m.start("term")
                hits.append((m.start(), m.end(), term, Mention(s, side, text[m.start() : m.end()])))
        # longest wording first; on a tie the longer anatomical term ("left ventricle" of
        # the heart beats "left" + "ventricle" of the brain)
        hits.sort(key=lambda h: (h[0], -(h[1] - h[0]), -h[2]))
        out: list[Mention] = []
        end = -1
        for a, b, _term, mention in hits:
            if a >= end:
                out.append(mention)
                end = b
        return out


@lru_cache(maxsize=4)
def _load(path: Path) -> Anatomy:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        regions = {
            rid: Region(rid, str(r.get("label", rid.upper())), tuple(str(t) for t in r.get("terms", ())),
                        tuple(r.get("covers", ())))
            for rid, r in data["regions"].items()
        }
        structures = {
            sid: Structure(sid, str(s.get("label", sid)), tuple(str(t) for t in s["terms"]),
                           frozenset(s["regions"]), bool(s.get("lateral", False)))
            for sid, s in data["structures"].items()
        }
        modalities = {str(k).upper(): dict(v or {}) for k, v in (data.get("modalities") or {}).items()}
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise AnatomyFileError(
            f"The anatomy vocabulary {path.name} is missing or damaged; reinstall XMedGPT Workstation.",
            detail=str(exc),
        ) from exc
    unknown = {r for s in structures.values() for r in s.regions} - set(regions)
    if unknown:
        raise AnatomyFileError(f"The anatomy vocabulary names unknown regions: {', '.join(sorted(unknown))}.")
    return Anatomy(regions, structures, modalities)


@dataclass
class GuardrailResult:
    """What the check found; ``warnings`` are ready to show.

    ``region_checked`` tells whether the body region was known (from the header or the
    image, ``region_source``); when it was not, ``region_note`` says "Could not check the
    body region: …" and no structure of the question could be checked
    (:attr:`structures_unchecked`).
    """

    mentions: list[Mention]
    image_regions: frozenset[str]
    image_label: str  # e.g. "a BRAIN MR"
    mismatched: list[Mention] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    region_checked: bool = False  # the body region is known (header or image)
    region_source: str | None = None  # "header" | "image" | None
    region_estimate: RegionEstimate | None = None  # what the image said, when it was looked at
    region_note: str = ""  # "Could not check the body region: …" when it is not known

    @property
    def ok(self) -> bool:
        return not self.warnings

    @property
    def structures_unchecked(self) -> bool:
        """The question names a structure that could not be checked against the image."""
        return bool(self.mentions) and not self.region_checked

    def flag(self, phrase: str, anatomy: Anatomy | None = None) -> str | None:
        """The warning that applies to a box labelled ``phrase``, if it names a mismatched structure."""
        if not self.mismatched:
            return None
        named = (anatomy or Anatomy.load()).mentions(phrase)
        for bad in self.mismatched:
            for m in named:
                if m.structure.id == bad.structure.id and (not bad.side or not m.side or m.side == bad.side):
                    return self.warnings[self.mismatched.index(bad)]
        return None


def _article(word: str) -> str:
    return "an" if word[:1].upper() in "AEIOU" else "a"


def _image_label(anatomy: Anatomy, modality: str, body_part: str, texts: list[str], side: str) -> str:
    mod = modality.strip().upper()
    mod_label = str(anatomy.modalities.get(mod, {}).get("label", mod)) if mod else ""
    body = " ".join(body_part.split()).upper()
    if not body:
        for text in texts:
            ids = anatomy.regions_in(text)
            named = [anatomy.regions[r] for r in ids if not any(r in anatomy.regions[o].covers for o in ids)]
            if named:
                body = named[0].label
                break
    if side and body:
        body = f"{side.upper()} {body}"
    words = " ".join(w for w in (body, mod_label) if w)
    if not words:
        return "this image"
    return f"{_article(words)} {words}"


def _image_side(texts: Iterable[str], laterality: str) -> str:
    lat = laterality.strip().upper()
    if lat in ("R", "L"):
        return "right" if lat == "R" else "left"
    sides = set()
    for text in texts:
        for w in re.findall(r"[a-z]+", text.lower()):
            if w in ("right", "rt", "left", "lt"):
                sides.add(_SIDES[w])
    return sides.pop() if len(sides) == 1 else ""


def check_query(
    question: str,
    *,
    modality: str = "",
    body_part: str = "",
    series_description: str = "",
    study_description: str = "",
    laterality: str = "",
    anatomy: Anatomy | None = None,
    pixels: np.ndarray | None = None,
    spacing_mm: tuple[float, float] | None = None,
    rescaled: bool = True,
    image_region: RegionEstimate | None = None,
) -> GuardrailResult:
    """Check a question against what the DICOM header says the image shows; when the
    header names no region, against what the frame itself shows.

    ``pixels`` is the frame after the modality LUT (HU for CT), ``spacing_mm`` its (row,
    column) pixel spacing; ``image_region`` an estimate made already (then ``pixels`` is
    not looked at). The image is only looked at when the header tells nothing.
    """
    anatomy = anatomy or Anatomy.load()
    texts = [t for t in (body_part, series_description, study_description) if t and t.strip()]
    regions: set[str] = set()
    for text in texts:
        regions |= anatomy.regions_in(text)
    regions |= anatomy.expand(anatomy.modalities.get(modality.strip().upper(), {}).get("regions", ()))
    mentions = anatomy.mentions(question)
    side = _image_side(texts, laterality)
    result = GuardrailResult(
        mentions=mentions,
        image_regions=frozenset(regions),
        image_label=_image_label(anatomy, modality, body_part, texts, ""),
    )
    if regions:
        result.region_checked, result.region_source = True, "header"
    else:
        estimate = image_region
        if estimate is None and pixels is not None:
            estimate = estimate_region(pixels, modality, spacing_mm, rescaled=rescaled)
        result.region_estimate = estimate
        if estimate is not None and estimate.region is not None and estimate.confidence >= MIN_IMAGE_CONFIDENCE:
            regions = anatomy.expand(r for r in estimate.regions() if r in anatomy.regions)
            if regions:
                result.image_regions = frozenset(regions)
                result.image_label = _estimate_label(anatomy, modality, estimate.region)
                result.region_checked, result.region_source = True, "image"
        if not regions:
            if estimate is None:
                why = "the header names none and the image was not available"
            elif estimate.region is None:
                why = f"the header names none and the image cannot tell ({_sentence(estimate.evidence)})"
            else:
                why = (f"the header names none and the image is not clear enough ({_sentence(estimate.evidence)}; "
                       f"confidence {estimate.confidence:.0%})")
            result.region_note = f"Could not check the body region: {why}."
            if mentions:
                log.info("guardrail: %s", result.region_note)
            return result
    for m in mentions:
        s = m.structure
        if not (s.regions & regions):
            result.mismatched.append(m)
            result.warnings.append(_mismatch_warning(m, result))
        elif (
            result.region_source == "header"
            and s.lateral and m.side in ("right", "left") and side and side != m.side
            and (s.regions & regions) <= _SIDE_CHECK_REGIONS
        ):
            result.mismatched.append(m)
            label = _image_label(anatomy, modality, body_part, texts, side)
            result.warnings.append(f"The question asks about {m.label} but this series is {label}.")
    if result.warnings:
        log.info("guardrail: %s", " ".join(result.warnings))
    return result


def _mismatch_warning(m: Mention, result: GuardrailResult) -> str:
    if result.region_source == "image" and result.region_estimate is not None:
        evidence = _sentence(result.region_estimate.evidence)
        return (f"The question asks about {m.label} but this image looks like {result.image_label}. "
                f"Judged from the image, as the header names no body part: {evidence}.")
    return f"The question asks about {m.label} but this series is {result.image_label}."


def _estimate_label(anatomy: Anatomy, modality: str, region: str) -> str:
    mod = modality.strip().upper()
    mod_label = str(anatomy.modalities.get(mod, {}).get("label", mod)) if mod else ""
    body = anatomy.regions[region].label if region in anatomy.regions else region.upper()
    words = " ".join(w for w in (body, mod_label) if w)
    return f"{_article(words)} {words}"


def _sentence(text: str) -> str:
    """An evidence sentence to quote inside another: no final full stop, first letter lower case
    unless it starts a number or an acronym."""
    t = text.strip().rstrip(".")
    if len(t) > 1 and t[0].isupper() and not t[1].isupper():
        t = t[0].lower() + t[1:]
    return t


def check_series(question: str, series, study_description: str = "", laterality: str = "",
                 pixels: np.ndarray | None = None, spacing_mm: tuple[float, float] | None = None,
                 rescaled: bool = True) -> GuardrailResult:
    """:func:`check_query` for an :class:`app.dicom.model.Series` (and, optionally, the frame
    asked about: its pixels after the modality LUT and its pixel spacing)."""
    return check_query(
        question,
        modality=series.modality,
        body_part=series.body_part,
        series_description=series.description,
        study_description=study_description,
        laterality=laterality,
        pixels=pixels,
        spacing_mm=spacing_mm,
        rescaled=rescaled,
    )
