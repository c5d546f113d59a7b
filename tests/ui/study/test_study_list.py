"""The study list in the real window, offscreen: search and filters narrow the rows, columns sort, the AI
state shows as a coloured dot, a double-click opens the study in MainWindow; the Query PACS tab searches
the real Orthanc and retrieves in the background; signing a report sends its SR and PDF to Orthanc
through the outbox."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from PySide6.QtCore import QDate, Qt
from PySide6.QtGui import QGuiApplication, QIcon
from PySide6.QtWidgets import QPushButton

from app.core.settings import Settings
from app.dicom.loader import load_series
from app.dicom.model import Window
from app.dicom.scan import scan
from app.studies.db import InstanceRecord, StudyDB
from app.studies.importer import import_paths
from app.studies.locations import StudyPaths
from app.studies.nodes import LocalAE, Node, NodeStore
from app.studies.pdf import ENCAPSULATED_PDF
from app.studies.scp import Listener, Receiver
from app.studies.scu import send_files
from app.synthetic.sample import load_ground_truth, write_ct_study
from app.viewer.measure_store import frame_table
from tests.app.assistant.test_preread import SPEC, TruthEngine
from tests.app.studies.conftest import OUR_AE, free_port, home, orthanc  # noqa: F401 - fixtures
from ui.report.panel import ReportPanel
from ui.shell.main_window import MainWindow
from ui.study.study_list import (
    AI,
    COUNTS,
    DATE,
    PATIENT,
    REPORT,
    TIER_ROLE,
    LocalStudiesTab,
    Services,
)

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "resources" / "sample" / "ct-demo"
SAMPLE_FILES = sorted(SAMPLE.glob("*.dcm"))
SAMPLE_UID = str(pydicom.dcmread(SAMPLE_FILES[0], stop_before_pixels=True).StudyInstanceUID)


def _rec(i: int, **kw) -> InstanceRecord:
    base = dict(sop_instance_uid=f"1.2.3.{i}.1", study_uid=f"1.2.3.{i}", series_uid=f"1.2.3.{i}.0",
                path=f"/x/{i}.dcm", patient_name=f"DOE^JANE{i}", patient_id=f"PID{i:05d}",
                accession=f"ACC{i:05d}", study_date=f"202601{i + 1:02d}", modality="CT" if i % 2 else "MR")
    base.update(kw)
    return InstanceRecord(**base)


@pytest.fixture
def services(home):  # noqa: F811
    paths = StudyPaths.detect().ensure()
    db = StudyDB(paths.database)
    db.add_instances([_rec(i) for i in range(6)] + [_rec(9, patient_name="MÜLLER^HANS", study_date="20251224")],
                     origin="import")
    yield Services(db, paths, NodeStore.load(paths.nodes_file))
    db.close()


def _texts(tab: LocalStudiesTab, col: int) -> list[str]:
    return [tab.proxy.index(r, col).data() for r in range(tab.proxy.rowCount())]


def test_search_and_filters_narrow_the_rows_and_columns_sort(qtbot, services):
    tab = LocalStudiesTab(services)
    qtbot.addWidget(tab)
    assert len(tab.uids()) == 7 and tab.count.text() == "7 studies"
    assert tab.uids()[0] == "1.2.3.5"  # newest first
    tab.search.setText("müller")  # (QTest cannot type ü)
    qtbot.waitUntil(lambda: tab.uids() == ["1.2.3.9"], timeout=3000)
    assert _texts(tab, PATIENT)[0].upper().startswith("MÜLLER")
    tab.search.clear()
    qtbot.keyClicks(tab.search, "jane")  # typed, any part of the name, any case
    qtbot.waitUntil(lambda: len(tab.uids()) == 6, timeout=3000)
    tab.search.setText("PID00003")  # the start of a patient ID
    qtbot.waitUntil(lambda: tab.uids() == ["1.2.3.3"], timeout=3000)
    tab.search.clear()
    qtbot.waitUntil(lambda: len(tab.uids()) == 7, timeout=3000)
    # modality filter (offered from the database)
    assert [tab.modality.itemText(i) for i in range(tab.modality.count())] == ["All modalities", "CT", "MR"]
    tab.modality.setCurrentText("CT")
    assert sorted(tab.uids()) == ["1.2.3.1", "1.2.3.3", "1.2.3.5", "1.2.3.9"]
    tab.modality.setCurrentIndex(0)
    # date range
    tab.dates.set_range(QDate(2026, 1, 2), QDate(2026, 1, 4))
    assert sorted(tab.uids()) == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    tab.dates.preset.setCurrentText("Any date")
    assert len(tab.uids()) == 7
    # sorting by a column (the header click does the same)
    tab.view.sortByColumn(DATE, Qt.SortOrder.AscendingOrder)
    assert tab.uids()[0] == "1.2.3.9" and tab.uids()[-1] == "1.2.3.5"
    tab.view.sortByColumn(PATIENT, Qt.SortOrder.DescendingOrder)
    assert tab.uids()[0] == "1.2.3.9"  # MÜLLER after DOE
    # the patient and date cells, all the narrow dock shows, tell one study of a patient from another on hover
    tips = {tab.proxy.index(i, PATIENT).data(Qt.ItemDataRole.ToolTipRole) for i in range(tab.proxy.rowCount())}
    assert len(tips) == 7 and all("Patient ID: " in t and "Accession: " in t for t in tips)
    assert tab.proxy.index(0, DATE).data(Qt.ItemDataRole.ToolTipRole) == tab.proxy.index(0, PATIENT).data(
        Qt.ItemDataRole.ToolTipRole)


def test_the_narrow_dock_shows_the_ai_state_patient_and_whole_date(qtbot, services):
    """Seen at 1366 px: the Date column cut "2025-01-01 12:0" in the study list's dock. The AI state and the
    date (with its time) are sized from the table's font and fit beside the patient in the dock."""
    from ui.study.study_list import DOCK_VIEWPORT

    services.db.add_instances([_rec(20, study_time="235959")], origin="import")
    tab = LocalStudiesTab(services)
    qtbot.addWidget(tab)
    view, metrics = tab.view, tab.view.fontMetrics()
    row = tab.uids().index("1.2.3.20")
    date = tab.proxy.index(row, DATE).data()
    assert date.endswith(" 23:59") and metrics.horizontalAdvance(date) + 8 <= view.columnWidth(DATE)
    for text in ("running…", "none listed", "amber"):
        assert metrics.horizontalAdvance(text) + 16 + 8 <= view.columnWidth(AI)
    assert view.columnWidth(AI) + view.columnWidth(PATIENT) + view.columnWidth(DATE) <= DOCK_VIEWPORT
    assert view.columnWidth(PATIENT) >= 110


