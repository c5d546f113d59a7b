"""The report controller's wiring, one behaviour at a time, on the real window and the sample study."""

from __future__ import annotations

import re
import shutil
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import QApplication, QPushButton

from app.assistant.ask import Assistant
from app.dicom.model import Window
from app.report.draft import FindingStatus, Origin
from inference.reliability.scoring import FindingResult, Reliability, State, Tier
from tests.app.assistant.test_ask import ScriptedEngine
from tests.app.report.test_session import ANSWER, MASS_PX, SLICE, SPEC
from tests.ui.report.test_flow import ask, open_sample, settings_in
from ui.report.controller import PREFIX
from ui.report.panel import TIER_TINT
from ui.testing import _send, image_to_widget, mouse_drag

pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="needs poppler-utils (make system-deps)")


@pytest.fixture
def win(qtbot, tmp_path):
    w = open_sample(qtbot, settings_in(tmp_path))
    yield w
    w.close()


def test_before_any_answer_the_dock_offers_to_start_a_report(win):
    ctl = win.report
    assert ctl.panel is None and ctl.dock.isVisible()
    ctl.dock.widget().findChild(QPushButton, "start_report").click()
    assert ctl.panel is not None and ctl.panel.report.findings == [] and ctl.panel.report.study.modality == "CT"


def test_drawing_a_rectangle_adds_a_reader_finding_ready_to_type(win, qtbot):
    ask(win)
    ctl, vp = win.report, win.grid.active
    ctl.panel.draw_button.click()
    assert vp.tool == "rect"
    mouse_drag(vp.view.viewport(), image_to_widget(vp, 330, 120), image_to_widget(vp, 370, 150), steps=8)
    report = ctl.panel.report
    mine = report.findings[-1]
    assert mine.origin is Origin.READER and len(report.findings) == 4
    b = mine.boxes[0]
    assert b.slice_index == SLICE and b.sop_instance_uid == vp.volume.series.instances[SLICE].sop_instance_uid
    assert (b.box.x0, b.box.y0, b.box.x1, b.box.y1) == pytest.approx((330, 120, 370, 150), abs=1.0)
    assert vp.measurements.items == []  # the rectangle became the finding's box, not a measurement
    assert vp.overlays.color_of(f"{PREFIX}{mine.id}:0") == (0, 190, 255)  # the reader's colour
    assert vp.tool == "pan" and not ctl.panel.draw_button.isChecked()
    assert ctl.panel.finding_text.textCursor().selectedText() == "New finding"
    ctl.panel.finding_text.insertPlainText("Small pericardial effusion.")
    ctl.panel.commit_pending()
    assert report.finding(mine.id).text == "Small pericardial effusion."


