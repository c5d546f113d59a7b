"""Proof over real files nobody here wrote: pydicom's bundled test data and the
pydicom-data wheel (resolved offline through pydicom's data manager).

Every file pydicom itself can decode must come through our scan → load → render
with the same stored values, the same modality values and the same windowed
output; every file it cannot decode must get a reason from us, never an exception.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from app.dicom.display import VOI_LUT, render
from app.dicom.loader import load_series
from app.dicom.scan import scan

FILES = sorted(
    (p for p in map(Path, get_testdata_files()) if p.is_file()),
    key=lambda p: (p.parent.name, p.name),
)


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _reference(path: Path):
    """(dataset, frames array (n, …)) as pydicom decodes them, or (dataset/None, None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:  # noqa: BLE001
            return None, None
        try:
            arr = ds.pixel_array
        except Exception:  # noqa: BLE001
            return ds, None
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if nframes == 1:
        arr = arr[None]
    return ds, arr


def _rgb8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    return (arr.astype(np.uint64) >> max(0, bits - 8)).astype(np.uint8)


def test_testdata_is_there():
    # Both sources are present: pydicom's own files and the pydicom-data wheel.
    assert len(FILES) > 200
    assert any("data_store" in str(p) for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_file_renders_like_pydicom_or_gets_a_reason(path: Path):
    result = scan([path])
    series = result.all_series()
    ds, ref = _reference(path)

    if ref is None:
        # pydicom cannot decode it: we either say why, or (better) decode it anyway.
        if not series:
            assert result.problems and all(p.reason.strip() for p in result.problems)
            assert all("\n" not in p.reason for p in result.problems)
            return
        for s in series:
            vol = load_series(s)
            for k in range(len(vol)):
                render(vol, k)
            assert all(reason.strip() for reason in vol.frame_problems.values())
        return

    # pydicom decodes it: so must we, with identical values.
    assert len(series) == 1, [p.reason for p in result.problems]
    vol = load_series(series[0])
    assert not vol.frame_problems, vol.frame_problems
    assert len(vol) == ref.shape[0]
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    for k, (src, j) in enumerate(vol.frame_sources):
        assert Path(src) == path
        expected = ref[j]
        if vol.is_color:
            if photometric == "PALETTE COLOR":
                bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if "RedPaletteColorLookupTableDescriptor" in ds else 16
                expected = _rgb8(apply_color_lut(expected, _palette_in_native_order(ds)), bits)
            else:
                expected = _rgb8(expected, int(ds.BitsStored))
            np.testing.assert_array_equal(vol.frames[k], expected)
            np.testing.assert_array_equal(render(vol, k), expected)
            np.testing.assert_array_equal(render(vol, k, invert=True), 255 - expected)
            continue

        # stored values (a Modality LUT Sequence is applied at load time instead of a rescale)
        if not ds.get("ModalityLUTSequence"):
            np.testing.assert_array_equal(vol.frames[k].astype(np.float64), expected.astype(np.float64))
        # modality LUT (rescale or LUT sequence); enhanced objects carry it per frame
        enhanced = "PerFrameFunctionalGroupsSequence" in ds
        if not enhanced:
            modality = apply_modality_lut(expected, ds).astype(np.float64)
        else:
            slope, intercept = _frame_rescale(ds, j)
            modality = expected.astype(np.float64) * slope + intercept
        np.testing.assert_allclose(vol.values(k), modality, rtol=1e-5, atol=1e-3)

        # VOI: the header's LUT or window, exactly as pydicom computes it
        flip = photometric == "MONOCHROME1"
        if "VOILUTSequence" in ds and vol.voi_lut is not None and not enhanced:
            ours = render(vol, k, VOI_LUT).astype(np.float64)
            theirs = apply_voi_lut(apply_modality_lut(expected, ds), ds, prefer_lut=True).astype(np.float64)
            theirs = theirs / vol.voi_lut.output_max * 255
        elif "WindowWidth" in ds and "WindowCenter" in ds and not enhanced and vol.default_window is not None:
            ours = render(vol, k).astype(np.float64)
            theirs = apply_voi_lut(apply_modality_lut(expected, ds), ds, prefer_lut=False).astype(np.float64)
            ymin, ymax = _window_output_range(ds)
            theirs = (theirs - ymin) / (ymax - ymin) * 255
        else:
            continue
        if flip:
            theirs = 255 - theirs
        assert np.max(np.abs(ours - theirs)) <= 1.0 + 1e-6


def _palette_in_native_order(ds):
    """The palette module of ``ds`` with its LUT Data in this machine's byte order: pydicom's
    ``apply_color_lut`` reads unsegmented LUT Data natively, which swaps a big-endian file's entries."""
    if ds.original_encoding[1] is not False or "RedPaletteColorLookupTableData" not in ds:
        return ds
    pal = pydicom.Dataset()
    for colour in ("Red", "Green", "Blue"):
        pal[f"{colour}PaletteColorLookupTableDescriptor"] = ds[f"{colour}PaletteColorLookupTableDescriptor"]
        raw = ds[f"{colour}PaletteColorLookupTableData"].value
        if len(raw) != int(ds[f"{colour}PaletteColorLookupTableDescriptor"].value[0] or 65536):
            raw = np.frombuffer(raw, dtype=">u2").astype("=u2").tobytes()
        setattr(pal, f"{colour}PaletteColorLookupTableData", raw)
    return pal


def _frame_rescale(ds, j: int) -> tuple[float, float]:
    """Rescale of frame j of an enhanced object, read straight from its functional groups."""
    for groups in (ds.PerFrameFunctionalGroupsSequence[j], ds.get("SharedFunctionalGroupsSequence", [None])[0]):
        if groups is not None and "PixelValueTransformationSequence" in groups:
            item = groups.PixelValueTransformationSequence[0]
            return float(item.RescaleSlope), float(item.RescaleIntercept)
    return float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))


def _window_output_range(ds) -> tuple[float, float]:
    """The output range pydicom's windowing maps onto (its y_min/y_max)."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        ymin, ymax = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif int(ds.PixelRepresentation) == 0:
        ymin, ymax = 0.0, 2.0**bits - 1
    else:
        ymin, ymax = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        s, i = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        ymin, ymax = ymin * s + i, ymax * s + i
    return ymin, ymax