def test_ai_and_report_state_follow_the_database_with_a_coloured_dot(qtbot, services):
    tab = LocalStudiesTab(services)
    qtbot.addWidget(tab)
    db = services.db

    def cell(uid: str, col: int, role=Qt.ItemDataRole.DisplayRole):
        row = tab.uids().index(uid)
        return tab.proxy.index(row, col).data(role)

    assert cell("1.2.3.2", AI) == "" and cell("1.2.3.2", AI, Qt.ItemDataRole.DecorationRole) is None
    db.set_ai("1.2.3.2", "queued")
    qtbot.waitUntil(lambda: cell("1.2.3.2", AI) == "queued", timeout=3000)  # polled, no refresh call
    assert cell("1.2.3.2", AI, Qt.ItemDataRole.DecorationRole) is None
    db.set_ai("1.2.3.2", "done", "red")
    db.set_report("1.2.3.2", "signed")
    qtbot.waitUntil(lambda: cell("1.2.3.2", AI) == "red", timeout=3000)
    icon = cell("1.2.3.2", AI, Qt.ItemDataRole.DecorationRole)
    assert isinstance(icon, QIcon) and not icon.isNull()
    image = icon.pixmap(12, 12).toImage()
    centre = image.pixelColor(6, 6)
    assert (centre.red(), centre.green(), centre.blue()) == (214, 48, 49)  # the red lamp
    assert cell("1.2.3.2", AI, TIER_ROLE) == "red" and cell("1.2.3.2", REPORT) == "signed"
    db.set_ai("1.2.3.3", "done", "green")
    qtbot.waitUntil(lambda: cell("1.2.3.3", AI) == "green", timeout=3000)
    green = cell("1.2.3.3", AI, Qt.ItemDataRole.DecorationRole).pixmap(12, 12).toImage().pixelColor(6, 6)
    assert (green.red(), green.green(), green.blue()) == (39, 174, 96)
    db.set_ai("1.2.3.4", "failed")
    qtbot.waitUntil(lambda: cell("1.2.3.4", AI) == "failed", timeout=3000)
    tab.view.sortByColumn(AI, Qt.SortOrder.DescendingOrder)  # worst first: failed, red, green
    assert tab.uids()[:3] == ["1.2.3.4", "1.2.3.2", "1.2.3.3"]


@pytest.fixture
def window(qtbot, home, tmp_path):  # noqa: F811
    settings = Settings(reader_name="Smith^Jane", workspace_dir=str(tmp_path / "ws"),
                        audit_log=str(tmp_path / "audit.jsonl"), autosave_seconds=0.2)
    win = MainWindow()
    qtbot.addWidget(win)
    win.attach_report(settings)
    win.resize(1500, 950)
    yield win, settings
    if getattr(win, "studies", None) is not None:
        win.studies.shutdown()
    win.close()


def _double_click(qtbot, view, row: int) -> None:
    index = view.model().index(row, 0)
    rect = view.visualRect(index)
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def test_double_click_opens_the_study_in_the_viewer(qtbot, window):
    win, settings = window
    db = StudyDB(StudyPaths.detect().ensure().database)
    import_paths(db, [SAMPLE])
    db.close()
    studies = win.attach_studies(settings=settings)
    win.show()
    tab = studies.widget.local
    assert studies.dock.isVisible() and tab.uids() == [SAMPLE_UID]
    assert tab.proxy.index(0, COUNTS).data() == f"1 / {len(SAMPLE_FILES)}"
    assert win.result is None
    _double_click(qtbot, tab.view, 0)
    qtbot.waitUntil(lambda: win.grid.active.volume is not None and not win.is_busy(), timeout=30_000)
    assert Path(win.result.all_series()[0].instances[0].path) in set(SAMPLE_FILES)
    assert win.grid.active.volume.series.series_instance_uid == db_series_uid()


