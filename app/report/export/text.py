"""The report as plain text, for the clipboard and for pasting into a RIS.

Only what the reader keeps goes in: accepted, edited and the reader's own
findings; rejected AI findings are left out (they stay in the audit trail).
Indication, technique and comparison come before the findings when written.
The footer says whether the report is signed, by whom, and that an AI assisted;
signed addenda follow it, each with its own signature.
"""

from __future__ import annotations

import textwrap

from app.core.names import NameStyle, display_date, person_name
from app.report.display import study_label
from app.report.draft import SECTIONS, DraftReport
from app.report.templates import ReportTemplate, heading, template_of


def render_text(
    report: DraftReport,
    template: ReportTemplate | None = None,
    *,
    width: int = 80,
    include_reliability: bool = False,
) -> str:
    t = template or template_of(report)
    s = report.study
    lines: list[str] = [t.title.upper(), ""]
    header = [
        ("Patient", person_name(s.patient_name, NameStyle.FULL)),
        ("Patient ID", s.patient_id),
        ("Birth date", display_date(s.patient_birth_date)),
        ("Sex", s.patient_sex),
        ("Study", study_label(s.modality, s.study_description)),
        ("Study date", display_date(s.study_date)),
        ("Accession", s.accession_number),
    ]
    label_w = max(len(k) for k, _ in header) + 1
    lines += [f"{k + ':':<{label_w}} {v}" for k, v in header if v]
    for name in SECTIONS:
        if report.section(name).strip():
            lines += ["", heading(t, name).upper()]
            lines += _wrap(report.section(name).strip(), width)
    lines += ["", t.findings_heading.upper()]
    kept = report.included_findings()
    if not kept:
        lines += _wrap(t.no_findings_text, width)
    for n, f in enumerate(kept, 1):
        text = f.text
        if include_reliability and f.edited_by_reader:
            text += " [AI proposal edited by the reader, no AI certainty]"
        elif include_reliability and f.ai_certainty is not None:
            text += f" [AI reliability: {f.ai_certainty.tier.value}, {f.ai_certainty.score:.2f}]"
        lines += _wrap(text, width, first=f"{n}. ", rest=" " * (len(str(n)) + 2))
    lines += ["", t.impression_heading.upper()]
    lines += _wrap(report.impression_text() or "-", width)
    lines.append("")
    if report.signature:
        sig = report.signature
        lines += _wrap(f"Signed by {person_name(sig.reader_name, NameStyle.FULL)} on {sig.signed_at} (UTC).", width)
    else:
        lines.append("DRAFT - NOT SIGNED.")
    p = report.provenance
    if p.model_id and any(f.origin.value == "ai" for f in report.findings):
        model = " ".join(x for x in (p.model_id, p.model_version) if x)
        note = f"Prepared with AI assistance ({model}"
        if p.weights_sha256:
            note += f", weights {p.weights_sha256[:12]}"
        lines += _wrap(note + "); findings reviewed by the signing radiologist.", width)
    for n, a in enumerate(report.signed_addenda(), 1):
        lines += ["", f"{t.addendum_heading.upper()} {n}"]
        lines += _wrap(a.text, width)
        lines += _wrap(f"Addendum signed by {person_name(a.signature.reader_name, NameStyle.FULL)} on "
                       f"{a.signature.signed_at} (UTC).", width)
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int, first: str = "", rest: str = "") -> list[str]:
    out: list[str] = []
    for i, para in enumerate(text.splitlines() or [""]):
        out += textwrap.wrap(
            para, width=width, initial_indent=first if i == 0 else rest, subsequent_indent=rest
        ) or [first.rstrip() if i == 0 else ""]
    return out