def test_clicking_a_box_selects_its_finding_and_undo_puts_a_moved_box_back(win, qtbot):
    ask(win)
    ctl, vp = win.report, win.grid.active
    report = ctl.panel.report
    nodule = report.findings[2]
    b = nodule.boxes[0].box
    p = image_to_widget(vp, (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2)
    _send(vp.view.viewport(), QEvent.Type.MouseButtonPress, p, Qt.MouseButton.LeftButton, Qt.MouseButton.LeftButton)
    _send(vp.view.viewport(), QEvent.Type.MouseButtonRelease, p, Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton)
    QApplication.processEvents()
    assert ctl.panel.current_finding().id == nodule.id

    x0, y0, x1, y1 = MASS_PX
    mass = report.findings[0].id
    mouse_drag(vp.view.viewport(), image_to_widget(vp, (x0 + x1) / 2, (y0 + y1) / 2),
               image_to_widget(vp, (x0 + x1) / 2 - 20, (y0 + y1) / 2), steps=8)
    assert vp.overlays.box(f"{PREFIX}{mass}:0").x0 == pytest.approx(x0 - 20, abs=1.0)
    ctl.panel.undo_button.click()
    assert report.finding(mass).boxes[0].box.x0 == pytest.approx(x0, abs=1e-3)
    assert vp.overlays.box(f"{PREFIX}{mass}:0").x0 == pytest.approx(x0, abs=1e-3)  # the box followed the undo


class FakeAssistant(QObject):
    """The assistant panel's controller as the report sees it: two signals."""

    answer_ready = Signal(object)
    reliability_ready = Signal(object)

    def shutdown(self) -> None:  # the main window stops the assistant's threads on close
        pass


def test_follows_the_assistants_signals_and_tints_by_reliability(win):
    fake = FakeAssistant()
    win.assistant = fake  # attached after the report, as the launcher may do
    win.report.study_shown()
    vp = win.grid.active
    answer = Assistant(ScriptedEngine(ANSWER), image_spec=SPEC).ask(vp.volume, SLICE, vp.window, "Lesion?")
    fake.answer_ready.emit(SimpleNamespace(answer=answer, context=SimpleNamespace(volume=vp.volume)))
    panel = win.report.panel
    assert panel is not None and len(panel.report.findings) == 3
    rel = Reliability(findings=[FindingResult("mass", [], 0.9, 0.9, Tier.GREEN, State.DONE),
                                FindingResult("pleural effusion", [], 0.15, 0.2, Tier.RED, State.DONE)],
                      worst=0.15, tier=Tier.RED, state=State.DONE)
    fake.reliability_ready.emit(SimpleNamespace(reliability=rel))
    assert panel.findings.item(0).background().color() == TIER_TINT["green"]
    assert panel.findings.item(1).background().color() == TIER_TINT["red"]
    effusion = panel.report.findings[1].id
    assert vp.overlays.label_of(f"{PREFIX}{effusion}:0").endswith("· red")
    assert all(f.status is FindingStatus.PROPOSED for f in panel.report.findings)  # tints decide nothing


def test_export_draft_writes_sr_pdf_and_text_in_the_studys_exports_folder(win):
    ask(win)
    ctl = win.report
    ctl.panel.export_button.click()
    done = ctl.last_export
    folder = ctl.session.workspace.exports_dir(ctl.panel.report.study.study_uid)
    names = sorted(p.name for p in folder.iterdir())
    assert done is not None and {p.name for p in done.paths} == set(names)
    assert [n.split("-")[:2] for n in names[:2]] == [["SR", "draft"], ["SR", "draft"]]
    # readable names: <PatientID>_<StudyDate>_report_draft_<YYYYMMDD-HHMMSS>.pdf/.txt, safe characters only
    assert [re.sub(r"\d{8}-\d{6}", "T", n) for n in names[2:]] == [
        "XMED-PHANTOM-0000_20250101_report_draft_T.pdf", "XMED-PHANTOM-0000_20250101_report_draft_T.txt"]
    assert "DRAFT - NOT SIGNED." in done.text
    assert "Draft exported" in win.statusBar().currentMessage()


def test_a_damaged_saved_draft_is_reported_and_kept(qtbot, tmp_path):
    settings = settings_in(tmp_path)
    first = open_sample(qtbot, settings)
    ask(first)
    uid = first.report.panel.report.study.study_uid
    first.close()
    snap = first.report.session.workspace.snapshot_path(uid)
    snap.write_text("{ not json")
    again = open_sample(qtbot, settings)
    try:
        assert "could not be read and was kept as" in again.statusBar().currentMessage()
        assert snap.with_name(snap.name + ".corrupt-1").exists()
    finally:
        again.close()


def test_sign_waits_for_the_readers_name_from_settings(qtbot, tmp_path):
    settings = settings_in(tmp_path)
    settings.reader_name = ""
    w = open_sample(qtbot, settings)
    try:
        ask(w)
        panel = w.report.panel
        for f in panel.report.findings:
            panel.select_finding(f.id)
            panel.accept_button.click()
        for x in panel.report.ai_sentences:  # Issue #13.7: AI impression sentences are accepted one by one
            panel.select_sentence(x.id)
            panel.accept_sentence_button.click()
        assert not panel.sign_button.isEnabled() and "Enter your name in Settings" in panel.blockers.text()
        w.report.set_reader_name("Doe^John")
        assert panel.sign_button.isEnabled()
        panel.sign_button.click()
        assert panel.report.signature.reader_name == "Doe^John"
        assert w.report.session.audit.user == "Doe^John"
    finally:
        w.close()


# ---- issue #20: reading-room polish ---------------------------------------------------------------

LABEL = re.compile(r"^(AI|You) \d+ · [^·]+?( · (green|amber|red))?$")


def test_one_label_form_on_every_box_and_whole_assistant_rows(qtbot, tmp_path, output_dir):
    """Issue #20.8: the assistant's boxes and the report's read "AI 1 · mass · amber" alike, and the
    assistant's findings rows wrap instead of being cut ("reliability 0.38 (gre"), their tooltip whole."""
    from tests.ui.report.test_flow import ask_in_the_assistant_panel

    w = open_sample(qtbot, settings_in(tmp_path), ScriptedEngine(ANSWER), tmp_path)
    try:
        ask_in_the_assistant_panel(qtbot, w)
        vp = w.grid.active
        labels = [vp.overlays.label_of(i) for i in vp.overlays.ids()]  # the report's boxes (it took them over)
        assert all(i.startswith(PREFIX) for i in vp.overlays.ids()) and len(labels) == 3
        # and the labels the assistant gives its own boxes before the report takes them over
        assistant = w.assistant_panel
        labels += [assistant._box_label(i, f) for i, f in enumerate(assistant.findings)]
        assert all(LABEL.match(label) for label in labels), labels
        assert labels[:3] == labels[3:6]  # same finding, same label, whoever draws it
        rows = w.assistant_panel.findings_list
        rows.setFixedWidth(220)  # as narrow as the radiologist's dock, where "reliability 0.38 (gre" was cut
        QApplication.processEvents()
        flags = int(Qt.AlignmentFlag.AlignLeft) | int(Qt.TextFlag.TextWordWrap)
        width = rows.viewport().width()
        assert any(rows.fontMetrics().horizontalAdvance(rows.item(r).text()) > width for r in range(rows.count())), \
            (width, [rows.fontMetrics().horizontalAdvance(rows.item(r).text()) for r in range(rows.count())])
        for r in range(rows.count()):
            item = rows.item(r)
            rect = rows.visualItemRect(item)
            needed = rows.fontMetrics().boundingRect(0, 0, rect.width() - 8, 10_000, flags, item.text())
            assert rect.height() >= needed.height() and item.text() in item.toolTip(), item.text()
        w.assistant_panel.grab().save(str(output_dir / "assistant_findings_rows.png"))
        vp.grab().save(str(output_dir / "report_box_labels.png"))
    finally:
        w.close()


def test_key_images_are_rendered_in_the_window_each_finding_was_found_in(win, qtbot, monkeypatch, output_dir):
    """Issue #20.13: the AI findings were found in the lung window, the reader drew the liver lesion in the
    liver window; exported while the lung window is on screen, the liver key image is still in liver."""
    import subprocess

    from app.dicom.presets import find_preset
    from ui.report import controller as controller_module

    ask(win)  # in the lung window, on the mass's slice
    ctl, vp = win.report, win.grid.active
    lung, liver = find_preset("lung"), find_preset("liver")
    vp.set_slice(26)
    vp.set_window(liver)
    ctl.panel.draw_button.click()
    mouse_drag(vp.view.viewport(), image_to_widget(vp, 140, 270), image_to_widget(vp, 175, 305), steps=8)
    report = ctl.panel.report
    drawn = report.findings[-1]
    assert drawn.origin is Origin.READER and drawn.window == liver
    assert {f.window for f in report.findings[:-1]} == {Window(1500, -600, "lung")}
    vp.set_window(lung)  # the reader is back in the lung window when exporting
    rendered = []
    real_render = controller_module.render
    monkeypatch.setattr(controller_module, "render",
                        lambda volume, k, window, invert=False: rendered.append((k, window.name))
                        or real_render(volume, k, window, invert))
    ctl.panel.export_button.click()
    assert sorted(set(rendered)) == [(SLICE, "lung"), (26, "liver")]
    pdf = ctl.last_export.pdf
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(pdf), str(output_dir / "report-draft-key-windows")],
                   check=True, timeout=60)


