"""Frame → model image → frame: InternVL tiling as the processor does it, and exact
coordinate mapping (non-square, padded, anisotropic, tiled) down to patient mm."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GotOcr2ImageProcessorPil
from transformers.image_utils import SizeDict
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    get_optimal_tiled_canvas,
)

from inference.imaging import (
    ImageSpec,
    pixel_box_to_patient,
    plan_tiles,
    prepare_model_image,
    tile_grid,
    tile_image,
)
from inference.types import Box

TILE = 28  # small tiles keep the processor comparisons fast; the algorithm is size-free


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 4000), st.integers(1, 4000),
    st.sampled_from([(1, 12), (1, 6), (2, 8), (1, 1), (4, 40)]),
    st.sampled_from([448, 224, 28]),
)
def test_grid_matches_transformers_processor(h, w, tiles, tile):
    lo, hi = tiles
    spec = ImageSpec(tile_size=tile, min_tiles=lo, max_tiles=hi)
    expected = get_optimal_tiled_canvas((h, w), (tile, tile), lo, hi) if hi > 1 else (1, 1)
    assert tile_grid(h, w, spec) == expected


def _processor(spec: ImageSpec) -> GotOcr2ImageProcessorPil:
    return GotOcr2ImageProcessorPil(
        size={"height": spec.tile_size, "width": spec.tile_size},
        crop_to_patches=True, min_patches=spec.min_tiles, max_patches=spec.max_tiles,
        do_rescale=False, do_normalize=False,
    )


def _hf_tiles(rgb: np.ndarray, spec: ImageSpec) -> list[np.ndarray]:
    proc = _processor(spec)
    chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
    tiles = proc.crop_image_to_patches(
        chw, spec.min_tiles, spec.max_tiles, use_thumbnail=spec.use_thumbnail,
        patch_size=SizeDict(height=spec.tile_size, width=spec.tile_size), resample=proc.resample,
    )
    return [np.asarray(t).transpose(1, 2, 0) for t in tiles]


@pytest.mark.parametrize("shape", [(60, 170), (130, 40), (57, 57), (90, 300)])
def test_tiles_are_pixel_identical_to_the_processor(shape):
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    spec = ImageSpec(tile_size=TILE, max_tiles=6)
    ours, theirs = tile_image(rgb, spec), _hf_tiles(rgb, spec)
    assert len(ours) == len(theirs) == plan_tiles(*shape, spec).count
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_processor_keeps_the_plan_of_our_resized_image():
    """The image we hand over is already the processor's canvas: it re-tiles it the same way."""
    spec = ImageSpec(tile_size=TILE, max_tiles=12)
    frame = np.random.default_rng(0).integers(0, 256, size=(200, 520), dtype=np.uint8)
    mi = prepare_model_image(frame, spec)
    assert mi.rgb.shape == (mi.plan.rows * TILE, mi.plan.cols * TILE, 3)
    assert tile_grid(*mi.rgb.shape[:2], spec) == (mi.plan.cols, mi.plan.rows)
    tiles = _hf_tiles(mi.rgb, spec)
    assert len(tiles) == mi.plan.count
    for i, region in enumerate(mi.plan.regions(*mi.transform.model_size)[:-1]):
        crop = mi.rgb[int(region.y0) : int(region.y1), int(region.x0) : int(region.x1)]
        np.testing.assert_array_equal(tiles[i], crop)


CASES = {
    "non-square": dict(shape=(300, 512), spacing=None, pad=False),
    "padded": dict(shape=(300, 512), spacing=None, pad=True),
    "tall padded": dict(shape=(640, 256), spacing=None, pad=True),
    "anisotropic pixels": dict(shape=(256, 512), spacing=(1.4, 0.7), pad=False),
    "anisotropic padded": dict(shape=(256, 400), spacing=(0.6, 1.2), pad=True),
}


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_box_round_trip_through_the_model_scale_is_exact(name, data):
    c = CASES[name]
    h, w = c["shape"]
    spec = ImageSpec(tile_size=TILE, pad_to_square=c["pad"])
    mi = prepare_model_image(np.zeros((h, w), np.uint8), spec, pixel_spacing=c["spacing"])
    x0 = data.draw(st.floats(0, w - 1))
    y0 = data.draw(st.floats(0, h - 1))
    box = Box(x0, y0, data.draw(st.floats(x0 + 0.5, w)), data.draw(st.floats(y0 + 0.5, h)))
    norm = mi.transform.source_to_norm(box)
    assert all(0 <= v <= 1000 for v in (norm.x0, norm.y0, norm.x1, norm.y1))
    back = mi.transform.norm_to_source(norm)
    assert back is not None
    np.testing.assert_allclose([back.x0, back.y0, back.x1, back.y1], [box.x0, box.y0, box.x1, box.y1], atol=1e-9)