def db_series_uid() -> str:
    return str(pydicom.dcmread(SAMPLE_FILES[0], stop_before_pixels=True).SeriesInstanceUID)


def test_an_opened_folder_is_indexed_and_a_draft_marks_the_report_column(qtbot, window):
    win, settings = window
    studies = win.attach_studies(settings=settings)
    win.show()
    assert studies.widget.local.uids() == []
    win.open_paths([SAMPLE])
    qtbot.waitUntil(lambda: not win.is_busy() and win.grid.active.volume is not None, timeout=30_000)
    qtbot.waitUntil(lambda: studies.widget.local.uids() == [SAMPLE_UID], timeout=5000)
    assert studies.db.get(SAMPLE_UID).origin == "opened"
    win.report.dock.widget().findChild(QPushButton, "start_report").click()
    qtbot.waitUntil(lambda: studies.widget.local.proxy.index(0, REPORT).data() == "draft", timeout=3000)


def _orthanc_nodes(orthanc) -> NodeStore:  # noqa: F811
    store = NodeStore.load(StudyPaths.detect().ensure().nodes_file)
    store.set_local(LocalAE(OUR_AE, "127.0.0.1", orthanc.listener_port))
    store.add(Node("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, retrieve="get",
                   dicomweb=orthanc.dicomweb), replace=True)
    return store


def _pacs_over_a_slow_link(win, settings, orthanc, monkeypatch):  # noqa: F811
    """The sample study in Orthanc, received over a slow link (0.15 s an image: ~5 s for the 32), and
    the window's Query PACS tab shown; (studies, pacs tab, the real store handler)."""
    orthanc.clear()
    orthanc.upload(SAMPLE_FILES)
    _orthanc_nodes(orthanc)
    store = Receiver.handle_store

    def slowly(self, event):
        time.sleep(0.15)
        return store(self, event)

    monkeypatch.setattr(Receiver, "handle_store", slowly)
    studies = win.attach_studies(settings=settings)
    win.show()
    pacs = studies.widget.pacs
    studies.widget.tabs.setCurrentWidget(pacs)
    return studies, pacs, store


def test_query_pacs_tab_finds_and_retrieves_from_orthanc_in_the_background(qtbot, window, orthanc):  # noqa: F811
    win, settings = window
    orthanc.clear()
    orthanc.upload(SAMPLE_FILES)
    _orthanc_nodes(orthanc)
    studies = win.attach_studies(settings=settings)
    win.show()
    pacs = studies.widget.pacs
    studies.widget.tabs.setCurrentWidget(pacs)
    assert pacs.node.currentText() == "orthanc" and pacs.web.isEnabled()
    qtbot.keyClicks(pacs.patient_name, "PHANTOM*")
    pacs.search_button.click()
    qtbot.waitUntil(lambda: pacs.model.rowCount() == 1, timeout=20_000)
    row = pacs.model.rows[0]
    assert row.uid == SAMPLE_UID and row.instances == len(SAMPLE_FILES) and not row.local
    assert pacs.proxy.index(0, AI).data() == ""
    # a search for somebody else finds nothing
    # (the button comes back when the search thread has finished, a moment after the results show)
    qtbot.waitUntil(pacs.search_button.isEnabled, timeout=10_000)
    pacs.patient_name.setText("NOBODY*")
    pacs.search_button.click()
    qtbot.waitUntil(lambda: pacs.model.rowCount() == 0 and "0 studies" in pacs.status.text(), timeout=20_000)
    qtbot.waitUntil(pacs.search_button.isEnabled, timeout=10_000)
    pacs.patient_name.setText("PHANTOM*")
    pacs.search_button.click()
    qtbot.waitUntil(lambda: pacs.model.rowCount() == 1, timeout=20_000)

    pacs.view.selectRow(0)
    assert pacs.retrieve_button.isEnabled()
    t0 = time.monotonic()
    pacs.retrieve_button.click()
    assert time.monotonic() - t0 < 1.0  # the window does not wait for the network
    assert pacs.retrieving and pacs.progress.isVisible() and not pacs.retrieve_button.isEnabled()
    qtbot.waitUntil(lambda: not pacs.retrieving, timeout=60_000)
    qtbot.waitUntil(lambda: not pacs.progress.isVisible(), timeout=5000)
    assert f"Retrieved {len(SAMPLE_FILES)} new image(s)" in pacs.status.text()
    study = studies.db.get(SAMPLE_UID)
    assert study is not None and study.state == "complete" and study.instances == len(SAMPLE_FILES)
    assert pacs.model.rows[0].local
    qtbot.waitUntil(lambda: studies.widget.local.uids() == [SAMPLE_UID], timeout=5000)
    # double-click on the PACS row: it is here now, so it opens
    _double_click(qtbot, pacs.view, 0)
    qtbot.waitUntil(lambda: win.grid.active.volume is not None and not win.is_busy(), timeout=30_000)
    assert all(StudyPaths.detect().storage in Path(inst.path).parents for inst in win.result.all_series()[0].instances)
    records = [json.loads(line) for line in Path(settings.audit_log).read_text().splitlines()]
    assert {"pacs.find", "pacs.get", "pacs.association"} <= {r["action"] for r in records}


