"""Impression tints: each sentence that names a finding takes that finding's tier."""

from __future__ import annotations

from app.report.display import sentence_reliability
from app.report.draft import (
    DraftReport,
    FindingReliability,
    Origin,
    Provenance,
    StudyContext,
)
from inference.reliability.scoring import Tier


def test_impression_sentences_take_the_tier_of_the_findings_they_name():
    r = DraftReport(study=StudyContext("1.2.3", modality="CT"), provenance=Provenance("m", "1"))
    r.add_finding("Spiculated mass right lower lobe.", [], origin=Origin.AI, finding_type="mass",
                  reliability=FindingReliability(0.2, Tier.RED))
    r.add_finding("Small nodule right middle lobe.", [], origin=Origin.AI, finding_type="nodule",
                  reliability=FindingReliability(0.9, Tier.GREEN))
    text = "Right lower lobe mass, suspicious. Two small nodules. No effusion. Mass and nodule both seen."
    spans = sentence_reliability(text, r.findings)
    got = [(text[a:b], tier) for a, b, tier in spans]
    assert got == [
        ("Right lower lobe mass, suspicious.", Tier.RED),
        ("Two small nodules.", Tier.GREEN),
        ("Mass and nodule both seen.", Tier.RED),  # the least reliable finding named wins
    ]
    # a rejected finding no longer colours the impression
    r.reject(r.findings[0].id)
    assert [tier for *_, tier in sentence_reliability(text, r.findings)] == [Tier.GREEN, Tier.GREEN]
