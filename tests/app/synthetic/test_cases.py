"""The cases of the phantom corpus: reproducible, varied, and every box agrees with the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.errors import XMedError
from app.dicom.png import write_png
from app.synthetic.cases import CorpusConfig, PhantomCase, make_case
from app.synthetic.truth import LesionTruth

N = 48


@pytest.fixture(scope="module")
def cases() -> list[PhantomCase]:
    """The cases of the corpus with seed 11 (what ``write_corpus(n=48, seed=11)`` writes)."""
    return [make_case(11, i) for i in range(N)]


def test_cases_are_varied(cases):
    assert len(cases) == N
    assert {c.kind for c in cases} == {"ct_chest", "ct_abdomen", "xray"}
    counts = {len(c.lesions) for c in cases}
    assert counts == {0, 1, 2, 3}
    lesions = [les for c in cases for les in c.lesions]
    assert {les.size_class for les in lesions} == {"small", "medium", "large"}
    assert {les.side for les in lesions} == {"right", "left"}
    assert {les.organ for les in lesions} == {"lung", "liver"}
    assert {les.density for les in lesions} >= {"solid", "ground-glass", "hypodense", "hyperdense"}
    assert len({les.margin for les in lesions}) == 3
    sizes = [les.box[2] - les.box[0] for les in lesions]
    assert min(sizes) < 10 and max(sizes) > 25  # pixels: small and large lesions both present


def test_every_lesion_is_one_ground_truth_record_with_both_boxes(cases):
    for c in cases:
        for les in c.lesions:
            assert isinstance(les, LesionTruth) and les.box is not None and les.box_1000 is not None
            assert les.hu is None and les.slices is None  # 3-D study fields stay unset on a 2-D case
            assert LesionTruth.from_dict(les.to_dict()) == les


def test_image_left_is_patient_right(cases):
    for c in cases:
        for les in c.lesions:
            centre = (les.box[0] + les.box[2]) / 2
            assert (centre < c.image.shape[1] / 2) == (les.side == "right"), (c.name, les)
            assert les.side in les.location


def test_lesions_are_visible_in_the_8bit_image_inside_their_boxes(cases):
    contrasts: dict[str, list[float]] = {"ct": [], "xray": []}
    for c in cases:
        img = c.image.astype(np.float32)
        for les in c.lesions:
            x0, y0, x1, y1 = les.box
            w, h = x1 - x0, y1 - y0
            core = img[y0 + h // 3:y1 - h // 3, x0 + w // 3:x1 - w // 3]
            pad = max(3, w // 2)
            ring = img[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad].copy()
            ring[min(pad, y0):min(pad, y0) + h, min(pad, x0):min(pad, x0) + w] = np.nan
            contrasts["xray" if c.kind == "xray" else "ct"].append(
                abs(float(core.mean()) - float(np.nanmedian(ring))))
    # every CT lesion stands out; radiographs vary, as real nodules do, but stay visible on average
    assert min(contrasts["ct"]) >= 8.0, sorted(contrasts["ct"])[:5]
    assert np.median(contrasts["xray"]) >= 6.0 and min(contrasts["xray"]) > 1.0


def test_make_case_is_a_pure_function_of_seed_and_index():
    a, b = make_case(9, 17), make_case(9, 17)
    assert np.array_equal(a.image, b.image) and a.lesions == b.lesions


def test_config_narrows_kinds_lesion_count_and_size():
    config = CorpusConfig.restricted(["ct_chest", "xray"], 1, (25.0, 35.0))
    cases = [make_case(8, i, 96, config) for i in range(12)]
    assert {c.kind for c in cases} <= {"ct_chest", "xray"}
    assert all(len(c.lesions) <= 1 for c in cases)
    sizes = [les.size_mm for c in cases for les in c.lesions]
    assert sizes and all(24.0 <= s <= 37.0 for s in sizes)
    assert CorpusConfig.from_dict(config.as_dict()) == config
    with pytest.raises(XMedError, match="kinds must be among"):
        CorpusConfig.restricted(["mri"])


def test_contact_sheet_for_a_person_to_look_at(cases, output_dir):
    """Saves test-output/phantom_corpus.png: images with their ground-truth boxes in red."""
    tiles = []
    for c in cases[:24]:
        grey = c.image
        height, width = grey.shape
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        for les in c.lesions:
            x0, y0, x1, y1 = les.box
            x0, y0 = max(x0 - 1, 0), max(y0 - 1, 0)
            x1, y1 = min(x1, width - 1), min(y1, height - 1)
            for ys, xs in ((slice(y0, y1 + 1), x0), (slice(y0, y1 + 1), x1), (y0, slice(x0, x1 + 1)),
                           (y1, slice(x0, x1 + 1))):
                rgb[ys, xs] = (255, 40, 40)
        tiles.append(rgb)
    rows = [np.hstack(tiles[i:i + 6]) for i in range(0, len(tiles), 6)]
    sheet = np.vstack(rows)
    write_png(output_dir / "phantom_corpus.png", sheet)
    assert sheet.std() > 20


@pytest.mark.parametrize("seed", [3, 11, 29])
def test_side_words_follow_the_image_position(seed):
    """Issue #20.15: the image shows the patient's right on its left half (x = column grows towards
    the patient's left, DICOM LPS), so a lesion boxed left of the midline is on the right, and its
    location says the same side (the liver's side was once cut 5 % of the cavity left of the midline)."""
    checked = 0
    for i in range(120):
        case = make_case(seed, i)
        width = case.image.shape[1]
        for les in case.lesions:
            assert les.side_problems() == [], (seed, i, les)
            centre = (les.box[0] + les.box[2]) / 2
            if abs(centre - width / 2) < 1.0:  # on the midline: either word is fair
                continue
            assert les.side == ("right" if centre < width / 2 else "left"), (seed, i, les)
            checked += 1
    assert checked > 50
