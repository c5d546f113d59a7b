"""The report as a PDF (Qt's PDF writer): header, findings, impression, key images with boxes, signer.

``key_images`` maps a slice index to the frame as the reader saw it (uint8
grey (rows, cols) or RGB (rows, cols, 3), e.g. from ``app.dicom.display.render``);
each listed finding's boxes are drawn on their slice with the finding's number.
A signed report lists what the reader kept; a draft lists every finding not
rejected, AI proposals marked as not yet reviewed, and carries a "DRAFT – NOT
SIGNED" mark on every page.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PySide6.QtCore import QMarginsF, QPointF, QRectF, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QImage,
    QPageLayout,
    QPageSize,
    QPainter,
    QPdfWriter,
    QPen,
)
from PySide6.QtWidgets import QApplication

from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name
from app.report.draft import DraftReport, Finding, FindingStatus
from app.report.templates import template_of

log = logging.getLogger(__name__)

BOX_COLOURS = [QColor(255, 200, 0), QColor(0, 200, 255), QColor(255, 90, 200), QColor(120, 255, 120)]
TIER_COLOURS = {"green": QColor(30, 140, 60), "amber": QColor(200, 130, 0), "red": QColor(190, 30, 30)}


def _qimage(frame: np.ndarray) -> QImage:
    a = np.ascontiguousarray(frame)
    if a.dtype != np.uint8:
        raise XMedError("Key images must be rendered to 8-bit before the PDF is written.")
    if a.ndim == 2:
        img = QImage(a.data, a.shape[1], a.shape[0], a.strides[0], QImage.Format.Format_Grayscale8)
    else:
        img = QImage(a.data, a.shape[1], a.shape[0], a.strides[0], QImage.Format.Format_RGB888)
    return img.copy()  # own the pixels: the numpy buffer may go away


class _Page:
    """A cursor down the pages, in device pixels; :meth:`pt` converts points (1/72 inch) to them.

    Fonts are given in points and Qt sizes them for the writer's resolution, so the
    painter is not scaled.
    """

    def __init__(self, painter: QPainter, writer: QPdfWriter, draft: bool) -> None:
        self.p, self.w, self.draft = painter, writer, draft
        self.k = writer.resolution() / 72.0
        rect = writer.pageLayout().paintRect(QPageLayout.Unit.Point)
        self.width, self.height = rect.width() * self.k, rect.height() * self.k
        self.y = 0.0
        self._mark()

    def pt(self, v: float) -> float:
        return v * self.k

    def _mark(self) -> None:
        if self.draft:
            self.p.save()
            self.p.setPen(QColor(200, 40, 40))
            self.p.setFont(QFont("Sans", 9, QFont.Weight.Bold))
            self.p.drawText(QRectF(0, self.height - self.pt(14), self.width, self.pt(14)), Qt.AlignmentFlag.AlignRight,
                            "DRAFT – NOT SIGNED")
            self.p.restore()

    def need(self, h: float) -> None:
        if self.y + h > self.height - self.pt(20):
            self.w.newPage()
            self.y = 0.0
            self._mark()

    def text(self, s: str, size: float = 10, bold: bool = False, colour: QColor | None = None, indent: float = 0) -> None:
        font = QFont("Sans", 1)
        font.setPointSizeF(size)
        font.setBold(bold)
        self.p.setFont(font)
        self.p.setPen(colour or QColor(0, 0, 0))
        flags = int(Qt.AlignmentFlag.AlignLeft) | int(Qt.TextFlag.TextWordWrap)
        x = self.pt(indent)
        box = self.p.boundingRect(QRectF(x, 0, self.width - x, self.height), flags, s)
        self.need(box.height())
        self.p.drawText(QRectF(x, self.y, self.width - x, box.height()), flags, s)
        self.y += box.height() + self.pt(2)

    def gap(self, h: float = 8) -> None:
        self.y += self.pt(h)


_APP: QApplication | None = None


def _ensure_gui_app() -> None:
    """Fonts need a Qt GUI application; headless callers (``xmedgpt analyze --pdf``) may not have one yet."""
    global _APP
    # a QApplication (not just a QGuiApplication): widgets created later in the same process
    # (the viewer, pytest-qt) need one, and Qt allows only one application object
    if QApplication.instance() is None:
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        _APP = QApplication([])


def write_pdf(report: DraftReport, path: Path, key_images: Mapping[int, np.ndarray] | None = None) -> Path:
    _ensure_gui_app()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = QPdfWriter(str(path))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    writer.setPageMargins(QMarginsF(18, 18, 18, 18), QPageLayout.Unit.Millimeter)
    writer.setResolution(300)
    writer.setTitle(f"{template_of(report).title} {report.study.accession_number}".strip())
    writer.setCreator("XMedGPT Workstation")
    painter = QPainter()
    if not painter.begin(writer):
        raise XMedError(f"Cannot write the PDF {path}.")
    try:
        _draw(report, _Page(painter, writer, draft=not report.signed), key_images or {})
    finally:
        painter.end()
    if not path.exists() or path.stat().st_size == 0:
        raise XMedError(f"The PDF {path} could not be written.")
    log.info("wrote %s", path)
    return path


def _draw(report: DraftReport, page: _Page, key_images: Mapping[int, np.ndarray]) -> None:
    t = template_of(report)
    s = report.study
    page.text(t.title, size=16, bold=True)
    header = [("Patient", person_name(s.patient_name, NameStyle.FULL)), ("Patient ID", s.patient_id),
              ("Birth date", display_date(s.patient_birth_date)), ("Sex", s.patient_sex),
              ("Study", study_label(s.modality, s.study_description)),
              ("Study date", display_date(s.study_date)), ("Accession", s.accession_number)]
    page.text("    ".join(f"{k}: {v}" for k, v in header if v), size=9, colour=QColor(60, 60, 60))
    page.gap()
    page.text(t.findings_heading, size=12, bold=True)
    kept = shown_findings(report)
    if not kept:
        page.text(t.no_findings_text)
    for n, f in enumerate(kept, 1):
        page.text(f"{n}. {f.text}", indent=0)
        if f.status is FindingStatus.PROPOSED:
            page.text("AI proposal, not yet reviewed", size=8, colour=QColor(200, 40, 40), indent=14)
        if f.reliability is not None:
            tier = f.reliability.tier.value
            page.text(f"AI reliability: {tier} ({f.reliability.score:.2f})", size=8,
                      colour=TIER_COLOURS[tier], indent=14)
    page.gap()
    page.text(t.impression_heading, size=12, bold=True)
    page.text(report.impression.strip() or "–")
    page.gap()
    _key_images(page, kept, key_images)
    page.gap()
    p = report.provenance
    if p.model_id:
        model = " ".join(x for x in (p.model_id, p.model_version) if x)
        weights = f", weights {p.weights_sha256[:12]}" if p.weights_sha256 else ""
        review = "findings reviewed by the signing radiologist" if report.signed else \
            "findings to be reviewed by a radiologist before signing"
        page.text(f"Prepared with AI assistance ({model}{weights}); {review}.", size=8, colour=QColor(80, 80, 80))
    if report.signature:
        page.text(f"Signed by {person_name(report.signature.reader_name, NameStyle.FULL)} on {report.signature.signed_at} (UTC).",
                  bold=True)
    else:
        page.text("Draft – not signed.", bold=True, colour=QColor(200, 40, 40))


def study_label(modality: str, description: str) -> str:
    """"CT Chest" from ("CT", "Chest"); the description alone when it already starts with the modality."""
    if modality and description.upper().startswith(modality.upper() + " "):
        return description
    return " ".join(x for x in (modality, description) if x)


def shown_findings(report: DraftReport) -> list[Finding]:
    """Signed: what the reader kept. Draft: everything not rejected, AI proposals included (as the draft SR)."""
    if report.signed:
        return report.included_findings()
    return [f for f in report.findings if f.status is not FindingStatus.REJECTED]


def _key_images(page: _Page, kept: list[Finding], key_images: Mapping[int, np.ndarray]) -> None:
    slices: dict[int, list[tuple[int, Finding]]] = {}
    for n, f in enumerate(kept, 1):
        for b in f.boxes:
            slices.setdefault(b.slice_index, []).append((n, f))
    shown = [k for k in sorted(slices) if k in key_images]
    if not shown:
        return
    page.text("Key images", size=12, bold=True)
    sep = page.pt(12)
    size = (page.width - sep) / 2  # two per row
    for i, k in enumerate(shown):
        img = _qimage(key_images[k])
        scale = min(size / img.width(), size / img.height())
        w, h = img.width() * scale, img.height() * scale
        col = i % 2
        if col == 0:
            page.need(h + page.pt(14))
        x0, y0 = col * (size + sep), page.y
        page.p.drawImage(QRectF(x0, y0, w, h), img)
        for n, f in dict.fromkeys(slices[k]):
            colour = BOX_COLOURS[(n - 1) % len(BOX_COLOURS)]
            for b in f.boxes:
                if b.slice_index != k:
                    continue
                r = QRectF(x0 + b.box.x0 * scale, y0 + b.box.y0 * scale, b.box.width * scale, b.box.height * scale)
                page.p.setPen(QPen(colour, page.pt(1.2)))
                page.p.setBrush(Qt.BrushStyle.NoBrush)
                page.p.drawRect(r)
                page.p.setFont(QFont("Sans", 8, QFont.Weight.Bold))
                page.p.drawText(QPointF(r.left(), r.top() - page.pt(2)), str(n))
        page.p.setPen(QColor(60, 60, 60))
        page.p.setFont(QFont("Sans", 7))
        page.p.drawText(QRectF(x0, y0 + h + page.pt(1), w, page.pt(10)), Qt.AlignmentFlag.AlignLeft, f"Slice {k + 1}")
        if col == 1 or i == len(shown) - 1:
            page.y += h + page.pt(14)
