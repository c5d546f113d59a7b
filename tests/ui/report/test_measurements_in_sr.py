"""From the viewer to the signed report's SR (issue #17, item 4): a length, an angle and an ROI measured in the
window are saved with the study's workspace, and the signed report's export carries them as TID 1500 groups with
the numbers the reader saw (validated with dciodvfy, read back with highdicom)."""

from __future__ import annotations

import pytest

from app.core.settings import Settings
from app.synthetic.sample import write_ct_study
from tests.app.report.test_export_sr import assert_valid, roi_groups
from ui.shell.main_window import MainWindow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_ct_study(tmp_path_factory.mktemp("sr-measure") / "ct", n_slices=12, size=128, seed=41)


def test_signed_report_exports_the_measurements_made_in_the_viewer(qtbot, study, tmp_path):
    settings = Settings(reader_name="Smith^Jane", workspace_dir=str(tmp_path / "ws"),
                        audit_log=str(tmp_path / "audit.jsonl"))
    win = MainWindow()
    qtbot.addWidget(win)
    win.grid.keeper.set_root(settings.workspace_path())
    win.attach_report(settings)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    try:
        win.open_paths([study])
        qtbot.waitUntil(lambda: not win.is_busy() and win.grid.viewports[0].volume is not None
                        and win.grid.viewports[0].volume.loaded == 12, timeout=60_000)
        vp = win.grid.viewports[0]
        vp.set_slice(5)
        made = [vp.add_measurement("length", (20, 30), (90, 70)),
                vp.add_measurement("angle", (90, 40), (60, 60), (100, 90)),
                vp.add_measurement("rect", (40, 40), (70, 64))]
        win.report.start_report()
        report = win.report.session.report
        report.sign("Smith^Jane")
        done = win.report.export()
        assert done is not None and done.sr.measurement is not None
        assert_valid(done.sr.measurement)
        _, groups = roi_groups(done.sr.measurement)
        by_uid = {str(g.tracking_uid): g for g in groups}
        for m in made:
            g = by_uid[m.uid]
            got = {x.name.meaning: x.value for x in g.get_measurements()}
            if m.kind == "length":
                assert got == {"Length": pytest.approx(m.evaluation.values["length"], abs=1e-3)}
            elif m.kind == "angle":
                assert got == {"Angle": pytest.approx(m.evaluation.values["angle"], abs=1e-3)}
            else:
                assert got["Mean"] == pytest.approx(m.evaluation.values["mean"], abs=1e-3)
                assert got["Standard Deviation"] == pytest.approx(m.evaluation.values["sd"], abs=1e-3)
                assert got["Area"] == pytest.approx(m.evaluation.values["area"], abs=1e-3)
            ref = g.roi.ContentSequence[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID == vp.volume.series.instances[5].sop_instance_uid
    finally:
        win.close()
