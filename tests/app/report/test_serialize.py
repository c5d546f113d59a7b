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
