"""Lookup tables stored in DICOM headers (Modality LUT, VOI LUT sequences), applied with numpy."""

from __future__ import annotations

import numpy as np


def lut_parts(item) -> tuple[int, int, int, np.ndarray]:
    """(entries, first mapped value, bits, data) of a LUT sequence item."""
    desc = [int(v) for v in item.LUTDescriptor]
    entries = desc[0] or 65536
    first = desc[1]
    bits = desc[2]
    raw = item.LUTData
    if isinstance(raw, (bytes, bytearray)):
        dtype = "<u1" if bits <= 8 and len(raw) == entries else "<u2"
        data = np.frombuffer(raw, dtype=dtype)
    else:
        data = np.asarray(raw if not np.isscalar(raw) else [raw])
    return entries, first, bits, data.astype(np.int64)[:entries]


def apply_lut(values: np.ndarray, item) -> np.ndarray:
    """Map ``values`` through the LUT in ``item``: below/above the table clamp to its ends."""
    entries, first, _bits, data = lut_parts(item)
    if first >= 32768 and np.issubdtype(values.dtype, np.signedinteger):
        first -= 65536  # first mapped value is US or SS depending on the pixel representation
    idx = np.clip(np.asarray(values, dtype=np.int64) - first, 0, data.size - 1)
    return data[idx]


def lut_output_max(item) -> float:
    _entries, _first, bits, data = lut_parts(item)
    top = float(2**bits - 1)
    return top if data.size == 0 or data.max() <= top else float(data.max())
