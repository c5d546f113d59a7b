"""Checks of a finding against the pixels (app.assistant.evidence), on hand-made volumes whose
HU, sizes and sides are known by construction.

The phantom: one axial CT slice, 200 × 200 pixels of 1 mm, standard orientation (columns
run to the patient's left, so the image's left half is the patient's right). A soft-tissue
body (40 HU) in air (−1000 HU); a liver (60 HU) in the patient's right half; in it a
24 mm hypodense lesion (20 HU) centred at column 55, row 100; a 24 mm hyperdense focus
(150 HU) at column 145, row 100 in the patient's left half; two 30 mm "lungs" of air inside
the body; a fat pad (−100 HU) and a calcification (600 HU).
"""

from __future__ import annotations

import numpy as np
import pytest

from app.assistant.evidence import (
    SIZE_TOLERANCE_MM,
    FramePixels,
    box_side,
    check_density,
    check_in_body,
    check_side,
    check_size,
    evidence_checks,
    stated_density,
    stated_side,
    stated_size_mm,
)
from app.dicom.model import Geometry, Series, Volume, Window
from inference.types import Box

N = 200
LESION = Box(43, 88, 67, 112)  # the 24 mm hypodense liver lesion, tight box
BESIDE = Box(67, 70, 91, 94)  # a 24 mm box beside it over normal liver (IoU with LESION 0)
BRIGHT = Box(133, 88, 157, 112)  # the 24 mm hyperdense focus on the patient's left
AIR = Box(2, 2, 30, 30)  # a corner of the image: air outside the body
LUNG = Box(115, 45, 145, 75)  # air inside the body (a lung)
FAT = Box(100, 130, 120, 150)
CALCIUM = Box(96, 56, 104, 64)


def phantom_hu() -> np.ndarray:
    yy, xx = np.mgrid[0:N, 0:N]
    hu = np.full((N, N), -1000.0)
    body = ((xx - 100) / 95) ** 2 + ((yy - 100) / 80) ** 2 <= 1
    hu[body] = 40.0
    hu[body & (xx < 95) & (yy > 50) & (yy < 150)] = 60.0  # liver
    hu[(xx - 55) ** 2 + (yy - 100) ** 2 <= 12 ** 2] = 20.0  # hypodense lesion, 24 mm
    hu[(xx - 145) ** 2 + (yy - 100) ** 2 <= 12 ** 2] = 150.0  # hyperdense focus, 24 mm
    hu[(xx - 130) ** 2 + (yy - 60) ** 2 <= 15 ** 2] = -950.0  # lung: air inside the body
    hu[130:150, 100:120] = -100.0  # fat
    hu[58:62, 98:102] = 600.0  # calcification
    return hu


def ct_volume(modality: str = "CT", body_part: str = "ABDOMEN", geometry: bool = True, n: int = 1,
              hu: np.ndarray | None = None) -> Volume:
    hu = phantom_hu() if hu is None else hu
    frames = np.repeat((hu + 1024).astype(np.int16)[None], n, axis=0)
    series = Series(uid="1.2.826.0.1.77", number=1, description="Axial phantom", modality=modality,
                    body_part=body_part)
    geo = Geometry(origins=np.array([[-100.0, -100.0, -2.5 * k] for k in range(n)]),
                   row_direction=np.array([1.0, 0.0, 0.0]), col_direction=np.array([0.0, 1.0, 0.0]),
                   spacing=(1.0, 1.0)) if geometry else None
    return Volume(series, frames, np.ones(n), np.full(n, -1024.0), geo, Window(400, 40, "abdomen"), loaded=n)


@pytest.fixture
def ct() -> FramePixels:
    return FramePixels.from_volume(ct_volume(), 0)


# ------------------------------------------------------------------ what the sentence states

def test_frame_pixels_are_hounsfield_units_with_the_frames_geometry(ct):
    assert ct.is_ct and ct.has_geometry and ct.spacing == (1.0, 1.0)
    assert ct.values[100, 55] == pytest.approx(20.0) and ct.values[0, 0] == pytest.approx(-1000.0)
    # pixel centres: edge coordinate x is pixel x − 0.5
    np.testing.assert_allclose(ct.to_patient(0.5, 0.5), [-100.0, -100.0, 0.0])
    assert ct.body[60, 130] and not ct.body[2, 2]  # the lung is inside the body, the corner is not


def test_stated_attributes_are_read_from_the_sentence():
    assert stated_size_mm("A 4.2 x 3 cm hypodense lesion, 10 HU.") == (42.0, 30.0)
    assert stated_size_mm("A hypodense lesion of 10 HU.") is None
    assert stated_side("Lesion in the right hepatic lobe.", "lesion") == "right"
    assert stated_side("Right lung clear; nodule in the left upper lobe.", "nodule") == "left"
    assert stated_side("Bilateral effusions.", "effusions") == "both"
    assert stated_side("Thrombus in the right ventricle.", "thrombus") is None  # a chamber, not a side
    assert stated_density("A low-attenuation lesion.") == "hypodense"
    assert stated_density("A fat-containing mass.") == "fat"
    assert stated_density("A calcified granuloma.") == "calcified"
    assert stated_density("A round nodule.") is None


# ------------------------------------------------------------------ size

