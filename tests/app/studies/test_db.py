"""The local study database: schema, search (and its speed), states, damage recovery, import."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from app.cli import main
from app.studies import db as dbmod
from app.studies.db import InstanceRecord, StudyDB
from app.studies.importer import import_paths, open_library
from app.studies.locations import StudyPaths
from app.synthetic.sample import write_ct_study

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "resources" / "sample" / "ct-demo"


def _rec(i: int, **kw) -> InstanceRecord:
    base = dict(sop_instance_uid=f"1.2.3.{i}.1", study_uid=f"1.2.3.{i}", series_uid=f"1.2.3.{i}.0",
                path=f"/x/{i}.dcm", patient_name=f"DOE^JANE{i}", patient_id=f"PID{i:05d}",
                accession=f"ACC{i:05d}", study_date=f"2026{(i % 12) + 1:02d}{(i % 28) + 1:02d}",
                modality="CT" if i % 2 else "MR")
    base.update(kw)
    return InstanceRecord(**base)


def test_schema_versioned_wal_and_migrates_from_zero(tmp_path):
    path = tmp_path / "s.sqlite"
    db = StudyDB(path)
    assert db.schema_version == dbmod.SCHEMA_VERSION
    assert db.created
    db.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    db = StudyDB(path)
    assert not db.created and db.recovered_from is None
    db.close()


def test_newer_schema_is_refused_not_rebuilt(tmp_path):
    path = tmp_path / "s.sqlite"
    StudyDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {dbmod.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(dbmod.StudyDBError, match="newer version"):
        StudyDB(path)
    assert path.exists()


def test_add_search_and_duplicates(tmp_path):
    db = StudyDB(tmp_path / "s.sqlite")
    new, touched = db.add_instances([_rec(1), _rec(2), _rec(3, patient_name="MÜLLER^HANS")], origin="import")
    assert new == 3 and touched == {"1.2.3.1", "1.2.3.2", "1.2.3.3"}
    new, _ = db.add_instances([_rec(1)], origin="import")
    assert new == 0
    assert db.get("1.2.3.1").instances == 1
    assert [s.study_uid for s in db.search("jane1")] == ["1.2.3.1"]
    assert [s.study_uid for s in db.search("doe jane2")] == ["1.2.3.2"]
    assert [s.study_uid for s in db.search("PID00003")] == ["1.2.3.3"]
    assert [s.study_uid for s in db.search("acc00002")] == ["1.2.3.2"]
    assert [s.study_uid for s in db.search("1.2.3.1")] == ["1.2.3.1"]
    assert {s.study_uid for s in db.search(modality="CT")} == {"1.2.3.1", "1.2.3.3"}
    assert [s.study_uid for s in db.search(patient_id="pid00002")] == ["1.2.3.2"]
    assert [s.study_uid for s in db.search(date_from="2026-03-01", date_to="2026-03-31")] == ["1.2.3.2"]
    assert db.search("%") == [] and db.search("_") == []
    with pytest.raises(ValueError):
        db.search(date_from="yesterday")


def test_states_ai_and_report(tmp_path):
    db = StudyDB(tmp_path / "s.sqlite")
    db.add_instances([_rec(1)], origin="received", state="receiving")
    assert db.get("1.2.3.1").state == "receiving"
    db.set_expected("1.2.3.1", 2)
    assert db.settle("1.2.3.1") == "incomplete"
    db.add_instances([_rec(1, sop_instance_uid="1.2.3.1.2")], origin="received")
    assert db.settle("1.2.3.1") == "complete"
    db.set_ai("1.2.3.1", "done", "amber")
    db.set_report("1.2.3.1", "signed")
    s = db.get("1.2.3.1")
    assert (s.ai_state, s.ai_worst_tier, s.report_state, s.instances, s.series) == ("done", "amber", "signed", 2, 1)
    with pytest.raises(ValueError):
        db.set_report("1.2.3.1", "final")


def test_search_over_10000_studies_under_100ms(tmp_path):
    db = StudyDB(tmp_path / "s.sqlite")
    db.add_instances((_rec(i) for i in range(10_000)), origin="import")
    assert db.count() == 10_000
    timings = {}
    for label, kw in {"name": {"text": "jane4242"}, "id": {"text": "PID0424"}, "accession": {"accession": "ACC04242"},
                      "date range": {"date_from": "20260301", "date_to": "20260310"},
                      "modality": {"modality": "CT"}, "newest 1000": {}}.items():
        db.search(**kw)  # warm
        runs = [db.timed_search(**kw) for _ in range(3)]  # best of 3: the CI cores are shared
        found, seconds = runs[0][0], min(t for _, t in runs)
        timings[label] = seconds
        assert found, label
    print({k: f"{v * 1000:.1f} ms" for k, v in timings.items()})
    assert max(timings.values()) < 0.1, timings
    everything, seconds = db.timed_search(limit=None)  # the whole list, 10,000 rows as objects
    assert len(everything) == 10_000 and seconds < 1.0


def test_damaged_database_is_set_aside_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    paths = StudyPaths.detect().ensure()
    db = open_library(paths)
    folder = shutil.copytree(SAMPLE, tmp_path / "inplace")
    import_paths(db, [folder], sources_file=paths.sources_file)
    copied = write_ct_study(tmp_path / "other", n_slices=3, size=32, seed=5, noise_hu=0)
    import_paths(db, [copied], copy=True, storage=paths.storage)
    assert db.count() == 2
    db.close()
    paths.database.write_bytes(b"this is not an SQLite database" * 100)
    for side in ("-wal", "-shm"):
        paths.database.with_name(paths.database.name + side).unlink(missing_ok=True)
    db = open_library(paths)
    assert db.recovered_from is not None and db.recovered_from.exists()
    assert db.recovered_from.read_bytes().startswith(b"this is not")
    assert db.count() == 2
    assert sorted(s.instances for s in db.search()) == [3, 32]
    db.close()


def test_import_in_place_and_copy_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path / "home"))
    study = write_ct_study(tmp_path / "ct", n_slices=4, size=32, seed=7, noise_hu=0)
    (study / "junk.txt").write_text("not dicom")
    assert main(["import", str(study)]) == 0
    out = capsys.readouterr().out
    assert "Imported 1 study, 4 instances (4 new)" in out and "junk.txt" in out
    assert main(["studies", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (s,) = data["studies"]
    assert s["instances"] == 4 and s["complete"] and s["state"] == "complete"
    assert s["study_instance_uid"] and s["patient_id"] == "XMED-PHANTOM-0007"
    assert Path(s["location"]) == study.resolve()
    # copied into managed storage: the index points at the copies
    other = write_ct_study(tmp_path / "ct2", n_slices=2, size=32, seed=8, noise_hu=0)
    assert main(["import", str(other), "--copy"]) == 0
    capsys.readouterr()
    assert main(["studies", "--search", "XMED-PHANTOM-0008", "--json"]) == 0
    (s2,) = json.loads(capsys.readouterr().out)["studies"]
    storage = StudyPaths.detect().storage
    assert Path(s2["location"]).is_relative_to(storage) and s2["origin"] == "copy"
    assert len(list(storage.rglob("*.dcm"))) == 2
    assert main(["studies"]) == 0
    assert "PHANTOM, CHEST" in capsys.readouterr().out  # as the viewer writes a name, not DICOM carets
    audit = (tmp_path / "home" / "data" / "audit" / "audit.jsonl").read_text().splitlines()
    assert sum('"studies.import"' in line for line in audit) == 2
    assert main(["audit", "verify"]) == 0


def test_import_never_decodes_pixels(tmp_path, monkeypatch):
    import pydicom.dataset
    def boom(*a, **k):
        raise AssertionError("pixels decoded during import")
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    db = StudyDB(tmp_path / "s.sqlite")
    t0 = time.perf_counter()
    res = import_paths(db, [SAMPLE])
    assert res.studies and sum(res.studies.values()) == 32, res.problems
    assert time.perf_counter() - t0 < 30


def test_has_studies_looks_without_creating_or_repairing(tmp_path):
    """What the viewer asks at start (the study list, or the sample while there is nothing to list): a
    read-only look that neither creates a database nor trips over a damaged one."""
    paths = StudyPaths(root=tmp_path / "studies", nodes_file=tmp_path / "nodes.json")
    assert not paths.has_studies() and not paths.database.exists()
    paths.ensure()
    db = StudyDB(paths.database)
    assert not paths.has_studies()  # a database, no study
    db.add_instances([_rec(1)], origin="import")
    assert paths.has_studies()
    db.close()
    paths.database.write_bytes(b"not a database at all" * 100)
    assert not paths.has_studies()
    assert paths.database.read_bytes().startswith(b"not a database")  # left for the repair, untouched
