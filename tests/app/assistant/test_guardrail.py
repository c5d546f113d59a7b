"""The guardrail warns when a question does not fit the series, and only then."""

from __future__ import annotations

import pytest

from app.assistant.guardrail import Anatomy, AnatomyFileError, check_query, check_series
from app.dicom.model import Series

MISMATCHES = [
    ("Locate the right kidney", dict(modality="MR", body_part="BRAIN"),
     "The question asks about the right kidney but this series is a BRAIN MR."),
    ("Is there a nodule in the left lung?", dict(modality="DX", body_part="HAND"),
     "The question asks about the left lung but this series is a HAND X-ray."),
    ("where is the brain", dict(modality="CT", series_description="Abd/Pel 5mm", study_description="CT ABDOMEN PELVIS"),
     "The question asks about the brain but this series is an ABDOMEN-PELVIS CT."),
    ("Show the liver", dict(modality="MG"),
     "The question asks about the liver but this series is a mammogram."),
    ("Effusion in the left knee?", dict(modality="DX", body_part="KNEE", series_description="RT KNEE AP"),
     "The question asks about the left knee but this series is a RIGHT KNEE X-ray."),
    ("Fracture of the scaphoid?", dict(modality="CT", body_part="", series_description="T2 AX BRAIN"),
     "The question asks about the hand but this series is a HEAD CT."),
    ("Locate the prostate", dict(modality="CR", body_part="CHEST"),
     "The question asks about the prostate but this series is a CHEST X-ray."),
]


@pytest.mark.parametrize("question, header, warning", MISMATCHES)
def test_mismatch_is_named_in_plain_words(question, header, warning):
    result = check_query(question, **header)
    assert result.warnings == [warning]
    assert not result.ok


FITS = [
    ("Locate the right kidney", dict(modality="CT", body_part="ABDOMEN")),
    ("right kidney stone?", dict(modality="CT", series_description="CT A/P W CONTRAST")),
    ("nodule in the left lung base", dict(modality="CT", body_part="ABDOMEN")),  # lung bases are on abdominal CT
    ("liver dome lesion", dict(modality="CT", body_part="CHEST")),
    ("the brain", dict(modality="MR", body_part="HEAD")),
    ("the left ventricle", dict(modality="MR", series_description="CARDIAC CINE SAX")),
    ("the right kidney", dict(modality="CT", body_part="WHOLEBODY")),
    ("the left kidney", dict(modality="PT", series_description="PET/CT skull base to thigh")),
    ("any spleen injury", dict(modality="CT", body_part="CHEST", series_description="CAP trauma")),
    ("the left breast", dict(modality="MG", series_description="L CC")),
    # nothing in the header says where the image is: no check, no false alarm
    ("the right kidney", dict(modality="CT", body_part="", series_description="Series 3")),
    # no structure named
    ("Is this normal?", dict(modality="MR", body_part="BRAIN")),
]


@pytest.mark.parametrize("question, header", FITS)
def test_fitting_or_unknown_questions_get_no_warning(question, header):
    assert check_query(question, **header).ok


def test_boxes_for_the_mismatched_structure_are_flagged():
    result = check_query("Locate the right kidney", modality="MR", body_part="BRAIN")
    assert result.flag("right kidney") == result.warnings[0]
    assert result.flag("the kidney") == result.warnings[0]
    assert result.flag("left kidney") is None  # a different side is not what was asked
    assert result.flag("lateral ventricle") is None


def test_series_convenience_reads_the_series_header():
    series = Series(uid="1.2", number=3, description="AX T2 FLAIR BRAIN", modality="MR", body_part="")
    result = check_series("Locate the right kidney", series)
    assert result.warnings == ["The question asks about the right kidney but this series is a HEAD MR."]


def test_synonyms_and_sides():
    a = Anatomy.load()
    mentions = a.mentions("Compare the rt. kidney, the LEFT RENAL pelvis and both kidneys")
    assert [(m.structure.id, m.side) for m in mentions] == [("kidney", "right"), ("kidney", "left"), ("kidney", "both")]
    assert [m.label for m in mentions] == ["the right kidney", "the left kidney", "both kidneys"]


def test_damaged_vocabulary_is_reported_without_a_traceback(tmp_path):
    bad = tmp_path / "anatomy.yaml"
    bad.write_text("regions: {head: {terms: [head]}}\nstructures: {kidney: {terms: [kidney], regions: [abdomen]}}\n")
    with pytest.raises(AnatomyFileError, match="unknown regions: abdomen"):
        Anatomy.load(bad)
    with pytest.raises(AnatomyFileError, match="missing or damaged"):
        Anatomy.load(tmp_path / "nothing.yaml")
