"""What leaves the workstation: DICOM SR (:mod:`app.report.export.sr`) and plain text for a RIS (:mod:`app.report.export.text`).

Qt-free. PDF needs Qt's PDF writer and lives in ui/.
"""
