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
