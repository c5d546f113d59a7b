"""Issue #13.7 "AI text is a proposal until the reader takes it", through the real window, offscreen.

- Rejecting the AI finding takes the AI impression sentence naming it with it: nothing the AI wrote
  is in the signed report (text, SR, PDF).
- "Locate the right kidney" on pydicom's MR_small.dcm answered with a lung mass: the guardrail band
  and the reliability light stay in view (the Assistant tab stays current), and no AI text is in the
  signable report until the reader accepts a sentence explicitly (audited).
- A box the reader moved exports without the AI's certainty: no Certainty of Finding in the SR for
  it, "edited by the reader" in the PDF.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTabBar

from app.report.audit import read_records
from app.report.draft import FindingStatus, SentenceStatus
from inference.types import Box
from tests.app.assistant.test_ask import ScriptedEngine
from tests.app.report.test_session import ANSWER
from tests.ui.report.test_flow import (
    ask_in_the_assistant_panel,
    open_sample,
    settings_in,
)

pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None or shutil.which("pdftotext") is None,
                                reason="needs poppler-utils (make system-deps)")

#: a lung answer to a kidney question (what a real reading of MR_small.dcm produced)
LUNG_ANSWER = (
    "Step 1: Structure identification\nAxial image of the chest: both lungs.\n"
    "Step 2: Region localization\nA <ref>mass</ref><box>[[300, 350, 650, 700]]</box> in the right middle lobe.\n"
    "Step 3: Detailed description\nThe mass measures 59 mm.\n"
    "Step 4: Holistic analysis\nA large mass is suspicious for malignancy.\n"
    "Step 5: Report synthesis\nA 59 mm mass in the right middle lobe. No pleural effusion.\n"
)


def current_tab(win) -> str:
    """The title of the current tab in the dock tab bar that holds the Assistant."""
    for bar in win.findChildren(QTabBar):
        titles = [bar.tabText(i) for i in range(bar.count())]
        if "Assistant" in titles:
            return bar.tabText(bar.currentIndex())
    raise AssertionError("no tab bar holds the Assistant")


def show_report(qtbot, win, output_dir: Path, name: str) -> None:
    """Raise the report tab (as the reader would), save it as a screenshot."""
    win.report.dock.raise_()
    qtbot.wait(50)
    win.report.panel.grab().save(str(output_dir / name))


def test_rejecting_the_ai_finding_leaves_no_ai_text_in_the_signed_report(qtbot, tmp_path, monkeypatch, output_dir):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    win = open_sample(qtbot, settings_in(tmp_path), ScriptedEngine(ANSWER), tmp_path)
    ask_in_the_assistant_panel(qtbot, win)
    assert current_tab(win) == "Assistant"  # the report updated in the background, nothing switched tabs
    panel = win.report.panel
    report = panel.report
    assert "Draft updated" in panel.status_line.text() and "1 AI impression sentence" in panel.status_line.text()
    (sentence,) = report.ai_sentences
    mass = report.findings[0]
    assert sentence.finding_ids == (mass.id,) and report.impression == "" and report.impression_text() == ""
    assert panel.ai_sentences.count() == 1 and panel.ai_sentences.item(0).text().startswith("?  Spiculated")
    show_report(qtbot, win, output_dir, "trust-ai-sentence-proposed.png")

    # the reader rejects the mass (the finding the AI sentence names): the sentence goes with it ...
    panel.select_finding(mass.id)
    panel.reject_button.click()
    assert report.ai_sentences[0].status is SentenceStatus.REJECTED
    # ... undoably
    panel.undo_button.click()
    assert report.finding(mass.id).status is FindingStatus.PROPOSED
    assert report.ai_sentences[0].status is SentenceStatus.PROPOSED
    panel.redo_button.click()
    assert report.ai_sentences[0].status is SentenceStatus.REJECTED
    for f in report.findings[1:]:
        panel.select_finding(f.id)
        panel.reject_button.click()
    show_report(qtbot, win, output_dir, "trust-ai-sentence-rejected-with-finding.png")
    assert panel.sign_button.isEnabled(), panel.blockers.text()
    panel.sign_button.click()
    done = win.report.last_export
    assert report.signed and done is not None
    assert "Spiculated" not in done.text and "mass" not in done.text.lower()
    narrative = pydicom.dcmread(done.sr.narrative)
    assert "Spiculated" not in str(narrative)
    pdf_text = subprocess.run(["pdftotext", str(done.pdf), "-"], capture_output=True, text=True, check=True,
                              timeout=60).stdout
    assert "Spiculated" not in pdf_text
    actions = [r.action for _, r, _ in read_records(win.report.session.audit.path)]
    assert actions.count("report.reject") == 3 and "report.redo.reject" in actions and "report.undo.reject" in actions
    win.shutdown()


def _mr_small_folder(tmp_path: Path) -> Path:
    """pydicom's MR_small.dcm (a head MR), its header naming the body part: as shipped it names none and the
    64-pixel crop cannot tell the region, so the guardrail says "could not check" instead of warning."""
    folder = tmp_path / "mr"
    folder.mkdir()
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("MR_small.dcm"))
    ds.BodyPartExamined = "HEAD"
    ds.save_as(folder / "MR_small.dcm")
    return folder


def test_kidney_question_on_mr_small_keeps_the_lung_answer_out_until_accepted(qtbot, tmp_path, monkeypatch,
                                                                              output_dir):
    from app.core.settings import Settings
    from app.models.registry import ModelRegistry
    from ui.shell.assistant_setup import install_assistant
    from ui.shell.main_window import MainWindow

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    win = MainWindow()
    qtbot.addWidget(win)
    install_assistant(win, settings=Settings(reliability_samples=3, reliability_questions=1),
                      registry=ModelRegistry(tmp_path / "registry.json"), engine=ScriptedEngine(LUNG_ANSWER))
    win.attach_report(settings_in(tmp_path))
    win.resize(1500, 950)
    win.show()
    win.open_paths([_mr_small_folder(tmp_path)])
    qtbot.waitUntil(lambda: not win.is_busy() and win.grid.active.volume is not None, timeout=30_000)
    qtbot.wait(50)
    win.assistant_panel.query.setText("Locate the right kidney")
    with qtbot.waitSignal(win.assistant.reliability_ready, timeout=60_000):
        qtbot.keyClick(win.assistant_panel.query, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: win.report.panel is not None, timeout=5000)
    qtbot.wait(100)

    # the assistant stays in view: its tab is current, its red band and reliability light are shown
    band = win.assistant_panel.warning
    assert current_tab(win) == "Assistant"
    assert band.isVisible() and band.text().startswith("⚠"), band.text()
    win.grab().save(str(output_dir / "trust-mr-small-assistant-stays.png"))

    panel = win.report.panel
    report = panel.report
    texts = [x.text for x in report.ai_sentences]
    assert texts == ["A 59 mm mass in the right middle lobe.", "No pleural effusion."]
    assert all(x.caution.startswith("Guardrail warning") for x in report.ai_sentences)
    assert report.impression_text() == ""  # nothing the AI wrote is signable yet
    # deciding the finding is not enough: the AI sentences wait for the reader, one by one
    panel.select_finding(report.findings[0].id)
    panel.accept_button.click()
    assert report.impression_text() == ""
    assert not panel.sign_button.isEnabled()
    assert "2 AI impression sentences still to accept or reject" in panel.blockers.text()
    assert "Ready to sign" not in panel.blockers.text()
    assert "⚠ Guardrail warning" in panel.ai_sentences.item(0).text()
    show_report(qtbot, win, output_dir, "trust-mr-small-ai-sentences.png")

    # one explicit click per sentence, each audited
    panel.select_sentence(report.ai_sentences[0].id)
    panel.accept_sentence_button.click()
    panel.select_sentence(report.ai_sentences[1].id)
    panel.reject_sentence_button.click()
    assert report.impression_text() == "A 59 mm mass in the right middle lobe."
    records = [r for _, r, _ in read_records(win.report.session.audit.path)]
    decided = [r for r in records if r.action in ("report.accept_sentence", "report.reject_sentence")]
    assert [r.action for r in decided] == ["report.accept_sentence", "report.reject_sentence"]
    assert decided[0].data["ai_sentences"][0]["status"] == ["proposed", "accepted"]
    assert decided[0].data["ai_sentences"][0]["caution"].startswith("Guardrail warning")
    assert panel.sign_button.isEnabled()
    win.shutdown()


def test_a_moved_box_exports_without_the_ai_certainty(qtbot, tmp_path, monkeypatch, output_dir):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    win = open_sample(qtbot, settings_in(tmp_path), ScriptedEngine(ANSWER), tmp_path)
    ask_in_the_assistant_panel(qtbot, win)
    panel = win.report.panel
    report = panel.report
    mass, effusion, nodule = report.findings
    assert mass.reliability is not None and nodule.reliability is not None  # the reliability pass ran
    b = mass.boxes[0].box
    report.move_box(mass.id, 0, Box(b.x0 + 12, b.y0 + 8, b.x1 + 12, b.y1 + 8))  # what dragging the box does
    for f in (mass, nodule):
        panel.select_finding(f.id)
        panel.accept_button.click()
    panel.select_finding(effusion.id)
    panel.reject_button.click()
    assert report.finding(mass.id).edited_by_reader and report.finding(mass.id).ai_certainty is None
    assert "edited by you" in panel.findings.item(0).text()
    panel.select_sentence(report.ai_sentences[0].id)
    panel.accept_sentence_button.click()
    panel.sign_button.click()
    done = win.report.last_export
    assert report.signed and done is not None and done.pdf is not None

    sr = hd.sr.srread(done.sr.measurement)
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2
    by_finding = {g.tracking_identifier.split("(")[1].split(")")[0]: g for g in groups}
    certainty = pydicom.sr.codedict.codes.DCM.CertaintyOfFinding
    assert by_finding[mass.id].get_measurements(name=certainty) == []  # the reader's box: no AI certainty
    (nodule_certainty,) = by_finding[nodule.id].get_measurements(name=certainty)  # checked, unedited AI finding
    assert nodule_certainty.value == pytest.approx(round(nodule.reliability.score * 100, 2))

    pdf_text = subprocess.run(["pdftotext", str(done.pdf), "-"], capture_output=True, text=True, check=True,
                              timeout=60).stdout
    assert "edited by the reader (no AI certainty)" in " ".join(pdf_text.split())
    assert pdf_text.count("AI reliability:") == 1  # the nodule only, not the moved mass
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(done.pdf),
                    str(output_dir / "trust-moved-box-signed")], check=True, timeout=60)
    win.shutdown()
