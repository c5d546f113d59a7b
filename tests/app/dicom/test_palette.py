"""Palette colour images render in colour whatever the file's byte order (issue #20, item 16).

pydicom's ``apply_color_lut`` reads unsegmented palette LUT Data in the machine's byte order, so
a big-endian file's 16-bit entries came out byte-swapped (256 → 1) and, scaled to 8 bits, black:
``OBXXXX1A_expb.dcm`` rendered as a blank image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.dicom.display import render
from app.dicom.loader import load_series
from app.dicom.scan import scan


def _load(name: str):
    series = scan([Path(get_testdata_file(name))]).all_series()
    assert len(series) == 1
    return load_series(series[0])


@pytest.mark.parametrize(
    "big, little", [("OBXXXX1A_expb.dcm", "OBXXXX1A.dcm"), ("OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_2frame.dcm")]
)
def test_big_endian_palette_image_renders_like_its_little_endian_twin(big, little):
    be, le = _load(big), _load(little)
    assert be.is_color and not be.frame_problems
    for k in range(len(be)):
        shown = render(be, k)
        assert shown.max() > 200, "a palette image must not render blank"
        assert len(np.unique(shown.reshape(-1, 3), axis=0)) > 20, "many colours, as in the little-endian file"
        np.testing.assert_array_equal(shown, render(le, k))


def test_palette_entries_are_read_in_the_files_byte_order():
    from app.dicom.luts import palette_rgb

    ds = pydicom.dcmread(get_testdata_file("OBXXXX1A_expb.dcm"))
    assert ds.original_encoding[1] is False  # explicit VR big endian
    idx = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    rgb = palette_rgb(idx, ds, little_endian=False)
    table = np.frombuffer(ds.RedPaletteColorLookupTableData, dtype=">u2")
    assert rgb.shape == (1, 4, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], table[[0, 1, 2, 255]])
    assert rgb.max() > 255, "16-bit entries, not their byte-swapped low bytes"
