"""The draft and its edits as dicts and back (what the workspace writes)."""

from __future__ import annotations

from app.report.serialize import (
    edit_from_dict,
    edit_to_dict,
    report_from_dict,
    report_to_dict,
)
from inference.types import Box
from tests.app.report.test_draft import make_report


def test_dict_round_trip_and_edit_round_trip():
    r, a, _ = make_report()
    r.accept(a)
    r.set_impression("Nodule.")
    back = report_from_dict(report_to_dict(r))
    assert back == r
    edits = []
    r.subscribe(lambda rep, e: edits.append(e))
    r.move_box(a, 0, Box(1, 2, 3, 4))
    assert edit_from_dict(edit_to_dict(edits[0])) == edits[0]


def test_sections_windows_and_addenda_round_trip_and_old_drafts_read_without_them():
    """Issue #20.12/13/6: the new parts are saved, and a draft written before them still opens."""
    from datetime import datetime, timezone

    from app.dicom.model import Window

    r, a, b = make_report()
    r.set_section("indication", "Cough.")
    r.set_section("technique", "CT chest.")
    r.set_section("comparison", "None.")
    f = r.add_finding("Drawn in the liver window.", window=Window(150, 90, "liver"))
    edits = []
    r.subscribe(lambda rep, e: edits.append(e))
    r.accept(a)
    r.reject(b)
    r.sign("Smith^Jane")
    pending = r.add_addendum("Addendum text.", "Smith^Jane")
    r.sign_addendum(pending.id, "Smith^Jane", datetime(2026, 3, 3, tzinfo=timezone.utc))
    back = report_from_dict(report_to_dict(r))
    assert back == r and back.finding(f.id).window == Window(150, 90, "liver")
    assert back.signed_addenda()[0].signature.reader_name == "Smith^Jane"
    for e in edits:  # the journal carries addendum edits too
        assert edit_from_dict(edit_to_dict(e)) == e
    old = report_to_dict(r)
    for key in ("indication", "technique", "comparison", "addenda"):
        del old[key]
    for finding in old["findings"]:
        del finding["window"]
    restored = report_from_dict(old)
    assert (restored.indication, restored.technique, restored.comparison, restored.addenda) == ("", "", "", [])
    assert all(x.window is None for x in restored.findings)