def test_a_stated_42_mm_on_a_24_mm_box_fails_size(ct):
    check = check_size("There is a 42 mm hypodense lesion in the right hepatic lobe.", LESION, ct)
    assert check.passed is False and check.name == "size"
    assert "42 mm" in check.detail and "24 × 24 mm" in check.detail
    assert check.inputs["stated_mm"] == (42.0,) and check.inputs["box_mm"] == (24.0, 24.0)


def test_size_within_tolerance_passes_and_small_lesions_keep_an_absolute_margin(ct):
    assert check_size("A 2.6 cm lesion.", LESION, ct).passed is True
    # 8 mm said, 15 mm box: 88% apart but only 7 mm, under the absolute tolerance
    assert SIZE_TOLERANCE_MM > 7
    assert check_size("An 8 mm nodule.", Box(10, 10, 25, 25), ct).passed is True
    assert check_size("A nodule.", LESION, ct) is None  # nothing stated: nothing to check


def test_size_without_pixel_spacing_is_not_checked():
    pixels = FramePixels(values=phantom_hu().astype(np.float32), modality="CT")
    check = check_size("A 42 mm lesion.", LESION, pixels)
    assert check.passed is None and "pixel spacing" in check.detail


# ------------------------------------------------------------------ side

def test_a_right_finding_whose_box_is_on_the_patients_left_fails_side(ct):
    check = check_side("A hyperdense focus in the right lobe.", "hyperdense focus", BRIGHT, ct)
    assert check.passed is False
    assert "patient's left" in check.detail and check.inputs["box_centre_x_mm"] > check.inputs["reference_x_mm"]
    assert check_side("A hyperdense focus on the left.", "hyperdense focus", BRIGHT, ct).passed is True
    assert check_side("A lesion in the right hepatic lobe.", "lesion", LESION, ct).passed is True
    assert box_side(LESION, ct) == "right" and box_side(BRIGHT, ct) == "left"


def test_side_follows_the_patient_not_the_screen_when_the_image_is_flipped():
    """Columns running to the patient's right (a flipped acquisition): the image's left half is the patient's left."""
    vol = ct_volume()
    vol.geometry = Geometry(origins=np.array([[100.0, -100.0, 0.0]]), row_direction=np.array([-1.0, 0.0, 0.0]),
                            col_direction=np.array([0.0, 1.0, 0.0]), spacing=(1.0, 1.0))
    pixels = FramePixels.from_volume(vol, 0)
    assert check_side("A lesion on the right.", "lesion", LESION, pixels).passed is False
    assert check_side("A lesion on the left.", "lesion", LESION, pixels).passed is True


def test_side_without_geometry_or_on_the_midline_is_not_checked():
    flat = FramePixels.from_volume(ct_volume(geometry=False), 0)
    check = check_side("A lesion in the right lobe.", "lesion", LESION, flat)
    assert check.passed is None and "geometry" in check.detail
    ct = FramePixels.from_volume(ct_volume(), 0)
    midline = check_side("A right-sided lesion.", "lesion", Box(90, 90, 110, 110), ct)
    assert midline.passed is None and "within" in midline.detail


# ------------------------------------------------------------------ density

def test_hypodense_on_a_bright_box_fails_density(ct):
    check = check_density("A hypodense lesion.", BRIGHT, ct)
    assert check.passed is False and check.inputs["inside_hu"] == pytest.approx(150.0)
    assert "hypodense" in check.detail and "150 HU" in check.detail
    assert check_density("A hyperdense focus.", BRIGHT, ct).passed is True
    assert check_density("A hypodense lesion.", LESION, ct).passed is True


def test_a_box_beside_the_lesion_is_not_hypodense(ct):
    assert check_density("A hypodense lesion.", BESIDE, ct).passed is False


def test_fat_air_and_calcium(ct):
    assert check_density("A fat-containing lesion.", FAT, ct).passed is True
    assert check_density("A fat-containing lesion.", LESION, ct).passed is False
    assert check_density("A gas-containing collection.", LUNG, ct).passed is True
    assert check_density("A calcified nodule.", CALCIUM, ct).passed is True
    assert check_density("A calcified nodule.", LESION, ct).passed is False


def test_density_on_mr_is_not_checked():
    mr = FramePixels.from_volume(ct_volume(modality="MR"), 0)
    check = check_density("A hypointense lesion.", LESION, mr)
    assert check.passed is None and "CT only" in check.detail and "MR" in check.detail


# ------------------------------------------------------------------ outside the body

def test_a_box_in_the_air_outside_the_body_fails(ct):
    check = check_in_body(AIR, ct)
    assert check.passed is False and check.inputs["air_share"] > 0.5 and check.inputs["outside_share"] > 0.5
    assert check_in_body(LUNG, ct).passed is True  # air, but inside the chest wall
    assert check_in_body(LESION, ct).passed is True
    assert check_in_body(LESION, FramePixels.from_volume(ct_volume(modality="MR"), 0)) is None


def test_evidence_checks_run_in_a_fixed_order_and_only_for_what_is_stated(ct):
    checks = evidence_checks("A 42 mm hypodense lesion in the right hepatic lobe.", "hypodense lesion", BESIDE, ct)
    assert [(c.name, c.passed) for c in checks] == [("in_body", True), ("size", False), ("side", True),
                                                    ("density", False)]
    assert [c.name for c in evidence_checks("A nodule.", "nodule", LESION, ct)] == ["in_body"]
    assert all(set(c.to_json()) == {"name", "passed", "detail"} for c in checks)
