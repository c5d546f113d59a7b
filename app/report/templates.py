"""Report templates: the per-modality wording of a report (``resources/report_templates/*.yaml``).

A template names the report's title, its headings (indication, technique, comparison,
findings, impression, addendum), the sentence used when nothing is kept, and the
finding types offered for coding. :func:`template_for` picks
one by modality, :func:`template_of` the one a report uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from app.report.draft import DraftReport, ReportError
from inference.resources import resource

TEMPLATE_DIR = resource("report_templates")


@dataclass(frozen=True)
class ReportTemplate:
    """Per-modality wording of a report (resources/report_templates/*.yaml)."""

    name: str
    title: str
    modalities: tuple[str, ...] = ()
    findings_heading: str = "Findings"
    impression_heading: str = "Impression"
    indication_heading: str = "Indication"
    technique_heading: str = "Technique"
    comparison_heading: str = "Comparison"
    addendum_heading: str = "Addendum"
    no_findings_text: str = "No abnormality identified on the reviewed images."
    finding_types: tuple[str, ...] = ()


def load_templates(folder: Path | None = None) -> dict[str, ReportTemplate]:
    folder = folder or TEMPLATE_DIR
    out: dict[str, ReportTemplate] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            t = ReportTemplate(
                name=str(data.get("name") or path.stem),
                title=str(data["title"]),
                modalities=tuple(str(m).upper() for m in data.get("modalities") or ()),
                findings_heading=str(data.get("findings_heading", "Findings")),
                impression_heading=str(data.get("impression_heading", "Impression")),
                **{f"{k}_heading": str(data.get(f"{k}_heading", k.capitalize()))
                   for k in ("indication", "technique", "comparison", "addendum")},
                no_findings_text=str(data.get("no_findings_text", ReportTemplate.no_findings_text)),
                finding_types=tuple(str(x) for x in data.get("finding_types") or ()),
            )
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
            raise ReportError(f"The report template {path.name} is damaged ({exc}).") from exc
        out[t.name] = t
    return out


def heading(template: ReportTemplate, section: str) -> str:
    """The template's heading of a section: indication, technique, comparison, findings, impression, addendum."""
    return getattr(template, f"{section}_heading")


def template_for(modality: str, folder: Path | None = None) -> ReportTemplate:
    """The template whose ``modalities`` list the modality, else ``default``."""
    templates = load_templates(folder)
    for t in templates.values():
        if modality.upper() in t.modalities:
            return t
    if "default" in templates:
        return templates["default"]
    return ReportTemplate(name="default", title="Imaging Report")


def template_of(report: DraftReport, folder: Path | None = None) -> ReportTemplate:
    """The report's chosen template, or the one for its study's modality."""
    return template_named(report.template, folder) if report.template else template_for(report.study.modality, folder)


def template_named(name: str, folder: Path | None = None) -> ReportTemplate:
    templates = load_templates(folder)
    return templates.get(name) or templates.get("default") or ReportTemplate(name="default", title="Imaging Report")