def test_a_retrieve_can_be_cancelled_and_a_later_retrieve_completes_the_study(qtbot, window, orthanc,  # noqa: F811
                                                                               monkeypatch):
    """Cancel aborts the C-GET association at once: what arrived stays, the study is incomplete in the database
    (and says so in the list), and the next Retrieve brings the rest."""
    win, settings = window
    studies, pacs, store = _pacs_over_a_slow_link(win, settings, orthanc, monkeypatch)  # cancel lands halfway
    assert not pacs.cancel_button.isVisible() and pacs.cancel_retrieve() is False
    pacs.search_button.click()
    qtbot.waitUntil(lambda: pacs.model.rowCount() == 1, timeout=20_000)
    pacs.view.selectRow(0)
    pacs.retrieve_button.click()
    assert pacs.retrieving and pacs.cancel_button.isVisible() and pacs.cancel_button.isEnabled()

    def here() -> int:
        study = studies.db.get(SAMPLE_UID)
        return study.instances if study is not None else 0

    qtbot.waitUntil(lambda: here() >= 3, timeout=30_000)
    t0 = time.monotonic()
    pacs.cancel_button.click()
    assert time.monotonic() - t0 < 0.5  # the window does not wait for the network
    assert not pacs.cancel_button.isEnabled() and pacs.status.text() == "Cancelling the retrieve…"
    qtbot.waitUntil(lambda: not pacs.retrieving, timeout=20_000)
    assert time.monotonic() - t0 < 10  # aborted, not waited out (the DIMSE timeout is 30 s)
    qtbot.waitUntil(lambda: not pacs.cancel_button.isVisible(), timeout=5000)
    study = studies.db.get(SAMPLE_UID)
    assert study.state == "incomplete" and 3 <= study.instances < len(SAMPLE_FILES)
    have = study.instances
    assert pacs.status.text().startswith(f"Retrieve cancelled: {have} image(s) of the study are here, it is "
                                         "marked incomplete")
    qtbot.waitUntil(lambda: studies.widget.local.uids() == [SAMPLE_UID], timeout=5000)
    local = studies.widget.local
    assert "retrieve the study again" in local.proxy.index(0, COUNTS).data(Qt.ItemDataRole.ToolTipRole)
    records = [json.loads(line) for line in Path(settings.audit_log).read_text().splitlines()]
    (get,) = [r for r in records if r["action"] == "pacs.get"]
    assert get["data"]["cancelled"] is True and get["data"]["state"] == "incomplete"

    # the next retrieve (no longer slow) completes the study; what was here is not stored twice
    monkeypatch.setattr(Receiver, "handle_store", store)
    pacs.view.selectRow(0)
    pacs.retrieve_button.click()
    qtbot.waitUntil(lambda: not pacs.retrieving, timeout=60_000)
    study = studies.db.get(SAMPLE_UID)
    assert study.state == "complete" and study.instances == len(SAMPLE_FILES)
    assert f"Retrieved {len(SAMPLE_FILES) - have} new image(s)" in pacs.status.text()


def test_a_study_opened_from_the_pacs_shows_its_first_images_before_the_retrieve_ends(qtbot, window, orthanc,  # noqa: F811
                                                                                       monkeypatch):
    """Double-click on a study that is not here: the viewer opens it as soon as its first images are
    stored, while the rest still arrives; when the retrieve ends it shows the whole study, on the image
    and in the window the reader had chosen meanwhile."""
    win, settings = window
    studies, pacs, _ = _pacs_over_a_slow_link(win, settings, orthanc, monkeypatch)
    pacs.search_button.click()
    qtbot.waitUntil(lambda: pacs.model.rowCount() == 1, timeout=20_000)
    _double_click(qtbot, pacs.view, 0)
    vp = win.grid.viewports[0]
    qtbot.waitUntil(lambda: vp.volume is not None and not win.is_busy(), timeout=30_000)
    partial = len(vp.volume)
    assert pacs.retrieving and 0 < partial < len(SAMPLE_FILES)  # viewable before the series is complete
    vp.set_slice(partial - 1)
    lung = Window(1500, -600)
    vp.set_window(lung)
    sop = frame_table(vp.volume.series.instances)[vp.slice_index]
    qtbot.waitUntil(lambda: not pacs.retrieving, timeout=60_000)
    qtbot.waitUntil(lambda: vp.volume is not None and len(vp.volume) == len(SAMPLE_FILES) and not win.is_busy(),
                    timeout=30_000)
    assert studies.db.get(SAMPLE_UID).state == "complete"
    assert frame_table(vp.volume.series.instances)[vp.slice_index] == sop  # the same image, now in the whole series
    assert vp.window == lung


