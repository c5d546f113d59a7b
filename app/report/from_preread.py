"""A pre-read lesion as a report finding: the AI's proposal, taken by the reader.

The series pre-read (:mod:`app.assistant.preread`) lists lesions; none of them is in the report until
the reader accepts it (the product rule: AI text is a proposal until accepted). Accepting one
(:func:`accept_lesion`) adds it to the study's draft as an AI finding — key-slice box, slice, size and
the reasoning's description, the lesion's reliability tier, the window it was read in — and records
the reader's acceptance as a second, separate edit, so the audit trail and Undo show both: the AI
proposed it, the reader took it. The same lesion accepted twice is one finding.

:func:`audit_preread` records a whole pre-read in the audit trail (request and output), as
``xmedgpt preread`` does. Qt-free: the viewer's pre-read panel and tests call the same functions.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.assistant.evidence import sizes_disagree, stated_size_mm
from app.assistant.preread import LUNG, SOFT_TISSUE, UNBOXED_PREFIX
from app.dicom.model import Volume, Window
from app.report.audit import AuditLog
from app.report.draft import (
    Finding,
    FindingReliability,
    Origin,
    Provenance,
    ReportBox,
    ReportError,
    StudyContext,
)
from app.report.session import ReportSession, frame_refs
from app.report.templates import template_for
from inference.phrases import names, phrase_key, strip_grounding
from inference.reliability.scoring import Tier
from inference.types import Box

log = logging.getLogger(__name__)

TIERS = ("green", "amber", "red")


class Lesion(Protocol):
    """What the report needs of a pre-read lesion (:class:`app.assistant.preread.Candidate` has it)."""

    id: str
    key_slice: int
    diameter_mm: float
    location: str
    description: str
    reliability: dict | None

    @property
    def key_box(self) -> Box: ...

    @property
    def slices(self) -> tuple[int, int]: ...

    @property
    def window(self) -> str: ...

    @property
    def phrase(self) -> str: ...


# ---- what a lesion says -------------------------------------------------------------------

def lesion_tier(lesion: Lesion) -> str:
    """"green", "amber" or "red"; "" when its reliability was not assessed."""
    tier = str((lesion.reliability or {}).get("tier") or "")
    return tier if tier in TIERS else ""


def lesion_reliability(lesion: Lesion) -> FindingReliability | None:
    """The lesion's tier and score as the report keeps them; None when not assessed."""
    tier = lesion_tier(lesion)
    if not tier:
        return None
    score = float((lesion.reliability or {}).get("score") or 0.0)
    return FindingReliability(min(max(score, 0.0), 1.0), Tier(tier), detail="pre-read")


def slice_range_text(lesion: Lesion) -> str:
    """Image numbers as the viewer shows them (1-based): "image 12" or "images 17–19 (key image 18)"."""
    first, last = lesion.slices
    if first == last:
        return f"image {first + 1}"
    return f"images {first + 1}–{last + 1} (key image {lesion.key_slice + 1})"


def description_text(lesion: Lesion) -> str:
    """The reasoning's description without grounding tags, on one line."""
    return " ".join(strip_grounding(lesion.description or "").split())


def own_description(lesion: Lesion) -> str:
    """:func:`description_text` when the reasoning at the key slice described this lesion (boxed it); "" when it
    boxed something else or nothing -- its words may be another lesion's, so they stay in the Pre-read panel and
    out of the report."""
    text = description_text(lesion)
    return "" if text.startswith(UNBOXED_PREFIX) else text


def lesion_text(lesion: Lesion) -> str:
    """The finding's text: where, what and how large, on which images, then the model's description of it.

    ``Right lung, images 17–19 (key image 18): nodule, 32 mm. A round solid nodule with smooth margins.``
    """
    where = (lesion.location or "").strip()
    where = where[:1].upper() + where[1:] if where else "Pre-read lesion"
    what = (lesion.phrase or "lesion").strip() or "lesion"
    head = f"{where}, {slice_range_text(lesion)}: {what}, {lesion.diameter_mm:.0f} mm."
    desc = own_description(lesion)
    if desc and desc[-1] not in ".!?":
        desc += "."
    return " ".join(t for t in (head, desc, size_conflict_text(lesion), kind_conflict_text(lesion)) if t)


def size_conflict_text(lesion: Lesion) -> str:
    """A sentence when the description states a size the lesion's boxes do not measure (the reliability
    check's size rule), so the finding does not carry two sizes silently; "" otherwise.

    ``Sizes disagree: the description says 32 mm, the boxes measure 65 mm.``
    """
    stated = stated_size_mm(own_description(lesion))
    if stated is None or not sizes_disagree(stated[0], lesion.diameter_mm):
        return ""
    return (f"Sizes disagree: the description says {stated[0]:.0f} mm, the boxes measure "
            f"{lesion.diameter_mm:.0f} mm.")


#: what kind of lesion a phrase calls it, where the sweep and the reasoning can disagree
_KINDS = ("mass", "nodule", "cyst")


def _kinds(text: str) -> set[str]:
    return {k for k in _KINDS if names(k, text)}


def kind_conflict_text(lesion: Lesion) -> str:
    """A sentence when the sweep's phrase and the reasoning's description call the lesion different kinds, so
    the finding does not say "nodule, 15 mm. A 33 mm mass ..." silently; "" otherwise.

    ``Kinds disagree: the sweep called it a nodule, the description a mass.``
    """
    said, described = _kinds(lesion.phrase or ""), _kinds(own_description(lesion))
    if not said or not described or said & described:
        return ""
    return (f"Kinds disagree: the sweep called it a {' or '.join(sorted(said))}, the description a "
            f"{' or '.join(sorted(described))}.")


