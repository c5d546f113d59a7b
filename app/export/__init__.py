"""What leaves the workstation: DICOM SR (:mod:`app.export.sr`) and plain text for a RIS (:mod:`app.export.text`).

Qt-free. PDF needs Qt's PDF writer and lives in ui/.
"""