def test_pacs_settings_changed_in_the_dialog_take_effect_at_once(qtbot, window):
    """What the Settings dialog's PACS section changes applies without a restart: the listener starts and stops,
    the destination of signed reports changes, the pre-read queue starts."""
    from dataclasses import replace

    from app.studies.scu import PacsError, echo

    win, settings = window
    store = NodeStore.load(StudyPaths.detect().ensure().nodes_file)
    store.set_local(LocalAE("XMEDVIEW", "127.0.0.1", free_port()))
    store.add(Node("archive", "ARCHIVE", "127.0.0.1", 104))
    studies = win.attach_studies(settings=settings)
    assert studies.listener is None and studies.queue is None and settings.report_send_node == ""
    viewer = Node("viewer", "XMEDVIEW", "127.0.0.1", store.local.port)
    chosen = replace(settings, pacs_listen=True, report_send_node="archive")
    assert sorted(studies.apply_settings(chosen)) == ["pacs_listen", "report_send_node"]
    assert studies.listener is not None and studies.services.listener is studies.listener
    assert settings.report_send_node == "archive"  # the next signature goes there
    assert echo(viewer, LocalAE("ARCHIVE")) < 10  # a configured node reaches the listener
    assert "Receiving studies as XMEDVIEW" in win.statusBar().currentMessage()
    assert studies.apply_settings(chosen) == []  # nothing changed: the listener is not restarted
    chosen = replace(chosen, preread_on_arrival=True, preread_quiet_seconds=5.0)
    assert sorted(studies.apply_settings(chosen)) == ["preread_on_arrival", "preread_quiet_seconds"]
    assert studies.queue is not None and studies.queue.running and studies.services.preread_retrieved
    assert studies.listener is not None and echo(viewer, LocalAE("ARCHIVE")) < 10
    studies.apply_settings(replace(chosen, pacs_listen=False))
    assert studies.listener is None and studies.services.listener is None
    with pytest.raises(PacsError):
        echo(viewer, LocalAE("ARCHIVE"))
    records = [json.loads(line) for line in Path(settings.audit_log).read_text().splitlines()]
    assert [r["action"] for r in records if r["action"].startswith("pacs.listen")] == [
        "pacs.listen", "pacs.listen.stop", "pacs.listen", "pacs.listen.stop"]


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="the report tests need poppler-utils")
def test_signing_sends_the_sr_and_pdf_to_orthanc_through_the_outbox(qtbot, window, orthanc, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ReportPanel, "auto_answer", True)  # the sign-off confirmation says "Sign"
    win, settings = window
    orthanc.clear()
    _orthanc_nodes(orthanc)
    settings.report_send_node = "orthanc"
    studies = win.attach_studies(settings=settings)
    win.show()
    win.open_paths([SAMPLE])
    qtbot.waitUntil(lambda: not win.is_busy() and win.grid.active.volume is not None
                    and win.grid.active.volume.loaded == len(SAMPLE_FILES), timeout=30_000)
    qtbot.wait(50)
    win.report.dock.widget().findChild(QPushButton, "start_report").click()
    panel = win.report.panel
    panel.impression.setPlainText("No acute findings.")
    panel.commit_pending()
    assert panel.sign_button.isEnabled(), panel.blockers.text()
    with qtbot.waitSignal(win.report.signed, timeout=30_000) as sig:
        panel.sign_button.click()
    exported = sig.args[0]
    assert any(p.suffix == ".pdf" for p in exported) and any(p.suffix == ".dcm" for p in exported)
    outbox = studies.outbox
    # a report without findings has no measurement SR: the narrative SR and the PDF go
    assert "queued for orthanc: 2 file(s)" in win.statusBar().currentMessage()
    assert sorted(i.kind for i in outbox.items()) == ["pdf", "sr"]
    qtbot.waitUntil(lambda: outbox.counts()["sent"] == 2, timeout=30_000)
    assert studies.db.get(SAMPLE_UID).report_state == "signed"
    view = studies.widget.outbox
    qtbot.waitUntil(lambda: sorted(view.states().values()) == ["sent"] * 2, timeout=5000)
    held = {}
    for sid in orthanc.rest("/studies"):
        for inst in orthanc.rest(f"/studies/{sid}/instances"):
            tags = orthanc.rest(f"/instances/{inst['ID']}/simplified-tags")
            held[tags["SOPInstanceUID"]] = (tags["SOPClassUID"], tags["StudyInstanceUID"])
    assert {i.sop_instance_uid for i in outbox.items()} == set(held)
    assert {study for _, study in held.values()} == {SAMPLE_UID}
    classes = sorted(c for c, _ in held.values())
    assert classes.count(ENCAPSULATED_PDF) == 1 and sum(c.startswith("1.2.840.10008.5.1.4.1.1.88.") for c in classes) == 1
    records = [json.loads(line) for line in Path(settings.audit_log).read_text().splitlines()]
    actions = [r["action"] for r in records]
    assert actions.index("report.sign") < actions.index("pacs.outbox.queued") < actions.index("pacs.outbox.sent")


def _listening_window(win, settings, tmp_path, seed: int, engine_class):
    """The window receiving as XMEDVIEW (Settings pacs_listen) and pre-reading arrivals with ``engine_class``
    answering from a fresh study's ground truth: (study folder, its UID, the engine, the studies controller)."""
    folder = write_ct_study(tmp_path / "ct", n_slices=16, size=128, seed=seed)
    uid = str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    engine = engine_class(load_series(scan([folder]).all_series()[0]), load_ground_truth(folder))
    store = NodeStore.load(StudyPaths.detect().ensure().nodes_file)
    store.set_local(LocalAE("XMEDVIEW", "127.0.0.1", free_port()))
    store.add(Node("modality", "SENDER", "127.0.0.1", 104))
    settings.pacs_listen = True
    studies = win.attach_studies(settings=settings, engine_factory=lambda: (engine, SPEC))
    win.show()
    return folder, uid, engine, studies


