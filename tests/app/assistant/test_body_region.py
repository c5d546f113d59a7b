"""The body region read from the image itself, and the guardrail that uses it (issue #13).

A question about the right kidney on a head MR whose header names no body part drew no
warning. The frame is now looked at: chest slices of a sample study read as chest,
abdomen slices as abdomen, a head as a head; what the image cannot tell is said to be
unchecked, never silently OK.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.assistant.ask import Assistant
from app.assistant.body_region import RegionEstimate, estimate_region
from app.assistant.guardrail import check_query, check_series
from app.dicom.loader import load_series
from app.dicom.model import Series, Volume
from app.dicom.scan import scan
from app.synthetic.anatomy import Anatomy
from app.synthetic.sample import write_ct_study
from tests.app.assistant.test_ask import SPEC, ScriptedEngine

SAMPLE_SEED = 731_911  # a fresh seed, used nowhere else
N_SLICES = 24
KIDNEY = "Locate the right kidney"


# ----------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Volume:
    """A `xmedgpt sample`-style CT study, read back with the app's own scanner and loader (HU)."""
    folder = write_ct_study(tmp_path_factory.mktemp("sample") / "ct", n_slices=N_SLICES, size=256, seed=SAMPLE_SEED)
    (series,) = scan(folder).all_series()
    return load_series(series)


def _depth(k: int) -> float:
    """How far down the 330 mm phantom slice k lies, as a fraction (0 = thoracic inlet)."""
    return (k + 0.5) / N_SLICES


E = Anatomy().extent_mm
CHEST = [k for k in range(N_SLICES) if 0.12 <= _depth(k) <= 0.66]  # both lungs, well above the domes
ABDOMEN = [k for k in range(N_SLICES) if _depth(k) * E >= Anatomy().lung_bottom + 0.05 * E]  # below the lungs


def _pixels(name: str) -> tuple[np.ndarray, str, tuple[float, float]]:
    ds = pydicom.dcmread(get_testdata_file(name))
    values = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1) \
        + float(ds.get("RescaleIntercept", 0) or 0)
    return values, str(ds.Modality), tuple(float(v) for v in ds.PixelSpacing)  # type: ignore[return-value]


