"""Reporting: the draft the reader decides on, its history, templates, audit trail, workspace and exports.

- :mod:`app.report.draft`: the model (:class:`DraftReport`, :class:`Finding`, statuses,
  indication/technique/comparison sections, edits with undo/redo, sign-off rules, addenda
  to a signed report);
- :mod:`app.report.serialize`: the draft and its edits as dicts (workspace files);
- :mod:`app.report.templates`: per-modality wording (``resources/report_templates``);
- :mod:`app.report.display`: which impression sentences to tint by reliability, the study line;
- :mod:`app.report.from_answer`: the assistant's answer as a draft;
- :mod:`app.report.session`: one study's reporting session (answer → draft → audit,
  autosave, sign, exports), driven by the viewer and ``xmedgpt analyze``;
- :mod:`app.report.workspace` (autosave, journal), :mod:`app.report.audit`
  (hash-chained trail) and :mod:`app.report.export` (DICOM SR, plain text).

The model types are re-exported here (``from app.report import DraftReport``).
"""

from app.report.draft import (
    Addendum,
    DraftReport,
    Edit,
    Finding,
    FindingReliability,
    FindingStatus,
    Origin,
    Provenance,
    ReportBox,
    ReportError,
    Signature,
    StudyContext,
)

__all__ = [
    "Addendum",
    "DraftReport",
    "Edit",
    "Finding",
    "FindingReliability",
    "FindingStatus",
    "Origin",
    "Provenance",
    "ReportBox",
    "ReportError",
    "Signature",
    "StudyContext",
]