def test_signed_exports_are_private_and_readably_named_and_an_addendum_follows(win, qtbot, output_dir):
    """Issue #20.9, #20.8 and #20.6 in the viewer: the signed PDF, SRs and text are 0600 in a 0700 folder,
    named <PatientID>_<StudyDate>_report_signed_<YYYYMMDD-HHMMSS>.pdf; then an addendum is written, signed
    and exported beside them as a new SR, PDF and text, the signed files untouched."""
    import os
    import stat
    import subprocess

    old_umask = os.umask(0o022)
    try:
        ask(win)
        ctl = win.report
        panel = ctl.panel
        for f in panel.report.findings:
            panel.select_finding(f.id)
            panel.accept_button.click()
        for x in panel.report.ai_sentences:  # Issue #13.7: AI impression sentences are accepted one by one
            panel.select_sentence(x.id)
            panel.accept_sentence_button.click()
        panel.sections["indication"].setPlainText("Cough; weight loss.")
        panel.commit_pending()
        panel.sign_button.click()
        signed = ctl.last_export
        folder = signed.pdf.parent
        stamp = panel.report.signature.signed_at
        expected = "XMED-PHANTOM-0000_20250101_report_signed_" + re.sub(r"\D", "", stamp[:19])[:8] + "-" \
            + re.sub(r"\D", "", stamp[:19])[8:] + ".pdf"
        assert signed.pdf.name == expected
        before = {p: p.read_bytes() for p in signed.paths}
        panel.addendum_button.click()
        qtbot.keyClicks(panel.addendum_text, "Findings discussed with Dr Miller on the phone.")
        panel.sign_addendum_button.click()
        added = ctl.last_export
    finally:
        os.umask(old_umask)
    assert added is not signed and added.addendum_sr.name.startswith("SR-addendum-report-")
    assert "_report_addendum-1_signed_" in added.pdf.name and "ADDENDUM 1" in added.text
    assert "Addendum signed" in win.statusBar().currentMessage()
    assert {p: p.read_bytes() for p in signed.paths} == before
    files = list(folder.iterdir())
    assert len(files) == 7  # signed: 2 SRs, PDF, text; addendum: SR, PDF, text
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), [oct(p.stat().st_mode) for p in files]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    subprocess.run(["pdftoppm", "-r", "60", "-png", str(added.pdf), str(output_dir / "report-addendum")],
                   check=True, timeout=60)
