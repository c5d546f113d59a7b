"""Measurements saved with the study's workspace: a private JSON file written atomically, read strictly;
a damaged file is kept aside (never deleted) and the reader is told (issue #17, item 4)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from app.dicom.model import Instance
from app.viewer.measure_store import (
    MeasurementStore,
    SavedMeasurement,
    frame_table,
    new_uid,
    slice_of,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"


def sample() -> list[SavedMeasurement]:
    return [
        SavedMeasurement("length", "1.2.3", 4, ((10.0, 20.0), (30.5, 20.0)), {"length": 16.4}, "mm", "",
                         "1.2.3.4", 1, new_uid()),
        SavedMeasurement("angle", "1.2.3", 5, ((10.0, 0.0), (0.0, 0.0), (10.0, 10.0)), {"angle": 32.005}, "deg",
                         "", "1.2.3.5", 1, new_uid()),
        SavedMeasurement("cobb", "1.2.3", 5, ((0, 0), (10, 0), (0, 0), (10, 16)), {"angle": 45.0}, "deg", "",
                         "1.2.3.5", 1, new_uid()),
        SavedMeasurement("ellipse", "1.2.3", 6, ((2.0, 2.0), (12.0, 8.0)),
                         {"mean": 40.0, "sd": 0.0, "min": 40.0, "max": 40.0, "area": 18.85, "pixels": 40.0},
                         "mm²", "HU", "1.2.3.6", 2, new_uid()),
    ]


def test_round_trip_is_exact_and_the_file_is_owner_only(tmp_path):
    store = MeasurementStore(tmp_path / "ws")
    saved = sample()
    path = store.save(STUDY, saved)
    assert path == tmp_path / "ws" / f"{STUDY}.measurements.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    loaded = store.load(STUDY)
    assert loaded.problems == [] and loaded.measurements == saved
    # nothing saved: nothing loaded, no problem
    assert store.load("1.2.3.999").measurements == [] and store.load("1.2.3.999").problems == []


@pytest.mark.parametrize("content", [
    b"{not json",
    b'{"format": "xmedgpt-measurements", "version": 1, "study_uid": "%s", "measurements": [{"kind": "angle"}]}',
    (b'{"format": "xmedgpt-measurements", "version": 1, "study_uid": "%s", "measurements": '
     b'[{"uid": "", "kind": "angle", "series_uid": "1.2", "frame": 0, "points": [[0, 0], [1, 1]]}]}'),
    (b'{"format": "xmedgpt-measurements", "version": 1, "study_uid": "%s", "measurements": '
     b'[{"uid": "", "kind": "length", "series_uid": "1.2", "frame": 0, "points": [[0, 0], [1, NaN]]}]}'),
    b'{"format": "xmedgpt-measurements", "version": 1, "study_uid": "9.9.9", "measurements": []}',
    b'{"format": "xmedgpt-measurements", "version": 7, "study_uid": "%s", "measurements": []}',
    b"[]",
])
def test_a_damaged_file_is_kept_aside_with_a_clear_message(tmp_path, content):
    store = MeasurementStore(tmp_path)
    path = store.path(STUDY)
    body = content.replace(b"%s", STUDY.encode())
    path.write_bytes(body)
    loaded = store.load(STUDY)
    assert loaded.measurements == []
    assert len(loaded.problems) == 1
    assert "could not be read" in loaded.problems[0] and f"{path.name}.corrupt-1" in loaded.problems[0]
    assert not path.exists() and (tmp_path / f"{path.name}.corrupt-1").read_bytes() == body  # kept, not deleted
    # the next save starts a clean file beside the one kept aside
    one = sample()[:1]
    store.save(STUDY, one)
    assert store.load(STUDY).measurements == one
    assert (tmp_path / f"{path.name}.corrupt-1").exists()


def test_a_study_uid_that_is_not_a_uid_gets_a_safe_file_name(tmp_path):
    store = MeasurementStore(tmp_path)
    p = store.path("../../etc/passwd")
    assert p.parent == tmp_path and p.name.startswith("x-") and "/" not in p.name[2:]
    store.save("../../etc/passwd", sample()[:1])
    assert len(store.load("../../etc/passwd").measurements) == 1


def test_saved_values_are_json_numbers_only(tmp_path):
    m = SavedMeasurement("rect", "1.2.3", 0, ((0, 0), (1, 1)), {"mean": float("nan"), "area": 0.4}, "mm²", "HU",
                         "1.2.3.4", 1, new_uid())
    path = MeasurementStore(tmp_path).save(STUDY, [m])
    doc = json.loads(path.read_text())
    assert doc["measurements"][0]["values"] == {"area": 0.4}


def test_a_measurement_goes_back_on_its_image_even_if_the_slices_are_ordered_differently():
    inst = [Instance(path=f"/x/{k}.dcm", sop_instance_uid=f"1.2.3.{k}", sop_class_uid="1.2", rows=4, columns=4)
            for k in range(5)]
    table = frame_table(inst)
    m = SavedMeasurement("length", "1.2.3", 1, ((0, 0), (1, 1)), sop_instance_uid="1.2.3.3")
    assert slice_of(m, table, 5) == 3  # by its image, not by the slice index it had
    assert slice_of(SavedMeasurement("length", "1.2.3", 1, ((0, 0), (1, 1)), sop_instance_uid="9.9"), table, 5) is None
    assert slice_of(SavedMeasurement("length", "1.2.3", 2, ((0, 0), (1, 1))), table, 5) == 2
    assert slice_of(SavedMeasurement("length", "1.2.3", 3, ((0, 0), (1, 1)), sop_instance_uid="1.2.3.3"), table, 3) \
        is None  # not loaded (yet)
    multi = [Instance(path="/x/m.dcm", sop_instance_uid="7.7", sop_class_uid="1.2", rows=4, columns=4,
                      number_of_frames=3)]
    assert frame_table(multi) == [("7.7", 1), ("7.7", 2), ("7.7", 3)]
    assert slice_of(SavedMeasurement("angle", "7", 0, ((0, 0), (1, 1), (2, 2)), sop_instance_uid="7.7",
                                     frame_number=3), frame_table(multi), 3) == 2
