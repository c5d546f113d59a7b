"""Stored values → what the reader sees: modality LUT, VOI LUT or window, invert → uint8.

Windows follow DICOM PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID). For
integer volumes the whole chain is folded into one 64k-entry lookup table per
(rescale, window, function, invert), so a 512×512 frame renders in about a
millisecond.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from app.dicom.model import Volume, Window

#: Pass as ``window`` to apply the header's VOI LUT sequence instead of a window.
VOI_LUT = Window(width=1.0, center=0.0, name="VOI LUT")

FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def window_to_unit(values: np.ndarray, window: Window, function: str = "LINEAR") -> np.ndarray:
    """Map modality values through ``window``: 0 at/below the low end, 1 at/above the high end."""
    x = np.asarray(values, dtype=np.float64)
    c, w = float(window.center), float(window.width)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / max(w, 1e-6)))
    if function == "LINEAR_EXACT":
        w = max(w, 1e-6)
        return np.clip((x - c) / w + 0.5, 0.0, 1.0)
    # LINEAR: width ≥ 1; the standard's half-unit offsets keep integer data symmetric.
    w = max(w, 1.0)
    if w == 1.0:
        return (x > c - 0.5).astype(np.float64)
    return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


def voi_lut_to_unit(values: np.ndarray, lut) -> np.ndarray:
    """Apply a VOI LUT (:class:`~app.dicom.luts.Lut`) and scale its output to 0…1."""
    out = lut.apply(np.rint(values).astype(np.int64)).astype(np.float64)
    return out / max(lut.output_max, 1.0)


def _flip(volume: Volume, invert: bool) -> bool:
    return bool(invert) ^ (volume.photometric == "MONOCHROME1")


def _function_for(volume: Volume, window: Window) -> str:
    header = getattr(volume, "header_windows", ())
    if window in header or (volume.default_window is not None and window == volume.default_window):
        return getattr(volume, "voi_function", "LINEAR") or "LINEAR"
    return "LINEAR"


@lru_cache(maxsize=64)
def _lut16(signed: bool, slope: float, intercept: float, width: float, center: float, function: str,
           flip: bool) -> np.ndarray:
    """uint8 for every 16-bit stored value, indexed by the value's unsigned bit pattern."""
    raw = np.arange(65536, dtype=np.uint16)
    stored = raw.view(np.int16).astype(np.float64) if signed else raw.astype(np.float64)
    unit = window_to_unit(stored * slope + intercept, Window(width, center), function)
    out = to_uint8(unit)
    return 255 - out if flip else out


@lru_cache(maxsize=8)
def _lut16_voi(signed: bool, slope: float, intercept: float, lut, flip: bool) -> np.ndarray:
    raw = np.arange(65536, dtype=np.uint16)
    stored = raw.view(np.int16).astype(np.float64) if signed else raw.astype(np.float64)
    out = to_uint8(voi_lut_to_unit(stored * slope + intercept, lut))
    return 255 - out if flip else out


def render(volume: Volume, k: int, window: Window | None = None, invert: bool = False) -> np.ndarray:
    """Frame ``k`` as the reader sees it: uint8 (rows, cols), or (rows, cols, 3) for colour.

    ``window`` None uses the header window (or an automatic one); :data:`VOI_LUT`
    applies the header's VOI LUT sequence. MONOCHROME1 images are shown inverted
    (bright = low values) and ``invert`` flips that again.
    """
    frame = volume.frames[k]
    if volume.is_color:
        return 255 - frame if invert else np.ascontiguousarray(frame)
    flip = _flip(volume, invert)
    use_lut = window is VOI_LUT or (window is not None and window == VOI_LUT)
    if use_lut and volume.voi_lut is None:
        use_lut, window = False, None
    if window is None and not use_lut:
        window = volume.default_window or auto_window_for(volume, k)
    slope = float(volume.slopes[k])
    intercept = float(volume.intercepts[k])
    if frame.dtype in (np.int16, np.uint16):
        signed = frame.dtype == np.int16
        if use_lut:
            lut = _lut16_voi(signed, slope, intercept, volume.voi_lut, flip)
        else:
            lut = _lut16(signed, slope, intercept, float(window.width), float(window.center),
                         _function_for(volume, window), flip)
        return np.take(lut, frame.view(np.uint16))  # ~2x faster than lut[...] for a 64k table
    values = frame.astype(np.float64) * slope + intercept
    unit = voi_lut_to_unit(values, volume.voi_lut) if use_lut else window_to_unit(
        values, window, _function_for(volume, window))
    out = to_uint8(unit)
    return 255 - out if flip else out


def auto_window_for(volume: Volume, k: int) -> Window:
    values = volume.values(k)
    step = max(1, values.size // 65536)
    sample = values.reshape(-1)[::step]
    lo, hi = (np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0))
    if hi <= lo:
        lo, hi = float(values.min(initial=0)), float(values.max(initial=1))
    if hi <= lo:
        hi = lo + 1.0
    return Window(float(hi - lo), float((hi + lo) / 2), "auto")


def windows_for(volume: Volume) -> list[Window]:
    """Windows to offer for ``volume``: the header's, then the modality presets."""
    from app.dicom.presets import presets_for

    out = list(getattr(volume, "header_windows", ()))
    if volume.default_window is not None and volume.default_window not in out:
        out.insert(0, volume.default_window)
    out.extend(presets_for(volume.series.modality))
    return out
