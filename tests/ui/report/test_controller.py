"""The report controller's wiring, one behaviour at a time, on the real window and the sample study."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import QApplication, QPushButton

from app.assistant.ask import Assistant
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
    assert [n.split("-")[:2] for n in names] == [["SR", "draft"], ["SR", "draft"], ["report", "draft"],
                                                  ["report", "draft"]]
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
        assert not panel.sign_button.isEnabled() and "Enter your name in Settings" in panel.blockers.text()
        w.report.set_reader_name("Doe^John")
        assert panel.sign_button.isEnabled()
        panel.sign_button.click()
        assert panel.report.signature.reader_name == "Doe^John"
        assert w.report.session.audit.user == "Doe^John"
    finally:
        w.close()
