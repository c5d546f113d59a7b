"""A pre-read lesion into the report, without a window: an AI finding the reader accepted (two audited,
undoable edits), with its key-slice box, slice, size, description, tier and window; once only; never into
a signed report; the whole pre-read in the audit trail."""

from __future__ import annotations

import pytest

from app.assistant.preread import link, make_detection
from app.report.audit import read_records
from app.report.draft import FindingStatus, Origin, ReportError
from app.report.from_preread import (
    accept_lesion,
    audit_preread,
    green_lesions,
    lesion_reliability,
    lesion_text,
)
from app.report.session import frame_refs, study_context
from inference.types import Box
from tests.app.report.test_session import load_sample, make_session


@pytest.fixture(scope="module")
def sample():
    return load_sample()


def lesion(volume, slices=(16, 17, 18), tier="green", score=0.82, box=(157, 326, 183, 350)):
    dets = [make_detection(volume, k, Box(*box) if k != 17 else Box(149, 319, 191, 357), "lung", "nodule")
            for k in slices]
    (c,) = link(volume, dets)
    c.location = "right lung"
    c.description = "Step text: a <ref>spiculated nodule</ref><box>[[1,2,3,4]]</box> with smooth margins"
    c.reliability = {"tier": tier, "score": score, "checks": []} if tier else None
    return c


def test_an_accepted_lesion_is_an_ai_finding_the_reader_took(sample, tmp_path):
    result, series, volume = sample
    session = make_session(tmp_path)
    study = study_context(result, series)
    les = lesion(volume)
    done = accept_lesion(session, les, volume, study, model_id="demo", engine="demo · CPU")
    report = session.report
    f = report.finding(done.finding_id)
    assert not done.already and report.findings == [f]
    assert f.origin is Origin.AI and f.status is FindingStatus.ACCEPTED and f.ai_text == f.text
    assert f.text == lesion_text(les)
    assert f.text.startswith(f"Right lung, images 17–19 (key image 18): nodule, {les.diameter_mm:.0f} mm.")
    assert "a spiculated nodule with smooth margins." in f.text and "<ref>" not in f.text
    (b,) = f.boxes
    assert b.slice_index == 17 and b.box == Box(149, 319, 191, 357)
    assert b.sop_instance_uid == frame_refs(volume)(17).sop_instance_uid
    assert f.reliability.tier.value == "green" and f.reliability.score == pytest.approx(0.82)
    assert f.window.name == "lung" and f.finding_type == "nodule"
    assert report.provenance.model_id == "demo"
    # two edits: the AI proposed, the reader accepted; Undo takes back the acceptance only
    report.undo()
    assert report.finding(f.id).status is FindingStatus.PROPOSED
    # accepted again: the same finding, accepted again, not a second one
    again = accept_lesion(session, les, volume, study)
    assert again.already and again.finding_id == f.id and len(report.findings) == 1
    assert report.finding(f.id).status is FindingStatus.ACCEPTED
    actions = [r.action for _n, r, _e in read_records(tmp_path / "audit.jsonl") if r is not None]
    assert actions.count("report.add") == 1 and actions.count("report.accept") == 2


def test_a_signed_report_takes_no_lesion(sample, tmp_path):
    result, series, volume = sample
    session = make_session(tmp_path)
    study = study_context(result, series)
    session.ensure_report(study)
    session.sign()
    with pytest.raises(ReportError, match="already signed"):
        accept_lesion(session, lesion(volume), volume, study)


def test_tiers_and_the_audit_of_a_whole_preread(sample, tmp_path):
    _result, _series, volume = sample
    green, amber, unassessed = lesion(volume), lesion(volume, tier="amber"), lesion(volume, tier="")
    assert lesion_reliability(unassessed) is None and lesion_reliability(amber).tier.value == "amber"
    assert green_lesions([green, amber, unassessed]) == [green]
    session = make_session(tmp_path)
    doc = {"series_uid": volume.series.uid, "model": {"id": "demo", "engine": "demo · CPU"},
           "lesions": [green.to_json()], "cancelled": False}
    audit_preread(session.audit, "1.2.3", doc, volume)
    records = [r for _n, r, _e in read_records(tmp_path / "audit.jsonl") if r is not None]
    assert [r.action for r in records] == ["ai.request", "ai.output"]
    (box,) = records[1].data["boxes"]
    assert box["frame"] == 17 and box["sop_instance_uid"] == frame_refs(volume)(17).sop_instance_uid
    assert records[1].data["model_id"] == "demo" and records[0].data["prompt"] == "series pre-read"


