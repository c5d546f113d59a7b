"""The report editor drives the report model: decide, edit, undo, sign, copy; tints follow reliability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QGuiApplication, QImage, QTextCursor
from PySide6.QtWidgets import QApplication, QMessageBox, QPushButton

from app.report.draft import (
    DraftReport,
    FindingReliability,
    FindingStatus,
    Origin,
    Provenance,
    ReportBox,
    StudyContext,
)
from inference.reliability.scoring import Tier
from inference.types import Box
from ui.report.panel import TIER_TEXT, TIER_TINT, ReportPanel
from ui.report.pdf_export import TIER_COLOURS as PDF_TIER_COLOURS


@pytest.fixture
def report() -> DraftReport:
    r = DraftReport(study=StudyContext("1.2.3", patient_name="Doe^John", patient_id="P1", modality="CT"),
                    provenance=Provenance("xmedgpt-demo", "0.1"))
    r.add_finding("Nodule right upper lobe.", [ReportBox(Box(1, 2, 30, 40), 5, "1.2.3.5", "1.2.3.1")],
                  origin=Origin.AI, reliability=FindingReliability(0.9, Tier.GREEN))
    r.add_finding("Left pleural effusion.", [], origin=Origin.AI, reliability=FindingReliability(0.2, Tier.RED))
    return r


@pytest.fixture
def panel(qtbot, report) -> ReportPanel:
    w = ReportPanel(report, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    w.resize(420, 640)
    w.show()
    return w


def test_rows_tinted_by_reliability_and_header(panel):
    assert panel.findings.count() == 2
    assert panel.findings.item(0).background().color() == TIER_TINT["green"]
    assert panel.findings.item(1).background().color() == TIER_TINT["red"]
    assert "John Doe" in panel.header.text()
    assert not panel.sign_button.isEnabled()
    assert "2 AI findings still" in panel.blockers.text()


def test_selecting_a_finding_asks_to_jump_to_its_slice(panel, qtbot):
    with qtbot.waitSignal(panel.finding_selected) as sig:
        panel.select_finding(panel.report.findings[1].id)
    assert sig.args == [panel.report.findings[1].id, -1]  # no box: nowhere to jump
    with qtbot.waitSignal(panel.finding_selected) as sig:
        panel.findings.setCurrentRow(0)
    assert sig.args == [panel.report.findings[0].id, 5]


def test_accept_reject_then_sign(panel, qtbot, report):
    panel.findings.setCurrentRow(0)
    qtbot.mouseClick(panel.accept_button, Qt.MouseButton.LeftButton)
    panel.findings.setCurrentRow(1)
    qtbot.mouseClick(panel.reject_button, Qt.MouseButton.LeftButton)
    assert [f.status for f in report.findings] == [FindingStatus.ACCEPTED, FindingStatus.REJECTED]
    assert panel.findings.item(1).font().strikeOut()
    assert panel.sign_button.isEnabled()
    with qtbot.waitSignal(panel.signed):
        qtbot.mouseClick(panel.sign_button, Qt.MouseButton.LeftButton)
    assert report.signed and report.signature.reader_name == "Smith^Jane"
    assert panel.impression.isReadOnly() and not panel.undo_button.isEnabled()
    assert "Signed by Jane Smith" in panel.blockers.text()


def test_typing_becomes_one_edit_after_a_pause_and_undo_restores(panel, qtbot, report):
    panel.findings.setCurrentRow(0)
    panel.finding_text.moveCursor(QTextCursor.MoveOperation.End)
    qtbot.keyClicks(panel.finding_text, " Size 8 mm.")  # eleven keystrokes
    assert report.findings[0].text == "Nodule right upper lobe."  # not yet committed
    qtbot.waitUntil(lambda: report.findings[0].text == "Nodule right upper lobe. Size 8 mm.", timeout=3000)
    assert report.findings[0].status is FindingStatus.EDITED
    assert report.revision == 3  # two adds + one edit, not one per keystroke
    qtbot.mouseClick(panel.undo_button, Qt.MouseButton.LeftButton)
    assert report.findings[0].text == "Nodule right upper lobe."
    assert panel.finding_text.toPlainText() == "Nodule right upper lobe."
    qtbot.mouseClick(panel.redo_button, Qt.MouseButton.LeftButton)
    assert panel.finding_text.toPlainText().endswith("8 mm.")


def test_switching_finding_commits_typed_text(panel, report):
    panel.findings.setCurrentRow(1)
    panel.finding_text.setPlainText("Moderate left pleural effusion.")
    panel.findings.setCurrentRow(0)  # before the pause
    assert report.findings[1].text == "Moderate left pleural effusion."
    assert panel.finding_text.toPlainText() == "Nodule right upper lobe."


def test_impression_add_finding_and_copy(panel, report):
    panel.impression.setPlainText("Right upper lobe nodule.")
    panel.add_button.click()
    assert report.impression == "Right upper lobe nodule."  # committed before the add
    assert report.findings[-1].origin is Origin.READER and panel.findings.currentRow() == 2
    text = panel.copy_to_clipboard()
    assert QGuiApplication.clipboard().text() == text
    assert "Right upper lobe nodule." in text and "New finding" in text and "DRAFT" in text


def test_sign_refusal_is_reported_not_raised(qtbot, report):
    w = ReportPanel(report, reader_name="")
    qtbot.addWidget(w)
    for f in report.findings:
        report.accept(f.id)
    assert not w.sign_button.isEnabled() and "name" in w.blockers.text()
    with qtbot.waitSignal(w.problem) as sig:
        w.sign()
    assert "Cannot sign yet" in sig.args[0] and not report.signed


def test_impression_sentences_are_tinted_by_the_reliability_of_the_finding_they_name(qtbot):
    r = DraftReport(study=StudyContext("1.2.3", modality="CT"), provenance=Provenance("m", "1"))
    r.add_finding("Spiculated mass.", [], origin=Origin.AI, finding_type="mass",
                  reliability=FindingReliability(0.2, Tier.RED))
    r.set_impression("Normal heart. Right lower lobe mass, suspicious.")
    w = ReportPanel(r, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    (sel,) = w.impression.extraSelections()
    assert sel.cursor.selectedText() == "Right lower lobe mass, suspicious."
    assert sel.format.background().color() == TIER_TINT["red"]
    w.impression.setPlainText("Mass gone.")  # typing re-tints at once
    assert [s.cursor.selectedText() for s in w.impression.extraSelections()] == ["Mass gone."]


# ---- issue #20: reading-room polish ---------------------------------------------------------------

STYLE = Path(__file__).resolve().parents[3] / "resources" / "style.qss"


def contrast(a: QColor, b: QColor) -> float:
    """WCAG 2.x contrast ratio of two colours."""
    def lum(c: QColor) -> float:
        def ch(v: int) -> float:
            s = v / 255
            return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4
        return 0.2126 * ch(c.red()) + 0.7152 * ch(c.green()) + 0.0722 * ch(c.blue())
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_every_tier_colour_pair_meets_wcag_aa(qtbot, output_dir):
    """Issue #20.14: the colours the findings list actually paints (every tier × every status, and no
    tier), the impression's tint and the PDF's tier words: each text/background pair at least 4.5:1."""
    r = DraftReport(study=StudyContext("1.2.3", modality="CT"), provenance=Provenance("m", "1"))
    tiers = [FindingReliability(0.9, Tier.GREEN), FindingReliability(0.5, Tier.AMBER),
             FindingReliability(0.2, Tier.RED), None]
    for rel in tiers:
        for status in ("proposed", "accepted", "rejected", "edited"):
            f = r.add_finding(f"Spiculated mass, {status}.", [], origin=Origin.AI, finding_type="mass",
                              reliability=rel)
            if status == "accepted":
                r.accept(f.id)
            elif status == "rejected":
                r.reject(f.id)
            elif status == "edited":
                r.edit_text(f.id, f"Spiculated mass, {status} by the reader.")
    r.add_finding("The reader's own finding.")
    r.set_impression("Spiculated mass. Nothing else.")
    w = ReportPanel(r, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    w.setStyleSheet(STYLE.read_text(encoding="utf-8"))
    w.resize(460, 900)
    w.show()
    ratios = []
    for row in range(w.findings.count()):
        item = w.findings.item(row)
        bg, fg = item.background().color(), item.foreground().color()
        assert item.background().style() != Qt.BrushStyle.NoBrush and item.foreground().style() != Qt.BrushStyle.NoBrush
        ratios.append((contrast(fg, bg), item.text().split("\n")[0]))
    for sel in w.impression.extraSelections():
        ratios.append((contrast(sel.format.foreground().color(), sel.format.background().color()), "impression"))
    white = QColor(255, 255, 255)
    ratios += [(contrast(c, white), f"pdf {tier}") for tier, c in PDF_TIER_COLOURS.items()]
    for tier in TIER_TINT:
        ratios.append((contrast(TIER_TEXT[tier], TIER_TINT[tier]), f"table {tier}"))
    assert len(ratios) == 17 + 1 + 3 + 3
    failing = [(round(ratio, 2), what) for ratio, what in ratios if ratio < 4.5]
    assert failing == []
    w.grab().save(str(output_dir / "report_panel_tier_contrast.png"))


def test_disabled_buttons_look_disabled_in_the_dark_theme(qtbot, report, output_dir):
    """Issue #20.6: under resources/style.qss a disabled button is visibly different from an enabled one."""
    w = ReportPanel(report, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    w.setStyleSheet(STYLE.read_text(encoding="utf-8"))
    w.resize(460, 700)
    w.show()
    qtbot.waitExposed(w)
    assert not w.sign_button.isEnabled() and w.copy_button.isEnabled()

    def looks(button: QPushButton) -> tuple[float, float]:
        img = button.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
        a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
        px = a[:, : img.width() * 3].reshape(img.height(), img.width(), 3).astype(float).mean(axis=2)
        inner = px[4:-4, 4:-4]
        return float(np.percentile(inner, 99)), float(np.median(inner))  # text, face

    enabled_text, enabled_face = looks(w.copy_button)
    disabled_text, disabled_face = looks(w.sign_button)
    assert enabled_text - disabled_text > 60  # dim text
    assert disabled_face < enabled_face  # a darker, flatter face
    w.grab().save(str(output_dir / "report_panel_disabled_buttons.png"))


def test_sign_asks_first_naming_the_reader_and_the_accepted_findings(qtbot, monkeypatch, report, output_dir):
    """Issue #20.6: one click on Sign no longer signs: a dialog names who signs and how many findings go in."""
    monkeypatch.setattr(ReportPanel, "auto_answer", None)  # the real dialog
    w = ReportPanel(report, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    w.show()
    w.select_finding(report.findings[0].id)
    w.accept_button.click()
    w.select_finding(report.findings[1].id)
    w.reject_button.click()
    seen: list[str] = []

    def answer(button_text: str, shot: str | None = None):
        def run():
            box = QApplication.activeModalWidget()
            assert isinstance(box, QMessageBox)
            seen.append(box.text())
            if shot:
                box.grab().save(str(output_dir / shot))
            next(b for b in box.buttons() if b.text() == button_text).click()
        QTimer.singleShot(0, run)

    answer("Cancel", "report_sign_confirmation.png")
    w.sign_button.click()
    assert not report.signed and "Jane Smith" in seen[0] and "1 accepted finding will be" in seen[0]
    assert "1 rejected AI finding left out" in seen[0]
    answer("Sign")
    with qtbot.waitSignal(w.signed):
        w.sign_button.click()
    assert report.signed and report.signature.reader_name == "Smith^Jane" and len(seen) == 2


def test_sign_question_names_accepted_ai_findings_the_reliability_check_did_not_confirm(qtbot, report):
    """Seen signing a pre-read lesion rated red: the question said only "1 accepted finding". A red or amber AI
    finding going in as the AI wrote it is named by its number and tier; one the reader rewrote is theirs."""
    w = ReportPanel(report, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    green, red = report.findings
    report.accept(green.id)
    assert "Not confirmed" not in w.sign_question()
    report.accept(red.id)
    q = w.sign_question()
    assert "2 accepted findings will be" in q
    assert "Not confirmed by the AI's reliability check, accepted as the AI wrote it: finding 2 (red)." in q
    report.edit_text(red.id, "Small left pleural effusion.")  # the reader's words now: no AI certainty
    assert "Not confirmed" not in w.sign_question()


def test_sign_question_says_when_the_impression_is_empty(qtbot, report):
    """Seen in a real window: a report with an accepted finding and no impression was signed as "IMPRESSION: -"
    without a word; the question now says so (signing stays the reader's choice)."""
    w = ReportPanel(report, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    report.accept(report.findings[0].id)
    report.set_impression("")
    assert "The impression is empty" in w.sign_question()
    report.set_impression("Small pleural effusion.")
    assert "The impression is empty" not in w.sign_question()


def test_addendum_after_signing_is_typed_signed_and_shown(qtbot, report, output_dir):
    """Issue #20.6: "Add addendum" on a signed report; the addendum is signed on its own."""
    w = ReportPanel(report, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    w.resize(460, 820)
    w.show()
    assert w.addendum_button.isHidden()  # nothing to add to a draft
    for f in report.findings:
        report.accept(f.id)
    w.impression.setPlainText("Right upper lobe nodule.")
    w.sign()
    assert report.signed and w.addendum_button.isVisible() and w.addendum_text.isHidden()
    w.addendum_button.click()
    assert w.addendum_text.isVisible() and not w.addendum_text.isReadOnly()
    assert w.text_editors() == [w.addendum_text]  # dictation goes into the addendum
    qtbot.keyClicks(w.addendum_text, "Nodule unchanged since 2024 on review.")
    with qtbot.waitSignal(w.addendum_signed) as sig:
        w.sign_addendum_button.click()
    (done,) = report.signed_addenda()
    assert sig.args == [done.id] and done.text == "Nodule unchanged since 2024 on review."
    assert done.signature.reader_name == "Smith^Jane" and report.impression == "Right upper lobe nodule."
    assert "Addendum 1 (signed by Jane Smith" in w.addenda_view.text() and w.addendum_text.isHidden()
    assert w.addendum_button.isEnabled()  # another one may follow
    w.setStyleSheet(STYLE.read_text(encoding="utf-8"))
    w.grab().save(str(output_dir / "report_panel_addendum.png"))


def test_indication_technique_comparison_are_edited_in_the_panel(qtbot, panel, report):
    """Issue #20.12: three section boxes above the findings; typing becomes one edit after a pause."""
    assert list(panel.sections) == ["indication", "technique", "comparison"]
    qtbot.keyClicks(panel.sections["indication"], "Cough for six weeks.")
    qtbot.waitUntil(lambda: report.indication == "Cough for six weeks.", timeout=3000)
    panel.sections["comparison"].setPlainText("CT of 2025-01-04.")
    panel.findings.setCurrentRow(0)
    panel.commit_pending()
    assert report.comparison == "CT of 2025-01-04."
    panel.undo_button.click()
    assert report.comparison == "" and panel.sections["comparison"].toPlainText() == ""
    assert panel.text_editors()[:3] == list(panel.sections.values())  # dictation can go into them


def test_findings_rows_wrap_and_show_their_whole_text(qtbot, output_dir):
    """Issue #20.8: in a narrow dock no row is cut mid-word: rows wrap to the width, and the tooltip
    holds the whole text and reliability."""
    r = DraftReport(study=StudyContext("1.2.3", modality="CT"), provenance=Provenance("m", "1"))
    long = ("Spiculated soft-tissue mass in the posterior basal segment of the right lower lobe abutting "
            "the pleura, 32 mm, suspicious for primary lung malignancy.")
    r.add_finding(long, [ReportBox(Box(1, 2, 30, 40), 5, "1.2.3.5", "1.2.3")], origin=Origin.AI,
                  reliability=FindingReliability(0.38, Tier.GREEN))
    r.add_finding("Small left pleural effusion.", [], origin=Origin.AI, reliability=FindingReliability(0.2, Tier.RED))
    w = ReportPanel(r, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    w.setStyleSheet(STYLE.read_text(encoding="utf-8"))
    w.resize(300, 900)
    w.show()
    qtbot.waitExposed(w)
    QApplication.processEvents()
    view = w.findings
    flags = int(Qt.AlignmentFlag.AlignLeft) | int(Qt.TextFlag.TextWordWrap)
    for row in range(view.count()):
        item = view.item(row)
        rect = view.visualItemRect(item)
        needed = view.fontMetrics().boundingRect(0, 0, rect.width() - 8, 10_000, flags, item.text())
        assert rect.height() >= needed.height(), (row, rect, needed)  # wrapped, all lines shown
        assert r.findings[row].text in item.toolTip() and "reliability" in item.toolTip()
    assert "reliability green 0.38" in view.item(0).toolTip()
    # the panel scrolls up and down only: nothing is cut off at the right of a narrow dock
    assert w.scroll.viewport().width() >= w.scroll.widget().minimumSizeHint().width()
    w.grab().save(str(output_dir / "report_panel_narrow.png"))


def test_the_lists_give_way_before_the_report_scrolls(qtbot):
    """At 1600x1000 the report dock (~760 px) scrolled with three AI sentences and no finding: the body was laid
    out at the lists' default height (192 px each). Now the AI impression list is as tall as its rows, the
    findings list takes what is left, and only a dock too short for the lists' minimum scrolls."""
    from app.report.draft import AiSentence

    r = DraftReport(study=StudyContext("1.2.3", modality="CT"), provenance=Provenance("m", "1"))
    r.add_ai_sentences([AiSentence(f"s{i}", text) for i, text in enumerate(
        ["No pulmonary nodule or mass.", "The remaining lung parenchyma is clear.", "No focal lesion."])])
    w = ReportPanel(r, reader_name="Smith^Jane")
    qtbot.addWidget(w)
    w.setStyleSheet(STYLE.read_text(encoding="utf-8"))
    w.resize(360, 800)  # the dock's height in a 1600x1000 window
    w.show()
    qtbot.waitExposed(w)
    QApplication.processEvents()
    bar = w.scroll.verticalScrollBar()
    assert bar.maximum() == 0, (bar.maximum(), w.scroll.widget().sizeHint())
    rows = w.ai_sentences
    assert sum(rows.visualItemRect(rows.item(i)).height() for i in range(rows.count())) <= rows.viewport().height()
    assert w.findings.height() > w.findings.minimumHeight()  # the slack went to the findings list
    w.resize(360, 520)  # a laptop's dock: the findings list shrinks to its minimum, then the report scrolls
    QApplication.processEvents()
    assert w.findings.height() == w.findings.minimumHeight() and bar.maximum() > 0
