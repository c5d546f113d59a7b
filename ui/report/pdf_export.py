"""The report as a PDF (Qt's PDF writer): header, sections, findings, impression, key images
with boxes, signer, addenda.

``key_images`` gives the frames: a function ``(slice index, window) → uint8 image`` (grey
(rows, cols) or RGB (rows, cols, 3), e.g. ``app.dicom.display.render``), called with each
finding's own window (the one it was found or drawn in, ``Finding.window``; None for a
finding saved before windows were recorded: the caller's current one), so a liver lesion
found in a liver window is shown in it, never in the lung window the reader happens to be
in; or a mapping slice index → frame already rendered (one window for all). Each listed
finding's boxes are drawn on their slice with the finding's number, one key image per slice
and window, captioned with both.
Key images the reader marked (``marked``: slice indices of the series rendered) are shown among them,
captioned "key image", in the window on screen, whether or not a finding is boxed there.
A signed report lists what the reader kept; a draft lists every finding not
rejected, AI proposals marked as not yet reviewed, and carries a "DRAFT – NOT
SIGNED" mark on every page.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
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
from app.core.names import NameStyle, display_date, person_name, window_name
from app.dicom.model import Window
from app.report.display import study_label
from app.report.draft import SECTIONS, DraftReport, Finding, FindingStatus
from app.report.templates import heading, template_of

log = logging.getLogger(__name__)

#: finding number → box colour on the key images: none near the reliability tiers' green, amber or red (a box's colour
#: is not its reliability; the tier is printed under the finding)
BOX_COLOURS = [QColor(255, 110, 220), QColor(0, 200, 255), QColor(185, 140, 255), QColor(255, 255, 255)]
#: reliability tier → text colour on the white page (each at least 4.5:1 against white, WCAG AA)
TIER_COLOURS = {"green": QColor(20, 110, 45), "amber": QColor(150, 80, 0), "red": QColor(170, 20, 20)}

#: (slice index, window) → the frame as shown in that window
KeyImageRenderer = Callable[[int, Window | None], np.ndarray | None]  # None: not available
KeyImages = Mapping[int, np.ndarray] | KeyImageRenderer


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


def write_pdf(report: DraftReport, path: Path, key_images: KeyImages | None = None,
              marked: Sequence[int] = ()) -> Path:
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
        _draw(report, _Page(painter, writer, draft=not report.signed), key_images or {}, marked)
    finally:
        painter.end()
    if not path.exists() or path.stat().st_size == 0:
        raise XMedError(f"The PDF {path} could not be written.")
    log.info("wrote %s", path)
    return path


def _draw(report: DraftReport, page: _Page, key_images: KeyImages, marked: Sequence[int] = ()) -> None:
    t = template_of(report)
    s = report.study
    page.text(t.title, size=16, bold=True)
    header = [("Patient", person_name(s.patient_name, NameStyle.FULL)), ("Patient ID", s.patient_id),
              ("Birth date", display_date(s.patient_birth_date)), ("Sex", s.patient_sex),
              ("Study", study_label(s.modality, s.study_description)),
              ("Study date", display_date(s.study_date)), ("Accession", s.accession_number)]
    page.text("    ".join(f"{k}: {v}" for k, v in header if v), size=9, colour=QColor(60, 60, 60))
    page.gap()
    for name in SECTIONS:
        if report.section(name).strip():
            page.text(heading(t, name), size=12, bold=True)
            page.text(report.section(name).strip())
            page.gap(4)
    page.text(t.findings_heading, size=12, bold=True)
    kept = shown_findings(report)
    if not kept:
        page.text(t.no_findings_text)
    for n, f in enumerate(kept, 1):
        page.text(f"{n}. {f.text}", indent=0)
        if f.status is FindingStatus.PROPOSED:
            page.text("AI proposal, not yet reviewed", size=8, colour=QColor(200, 40, 40), indent=14)
        if f.edited_by_reader:  # the reader's finding now: no AI certainty
            page.text("AI proposal edited by the reader (no AI certainty)", size=8, colour=QColor(40, 40, 40), indent=14)
        elif f.ai_certainty is not None:
            tier = f.ai_certainty.tier.value
            page.text(f"AI reliability: {tier} ({f.ai_certainty.score:.2f})", size=8,
                      colour=TIER_COLOURS[tier], indent=14)
    page.gap()
    page.text(t.impression_heading, size=12, bold=True)
    page.text(report.impression_text() or "–")
    page.gap()
    _key_images(page, kept, key_images, marked)
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
    for n, a in enumerate(report.signed_addenda(), 1):
        page.gap()
        page.text(f"{t.addendum_heading} {n}", size=12, bold=True)
        page.text(a.text)
        page.text(f"Addendum signed by {person_name(a.signature.reader_name, NameStyle.FULL)} on "
                  f"{a.signature.signed_at} (UTC).", bold=True)


def shown_findings(report: DraftReport) -> list[Finding]:
    """Signed: what the reader kept. Draft: everything not rejected, AI proposals included (as the draft SR)."""
    if report.signed:
        return report.included_findings()
    return [f for f in report.findings if f.status is not FindingStatus.REJECTED]


def key_image_plan(kept: list[Finding], marked: Sequence[int] = ()
                   ) -> dict[tuple[int, Window | None], list[tuple[int, Finding]]]:
    """(slice, window) → the numbered findings boxed on that slice and found in that window, slices in order;
    a slice the reader marked as a key image with no finding boxed on it joins as (slice, None) → []."""
    plan: dict[tuple[int, Window | None], list[tuple[int, Finding]]] = {}
    for n, f in enumerate(kept, 1):
        for b in f.boxes:
            group = plan.setdefault((b.slice_index, f.window), [])
            if (n, f) not in group:
                group.append((n, f))
    boxed = {k for k, _w in plan}
    for k in marked:
        if k not in boxed:
            plan.setdefault((int(k), None), [])
    return dict(sorted(plan.items(), key=lambda kv: kv[0][0]))


def window_caption(window: Window | None) -> str:
    """"Liver window (W 150 / L 90)"; empty for an unknown window."""
    if window is None:
        return ""
    name = window_name(window.name)
    levels = f"W {window.width:.0f} / L {window.center:.0f}"
    return f"{name} window ({levels})" if name and "/" not in name else f"Window {levels}"


def _key_images(page: _Page, kept: list[Finding], key_images: KeyImages, marked: Sequence[int] = ()) -> None:
    plan = key_image_plan(kept, marked)
    marked_set = {int(k) for k in marked}
    frames: list[tuple[int, Window | None, np.ndarray]] = []
    for (k, window), _group in plan.items():
        if callable(key_images):
            frame = key_images(k, window)
            if frame is not None:
                frames.append((k, window, frame))
        elif k in key_images and all(k != f[0] for f in frames):  # one rendering per slice
            frames.append((k, None, key_images[k]))
    if not frames:
        return
    page.text("Key images", size=12, bold=True)
    sep = page.pt(12)
    size = (page.width - sep) / 2  # two per row
    for i, (k, window, frame) in enumerate(frames):
        img = _qimage(frame)
        scale = min(size / img.width(), size / img.height())
        w, h = img.width() * scale, img.height() * scale
        col = i % 2
        if col == 0:
            page.need(h + page.pt(14))
        x0, y0 = col * (size + sep), page.y
        page.p.drawImage(QRectF(x0, y0, w, h), img)
        boxed = plan[(k, window)] if callable(key_images) else [nf for (kk, _w), g in plan.items() if kk == k for nf in g]
        for n, f in boxed:
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
        caption = " · ".join(x for x in (f"Slice {k + 1}", window_caption(window),
                                         "key image" if k in marked_set else "") if x)
        page.p.drawText(QRectF(x0, y0 + h + page.pt(1), w, page.pt(10)), Qt.AlignmentFlag.AlignLeft, caption)
        if col == 1 or i == len(frames) - 1:
            page.y += h + page.pt(14)