def test_a_description_whose_size_the_boxes_do_not_measure_is_flagged_in_the_finding(sample):
    """The finding carries the measured diameter; a description stating another size (by the size check's
    rule) gets a sentence saying the two disagree, instead of two sizes side by side silently."""
    _result, _series, volume = sample
    les = lesion(volume)
    measured = round(les.diameter_mm)
    assert 15 < measured < 60
    les.description = f"A {measured + 3} mm spiculated nodule in the right lower lobe."
    assert "disagree" not in lesion_text(les)  # within the tolerance
    les.description = f"A {3 * measured} mm spiculated nodule in the right lower lobe."
    text = lesion_text(les)
    assert text.endswith(f"Sizes disagree: the description says {3 * measured} mm, the boxes measure {measured} mm.")
    les.description = f"A {measured / 30:.1f} cm nodule."  # cm read as mm: a third of the size
    assert "disagree" in lesion_text(les) and "the description says" in lesion_text(les)
    les.description = "A spiculated nodule."
    assert "disagree" not in lesion_text(les)


def test_words_the_reasoning_said_of_another_lesion_stay_out_of_the_report(sample):
    """When the reasoning at the key slice boxed something else (or nothing), its description may be another
    lesion's: the panel shows it behind a warning, the report finding keeps only what the pre-read measured."""
    from app.assistant.preread import UNBOXED_PREFIX
    from app.report.from_preread import finding_type_of

    _result, _series, volume = sample
    les = lesion(volume)
    les.description = f"{UNBOXED_PREFIX} A 80 mm hypodense mass with smooth margins in the right hepatic lobe."
    text = lesion_text(les)
    assert text == f"Right lung, images 17–19 (key image 18): nodule, {les.diameter_mm:.0f} mm.", text
    assert finding_type_of(les, "CT") == "nodule"  # the sweep's phrase, not the other lesion's "mass"
    les.description = "A 80 mm hypodense mass with smooth margins in the right lower lobe."  # its own: kept
    assert "nodule, " in lesion_text(les) and "A 80 mm hypodense mass with smooth margins" in lesion_text(les)
    assert "Sizes disagree: the description says 80 mm" in lesion_text(les)


def test_a_description_naming_another_kind_than_the_sweep_is_flagged_in_the_finding(sample):
    """The sweep called it a nodule, the reasoning at its key slice a mass: the finding says so in a sentence
    instead of "nodule, 15 mm. A mass ..." side by side silently."""
    _result, _series, volume = sample
    les = lesion(volume)  # the sweep's phrase: "nodule"
    les.description = "A spiculated mass in the right lower lobe."
    assert lesion_text(les).endswith("Kinds disagree: the sweep called it a nodule, the description a mass.")
    les.description = "Two spiculated nodules in the right lower lobe."
    assert "disagree" not in lesion_text(les)
    les.description = "Spiculated margins, solid."  # names no kind: nothing to hold against the phrase
    assert "disagree" not in lesion_text(les)


def test_a_plural_names_the_finding_type(sample):
    """"Two masses" is a mass finding; "massive" is not one."""
    from app.report.from_preread import finding_type_of
    from inference.phrases import names

    _result, _series, volume = sample
    dets = [make_detection(volume, k, Box(157, 326, 183, 350), "lung", "abnormality") for k in (16, 17, 18)]
    (les,) = link(volume, dets)
    les.description = "Two spiculated masses in the right lower lobe."
    assert finding_type_of(les, "CT") == "mass"
    les.description = "Massive pleural thickening."
    assert finding_type_of(les, "CT") == ""
    assert names("nodule", "Nodules.") and names("mass", "masses") and not names("mass", "massive")