def test_a_study_pushed_to_the_viewers_listener_is_preread_and_shows_its_dot(qtbot, window, tmp_path):
    """Settings pacs_listen: the window runs the Storage SCP; an arriving study is queued when its association
    is released and read in the background (a scripted engine that answers with the study's ground truth)."""
    win, settings = window
    folder, uid, engine, studies = _listening_window(win, settings, tmp_path, 321, TruthEngine)
    assert studies.listener is not None and studies.queue is not None and studies.queue.running
    t0 = time.monotonic()
    sent = send_files(Node("viewer", "XMEDVIEW", "127.0.0.1", studies.listener.port), [folder],
                      local=LocalAE("SENDER"))
    assert sent.sent == 16 and time.monotonic() - t0 < 30
    tab = studies.widget.local

    def ai_text() -> str:
        uids = tab.uids()
        return tab.proxy.index(uids.index(uid), AI).data() if uid in uids else ""

    qtbot.waitUntil(lambda: ai_text() in ("green", "amber", "red", "none listed", "not assessed"), timeout=60_000)
    study = studies.db.get(uid)
    assert study.origin == "received" and study.ai_state == "done" and study.ai_worst_tier in ("red", "amber", "green")
    row = tab.uids().index(uid)
    assert tab.proxy.index(row, AI).data(TIER_ROLE) == study.ai_worst_tier
    assert not tab.proxy.index(row, AI).data(Qt.ItemDataRole.DecorationRole).isNull()
    assert ai_text() == study.ai_worst_tier

    # opened from the list, its series shows that pre-read's lesions at once (nothing is run again)
    from ui.shell.preread_setup import install_preread

    install_preread(win, settings, engine=engine)
    asked = (engine.generate_calls, len(engine.batches), len(engine.reasoning_batches))
    _double_click(qtbot, tab.view, row)
    qtbot.waitUntil(lambda: win.grid.active.volume is not None
                    and win.preread.result_for(win.grid.active.volume) is not None, timeout=30_000)
    (job,) = studies.queue.jobs(uid)
    saved = json.loads(Path(job.result_path).read_text())
    run = win.preread.result_for(win.grid.active.volume)
    assert [les.id for les in run.lesions] == [les["id"] for les in saved["lesions"]] and saved["lesions"]
    assert [(les.key_slice, les.slices) for les in run.lesions] == \
        [(les["key_slice"], tuple(les["slices"])) for les in saved["lesions"]]
    assert run.origin.startswith("on arrival, ") and not win.preread.running
    assert (engine.generate_calls, len(engine.batches), len(engine.reasoning_batches)) == asked
    panel = win.preread_panel
    assert panel.lesions.topLevelItemCount() == len(saved["lesions"])
    assert "on arrival" in panel.series_label.text()
    assert panel.select_lesion(run.lesions[0].id) and win.grid.active.slice_index == run.lesions[0].key_slice
    # and the reader can take it into the report as a proposal, as after a pre-read run here
    assert panel.accept_selected() is None, panel.detail.text()
    draft = win.report.session.report
    assert len(draft.findings) == 1 and run.lesions[0].id in panel._taken()
    # a saved result that no longer reads is said, once, and left on disk
    Path(job.result_path).write_text("{ damaged")
    win.preread.results.clear()
    said: list[str] = []
    studies.status.connect(said.append)
    assert studies.restore_prereads() == 0 and studies.restore_prereads() == 0
    assert len(said) == 1 and said[0].startswith("The saved pre-read of this series was not shown: its file "
                                                 "cannot be read"), said
    assert Path(job.result_path).read_text() == "{ damaged"


def test_a_study_open_while_its_preread_on_arrival_runs_shows_the_lesions_when_it_ends(qtbot, window, tmp_path):
    """The reader opens an arriving study before its pre-read on arrival is done: the Pre-read panel fills in by
    itself when the job ends (the series is not read a second time)."""
    import threading

    from ui.shell.preread_setup import install_preread

    win, settings = window
    gate, entered = threading.Event(), threading.Event()

    class GatedEngine(TruthEngine):
        def generate_batch(self, requests, cancel=None):
            entered.set()
            assert gate.wait(60), "the test never opened the gate"
            return super().generate_batch(requests, cancel)

    folder, uid, engine, studies = _listening_window(win, settings, tmp_path, 654, GatedEngine)
    install_preread(win, settings, engine=engine)
    try:
        sent = send_files(Node("viewer", "XMEDVIEW", "127.0.0.1", studies.listener.port), [folder],
                          local=LocalAE("SENDER"))
        assert sent.sent == 16
        qtbot.waitUntil(entered.is_set, timeout=30_000)  # the pre-read on arrival is running
        tab = studies.widget.local
        qtbot.waitUntil(lambda: uid in tab.uids(), timeout=5_000)
        _double_click(qtbot, tab.view, tab.uids().index(uid))
        qtbot.waitUntil(lambda: win.grid.active.volume is not None and not win.is_busy(), timeout=30_000)
        qtbot.wait(300)
        assert win.preread.result_for(win.grid.active.volume) is None  # nothing yet: the job is still running
        gate.set()
        qtbot.waitUntil(lambda: win.preread.result_for(win.grid.active.volume) is not None, timeout=60_000)
    finally:
        gate.set()
    run = win.preread.result_for(win.grid.active.volume)
    (job,) = studies.queue.jobs(uid)
    assert job.state == "done" and [c.id for c in run.lesions] == [
        les["id"] for les in json.loads(Path(job.result_path).read_text())["lesions"]]
    assert run.origin.startswith("on arrival") and win.preread_panel.lesions.topLevelItemCount() == len(run.lesions)


