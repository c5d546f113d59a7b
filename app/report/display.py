"""How the report shows things: reliability in the impression, the study line.

Qt-free: :func:`sentence_reliability` says which stretches of the impression to tint
and in which tier; ``ui/report/panel.py`` paints them. Sentences are cut by the rule
every part of the app shares (:func:`inference.phrases.sentence_spans`).
:func:`study_label` is the study as the panel header, the text and the PDF name it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from app.report.draft import Finding, FindingStatus
from inference.phrases import sentence_spans
from inference.reliability.scoring import Tier, worst_tier


def sentence_reliability(text: str, findings: Sequence[Finding]) -> list[tuple[int, int, Tier]]:
    """(start, end, tier) for each sentence of ``text`` (the impression) that names a finding with a
    reliability: a sentence mentions a finding when it contains its finding type as a word
    ("mass", "nodule"); several findings → the least reliable tier. Rejected findings are ignored."""
    scored = [f for f in findings if f.reliability is not None and f.finding_type.strip()
              and f.status is not FindingStatus.REJECTED]
    spans: list[tuple[int, int, Tier]] = []
    for start, end in sentence_spans(text):
        sentence = text[start:end].lower()
        tiers = [f.reliability.tier for f in scored
                 if re.search(rf"\b{re.escape(f.finding_type.strip().lower())}s?\b", sentence)]
        if tiers:
            spans.append((start, end, worst_tier(tiers)))
    return spans


def study_label(modality: str, description: str) -> str:
    """"CT Chest" from ("CT", "Chest"); the description alone when it already names the modality
    ("CT CHEST ABDOMEN", "CT" → "CT CHEST ABDOMEN", never "CT CT CHEST ABDOMEN")."""
    modality, description = modality.strip(), " ".join(description.split())
    if modality and (description.upper() == modality.upper()
                     or description.upper().startswith(modality.upper() + " ")):
        return description
    return " ".join(x for x in (modality, description) if x)
