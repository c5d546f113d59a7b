"""The codestream's own size, read from real JPEG, JPEG-LS and JPEG 2000 frames, agrees with
their headers; a forged one is named in one line (issue #19: GDCM aborts on a mismatch)."""

from __future__ import annotations

import struct

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_fragmented_frames

from app.dicom import codestream

FILES = [
    "JPEGLSNearLossless_08.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG2000.dcm",
    "MR_small_jp2klossless.dcm",
    "US1_J2KR.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
]


def _frames(name: str):
    ds = pydicom.dcmread(get_testdata_file(name))
    kind = codestream.kind_of(ds.file_meta.TransferSyntaxUID)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return ds, kind, list(generate_fragmented_frames(ds.PixelData, number_of_frames=n))


@pytest.mark.parametrize("name", FILES)
def test_real_frames_agree_with_their_headers(name):
    ds, kind, frames = _frames(name)
    assert kind is not None
    for fragments in frames:
        size = codestream.frame_size(fragments[0], kind)
        assert size is not None and (size.rows, size.columns) == (ds.Rows, ds.Columns)
        assert size.samples == ds.SamplesPerPixel and size.precision <= ds.BitsAllocated
        assert codestream.mismatch(fragments, kind, ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated) is None


def test_forged_header_or_codestream_is_named():
    ds, kind, frames = _frames("JPEGLSNearLossless_08.dcm")
    frame = b"".join(frames[0])
    why = codestream.mismatch(frame, kind, 65535, 1, 1, 8)
    assert why == ("damaged file: the header says 1×65535 pixels but the JPEG-LS image inside is 10×45; "
                   "not opened")
    assert "sample(s) per pixel" in codestream.mismatch(frame, kind, 45, 10, 3, 8)
    assert "8-bit samples" in codestream.mismatch(frame, kind, 45, 10, 1, 1)
    sof = frame.index(b"\xff\xf7")
    zero = frame[: sof + 5] + struct.pack(">HH", 0, 0) + frame[sof + 9 :]
    assert "impossible size" in codestream.mismatch(zero, kind, 45, 10, 1, 8)
    assert "no JPEG-LS frame header" in codestream.mismatch(b"\x00" * 64, kind, 45, 10, 1, 8)
    # only the start of a frame: a header not found there is no reason to refuse
    assert codestream.mismatch(frame[:3], kind, 45, 10, 1, 8, complete=False) is None


def test_parsers_stop_on_any_input():
    """Truncated, looping or absurd marker segments end the walk; nothing raises."""
    for kind in (codestream.JPEG, codestream.JPEG_LS, codestream.JPEG_2000):
        for data in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00\x00", b"\xff\xd8" + b"\xff\xe0\x00\x02" * 1000,
                     b"\xff\x4f\xff\x51" + b"\xff" * 10, b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 16):
            assert codestream.frame_size(data, kind) is None
