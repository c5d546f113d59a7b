"""The draft report and its edits as plain dicts and back, for the workspace's snapshots and journal.

JSON-ready: enums as their values, boxes as ``[x0, y0, x1, y1]``. Fields that older
files lack take their defaults when read.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from app.report.draft import (
    DraftReport,
    Edit,
    Finding,
    FindingReliability,
    FindingStatus,
    Origin,
    Provenance,
    ReportBox,
    Signature,
    StudyContext,
)
from inference.reliability.scoring import Tier
from inference.types import Box


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
        "signature": asdict(report.signature) if report.signature else None,
    }


def report_from_dict(data: dict[str, Any]) -> DraftReport:
    sig = data.get("signature")
    return DraftReport(
        study=StudyContext(**data["study"]),
        findings=[finding_from_dict(f) for f in data.get("findings", [])],
        impression=data.get("impression", ""),
        provenance=Provenance(**data.get("provenance", {})),
        template=data.get("template", ""),
        report_id=data["report_id"],
        created_at=data.get("created_at", ""),
        revision=int(data.get("revision", 0)),
        signature=Signature(**sig) if sig else None,
    )


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
    }


def finding_from_dict(d: dict[str, Any]) -> Finding:
    rel = d.get("reliability")
    return Finding(
        id=d["id"],
        text=d["text"],
        boxes=tuple(
            ReportBox(
                box=Box(*map(float, b["box"])),
                slice_index=int(b["slice_index"]),
                sop_instance_uid=b["sop_instance_uid"],
                series_uid=b["series_uid"],
                frame_number=int(b.get("frame_number", 1)),
                tracking_uid=b["tracking_uid"],
            )
            for b in d.get("boxes", [])
        ),
        origin=Origin(d.get("origin", "ai")),
        status=FindingStatus(d.get("status", "proposed")),
        finding_type=d.get("finding_type", ""),
        reliability=FindingReliability(float(rel["score"]), Tier(rel["tier"]), rel.get("detail", "")) if rel else None,
        source_step=d.get("source_step"),
        ai_text=d.get("ai_text", ""),
    )


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
    }


def edit_from_dict(d: dict[str, Any]) -> Edit:
    return Edit(
        action=d["action"],
        finding_id=d.get("finding_id"),
        index=int(d.get("index", -1)),
        before=finding_from_dict(d["before"]) if d.get("before") else None,
        after=finding_from_dict(d["after"]) if d.get("after") else None,
        impression_before=d.get("impression_before"),
        impression_after=d.get("impression_after"),
        signature=Signature(**d["signature"]) if d.get("signature") else None,
        revision=int(d.get("revision", 0)),
        at=d.get("at", ""),
    )