def _ellipse(shape, cy, cx, ry, rx) -> np.ndarray:
    yy, xx = np.mgrid[0: shape[0], 0: shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def head_ct(spacing: float = 0.8) -> np.ndarray:
    """An axial head: scalp, a closed skull, brain with ventricles (HU)."""
    rng = np.random.default_rng([SAMPLE_SEED, 1])
    shape = (256, 256)
    c = 128
    ry, rx = 92 / spacing, 75 / spacing  # a 150 × 184 mm head
    img = np.full(shape, -1000.0, dtype=np.float32)
    img[_ellipse(shape, c, c, ry, rx)] = 40.0  # scalp
    img[_ellipse(shape, c, c, ry - 4 / spacing, rx - 4 / spacing)] = 1200.0  # skull
    img[_ellipse(shape, c, c, ry - 10 / spacing, rx - 10 / spacing)] = 32.0  # brain
    img[_ellipse(shape, c - 8, c - 12, 22, 5)] = 8.0  # ventricles
    img[_ellipse(shape, c - 8, c + 12, 22, 5)] = 8.0
    return img + rng.normal(0, 4, shape).astype(np.float32)


def head_mr(spacing: float = 0.9) -> np.ndarray:
    """An axial head MR: bright scalp fat, dark skull, brain; no HU, just signal."""
    rng = np.random.default_rng([SAMPLE_SEED, 2])
    shape = (256, 256)
    c = 128
    ry, rx = 93 / spacing, 76 / spacing
    img = np.zeros(shape, dtype=np.float32)
    img[_ellipse(shape, c, c, ry, rx)] = 900.0
    img[_ellipse(shape, c, c, ry - 5 / spacing, rx - 5 / spacing)] = 60.0
    img[_ellipse(shape, c, c, ry - 10 / spacing, rx - 10 / spacing)] = 520.0
    return np.abs(img + rng.normal(0, 15, shape).astype(np.float32))


def pelvis_ct() -> np.ndarray:
    """A torso-sized section without lung, iliac bones on both flanks (HU, 1.4 mm pixels)."""
    rng = np.random.default_rng([SAMPLE_SEED, 3])
    shape = (256, 256)
    img = np.full(shape, -1000.0, dtype=np.float32)
    img[_ellipse(shape, 128, 128, 90, 125)] = -100.0  # fat
    img[_ellipse(shape, 128, 128, 82, 116)] = 45.0  # muscle and pelvic organs
    img[_ellipse(shape, 122, 128, 20, 24)] = 10.0  # bladder
    for cx in (60, 196):
        img[_ellipse(shape, 130, cx, 32, 18)] = 600.0  # iliac wings
    img[_ellipse(shape, 185, 128, 14, 20)] = 500.0  # sacrum
    return img + rng.normal(0, 6, shape).astype(np.float32)


def legs_ct() -> np.ndarray:
    """Both thighs, each with its femur (HU, 0.9 mm pixels)."""
    shape = (256, 256)
    img = np.full(shape, -1000.0, dtype=np.float32)
    for cx in (70, 186):
        img[_ellipse(shape, 128, cx, 62, 56)] = 40.0
        img[_ellipse(shape, 128, cx, 14, 14)] = 900.0
        img[_ellipse(shape, 128, cx, 8, 8)] = 20.0
    return img


def neck_ct() -> np.ndarray:
    """A neck: a round section with a vertebra behind an air-filled airway (HU, 0.6 mm pixels)."""
    shape = (256, 256)
    img = np.full(shape, -1000.0, dtype=np.float32)
    img[_ellipse(shape, 128, 128, 95, 105)] = 45.0
    img[_ellipse(shape, 165, 128, 22, 22)] = 700.0  # vertebra
    img[_ellipse(shape, 90, 128, 12, 16)] = -1000.0  # airway
    return img


# ----------------------------------------------------------------------------- estimates


def test_sample_study_chest_slices_say_chest_and_abdomen_slices_abdomen(sample):
    spacing = sample.geometry.spacing
    estimates = {k: estimate_region(sample.values(k), "CT", spacing) for k in range(len(sample))}
    print("\nslice  depth  region    conf  possible                    evidence")
    for k, e in estimates.items():
        print(f"{k:>5}  {_depth(k):.2f}   {str(e.region):<9} {e.confidence:.2f}  {','.join(e.possible):<26}  "
              f"{e.evidence}")
    assert len(CHEST) >= 8 and len(ABDOMEN) >= 3
    for k in CHEST:
        assert estimates[k].region == "chest" and estimates[k].confidence >= 0.8, (k, estimates[k])
        assert estimates[k].possible == ("chest",)
    for k in ABDOMEN:
        assert estimates[k].region == "abdomen" and estimates[k].confidence >= 0.6, (k, estimates[k])
        assert "chest" not in estimates[k].possible
    # the slices in between are chest or abdomen, never anything else
    assert {e.region for e in estimates.values()} <= {"chest", "abdomen"}


def test_pydicom_mr_small_is_head_or_unknown_never_a_trunk():
    values, modality, spacing = _pixels("MR_small.dcm")
    e = estimate_region(values, modality, spacing)
    print(f"\nMR_small.dcm: {e}")
    assert e.region in ("head", None)
    assert "chest" not in e.possible and "abdomen" not in e.possible
    # it is a 64 × 64 crop of 20 × 20 mm: its size cannot tell, and the estimate says so
    assert e.region is None and "field of view" in e.evidence


def test_pydicom_ct_small_is_a_zoomed_chest():
    values, modality, spacing = _pixels("CT_small.dcm")
    e = estimate_region(values, modality, spacing)
    print(f"\nCT_small.dcm: {e}")
    # a thoracic vertebra with lung on both sides, in an 85 mm field of view
    assert e.region == "chest" and "lung" in e.evidence


@pytest.mark.parametrize("image", [np.zeros((64, 64)), np.full((128, 96), -1024.0), np.full((32, 32), np.nan),
                                   np.zeros((0, 0))])
def test_a_blank_image_is_unknown(image):
    for modality in ("CT", "MR"):
        e = estimate_region(image, modality, (1.0, 1.0))
        assert e.region is None and e.confidence == 0.0 and e.possible == () and e.evidence


def test_head_pelvis_and_legs_phantoms():
    e = estimate_region(head_ct(), "CT", (0.8, 0.8))
    assert e.region == "head" and e.confidence >= 0.8 and "bone" in e.evidence, e
    assert estimate_region(head_ct(), "CT", None).region == "head"  # the skull says so without a size
    e = estimate_region(head_mr(), "MR", (0.9, 0.9))
    assert e.region == "head" and 0.5 <= e.confidence < 0.8, e
    assert estimate_region(head_mr(), "MR", None).region is None  # no size: MR cannot tell
    e = estimate_region(pelvis_ct(), "CT", (1.4, 1.4))
    assert e.region == "pelvis" and "abdomen" in e.possible, e
    e = estimate_region(legs_ct(), "CT", (0.9, 0.9))
    assert e.region == "extremity", e
    e = estimate_region(neck_ct(), "CT", (0.6, 0.6))
    assert e.region == "neck" and e.confidence <= 0.5 and "head" in e.possible, e
    # a torso-sized MR section: its size rules out a head, but says nothing more
    assert estimate_region(head_mr(), "MR", (2.0, 2.0)).region is None  # 340 × 420 mm
    # other modalities and colour images are not estimated
    assert estimate_region(head_ct(), "DX", (0.8, 0.8)).region is None
    assert estimate_region(np.zeros((64, 64, 3), np.uint8), "CT", (1.0, 1.0)).region is None
    # a CT without Hounsfield units is judged by its outline only
    assert estimate_region(head_ct() + 1024.0, "CT", (0.8, 0.8), rescaled=False).region == "head"


def test_the_estimate_is_fast_enough_to_run_before_every_question(sample):
    import time

    t0 = time.perf_counter()
    for k in range(4):
        estimate_region(sample.values(k), "CT", sample.geometry.spacing)
    assert (time.perf_counter() - t0) / 4 < 1.0


# ----------------------------------------------------------------------------- the guardrail


def _mr_small_without_body_part(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName"):
        if keyword in ds:
            delattr(ds, keyword)
    folder = tmp_path / "mr"
    folder.mkdir()
    ds.save_as(folder / "MR_small.dcm")
    return folder


def test_right_kidney_on_mr_small_without_body_part_is_never_silently_ok(tmp_path):
    (series,) = scan(_mr_small_without_body_part(tmp_path)).all_series()
    assert series.body_part == "" and series.modality == "MR"
    volume = load_series(series)
    # the whole round trip: the assistant hands the guardrail the frame and its spacing
    guard = Assistant(ScriptedEngine("x"), image_spec=SPEC).prepare(volume, 0, None, KIDNEY).guardrail
    assert guard.warnings or not guard.region_checked
    # the image cannot tell (a 20 mm crop): the result says so
    assert guard.warnings == []
    assert guard.region_checked is False and guard.region_source is None
    assert guard.structures_unchecked
    assert guard.region_note.startswith("Could not check the body region: the header names none and the image "
                                        "cannot tell")
    assert guard.region_estimate is not None and guard.region_estimate.region is None


def test_right_kidney_on_a_head_judged_from_the_image():
    mr = Series(uid="1.2.9", number=1, description="", modality="MR", body_part="")
    result = check_series(KIDNEY, mr, pixels=head_mr(), spacing_mm=(0.9, 0.9))
    assert result.region_source == "image" and result.region_checked
    assert result.warnings[0].startswith("The question asks about the right kidney but this image looks like a "
                                         "HEAD MR. Judged from the image, as the header names no body part: one "
                                         "round section of")
    assert result.flag("right kidney") == result.warnings[0]  # a box for it is flagged like the header's
    ct = check_query(KIDNEY, modality="CT", series_description="Series 3", pixels=head_ct(), spacing_mm=(0.8, 0.8))
    assert ct.warnings and "a HEAD CT" in ct.warnings[0] and "closed ring of bone" in ct.warnings[0]
    assert check_query("Where is the brain?", modality="CT", pixels=head_ct(), spacing_mm=(0.8, 0.8)).ok


def test_right_kidney_on_sample_slices_without_a_body_part_in_the_header(sample):
    series = Series(uid="1.2.10", number=2, description="Axial 13.75 mm portal venous", modality="CT", body_part="")
    spacing = sample.geometry.spacing
    abdomen = check_series(KIDNEY, series, pixels=sample.values(ABDOMEN[-1]), spacing_mm=spacing)
    assert abdomen.ok and abdomen.region_checked and abdomen.region_source == "image"
    assert abdomen.region_estimate is not None and abdomen.region_estimate.region == "abdomen"
    chest = check_series(KIDNEY, series, pixels=sample.values(CHEST[len(CHEST) // 2]), spacing_mm=spacing)
    assert chest.region_source == "image"
    assert chest.warnings and chest.warnings[0].startswith(
        "The question asks about the right kidney but this image looks like a CHEST CT. Judged from the image")
    assert "lung" in chest.warnings[0]
    assert check_series("nodule in the left lung", series, pixels=sample.values(CHEST[0]), spacing_mm=spacing).ok


def test_sample_through_the_assistant_header_first_then_image(sample, tmp_path):
    engine = ScriptedEngine("x")
    assistant = Assistant(engine, image_spec=SPEC)
    # the sample's header says CHEST (and its study CHEST ABDOMEN): the header decides, as before
    guard = assistant.prepare(sample, ABDOMEN[-1], None, KIDNEY, study_description="CT CHEST ABDOMEN").guardrail
    assert guard.region_source == "header" and guard.region_checked and guard.ok
    # without any body part in the header the frame decides
    saved = sample.series.body_part
    try:
        sample.series.body_part = ""
        on_abdomen = assistant.prepare(sample, ABDOMEN[-1], None, KIDNEY).guardrail
        on_chest = assistant.prepare(sample, CHEST[2], None, KIDNEY).guardrail
    finally:
        sample.series.body_part = saved
    assert on_abdomen.ok and on_abdomen.region_source == "image"
    assert not on_chest.ok and on_chest.region_source == "image" and "CHEST CT" in on_chest.warnings[0]


def test_header_path_is_unchanged_and_says_it_was_checked():
    result = check_query(KIDNEY, modality="MR", body_part="BRAIN")
    assert result.warnings == ["The question asks about the right kidney but this series is a BRAIN MR."]
    assert result.region_checked and result.region_source == "header" and result.region_note == ""
    # the header wins over the image
    assert check_query(KIDNEY, modality="CT", body_part="ABDOMEN", pixels=head_ct(), spacing_mm=(0.8, 0.8)).ok
    # nothing to look at: not checked, and said so
    unknown = check_query(KIDNEY, modality="CT", series_description="Series 3")
    assert unknown.ok and not unknown.region_checked and unknown.structures_unchecked
    assert unknown.region_note == ("Could not check the body region: the header names none and the image was not "
                                   "available.")
    # a question naming no structure has nothing left unchecked
    assert not check_query("Is this normal?", modality="CT").structures_unchecked
    # an estimate given in advance is used as is; one too unsure is not
    sure = RegionEstimate("chest", 0.9, "40% of the body is air-filled lung.", ("chest",))
    assert check_query(KIDNEY, modality="CT", image_region=sure).warnings
    unsure = RegionEstimate("chest", 0.3, "Some lung.", ("chest",))
    vague = check_query(KIDNEY, modality="CT", image_region=unsure)
    assert vague.ok and not vague.region_checked and "not clear enough" in vague.region_note


def test_copies_of_pydicom_files_are_left_alone(tmp_path):
    # the test data itself is never modified (the guardrail test works on a copy)
    original = Path(get_testdata_file("MR_small.dcm"))
    copy = tmp_path / "copy.dcm"
    shutil.copy(original, copy)
    _mr_small_without_body_part(tmp_path)
    assert copy.read_bytes() == original.read_bytes()