def window_of(lesion: Lesion) -> Window | None:
    """The display window the lesion was read in (its key slice's)."""
    return {"lung": LUNG, "soft tissue": SOFT_TISSUE}.get(lesion.window)


def finding_type_of(lesion: Lesion, modality: str) -> str:
    """The template's finding type the phrase or description names (longest first); "" if none."""
    words = phrase_key(f"{lesion.phrase} {own_description(lesion)}")
    for t in sorted(template_for(modality).finding_types, key=len, reverse=True):
        if t != "other" and names(t, words):
            return t
    return ""


def green_lesions(lesions: Iterable[Lesion]) -> list[Lesion]:
    return [les for les in lesions if lesion_tier(les) == "green"]


# ---- into the report ------------------------------------------------------------------------

@dataclass(frozen=True)
class Accepted:
    """One lesion taken into the report: its finding id, and whether it was there already."""

    lesion_id: str
    finding_id: str
    already: bool = False


def _key_report_box(lesion: Lesion, volume: Volume) -> ReportBox:
    ref = frame_refs(volume)(lesion.key_slice)
    b = lesion.key_box
    return ReportBox(Box(float(b.x0), float(b.y0), float(b.x1), float(b.y1)), ref.slice_index,
                     ref.sop_instance_uid, ref.series_uid, ref.frame_number)


def _same_box(a: Box, b: Box, tol: float = 1e-3) -> bool:
    return all(abs(getattr(a, k) - getattr(b, k)) <= tol for k in ("x0", "y0", "x1", "y1"))


def existing_finding(session: ReportSession, lesion: Lesion, volume: Volume) -> Finding | None:
    """The AI finding this lesion already became (same text, same key-slice box), if any."""
    if session.report is None:
        return None
    box = _key_report_box(lesion, volume)
    text = lesion_text(lesion)
    for f in session.report.findings:
        if f.origin is Origin.AI and f.ai_text == text and any(
                b.series_uid == box.series_uid and b.slice_index == box.slice_index and _same_box(b.box, box.box)
                for b in f.boxes):
            return f
    return None


def accept_lesion(session: ReportSession, lesion: Lesion, volume: Volume, study: StudyContext, *,
                  model_id: str = "", engine: str = "") -> Accepted:
    """Put ``lesion`` into the study's draft as an AI finding the reader accepted (two edits: the AI's
    proposal, then the reader's acceptance). The draft is created when the study has none yet; a lesion
    accepted before is not added again (it is accepted again if the reader had set it back)."""
    session.ensure_report(study)
    report = session.report
    if report.signed:
        raise ReportError("This study's report is already signed; add the lesion in an addendum.")
    found = existing_finding(session, lesion, volume)
    if found is not None:
        if not found.included:
            report.accept(found.id)
        return Accepted(lesion.id, found.id, already=True)
    if not report.provenance.model_id and model_id:
        report.provenance = Provenance(model_id=model_id, engine=engine)
    f = report.add_finding(lesion_text(lesion), [_key_report_box(lesion, volume)], origin=Origin.AI,
                           finding_type=finding_type_of(lesion, study.modality or volume.series.modality),
                           reliability=lesion_reliability(lesion), window=window_of(lesion))
    report.accept(f.id)
    log.info("pre-read lesion %s accepted into the report as finding %s", lesion.id, f.id)
    return Accepted(lesion.id, f.id)


def accept_lesions(session: ReportSession, lesions: Sequence[Lesion], volume: Volume, study: StudyContext, *,
                   model_id: str = "", engine: str = "") -> list[Accepted]:
    return [accept_lesion(session, les, volume, study, model_id=model_id, engine=engine) for les in lesions]


# ---- the audit trail --------------------------------------------------------------------------

def audit_preread(audit: AuditLog, study_uid: str, document: Mapping, volume: Volume, *,
                  source: str = "viewer pre-read", weights_sha256: str = "") -> None:
    """Record a pre-read (``Preread.to_json()``) as an AI request and its output, for the viewer and
    ``xmedgpt preread`` alike; the weaker candidates' boxes (under the operating point) are marked
    ``below_operating_point``."""
    refs = frame_refs(volume)
    model = document.get("model") or {}
    model_id = model.get("id", "") if isinstance(model, Mapping) else str(model)
    engine = model.get("engine", "") if isinstance(model, Mapping) else ""
    lesions = list(document.get("lesions") or [])
    weaker = list(document.get("weaker") or [])  # under the operating point: shown only when the reader asks
    audit.ai_request(study_uid, model_id=model_id, weights_sha256=weights_sha256, prompt="series pre-read",
                     image={"series_uid": document.get("series_uid", volume.series.uid), "slices": len(volume)},
                     source=source)
    audit.ai_output(study_uid, model_id=model_id, weights_sha256=weights_sha256,
                    text=json.dumps(lesions, ensure_ascii=False),
                    boxes=[{"lesion": les["id"], "frame": les["key_slice"], "box_pixels": les["box_pixels"],
                            "sop_instance_uid": refs(les["key_slice"]).sop_instance_uid,
                            **({"below_operating_point": True} if weak else {})}
                           for les, weak in [(x, False) for x in lesions] + [(x, True) for x in weaker]],
                    engine=engine, source=source, cancelled=bool(document.get("cancelled")))