def test_a_preread_run_in_the_viewer_shows_in_the_study_list_and_comes_back_when_the_study_is_reopened(
        qtbot, window, tmp_path):
    """The reader pre-reads a study opened from the list: its AI column shows done with the worst tier (it said
    nothing before), and after the window forgets the result (another session), opening the study again shows
    the same lesions, named as read in the viewer, without pre-reading again."""
    from ui.shell.preread_setup import install_preread

    win, settings = window
    folder = write_ct_study(tmp_path / "ct", n_slices=16, size=128, seed=987)
    uid = str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    engine = TruthEngine(load_series(scan([folder]).all_series()[0]), load_ground_truth(folder))
    engine.image_spec = SPEC  # the layout its answers were made for
    db = StudyDB(StudyPaths.detect().ensure().database)
    import_paths(db, [folder])
    db.close()
    studies = win.attach_studies(settings=settings)
    install_preread(win, settings, engine=engine)  # after the study list: either order keeps the pre-reads
    win.show()
    tab = studies.widget.local
    qtbot.waitUntil(lambda: tab.uids() == [uid], timeout=5000)
    assert tab.proxy.index(0, AI).data() in ("", None)
    _double_click(qtbot, tab.view, 0)
    qtbot.waitUntil(lambda: win.grid.active.volume is not None and not win.is_busy(), timeout=30_000)
    with qtbot.waitSignal(win.preread.finished, timeout=60_000):
        win.preread_panel.run_button.click()
    run = win.preread.result_for(win.grid.active.volume)
    assert run.lesions
    study = studies.db.get(uid)
    assert study.ai_state == "done" and study.ai_worst_tier in ("red", "amber", "green")
    qtbot.waitUntil(lambda: tab.proxy.index(0, AI).data() == study.ai_worst_tier, timeout=5000)
    asked = (engine.generate_calls, len(engine.batches), len(engine.reasoning_batches))
    win.preread.results.clear()  # a new session of the window: only what was saved
    studies.restore_prereads()
    back = win.preread.result_for(win.grid.active.volume)
    assert back is not None and back.origin.startswith("in the viewer, ")
    assert [(c.id, c.key_slice, c.slices) for c in back.lesions] == [(c.id, c.key_slice, c.slices) for c in run.lesions]
    assert "in the viewer" in win.preread_panel.series_label.text()
    assert (engine.generate_calls, len(engine.batches), len(engine.reasoning_batches)) == asked
    win.preread.shutdown()


