"""The report as plain text: only what the reader keeps, the template's wording, the sign-off."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from app.report.export.text import render_text
from tests.app.report.test_draft import make_report


def test_text_export_keeps_only_kept_findings_and_marks_draft():
    r, a, b = make_report()
    r.accept(a)
    r.reject(b)
    r.add_finding("Reader finding about the spine.")
    r.set_impression("Right upper lobe nodule.")
    text = render_text(r)
    assert text.startswith("CT REPORT\n")
    assert "Patient:    John Doe" in text and "Study date: 2026-03-01" in text
    assert "1. Nodule in the right upper lobe." in text
    assert "2. Reader finding about the spine." in text
    assert "effusion" not in text
    assert "DRAFT - NOT SIGNED." in text and "xmedgpt-demo 0.1, weights abababababab" in text
    r.sign("Smith^Jane", datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc))
    signed = render_text(r, include_reliability=True, width=40)
    flat = " ".join(signed.split())
    assert "Signed by Jane Smith on 2026-03-02T09:30:00+00:00" in flat
    assert "[AI reliability: green, 0.80]" in flat
    assert max(len(line) for line in signed.splitlines()) <= 40


def test_text_export_with_nothing_kept_uses_template_wording():
    r, a, b = make_report()
    r.reject(a)
    r.reject(b)
    assert "No acute abnormality identified on the reviewed CT images." in render_text(r)


def test_study_line_names_the_modality_once():
    """Issue #20.8: a description that already starts with the modality is not prefixed again."""
    r, a, b = make_report()
    r.study = replace(r.study, study_description="CT CHEST ABDOMEN WITH CONTRAST (SYNTHETIC PHANTOM)")
    assert "Study:      CT CHEST ABDOMEN WITH CONTRAST (SYNTHETIC PHANTOM)\n" in render_text(r)
    r.study = replace(r.study, study_description="Chest")
    assert "Study:      CT Chest\n" in render_text(r)
    r.study = replace(r.study, study_description="ct")
    assert "Study:      ct\n" in render_text(r)


def test_sections_come_before_the_findings_and_addenda_after_the_signature():
    r, a, b = make_report()
    r.set_section("indication", "Persistent cough.")
    r.set_section("comparison", "None.")
    r.accept(a)
    r.reject(b)
    r.sign("Smith^Jane", datetime(2026, 3, 2, 9, 30, tzinfo=timezone.utc))
    pending = r.add_addendum("Nodule is 9 mm.", "Doe^John")
    r.sign_addendum(pending.id, "Doe^John", datetime(2026, 3, 3, 8, 0, tzinfo=timezone.utc))
    text = render_text(r)
    assert text.index("INDICATION\nPersistent cough.") < text.index("COMPARISON\nNone.") < text.index("FINDINGS")
    assert "TECHNIQUE" not in text  # an empty section is left out
    assert text.index("Signed by Jane Smith") < text.index("ADDENDUM 1\nNodule is 9 mm.")
    assert "Addendum signed by John Doe on 2026-03-03T08:00:00+00:00 (UTC)." in text
