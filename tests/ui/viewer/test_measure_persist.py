"""Measurements that last (issue #17, item 4): measured in one window, closed, a new window opens the same
study and the measurements are on the same slices with the same numbers; a damaged measurements file is kept
aside with a clear message and the study still opens."""

from __future__ import annotations

import json

import pytest

from app.synthetic.sample import write_ct_study
from app.viewer.measure_store import MeasurementStore
from app.viewer.sync import series_identity
from ui.shell.main_window import MainWindow


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return write_ct_study(tmp_path_factory.mktemp("persist") / "ct", n_slices=24, size=128, seed=21)


def open_window(qtbot, study, workspace):
    w = MainWindow()
    qtbot.addWidget(w)
    w.grid.keeper.set_root(workspace)
    w.resize(1200, 800)
    w.show()
    qtbot.waitExposed(w)
    w.open_paths([study])
    qtbot.waitUntil(lambda: not w.is_busy() and w.grid.viewports[0].volume is not None
                    and w.grid.viewports[0].volume.loaded == len(w.grid.viewports[0].volume), timeout=60_000)
    qtbot.waitUntil(lambda: not w.is_busy(), timeout=60_000)
    return w


def snapshot(vp):
    return sorted((m.kind, m.frame, tuple(round(v, 6) for pt in m.points() for v in pt), m.text,
                   tuple(sorted((k, round(v, 6)) for k, v in m.evaluation.values.items())))
                  for m in vp.measurements.items)


def test_measurements_survive_closing_the_window(qtbot, study, tmp_path):
    ws = tmp_path / "workspace"
    win = open_window(qtbot, study, ws)
    vp = win.grid.viewports[0]
    vp.set_slice(7)
    vp.add_measurement("length", (20, 30), (80, 70))
    vp.add_measurement("angle", (90, 40), (60, 60), (100, 90))
    vp.add_measurement("cobb", (10, 10), (50, 20), (10, 60), (50, 90))
    vp.set_slice(12)
    vp.add_measurement("ellipse", (40, 40), (70, 64))
    vp.add_measurement("rect", (30, 80), (60, 100))
    vp.delete_measurement()  # the rectangle: deleted, so not saved
    before = snapshot(vp)
    assert len(before) == 4
    ident = series_identity(vp.volume)
    path = MeasurementStore(ws).path(ident.study_uid)
    doc = json.loads(path.read_text())
    assert len(doc["measurements"]) == 4 and {m["kind"] for m in doc["measurements"]} == {"length", "angle", "cobb",
                                                                                          "ellipse"}
    win.close()

    again = open_window(qtbot, study, ws)
    try:
        vp2 = again.grid.viewports[0]
        assert snapshot(vp2) == before, "same kinds, slices, points and numbers"
        assert {m.frame for m in vp2.measurements.items} == {7, 12}
        vp2.set_slice(7)
        assert sorted(m.kind for m in vp2.measurements.items if m.roi.isVisible()) == ["angle", "cobb", "length"]
        assert not vp2.measurements.can_undo, "restored measurements are not an undoable add"
        # a change in the new window is saved too: delete the angle, it stays deleted
        angle = next(m for m in vp2.measurements.items if m.kind == "angle")
        vp2.measurements.items.remove(angle)
        vp2.measurements.items.append(angle)  # make it the newest on its slice
        vp2.delete_measurement()
        assert {m["kind"] for m in json.loads(path.read_text())["measurements"]} == {"length", "cobb", "ellipse"}
    finally:
        again.close()


def test_moving_a_handle_saves_the_new_numbers(qtbot, study, tmp_path):
    ws = tmp_path / "ws2"
    win = open_window(qtbot, study, ws)
    try:
        vp = win.grid.viewports[0]
        m = vp.add_measurement("length", (20, 30), (80, 30))
        h = m.roi.getHandles()[1]
        m.roi.movePoint(h, (100.0, 30.0), finish=True)  # what a handle drag ends with
        saved = MeasurementStore(ws).load(series_identity(vp.volume).study_uid).measurements
        assert len(saved) == 1 and saved[0].points[1] == pytest.approx((100.0, 30.0))
        assert saved[0].values["length"] == pytest.approx(m.evaluation.values["length"])
    finally:
        win.close()


def test_a_damaged_measurements_file_is_kept_aside_and_the_study_opens(qtbot, study, tmp_path):
    ws = tmp_path / "ws3"
    ws.mkdir()
    import pydicom

    uid = str(pydicom.dcmread(min(study.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    path = MeasurementStore(ws).path(uid)
    path.write_text('{"format": "xmedgpt-measurements", "version": 1, "study_uid": "' + uid + '", "measurements": [{')
    win = open_window(qtbot, study, ws)
    try:
        vp = win.grid.viewports[0]
        assert vp.volume is not None and vp.measurements.items == []
        qtbot.waitUntil(lambda: "could not be read" in win.statusBar().currentMessage(), timeout=5000)
        assert f"{path.name}.corrupt-1" in win.statusBar().currentMessage()
        assert (ws / f"{path.name}.corrupt-1").exists() and not path.exists()
        # measuring again starts a clean file
        vp.add_measurement("length", (10, 10), (40, 40))
        assert len(MeasurementStore(ws).load(uid).measurements) == 1
    finally:
        win.close()