def test_ctrl_pgdown_walks_the_study_list_to_the_next_study_to_read(qtbot, window, tmp_path):
    """A shift from the study list without the mouse: Ctrl+PgDown opens the next study of the list as sorted
    whose report is not signed (signed ones are skipped), Ctrl+PgUp the one before; the list selects the study on
    screen; at the end the status bar says why nothing opens; signing names the next one to read."""
    win, settings = window
    db = StudyDB(StudyPaths.detect().ensure().database)
    folders = [write_ct_study(tmp_path / f"ct{i}", n_slices=4, size=64, seed=700 + i) for i in range(3)]
    import_paths(db, folders)
    uids = [str(pydicom.dcmread(next(f.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID) for f in folders]
    db.close()
    studies = win.attach_studies(settings=settings)
    win.show()
    win.activateWindow()
    qtbot.waitUntil(lambda: QGuiApplication.focusWindow() is win.windowHandle(), timeout=5000)  # keys reach it
    tab = studies.widget.local
    qtbot.waitUntil(lambda: sorted(tab.uids()) == sorted(uids), timeout=5000)
    order = tab.uids()
    studies.db.set_report(order[1], "signed")  # read already: the walk skips it
    tab.refresh()

    def open_uid() -> str:
        return studies.current_study_uid() if win.result is not None and not win.is_busy() else ""

    def press(key, widget=None) -> None:
        widget = widget or win.grid.active.view  # the image has the keys while reading
        widget.setFocus()
        qtbot.keyClick(widget, key, Qt.KeyboardModifier.ControlModifier)

    said: list[str] = []
    studies.status.connect(said.append)
    press(Qt.Key.Key_PageDown, win)  # shift start, nothing open: the first study to read
    qtbot.waitUntil(lambda: open_uid() == order[0], timeout=30_000)
    qtbot.waitUntil(lambda: [i.row() for i in tab.view.selectionModel().selectedRows()] == [0], timeout=5000)
    press(Qt.Key.Key_PageDown)
    qtbot.waitUntil(lambda: open_uid() == order[2], timeout=30_000)  # order[1] is signed
    assert said[-1].startswith("Opening PHANTOM") and "2025-01-01" in said[-1], said
    press(Qt.Key.Key_PageDown)
    qtbot.wait(200)
    assert open_uid() == order[2] and said[-1].startswith("No study to read after this one"), said
    press(Qt.Key.Key_PageUp)
    qtbot.waitUntil(lambda: open_uid() == order[0], timeout=30_000)
    studies.on_signed([next(folders[uids.index(order[0])].glob("*.dcm"))])  # a file of the study: its UID
    assert studies.db.get(order[0]).report_state == "signed"
    assert said and said[-1].startswith("Report signed. Next to read: ") and said[-1].endswith("(Ctrl+PgDown).")


def _as_prior(src: Path, dst: Path, date: str) -> str:
    """``src`` as an earlier study of the same patient (new study, series, instance and frame-of-reference
    UIDs, study date ``date``); returns its study UID."""
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = ds.SeriesDate = date
        ds.save_as(dst / f.name, enforce_file_format=True)
    return study


def test_ctrl_shift_c_opens_the_study_beside_the_patients_prior(qtbot, window, tmp_path):
    """Comparing with the prior: the study on screen and the same patient's most recent earlier study, 1×2, the
    current one left; a patient without an earlier study gets a one-line answer."""
    win, settings = window
    current = write_ct_study(tmp_path / "now", n_slices=6, size=64, seed=811)
    older = _as_prior(current, tmp_path / "2023", "20230301")
    prior = _as_prior(current, tmp_path / "2024", "20240615")  # the most recent earlier one
    alone = write_ct_study(tmp_path / "other", n_slices=4, size=64, seed=812)  # another patient
    db = StudyDB(StudyPaths.detect().ensure().database)
    import_paths(db, [current, tmp_path / "2023", tmp_path / "2024", alone])
    db.close()
    uid = str(pydicom.dcmread(next(current.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    studies = win.attach_studies(settings=settings)
    win.show()
    win.activateWindow()
    qtbot.waitUntil(lambda: QGuiApplication.focusWindow() is win.windowHandle(), timeout=5000)
    tab = studies.widget.local
    qtbot.waitUntil(lambda: len(tab.uids()) == 4, timeout=5000)
    assert studies.prior_of(uid).study_uid == prior and studies.prior_of(older) is None
    _double_click(qtbot, tab.view, tab.uids().index(uid))
    qtbot.waitUntil(lambda: studies.current_study_uid() == uid and not win.is_busy(), timeout=30_000)
    said: list[str] = []
    studies.status.connect(said.append)
    qtbot.keyClick(win, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    left, right = win.grid.viewports[:2]

    def study_of(vp) -> str:
        v = vp.volume
        if v is None or v.loaded < len(v):
            return ""
        return str(pydicom.dcmread(v.series.instances[0].path, stop_before_pixels=True).StudyInstanceUID)

    qtbot.waitUntil(lambda: (study_of(left), study_of(right)) == (uid, prior), timeout=30_000)
    assert [vp.isVisible() for vp in win.grid.viewports[:2]] == [True, True] and len(win.grid.visible()) == 2
    assert win.grid.active is left
    assert said[-1] == "Prior of 2024-06-15 on the right: scroll it to the same level, then Ctrl+L links the two."
    assert studies.current_study_uid() == uid  # the active viewport's study, whatever the scan's order
    win.grid.set_active(right)
    assert studies.current_study_uid() == prior
    win.grid.set_active(left)
    # a patient with one study only
    _double_click(qtbot, tab.view, tab.uids().index(
        str(pydicom.dcmread(next(alone.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)))
    qtbot.waitUntil(lambda: studies.current_study_uid() != uid and not win.is_busy(), timeout=30_000)
    qtbot.keyClick(win, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert said[-1] == "No earlier study of this patient in the study list (same patient ID, with images)."


def test_the_outbox_view_shows_a_failed_send_and_retry_sends_it(qtbot, window, tmp_path):
    win, settings = window
    port = free_port()
    store = NodeStore.load(StudyPaths.detect().ensure().nodes_file)
    store.set_local(LocalAE("XMEDVIEW"))
    store.add(Node("archive", "ARCHIVE", "127.0.0.1", port))
    studies = win.attach_studies(settings=settings)
    win.show()
    studies.outbox.max_attempts = 1  # give up at the first failure, so the view shows "failed"
    (item,) = studies.outbox.enqueue([SAMPLE_FILES[0]], "archive")
    view = studies.widget.outbox
    studies.widget.tabs.setCurrentWidget(view)
    qtbot.waitUntil(lambda: view.states().get(item.id) == "failed", timeout=20_000)
    row = next(r for r in range(view.table.rowCount()) if view.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == item.id)
    assert "no answer" in view.table.item(row, 5).text() and view.table.item(row, 0).text() == SAMPLE_FILES[0].name
    assert "1 failed" in view.summary.text() and view.retry_button.isEnabled()
    archive = StudyDB(tmp_path / "archive.sqlite")
    listener = Listener(Receiver(archive, tmp_path / "archive"), LocalAE("ARCHIVE", "127.0.0.1", port),
                        allowed_ae_titles=["XMEDVIEW"]).start()
    try:
        view.retry_button.click()
        qtbot.waitUntil(lambda: view.states().get(item.id) == "sent", timeout=20_000)
        listener.wait_idle(10)
    finally:
        listener.stop()
    assert archive.get(SAMPLE_UID).instances == 1 and "1 sent" in view.summary.text()
    archive.close()
