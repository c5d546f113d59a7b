"""Key images marked by the reader are exported with the signed report (issue #17, item 4), in the real window:
K (the Edit menu's entry) marks the image on screen and stars it in the corner text, again unmarks it; the marks
are kept with the study's workspace and come back when the series is shown again; signing writes a Key Object
Selection document of exactly those images beside the SRs (dciodvfy clean) and puts them in the PDF."""

from __future__ import annotations

import shutil
import subprocess

import pydicom
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest

from app.core.settings import Settings
from app.synthetic.sample import write_ct_study
from app.viewer.key_images import KeyImageStore
from tests.app.report.test_export_sr import assert_valid
from ui.shell.main_window import MainWindow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_ct_study(tmp_path_factory.mktemp("key-images") / "ct", n_slices=10, size=128, seed=17)


def starred(vp) -> bool:
    return any("Key image" in line for line in vp.corner_text()["bottom_left"])


def test_marked_key_images_go_out_with_the_signed_report(qtbot, study, tmp_path):
    settings = Settings(reader_name="Smith^Jane", workspace_dir=str(tmp_path / "ws"),
                        audit_log=str(tmp_path / "audit.jsonl"))
    win = MainWindow()
    qtbot.addWidget(win)
    win.grid.set_workspace(settings.workspace_path())
    win.attach_report(settings)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    try:
        win.open_paths([study])
        qtbot.waitUntil(lambda: not win.is_busy() and win.grid.viewports[0].volume is not None
                        and win.grid.viewports[0].volume.loaded == 10, timeout=60_000)
        vp = win.grid.viewports[0]
        sops = [inst.sop_instance_uid for inst in vp.volume.series.instances]
        assert win.actions_by_name["toggle_key_image"] in win.edit_menu.actions()
        vp.set_slice(3)
        assert not starred(vp)
        win.actions_by_name["toggle_key_image"].trigger()  # the Edit menu entry (K)
        assert starred(vp) and "Image 4 marked as a key image (1 key image in this study)" in \
            win.statusBar().currentMessage()
        vp.set_slice(4)
        assert not starred(vp)
        vp.set_slice(7)
        vp.setFocus()
        QTest.keyClick(vp, Qt.Key.Key_K)
        assert starred(vp) and vp.key_frames == {3, 7}
        QTest.keyClick(vp, Qt.Key.Key_K)  # again: unmarked
        assert not starred(vp) and "no longer a key image (1 key image" in win.statusBar().currentMessage()
        QTest.keyClick(vp, Qt.Key.Key_K)
        study_uid = str(pydicom.dcmread(vp.volume.series.instances[0].path, stop_before_pixels=True).StudyInstanceUID)
        saved = KeyImageStore(settings.workspace_path()).load(study_uid).key_images
        assert [(k.sop_instance_uid, k.frame) for k in saved] == [(sops[3], 3), (sops[7], 7)]
        # shown again (a series opened anew, or after a restart): the marks come back
        vp.set_volume(None)
        win.show_series(0, vp)
        qtbot.waitUntil(lambda: vp.volume is not None and vp.volume.loaded == 10 and not win.is_busy(), timeout=30_000)
        assert vp.key_frames == {3, 7}
        # an MPR plane is not an image of the study: refused with the reason
        win.actions_by_name["layout_mpr"].trigger()
        win.actions_by_name["toggle_key_image"].trigger()
        assert "Key images are the acquired slices" in win.statusBar().currentMessage()
        win.actions_by_name["layout_1x1"].trigger()

        win.report.start_report()
        report = win.report.session.report
        report.set_impression("No acute findings.")
        draft = win.report.export()
        assert draft is not None and draft.kos is None  # only the signed report carries the selection
        report.sign("Smith^Jane")
        done = win.report.export()
        assert done is not None and done.kos is not None and done.kos in done.paths
        assert_valid(done.kos)
        kos = pydicom.dcmread(done.kos)
        refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in kos.ContentSequence
                if i.ValueType == "IMAGE"]
        assert refs == [sops[3], sops[7]] and kos.StudyInstanceUID == study_uid
        if shutil.which("pdftotext"):
            text = subprocess.run(["pdftotext", "-layout", str(done.pdf), "-"], capture_output=True, text=True,
                                  timeout=60, check=True).stdout
            assert "Key images" in text and "Slice 4" in text and "Slice 8" in text and "key image" in text
    finally:
        win.close()
