"""Open one slice of a study for the headless commands: scan, pick the series and slice, load
only that frame, resolve the window. ``xmedgpt render`` and ``xmedgpt analyze`` share it, so both
name series, slices and windows the same way and give the same one-line errors."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from app.core.errors import XMedError
from app.dicom.display import VOI_LUT, auto_window_for
from app.dicom.loader import load_series
from app.dicom.model import ScanResult, Series, Volume, Window
from app.dicom.presets import parse_window
from app.dicom.scan import scan

log = logging.getLogger(__name__)


def pick_series(all_series: list[Series], key: str) -> Series:
    """A series by its index (as `xmedgpt info` lists them) or by UID (ours or the DICOM one)."""
    if not all_series:
        raise XMedError("No DICOM images found there")
    if key.lstrip("-").isdigit():
        i = int(key)
        if not 0 <= i < len(all_series):
            raise XMedError(f"There is no series {i}; choose 0 to {len(all_series) - 1}")
        return all_series[i]
    for s in all_series:
        if key in (s.uid, s.series_instance_uid):
            return s
    raise XMedError(f"No series with UID {key}")


def choose_window(text: str, modality: str) -> Window | None:
    """None for the header window, ``VOI_LUT``, an "auto" marker resolved per slice, or a preset / W/L."""
    key = text.strip().lower()
    if key in ("default", "header", ""):
        return None
    if key in ("voi", "voi lut", "lut"):
        return VOI_LUT
    if key == "auto":
        return Window(0, 0, "auto")  # resolved against the slice by open_slice
    try:
        return parse_window(text, modality)
    except ValueError as exc:
        raise XMedError(str(exc)) from None


@dataclass
class OpenedSlice:
    scan: ScanResult
    series: Series
    index: int  # slice index from 0
    volume: Volume  # only frame `index` is loaded
    window: Window | None  # None: the header window

    @property
    def count(self) -> int:
        return self.series.frame_count


def open_slice(paths: Iterable[os.PathLike | str], series_key: str = "0", slice_index: int | None = None,
               window_text: str = "default") -> OpenedSlice:
    """Scan ``paths`` and load one slice (default: the middle one) of the chosen series."""
    result = scan(list(paths))
    for pr in result.problems:
        log.info("skipped %s: %s", pr.path, pr.reason)
    series = pick_series(result.all_series(), series_key)
    n = series.frame_count
    k = n // 2 if slice_index is None else slice_index
    if not 0 <= k < n:
        raise XMedError(f"Slice {k} is outside this series (0 to {n - 1})")
    window = choose_window(window_text, series.modality)
    volume = load_series(series, only=[k])
    if k in volume.frame_problems:
        raise XMedError(f"Slice {k} cannot be shown: {volume.frame_problems[k]}")
    if window is not None and window.name == "auto":
        window = auto_window_for(volume, k)
    return OpenedSlice(result, series, k, volume, window)
