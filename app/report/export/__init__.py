"""What leaves the workstation: DICOM SR (:mod:`app.report.export.sr`), plain text for a RIS
(:mod:`app.report.export.text`) and the series pre-read as PDF (:mod:`app.report.export.preread_pdf`).

Qt-free. The report's PDF is drawn with Qt and lives in ui/ (ui.report.pdf_export); the pre-read PDF
is written directly, so ``xmedgpt preread --pdf`` runs headless.
"""
