"""The one ground-truth record: the sample study and the corpus cases describe lesions alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.synthetic.cases import make_case
from app.synthetic.sample import (
    GROUND_TRUTH_NAME,
    ground_truth_lesions,
    load_ground_truth,
    write_ct_study,
)
from app.synthetic.truth import LesionTruth, density_of, to_1000
from inference.evaluation.sizes import size_bucket

REPO = Path(__file__).resolve().parents[3]
BUNDLED = REPO / "resources" / "sample" / "ct-demo"
SHARED = {"id", "organ", "side", "location", "kind", "density", "margin", "size_mm", "size_class"}


def test_pixel_boxes_go_to_the_1000_scale_never_empty():
    assert to_1000((0, 0, 1, 1), 224, 224) == (0, 0, 5, 5)


@pytest.mark.parametrize(("size_mm", "expected"), [(6.0, "small"), (9.9, "small"), (10.0, "medium"),
                                                    (19.9, "medium"), (20.0, "large"), (70.0, "large")])
def test_size_class_is_the_one_lesion_size_rule(size_mm, expected):
    les = LesionTruth("L1", "lung", "right", "right upper lobe", "solid nodule", "solid", "smooth", size_mm)
    assert les.size_class == size_bucket(size_mm) == expected
    assert les.to_dict()["size_class"] == expected


def test_records_round_trip_through_their_dict():
    case = LesionTruth("L2", "lung", "left", "left lower zone", "nodule", "solid", "spiculated", 14.2,
                       box=(120, 90, 131, 101), box_1000=(535, 401, 585, 451))
    study = LesionTruth("L5", "liver", "right", "right hepatic lobe", "hypodense lesion", "hypodense", "lobulated",
                        24.0, hu=38.0, center_patient_mm=(-60.1, 10.5, -250.0), slices=(25, 27))
    for les in (case, study):
        assert LesionTruth.from_dict(json.loads(json.dumps(les.to_dict()))) == les
    assert list(case.to_dict()) == ["id", "organ", "side", "location", "kind", "density", "margin", "size_mm",
                                    "box", "box_1000", "size_class"]  # what annotations.jsonl has always held
    assert set(study.to_dict()) == SHARED | {"hu", "center_patient_mm", "slices"}


def test_records_written_before_the_shared_format_still_read():
    old = {"id": "L6", "organ": "liver", "location": "right hepatic lobe", "side": "right", "kind": "cyst",
           "margin": "smooth", "size_mm": 12.0, "hu": 6.0, "center_patient_mm": [-70.0, 5.0, -300.0], "slices": []}
    les = LesionTruth.from_dict(old)
    assert les.density == "hypodense" and les.size_class == "medium" and les.slices == ()
    assert {k: v for k, v in les.to_dict().items() if k in old} == old
    assert density_of("lung", "ground-glass nodule") == "ground-glass" and density_of("liver", "hyperdense lesion") \
        == "hyperdense"
    # a stored size class is never trusted over the diameter
    assert LesionTruth.from_dict({**old, "size_class": "large"}).size_class == "medium"


def test_bundled_sample_ground_truth_reads_as_records():
    lesions = load_ground_truth(BUNDLED)["lesions"]
    assert len(lesions) >= 5 and all(set(les) >= SHARED for les in lesions)
    assert all(les["size_class"] == size_bucket(les["size_mm"]) for les in lesions)
    raw = json.loads((BUNDLED.parent / f"{BUNDLED.name}.{GROUND_TRUTH_NAME}").read_text())
    assert [les.to_dict() for les in ground_truth_lesions(raw)] == lesions


def test_study_and_corpus_case_write_the_same_fields_in_the_same_units(tmp_path):
    write_ct_study(tmp_path, n_slices=8, size=64, seed=1)
    study = json.loads((tmp_path / GROUND_TRUTH_NAME).read_text())["lesions"]
    case = next(c for i in range(20) if (c := make_case(3, i)).lesions)
    for les in study + [t.to_dict() for t in case.lesions]:
        assert set(les) >= SHARED and les["size_class"] == size_bucket(les["size_mm"])
        assert les["side"] in ("right", "left") and les["side"] in les["location"]
    assert all(les["size_mm"] >= 5.0 for les in study)  # millimetres, not pixels
