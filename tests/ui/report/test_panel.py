"""The report editor drives the report model: decide, edit, undo, sign, copy; tints follow reliability."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QTextCursor

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
from ui.report.panel import TIER_TINT, ReportPanel


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
