"""Key images marked by the reader go out with the signed report (issue #17, item 4): a Key Object Selection
document ("Of Interest") beside the SRs, referencing exactly the marked images, valid for dciodvfy, read back with
highdicom; the store keeps the marks per study, strictly read; a draft export writes no selection."""

from __future__ import annotations

import json

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import KeyObjectSelectionDocumentStorage

from app.report.audit import read_records
from app.report.draft import StudyContext
from app.report.export.sr import read_sources
from app.synthetic.sample import write_ct_study
from app.viewer.key_images import KeyImage, KeyImageStore, frames_of
from tests.app.report.test_export_sr import assert_valid
from tests.app.report.test_session import make_session


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = write_ct_study(tmp_path_factory.mktemp("kos") / "ct", n_slices=6, size=64, seed=5, noise_hu=0)
    files = sorted(folder.glob("*.dcm"))
    return files, read_sources(files)


def key(ds: pydicom.Dataset, frame: int) -> KeyImage:
    return KeyImage(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), 1, frame, str(ds.SOPClassUID))


def test_the_store_toggles_marks_per_study_and_sets_a_damaged_file_aside(tmp_path, study):
    _files, sources = study
    ds = list(sources.values())
    uid = str(ds[0].StudyInstanceUID)
    store = KeyImageStore(tmp_path)
    assert store.load(uid).key_images == []
    assert store.toggle(uid, key(ds[2], 2))[0] is True
    marked, images = store.toggle(uid, key(ds[4], 4))
    assert marked and [k.sop_instance_uid for k in images] == [ds[2].SOPInstanceUID, ds[4].SOPInstanceUID]
    marked, images = store.toggle(uid, key(ds[2], 2))  # again: unmarked
    assert not marked and [k.frame for k in KeyImageStore(tmp_path).load(uid).key_images] == [4]
    assert (store.path(uid).stat().st_mode & 0o777) == 0o600
    table = [(str(d.SOPInstanceUID), 1) for d in ds]
    assert frames_of(images, table, str(ds[0].SeriesInstanceUID)) == {4}
    assert frames_of(images, table, "1.2.3") == set()
    # damaged, or of another study: kept aside, never deleted, said once
    store.path(uid).write_text(json.dumps({"format": "xmedgpt-key-images", "version": 1, "study_uid": "9.9",
                                           "key_images": []}))
    loaded = store.load(uid)
    assert loaded.key_images == [] and "could not be read" in loaded.problems[0]
    assert list(tmp_path.glob("*.key-images.json.corrupt-*"))


def test_signed_export_writes_a_key_object_selection_of_the_marked_images(tmp_path, study):
    files, sources = study
    ds = list(sources.values())
    first = ds[0]
    uid = str(first.StudyInstanceUID)
    session = make_session(tmp_path)
    session.ensure_report(StudyContext(uid, patient_id=str(first.PatientID), modality="CT"))
    session.report.set_impression("No acute findings.")
    marks = [key(ds[1], 1), key(ds[3], 3)]
    store = KeyImageStore(session.workspace.root)
    for k in marks:
        store.toggle(uid, k)
    draft = session.export(files)
    assert draft.kos is None  # a draft is not sent anywhere: no selection
    session.sign()
    done = session.export(files)
    assert done.kos is not None and done.kos in done.paths and done.kos.name.startswith("KO-signed-key-images-")
    assert done.kos.parent == done.sr.narrative.parent and (done.kos.stat().st_mode & 0o777) == 0o600
    assert_valid(done.kos)
    kos = pydicom.dcmread(done.kos)
    assert kos.SOPClassUID == KeyObjectSelectionDocumentStorage and kos.Modality == "KO"
    assert kos.StudyInstanceUID == uid and kos.PatientID == first.PatientID
    assert kos.SeriesInstanceUID not in {d.SeriesInstanceUID for d in ds}  # its own series
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113000", "DCM")  # "Of Interest"
    refs = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in kos.ContentSequence
            if item.ValueType == "IMAGE"]
    assert refs == [k.sop_instance_uid for k in marks]
    texts = [item.TextValue for item in kos.ContentSequence if item.ValueType == "TEXT"]
    assert texts and texts[0].startswith("Key images of the report signed by Smith^Jane")
    evidence = {r.ReferencedSOPInstanceUID for s in kos.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == {k.sop_instance_uid for k in marks}
    back = hd.ko.KeyObjectSelectionDocument.from_dataset(kos)  # read back with highdicom
    images = back.content.get_references(value_type=hd.sr.ValueTypeValues.IMAGE)
    assert [str(r.referenced_sop_instance_uid) for r in images] == [k.sop_instance_uid for k in marks]
    for k in marks:
        assert back.resolve_reference(k.sop_instance_uid) == (uid, k.series_uid, k.sop_instance_uid)
    (observer,) = back.content.get_observer_contexts()
    assert str(observer.observer_identifying_attributes.name) == "Smith^Jane"
    records = [r for _n, r, _e in read_records(session.audit.path) if r is not None]
    exports = [r.data for r in records if r.action == "report.export" and r.data.get("kind") == "key-images"]
    assert len(exports) == 1 and exports[0]["sop_instance_uid"] == kos.SOPInstanceUID and exports[0]["signed"]


def test_key_images_outside_the_exported_images_are_named_in_the_notes(tmp_path, study):
    files, sources = study
    ds = list(sources.values())
    uid = str(ds[0].StudyInstanceUID)
    session = make_session(tmp_path)
    session.ensure_report(StudyContext(uid, modality="CT"))
    session.report.set_impression("Normal.")
    store = KeyImageStore(session.workspace.root)
    store.toggle(uid, key(ds[0], 0))
    store.toggle(uid, KeyImage(str(ds[0].SeriesInstanceUID), "1.2.826.0.1.99", 1, 9))  # its file was not given
    session.sign()
    done = session.export(files)
    kos = pydicom.dcmread(done.kos)
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in kos.ContentSequence
            if i.ValueType == "IMAGE"] == [ds[0].SOPInstanceUID]
    assert any("1 key image(s) on images not given for export" in n for n in done.notes)


def test_without_key_images_no_selection_is_written(tmp_path, study):
    files, sources = study
    uid = str(next(iter(sources.values())).StudyInstanceUID)
    session = make_session(tmp_path)
    session.ensure_report(StudyContext(uid, modality="CT"))
    session.report.set_impression("Normal.")
    session.sign()
    done = session.export(files)
    assert done.kos is None and not list(done.sr.narrative.parent.glob("KO-*.dcm"))
