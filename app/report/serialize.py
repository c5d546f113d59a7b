"""The draft report and its edits as plain dicts and back, for the workspace's snapshots and journal.

JSON-ready: enums as their values, boxes as ``[x0, y0, x1, y1]``, windows as
``{"width", "center", "name"}``. Fields that older files lack take their defaults when
read (a draft saved before the indication, technique and comparison sections, finding
windows or addenda existed comes back with them empty).

Reading checks every field's type and range (a snapshot or journal line may be damaged
or hand-made): anything else, unknown fields included, raises :class:`SnapshotError`,
a ``ValueError`` naming the field, and nothing else, so the workspace can set the file
aside and open the study.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from app.core.strict_json import (
    InvalidJson,
    expect_each,
    expect_int,
    expect_list,
    expect_number,
    expect_object,
    expect_str,
    only_keys,
)
from app.dicom.model import Window
from app.report.draft import (
    SECTIONS,
    Addendum,
    AiSentence,
    DraftReport,
    Edit,
    Finding,
    FindingReliability,
    FindingStatus,
    Origin,
    Provenance,
    ReportBox,
    SentenceStatus,
    Signature,
    StudyContext,
)
from inference.reliability.scoring import Tier
from inference.types import Box

SnapshotError = InvalidJson  # what reading a damaged snapshot or journal edit raises (a ValueError)

MAX_TEXT = 1_000_000  # characters in one text field
MAX_FINDINGS = 10_000
MAX_BOXES = 10_000
MAX_PIXELS = 1 << 24  # coordinates, slice indices and frame numbers
MAX_REVISION = 1 << 53
_REPORT_KEYS = ("report_id", "created_at", "revision", "template", "study", "provenance", "findings",
                "impression", "signature", *SECTIONS, "addenda", "ai_sentences")
_SENTENCE_KEYS = ("id", "text", "status", "finding_ids", "caution")
_SENTENCE_STATUSES = frozenset(s.value for s in SentenceStatus)
_FINDING_KEYS = ("id", "text", "boxes", "origin", "status", "finding_type", "reliability", "source_step", "ai_text",
                 "window")
_ADDENDUM_KEYS = ("id", "text", "author", "created_at", "signature")
MAX_ADDENDA = 1000
_BOX_KEYS = ("box", "slice_index", "sop_instance_uid", "series_uid", "frame_number", "tracking_uid")
_EDIT_KEYS = ("action", "finding_id", "index", "before", "after", "impression_before", "impression_after",
              "signature", "revision", "at", "section", "section_before", "section_after", "addendum_before",
              "addendum_after", "sentences_before", "sentences_after")
_ORIGINS = frozenset(o.value for o in Origin)
_STATUSES = frozenset(s.value for s in FindingStatus)
_TIERS = frozenset(t.value for t in Tier if t is not Tier.NONE)


def report_to_dict(report: DraftReport) -> dict[str, Any]:
    return {
        "report_id": report.report_id,
        "created_at": report.created_at,
        "revision": report.revision,
        "template": report.template,
        "study": asdict(report.study),
        "provenance": asdict(report.provenance),
        "findings": [finding_to_dict(f) for f in report.findings],
        "impression": report.impression,
        **{name: getattr(report, name) for name in SECTIONS},
        "signature": asdict(report.signature) if report.signature else None,
        "addenda": [addendum_to_dict(a) for a in report.addenda],
        "ai_sentences": [sentence_to_dict(x) for x in report.ai_sentences],
    }


def report_from_dict(data: Any) -> DraftReport:
    """A report from a snapshot dict; :class:`SnapshotError` (a ValueError) naming the first bad field."""
    d = expect_object(data, "the draft")
    only_keys(d, _REPORT_KEYS, "the draft")
    sig = d.get("signature")
    findings = expect_list(d.get("findings", []), "'findings'", max_items=MAX_FINDINGS)
    report = DraftReport(
        study=_dataclass_of_text(StudyContext, d.get("study"), "study", required=("study_uid",)),
        findings=expect_each(findings, "findings", finding_from_dict),
        impression=expect_str(d, "impression", "", max_len=MAX_TEXT),
        **{name: expect_str(d, name, "", max_len=MAX_TEXT) for name in SECTIONS},
        provenance=_dataclass_of_text(Provenance, d.get("provenance", {}), "provenance"),
        template=expect_str(d, "template", "", max_len=256),
        report_id=expect_str(d, "report_id", max_len=256, non_empty=True),
        created_at=expect_str(d, "created_at", "", max_len=64),
        revision=expect_int(d, "revision", 0, lo=0, hi=MAX_REVISION),
        signature=None if sig is None else _dataclass_of_text(Signature, sig, "signature",
                                                               required=("reader_name", "signed_at")),
        addenda=expect_each(expect_list(d.get("addenda", []), "'addenda'", max_items=MAX_ADDENDA), "addenda",
                            addendum_from_dict),
        # a draft saved before AI sentences existed has none: its impression is the reader's text
        ai_sentences=_sentences_from(d.get("ai_sentences", []), "'ai_sentences'"),
    )
    ids = [f.id for f in report.findings]
    if len(set(ids)) != len(ids):
        raise SnapshotError("two findings have the same id")
    return report


def sentence_to_dict(s: AiSentence) -> dict[str, Any]:
    return {"id": s.id, "text": s.text, "status": s.status.value, "finding_ids": list(s.finding_ids),
            "caution": s.caution}


def sentence_from_dict(data: Any, what: str = "ai sentence") -> AiSentence:
    d = expect_object(data, what)
    only_keys(d, _SENTENCE_KEYS, what)
    ids = expect_list(d.get("finding_ids", []), f"'{what}.finding_ids'", max_items=MAX_FINDINGS)
    if not all(isinstance(i, str) and len(i) <= 256 for i in ids):
        raise SnapshotError(f"'{what}.finding_ids' must be a list of finding ids")
    return AiSentence(
        id=expect_str(d, "id", where=what, max_len=256, non_empty=True),
        text=expect_str(d, "text", where=what, max_len=MAX_TEXT),
        status=SentenceStatus(expect_str(d, "status", "proposed", where=what, choices=_SENTENCE_STATUSES)),
        finding_ids=tuple(ids),
        caution=expect_str(d, "caution", "", where=what, max_len=MAX_TEXT),
    )


def _sentences_from(data: Any, what: str) -> list[AiSentence]:
    return expect_each(expect_list(data, what, max_items=MAX_FINDINGS), what, sentence_from_dict)


def finding_to_dict(f: Finding) -> dict[str, Any]:
    return {
        "id": f.id,
        "text": f.text,
        "boxes": [
            {
                "box": [b.box.x0, b.box.y0, b.box.x1, b.box.y1],
                "slice_index": b.slice_index,
                "sop_instance_uid": b.sop_instance_uid,
                "series_uid": b.series_uid,
                "frame_number": b.frame_number,
                "tracking_uid": b.tracking_uid,
            }
            for b in f.boxes
        ],
        "origin": f.origin.value,
        "status": f.status.value,
        "finding_type": f.finding_type,
        "reliability": (
            {"score": f.reliability.score, "tier": f.reliability.tier.value, "detail": f.reliability.detail}
            if f.reliability
            else None
        ),
        "source_step": f.source_step,
        "ai_text": f.ai_text,
        "window": window_to_dict(f.window),
    }


def finding_from_dict(data: Any, what: str = "finding") -> Finding:
    d = expect_object(data, what)
    only_keys(d, _FINDING_KEYS, what)
    rel = d.get("reliability")
    step = expect_int(d, "source_step", None, where=what, lo=0, hi=1000)
    return Finding(
        id=expect_str(d, "id", where=what, max_len=256, non_empty=True),
        text=expect_str(d, "text", where=what, max_len=MAX_TEXT),
        boxes=tuple(expect_each(expect_list(d.get("boxes", []), f"'{what}.boxes'", max_items=MAX_BOXES),
                                f"{what}.boxes", _box_from_dict)),
        origin=Origin(expect_str(d, "origin", "ai", where=what, choices=_ORIGINS)),
        status=FindingStatus(expect_str(d, "status", "proposed", where=what, choices=_STATUSES)),
        finding_type=expect_str(d, "finding_type", "", where=what, max_len=256),
        reliability=None if rel is None else _reliability_from_dict(rel, f"{what}.reliability"),
        source_step=step,
        ai_text=expect_str(d, "ai_text", "", where=what, max_len=MAX_TEXT),
        window=window_from_dict(d.get("window"), f"{what}.window"),
    )


def window_to_dict(w: Window | None) -> dict[str, Any] | None:
    return None if w is None else {"width": w.width, "center": w.center, "name": w.name}


def window_from_dict(data: Any, what: str = "window") -> Window | None:
    if data is None:
        return None
    w = expect_object(data, what)
    only_keys(w, ("width", "center", "name"), what)
    return Window(expect_number(w, "width", where=what, lo=1e-6, hi=1e7),
                  expect_number(w, "center", where=what, lo=-1e7, hi=1e7),
                  expect_str(w, "name", "", where=what, max_len=256))


def addendum_to_dict(a: Addendum) -> dict[str, Any]:
    return {"id": a.id, "text": a.text, "author": a.author, "created_at": a.created_at,
            "signature": asdict(a.signature) if a.signature else None}


def addendum_from_dict(data: Any, what: str = "addendum") -> Addendum:
    d = expect_object(data, what)
    only_keys(d, _ADDENDUM_KEYS, what)
    sig = d.get("signature")
    return Addendum(
        id=expect_str(d, "id", where=what, max_len=256, non_empty=True),
        text=expect_str(d, "text", "", where=what, max_len=MAX_TEXT),
        author=expect_str(d, "author", "", where=what, max_len=MAX_TEXT),
        created_at=expect_str(d, "created_at", "", where=what, max_len=64),
        signature=None if sig is None else _dataclass_of_text(Signature, sig, f"{what}.signature",
                                                               required=("reader_name", "signed_at")),
    )


def _box_from_dict(data: Any, what: str) -> ReportBox:
    b = expect_object(data, what)
    only_keys(b, _BOX_KEYS, what)
    xyxy = expect_list(b.get("box"), f"'{what}.box'")
    if len(xyxy) != 4:
        raise SnapshotError(f"'{what}.box' must be four numbers")
    coords = {str(i): v for i, v in enumerate(xyxy)}
    x0, y0, x1, y1 = (expect_number(coords, str(i), where=f"{what}.box", lo=-MAX_PIXELS, hi=MAX_PIXELS)
                      for i in range(4))
    return ReportBox(
        box=Box(x0, y0, x1, y1),
        slice_index=expect_int(b, "slice_index", where=what, lo=0, hi=MAX_PIXELS),
        sop_instance_uid=expect_str(b, "sop_instance_uid", where=what, max_len=256),
        series_uid=expect_str(b, "series_uid", where=what, max_len=256),
        frame_number=expect_int(b, "frame_number", 1, where=what, lo=1, hi=MAX_PIXELS),
        tracking_uid=expect_str(b, "tracking_uid", where=what, max_len=256),
    )


def _reliability_from_dict(data: Any, what: str) -> FindingReliability:
    r = expect_object(data, what)
    only_keys(r, ("score", "tier", "detail"), what)
    return FindingReliability(
        expect_number(r, "score", where=what, lo=0.0, hi=1.0),
        Tier(expect_str(r, "tier", where=what, choices=_TIERS)),
        expect_str(r, "detail", "", where=what, max_len=MAX_TEXT),
    )


def _dataclass_of_text(cls: type, data: Any, what: str, required: tuple[str, ...] = ()) -> Any:
    """A dataclass whose fields are all text (study, provenance, signature), from its dict."""
    d = expect_object(data, f"'{what}'")
    names = [f.name for f in fields(cls)]
    only_keys(d, names, f"'{what}'")
    return cls(**{n: expect_str(d, n, *(() if n in required else ("",)), where=what, max_len=MAX_TEXT)
                  for n in names if n in d or n in required})


def edit_to_dict(e: Edit) -> dict[str, Any]:
    return {
        "action": e.action,
        "finding_id": e.finding_id,
        "index": e.index,
        "before": finding_to_dict(e.before) if e.before else None,
        "after": finding_to_dict(e.after) if e.after else None,
        "impression_before": e.impression_before,
        "impression_after": e.impression_after,
        "signature": asdict(e.signature) if e.signature else None,
        "revision": e.revision,
        "at": e.at,
        "section": e.section,
        "section_before": e.section_before,
        "section_after": e.section_after,
        "addendum_before": addendum_to_dict(e.addendum_before) if e.addendum_before else None,
        "addendum_after": addendum_to_dict(e.addendum_after) if e.addendum_after else None,
        "sentences_before": None if e.sentences_before is None else [sentence_to_dict(x) for x in e.sentences_before],
        "sentences_after": None if e.sentences_after is None else [sentence_to_dict(x) for x in e.sentences_after],
    }


def edit_from_dict(data: Any) -> Edit:
    """An edit from a journal line; :class:`SnapshotError` (a ValueError) naming the first bad field."""
    d = expect_object(data, "the edit")
    only_keys(d, _EDIT_KEYS, "the edit")
    before, after, sig = d.get("before"), d.get("after"), d.get("signature")
    a_before, a_after = d.get("addendum_before"), d.get("addendum_after")
    return Edit(
        action=expect_str(d, "action", where="edit", max_len=64, non_empty=True),
        finding_id=expect_str(d, "finding_id", None, where="edit", max_len=256),
        index=expect_int(d, "index", -1, where="edit", lo=-1, hi=MAX_FINDINGS),
        before=None if before is None else finding_from_dict(before, "edit.before"),
        after=None if after is None else finding_from_dict(after, "edit.after"),
        impression_before=expect_str(d, "impression_before", None, where="edit", max_len=MAX_TEXT),
        impression_after=expect_str(d, "impression_after", None, where="edit", max_len=MAX_TEXT),
        signature=None if sig is None else _dataclass_of_text(Signature, sig, "edit.signature",
                                                               required=("reader_name", "signed_at")),
        revision=expect_int(d, "revision", 0, where="edit", lo=0, hi=MAX_REVISION),
        at=expect_str(d, "at", "", where="edit", max_len=64),
        section=expect_str(d, "section", None, where="edit", choices=SECTIONS),
        section_before=expect_str(d, "section_before", None, where="edit", max_len=MAX_TEXT),
        section_after=expect_str(d, "section_after", None, where="edit", max_len=MAX_TEXT),
        addendum_before=None if a_before is None else addendum_from_dict(a_before, "edit.addendum_before"),
        addendum_after=None if a_after is None else addendum_from_dict(a_after, "edit.addendum_after"),
        sentences_before=None if d.get("sentences_before") is None
        else tuple(_sentences_from(d["sentences_before"], "edit.sentences_before")),
        sentences_after=None if d.get("sentences_after") is None
        else tuple(_sentences_from(d["sentences_after"], "edit.sentences_after")),
    )
