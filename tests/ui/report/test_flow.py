"""The whole reporting flow through the real window, offscreen: open the bundled sample study,
ask (a scripted engine through the real Assistant), move a box with the mouse, reject one
finding, accept the rest, sign; then check the SR (dciodvfy, highdicom), the PDF (as PNG),
the audit trail, and that a draft comes back when the window is closed and reopened."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.assistant.ask import Assistant
from app.core.settings import Settings
from app.dicom.model import Window
from app.models.registry import ModelRegistry
from app.report.audit import read_records, verify
from app.report.draft import FindingStatus
from tests.app.assistant.test_ask import ScriptedEngine
from tests.app.report.test_session import (
    ANSWER,
    MASS_PX,
    SAMPLE,
    SLICE,
    SPEC,
    dciodvfy_errors,
)
from ui.report.controller import PREFIX
from ui.shell.assistant_setup import install_assistant
from ui.shell.main_window import MainWindow
from ui.testing import image_to_widget, mouse_drag, settle_view
from ui.viewer.overlays import SOURCE_COLORS

pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler-utils (make system-deps)")


def settings_in(tmp_path: Path) -> Settings:
    return Settings(reader_name="Smith^Jane", institution_name="General Hospital", workspace_dir=str(tmp_path / "ws"),
                    audit_log=str(tmp_path / "audit.jsonl"), autosave_seconds=0.2)


def open_sample(qtbot, settings: Settings, assistant_engine=None, tmp_path: Path | None = None) -> MainWindow:
    """The viewer as the launcher builds it (the assistant, when an engine is given, then the report)."""
    win = MainWindow()
    qtbot.addWidget(win)
    if assistant_engine is not None:
        install_assistant(win, settings=Settings(reliability_samples=3, reliability_questions=1),
                          registry=ModelRegistry(tmp_path / "registry.json"), engine=assistant_engine)
    win.attach_report(settings)
    win.resize(1500, 950)
    win.show()
    win.open_paths([SAMPLE])
    qtbot.waitUntil(lambda: not win.is_busy() and win.grid.active.volume is not None
                    and win.grid.active.volume.loaded == 32, timeout=30_000)
    qtbot.wait(50)  # the idle signal is queued
    return win


def ask(win: MainWindow) -> None:
    vp = win.grid.active
    vp.set_slice(SLICE)
    vp.set_window(Window(1500, -600, "lung"))
    answer = Assistant(ScriptedEngine(ANSWER), image_spec=SPEC).ask(vp.volume, SLICE, vp.window, "Any lung lesion?")
    win.report.on_answer(answer, vp.volume)  # the slot assistant.answer_ready connects to


def ask_in_the_assistant_panel(qtbot, win: MainWindow) -> None:
    """Type the question into the real assistant panel and press Enter; the scripted engine answers
    through the real Assistant off the UI thread, then the reliability pass runs."""
    vp = win.grid.active
    vp.set_slice(SLICE)
    vp.set_window(Window(1500, -600, "lung"))
    win.assistant_panel.query.setText("Any lung lesion?")
    with qtbot.waitSignal(win.assistant.reliability_ready, timeout=60_000):
        qtbot.keyClick(win.assistant_panel.query, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: win.report.panel is not None, timeout=5000)
    qtbot.wait(100)  # the report dock updates in the background (#13.7): let the window's layout settle


def test_whole_flow_from_question_to_signed_sr_and_pdf(qtbot, tmp_path, monkeypatch, output_dir):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    win = open_sample(qtbot, settings_in(tmp_path), ScriptedEngine(ANSWER), tmp_path)
    ctl = win.report
    ask_in_the_assistant_panel(qtbot, win)
    panel, vp = ctl.panel, win.grid.active
    assert panel is not None and ctl.dock.widget() is panel and panel.isVisible()
    report = panel.report
    mass, effusion, nodule = (f.id for f in report.findings)
    # the reliability pass reached the report: the checked finding carries its tier, in the list and on its box
    checked = win.assistant.last_reliability.by_phrase["mass"]
    assert report.finding(mass).reliability.tier.value == checked[1].value
    assert vp.overlays.label_of(f"{PREFIX}{mass}:0") == f"AI 1 · mass · {checked[1].value}"
    assert sorted(vp.overlays.visible_ids()) == sorted(f"{PREFIX}{i}:0" for i in (mass, effusion, nodule))
    assert vp.overlays.color_of(f"{PREFIX}{mass}:0") == SOURCE_COLORS["ai"]  # awaiting the reader

    # selecting a finding in the list jumps to its slice and thickens its box
    vp.set_slice(0)
    panel.findings.setCurrentRow(2)
    assert vp.slice_index == SLICE and vp.overlays.highlighted == f"{PREFIX}{nodule}:0"

    # move the mass box 12 px right and 8 px down with the mouse
    x0, y0, x1, y1 = MASS_PX
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    settle_view(vp)  # under load the view was still re-ranging: the box moved 13.3 px, not 12
    mouse_drag(vp.view.viewport(), image_to_widget(vp, cx, cy), image_to_widget(vp, cx + 12, cy + 8), steps=8)
    moved = report.finding(mass).boxes[0].box
    assert moved.x0 == pytest.approx(x0 + 12, abs=1.0) and moved.y0 == pytest.approx(y0 + 8, abs=1.0)
    assert moved.width == pytest.approx(x1 - x0, abs=0.01)
    assert report.finding(mass).status is FindingStatus.EDITED

    # sign is refused until every AI finding is decided, and the panel says why (an edited one counts as decided)
    assert not panel.sign_button.isEnabled() and "2 AI findings still to accept or reject" in panel.blockers.text()
    panel.select_finding(effusion)
    panel.reject_button.click()
    assert vp.overlays.color_of(f"{PREFIX}{effusion}:0") == (150, 150, 150)
    for fid in (mass, nodule):
        panel.select_finding(fid)
        panel.accept_button.click()
    assert vp.overlays.color_of(f"{PREFIX}{nodule}:0") == SOURCE_COLORS["accepted"]
    panel.impression.setPlainText("Spiculated right lower lobe mass, suspicious for malignancy. CT-guided biopsy.")
    panel.commit_pending()
    # Issue #13.7: the AI's impression sentence is a proposal; the reader wrote their own, so rejects it
    assert not panel.sign_button.isEnabled()
    assert "1 AI impression sentence still to accept or reject" in panel.blockers.text()
    (ai_sentence,) = report.ai_sentences
    panel.select_sentence(ai_sentence.id)
    panel.reject_sentence_button.click()
    win.grab().save(str(output_dir / "report-flow-window.png"))
    assert panel.sign_button.isEnabled()
    panel.sign_button.click()

    done = ctl.last_export
    assert report.signed and done is not None and done.pdf is not None
    assert QGuiApplication.clipboard().text() == done.text and "Signed by Jane Smith" in done.text
    assert done.sr.measurement.parent == ctl.session.workspace.exports_dir(report.study.study_uid)
    for p in done.sr.paths:
        assert dciodvfy_errors(p) == [], p

    sr = hd.sr.srread(done.sr.measurement)
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "VERIFIED"
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 2  # the rejected effusion is not in the signed report
    poly = groups[0].roi.value
    assert poly[0].tolist() == pytest.approx([moved.x0, moved.y0], abs=1e-3)  # the reader's edit, not the AI's
    assert poly[2].tolist() == pytest.approx([moved.x1, moved.y1], abs=1e-3)
    sample_uids = {pytest.importorskip("pydicom").dcmread(p, stop_before_pixels=True).SOPInstanceUID
                   for p in SAMPLE.glob("*.dcm")}
    refs = [g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for g in groups]
    assert all(r in sample_uids for r in refs) and refs[0] == vp.volume.series.instances[SLICE].sop_instance_uid

    png = output_dir / "report-flow-signed"
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(done.pdf), str(png)],
                   check=True, timeout=60)
    page = next(output_dir.glob("report-flow-signed*.png"))
    assert page.stat().st_size > 10_000

    check = verify(ctl.session.audit.path)
    assert check.ok, check.summary()
    recs = [r for _, r, _ in read_records(ctl.session.audit.path)]
    actions = [r.action for r in recs]
    assert actions[:3] == ["ai.request", "ai.output", "report.open"]
    assert "<box>[[291, 623, 373, 697]]</box>" in recs[1].data["text"]
    move = next(r for r in recs if r.action == "report.move_box")
    assert move.data["boxes_before"][0]["xyxy"] != move.data["boxes_after"][0]["xyxy"]
    assert move.data["status"] == ["proposed", "edited"]
    assert next(r for r in recs if r.action == "report.reject").data["finding_id"] == effusion
    sign = next(r for r in recs if r.action == "report.sign")
    assert sign.user == "Smith^Jane" and sign.data["rejected_findings"] == [effusion]
    assert actions.index("report.sign") < actions.index("report.export")
    win.close()


def test_draft_comes_back_after_closing_and_reopening_the_window(qtbot, tmp_path):
    settings = settings_in(tmp_path)
    win = open_sample(qtbot, settings)
    ask(win)
    report = win.report.panel.report
    first, second = report.findings[0].id, report.findings[1].id
    win.report.panel.select_finding(first)
    win.report.panel.reject_button.click()
    win.report.panel.select_finding(second)
    win.report.panel.finding_text.setPlainText("Edited before closing.")  # still being typed
    win.close()  # commits the typing, writes the snapshot

    again = open_sample(qtbot, settings)
    qtbot.waitUntil(lambda: again.report.panel is not None, timeout=5000)
    restored = again.report.panel.report
    assert restored.report_id == report.report_id and restored is not report
    assert restored.finding(first).status is FindingStatus.REJECTED
    assert restored.finding(second).text == "Edited before closing."
    vp = again.grid.active
    vp.set_slice(SLICE)
    assert len([i for i in vp.overlays.visible_ids() if i.startswith(PREFIX)]) == 3
    again.close()