def _bright_bbox(img: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(img[..., 0] > 127)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize("name", CASES)
def test_known_box_drawn_in_the_frame_comes_back_from_model_coordinates(name):
    """Draw a lesion, find it in the image the model sees, write its box as the model
    would (integers 0–1000), map back: it lands on the drawn pixels."""
    c = CASES[name]
    h, w = c["shape"]
    truth = Box(w * 0.55, h * 0.2, w * 0.55 + 40, h * 0.2 + 24)
    frame = np.zeros((h, w), np.uint8)
    frame[int(truth.y0) : int(truth.y1), int(truth.x0) : int(truth.x1)] = 255
    spec = ImageSpec(tile_size=TILE * 4, pad_to_square=c["pad"])
    mi = prepare_model_image(frame, spec, pixel_spacing=c["spacing"])
    u0, v0, u1, v1 = _bright_bbox(mi.rgb)
    mw, mh = mi.transform.model_size
    said = Box(round(u0 / mw * 1000), round(v0 / mh * 1000), round(u1 / mw * 1000), round(v1 / mh * 1000))
    back = mi.transform.norm_to_source(said)
    # error budget: one model pixel of resampling blur plus half a 0-1000 step, in frame pixels
    tol_x = (1 + 0.5 * mw / 1000) / mi.transform.scale[0] + 0.01
    tol_y = (1 + 0.5 * mh / 1000) / mi.transform.scale[1] + 0.01
    assert abs(back.x0 - truth.x0) <= tol_x and abs(back.x1 - truth.x1) <= tol_x
    assert abs(back.y0 - truth.y0) <= tol_y and abs(back.y1 - truth.y1) <= tol_y


def test_padding_is_excluded_and_boxes_in_padding_are_dropped():
    spec = ImageSpec(tile_size=TILE, pad_to_square=True)
    mi = prepare_model_image(np.full((100, 400), 200, np.uint8), spec)
    mw, mh = mi.transform.model_size
    assert mw == mh  # square canvas
    rows = np.nonzero(mi.rgb[:, mw // 2, 0])[0]
    # the frame occupies the middle quarter of the height
    assert abs(rows.min() - mh * 3 / 8) <= 1 and abs(rows.max() + 1 - mh * 5 / 8) <= 1
    whole = mi.transform.norm_to_source(Box(0, 0, 1000, 1000))
    assert whole == Box(0, 0, 400, 100)
    assert mi.transform.norm_to_source(Box(100, 0, 900, 300)) is None  # all in the top padding


def test_boxes_found_in_processor_tiles_map_back_to_the_frame():
    """A box seen inside one of the processor's tiles, mapped through the tile plan,
    lands where it was drawn in the frame."""
    h, w = 180, 420
    truth = Box(250, 40, 290, 70)  # inside one tile of the 3x1 or 2x1 grid
    frame = np.zeros((h, w), np.uint8)
    frame[40:70, 250:290] = 255
    spec = ImageSpec(tile_size=56, max_tiles=6)
    mi = prepare_model_image(frame, spec)
    tiles = _hf_tiles(mi.rgb, spec)
    assert mi.plan.cols * mi.plan.rows > 1
    hits = [(i, t) for i, t in enumerate(tiles[:-1]) if (t[..., 0] > 127).any()]
    assert hits
    mw, mh = mi.transform.model_size
    xs, ys = [], []
    for i, t in hits:
        u0, v0, u1, v1 = _bright_bbox(t)
        for u, v in ((u0, v0), (u1, v1)):
            x, y = mi.transform.to_source(*mi.plan.tile_point_to_image(i, u, v, mw, mh))
            xs.append(x)
            ys.append(y)
    tol = 1.0 / mi.transform.scale[0] + 0.01
    assert abs(min(xs) - truth.x0) <= tol and abs(max(xs) - truth.x1) <= tol
    assert abs(min(ys) - truth.y0) <= 1.0 / mi.transform.scale[1] + 0.01
    assert abs(max(ys) - truth.y1) <= 1.0 / mi.transform.scale[1] + 0.01


def test_patient_coordinates_of_a_box_on_an_oblique_plane():
    # a plane rotated 30° about z; spacing (row 0.5 mm, column 0.8 mm)
    a = np.deg2rad(30)
    rd = np.array([np.cos(a), np.sin(a), 0.0])
    cd = np.array([0.0, 0.0, -1.0])
    origin = np.array([-100.0, -50.0, 20.0])
    pb = pixel_box_to_patient(Box(10, 20, 30, 40), origin, rd, cd, (0.5, 0.8))
    # top-left edge of pixel (10, 20) is index (9.5, 19.5)
    np.testing.assert_allclose(pb.corners[0], origin + 9.5 * 0.8 * rd + 19.5 * 0.5 * cd)
    np.testing.assert_allclose(pb.corners[2], origin + 29.5 * 0.8 * rd + 39.5 * 0.5 * cd)
    np.testing.assert_allclose(pb.center, origin + 19.5 * 0.8 * rd + 29.5 * 0.5 * cd)
    assert pb.width_mm == pytest.approx(16.0) and pb.height_mm == pytest.approx(10.0)
    assert np.linalg.norm(pb.corners[1] - pb.corners[0]) == pytest.approx(16.0)
    # a box over the whole of pixel (0, 0) is centred on ImagePositionPatient
    np.testing.assert_allclose(pixel_box_to_patient(Box(0, 0, 1, 1), origin, rd, cd, (0.5, 0.8)).center, origin)


def test_spec_from_a_model_folders_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        '{"size": {"height": 336, "width": 336}, "crop_to_patches": true, "min_patches": 1, "max_patches": 6}'
    )
    spec = ImageSpec.from_preprocessor_config(tmp_path)
    assert (spec.tile_size, spec.max_tiles, spec.dynamic) == (336, 6, True)
    assert ImageSpec.from_preprocessor_config(tmp_path / "missing") == ImageSpec()


def test_spec_from_a_loaded_image_processor():
    proc = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, max_patches=6)
    assert ImageSpec.from_image_processor(proc) == ImageSpec(tile_size=56, max_tiles=6)
    saved = dict(size={"height": 56, "width": 56}, crop_to_patches=True, min_patches=1, max_patches=6)
    assert ImageSpec.from_preprocessor_config(saved) == ImageSpec.from_image_processor(proc)


def test_rejects_unrendered_frames():
    with pytest.raises(ValueError):
        prepare_model_image(np.zeros((10, 10), np.int16))


@pytest.mark.parametrize("shape,spacing", [((512, 512), None), ((77, 513), None), ((300, 256), (0.5, 0.8))])
def test_a_grey_frame_gives_the_model_the_bytes_of_its_rgb_copy(shape, spacing):
    """A grey frame is resized as grey (half the work) and only then made RGB: the model image is
    byte for byte what resizing the RGB copy gives, for any canvas, padding or stretch."""
    grey = np.random.default_rng(7).integers(0, 256, shape, dtype=np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    for spec in (ImageSpec(), ImageSpec(tile_size=224, max_tiles=4), ImageSpec(tile_size=224, max_tiles=1)):
        a = prepare_model_image(grey, spec, pixel_spacing=spacing)
        b = prepare_model_image(rgb, spec, pixel_spacing=spacing)
        assert a.rgb.dtype == np.uint8 and a.rgb.shape == b.rgb.shape and a.rgb.shape[2] == 3
        assert np.array_equal(a.rgb, b.rgb) and a.transform == b.transform
