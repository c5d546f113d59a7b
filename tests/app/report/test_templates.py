"""Report templates: the shipped ones load and are chosen by modality."""

from __future__ import annotations

from app.report.templates import load_templates, template_for


def test_templates_load_and_match_modality():
    templates = load_templates()
    assert {"default", "ct", "mr", "xr"} <= set(templates)
    assert template_for("CT").title == "CT Report"
    assert template_for("DX").name == "xr"
    assert template_for("OT").name == "default"
