"""Lookup tables stored in DICOM headers (Modality LUT, VOI LUT sequences), applied with numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Lut:
    """A decoded LUT: values below ``first`` map to ``data[0]``, above the table to ``data[-1]``."""

    first: int
    bits: int
    data: np.ndarray
    explanation: str = ""

    @classmethod
    def from_item(cls, item, little_endian: bool = True, signed: bool = False) -> Lut:
        desc = [int(v) for v in item.LUTDescriptor]
        entries = desc[0] or 65536
        first = desc[1]
        if signed and first >= 32768:
            first -= 65536  # US/SS ambiguity of the descriptor's second value
        bits = desc[2]
        raw = item.LUTData
        if isinstance(raw, (bytes, bytearray)):
            width = 1 if (bits <= 8 and len(raw) == entries) else 2
            dtype = np.dtype(f"{'<' if little_endian else '>'}u{width}")
            data = np.frombuffer(raw, dtype=dtype)
        else:
            data = np.atleast_1d(np.asarray(raw))
        text = str(item.get("LUTExplanation", "") or "")
        return cls(first=first, bits=bits, data=data.astype(np.int64)[:entries], explanation=text)

    @property
    def output_max(self) -> float:
        top = float(2**self.bits - 1)
        return top if self.data.size == 0 or self.data.max() <= top else float(self.data.max())

    def apply(self, values: np.ndarray) -> np.ndarray:
        idx = np.clip(np.asarray(values, dtype=np.int64) - self.first, 0, max(self.data.size - 1, 0))
        return self.data[idx]


def palette_rgb(indices: np.ndarray, ds, little_endian: bool) -> np.ndarray:
    """PALETTE COLOR pixel values as (…, 3) RGB through the header's Red/Green/Blue palette LUTs.

    pydicom's ``apply_color_lut`` reads unsegmented LUT Data in the machine's byte order, so in a
    big-endian file every 16-bit entry comes out byte-swapped (256 → 1) and the image renders
    black; here the entries are read in the file's byte order. Segmented LUTs (which pydicom
    reads correctly) and little-endian files go through pydicom unchanged.
    """
    from pydicom.pixels import apply_color_lut

    if little_endian or "RedPaletteColorLookupTableData" not in ds:
        return apply_color_lut(indices, ds)
    channels = []
    for colour in ("Red", "Green", "Blue"):
        desc = [int(v) for v in ds[f"{colour}PaletteColorLookupTableDescriptor"].value]
        raw = bytes(ds[f"{colour}PaletteColorLookupTableData"].value)
        entries = desc[0] or 65536
        first = desc[1]
        if first >= 32768 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
            first -= 65536  # US/SS ambiguity of the descriptor's second value
        width = 1 if len(raw) == entries else 2
        table = np.frombuffer(raw[: entries * width], dtype=np.dtype(f">u{width}"))
        if table.size == 0:
            raise ValueError(f"{colour} palette LUT is empty")
        idx = np.clip(np.asarray(indices, dtype=np.int64) - first, 0, table.size - 1)
        channels.append(table[idx])
    return np.stack(channels, axis=-1).astype(np.uint8 if channels[0].dtype.itemsize == 1 else np.uint16)
