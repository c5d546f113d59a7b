"""Display pipeline: window functions per DICOM, presets, invert, MONOCHROME1, VOI LUT, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from app.dicom.display import VOI_LUT, render, window_to_unit
from app.dicom.luts import Lut
from app.dicom.model import Geometry, Series, Volume, Window
from app.dicom.presets import CT_PRESETS, parse_window


def _volume(values: np.ndarray, slope=1.0, intercept=-1024.0, photometric="MONOCHROME2", window=None) -> Volume:
    frames = np.asarray(values, dtype=np.int16)[None]
    return Volume(
        series=Series(uid="1", number=1, description="", modality="CT"),
        frames=frames, slopes=np.array([slope]), intercepts=np.array([intercept]),
        geometry=None, default_window=window, photometric=photometric, loaded=1,
    )


HU = np.array([[-1024, -1000, -600, -100], [0, 40, 80, 240], [500, 1000, 1500, 3000]], dtype=float)


def test_ct_presets_are_the_agreed_values():
    by_name = {w.name: (w.width, w.center) for w in CT_PRESETS}
    assert by_name["soft tissue"] == (400, 40)
    assert by_name["lung"] == (1500, -600)
    assert by_name["liver"] == (150, 90)
    assert by_name["bone"] == (2500, 480)
    assert by_name["brain"] == (80, 40)
    assert parse_window("Soft_Tissue") == Window(400, 40, "soft tissue")
    assert parse_window("1500/-600").center == -600
    with pytest.raises(ValueError):
        parse_window("nonsense")


def test_soft_tissue_window_maps_hu_like_the_standard():
    vol = _volume(HU + 1024)
    img = render(vol, 0, Window(400, 40))
    # below c − w/2 (−160 HU) black, above c + w/2 (240 HU) white, c mid-grey
    assert img[0, 0] == 0 and img[0, 2] == 0 and img[2, 0] == 255 and img[1, 3] == 255
    assert abs(int(img[1, 1]) - 128) <= 1
    # DICOM LINEAR formula, value by value
    c, w = 40.0, 400.0
    expected = np.clip(((HU - (c - 0.5)) / (w - 1) + 0.5), 0, 1) * 255
    assert np.max(np.abs(img - np.rint(expected))) == 0


def test_lung_window_and_invert():
    vol = _volume(HU + 1024)
    lung = render(vol, 0, parse_window("lung"))
    assert lung[0, 2] == pytest.approx(128, abs=1)  # −600 HU is the lung window's centre
    inv = render(vol, 0, parse_window("lung"), invert=True)
    np.testing.assert_array_equal(inv, 255 - lung)


def test_monochrome1_is_shown_inverted():
    m2 = render(_volume(HU + 1024), 0, Window(400, 40))
    m1 = render(_volume(HU + 1024, photometric="MONOCHROME1"), 0, Window(400, 40))
    np.testing.assert_array_equal(m1, 255 - m2)
    np.testing.assert_array_equal(render(_volume(HU + 1024, photometric="MONOCHROME1"), 0, Window(400, 40),
                                         invert=True), m2)


def test_linear_exact_and_sigmoid_follow_the_standard():
    x = np.array([-200.0, 40.0, 140.0, 400.0])
    w = Window(400, 40)
    np.testing.assert_allclose(window_to_unit(x, w, "LINEAR_EXACT"), np.clip((x - 40) / 400 + 0.5, 0, 1))
    np.testing.assert_allclose(window_to_unit(x, w, "SIGMOID"), 1 / (1 + np.exp(-4 * (x - 40) / 400)))


def test_header_window_uses_header_function():
    vol = _volume(HU + 1024, window=Window(400, 40, "header 1"))
    vol.header_windows = (vol.default_window,)
    vol.voi_function = "SIGMOID"
    img = render(vol, 0)
    expected = np.rint(255 / (1 + np.exp(-4 * (HU - 40) / 400)))
    assert np.max(np.abs(img.astype(float) - expected)) <= 1


def test_voi_lut_is_applied_when_chosen():
    vol = _volume(np.arange(12).reshape(3, 4), intercept=0.0)
    vol.voi_lut = Lut(first=2, bits=8, data=np.arange(0, 250, 25))  # 10 entries: 0, 25, …, 225
    img = render(vol, 0, VOI_LUT)
    expected = np.clip(np.arange(12) - 2, 0, 9) * 25
    np.testing.assert_array_equal(img.reshape(-1), expected)


def test_float_and_int32_volumes_render_without_lut_path():
    vol = _volume(HU + 1024)
    vol.frames = vol.frames.astype(np.int32)
    np.testing.assert_array_equal(render(vol, 0, Window(400, 40)),
                                  render(_volume(HU + 1024), 0, Window(400, 40)))


def test_geometry_round_trip_oblique():
    row = np.array([np.cos(0.3), np.sin(0.3), 0.0])
    col = np.array([-np.sin(0.3) * np.cos(0.2), np.cos(0.3) * np.cos(0.2), -np.sin(0.2)])  # ⟂ row
    g = Geometry(origins=np.array([[-120.5, 30.0, 88.0]]), row_direction=row, col_direction=col, spacing=(0.7, 0.6))
    p = g.pixel_to_patient(0, 100.0, 50.0)
    np.testing.assert_allclose(p, [-120.5, 30.0, 88.0] + 100 * 0.6 * row + 50 * 0.7 * col)
    c, r = g.patient_to_pixel(0, p)
    assert c == pytest.approx(100.0) and r == pytest.approx(50.0)


def test_render_speed_for_a_512_slice():
    import time

    vol = _volume(np.random.default_rng(0).integers(0, 3000, (512, 512)))
    render(vol, 0, Window(400, 40))
    t = time.perf_counter()
    for _ in range(20):
        render(vol, 0, Window(400, 40))
    assert (time.perf_counter() - t) / 20 < 0.016
