"""Open one slice of a study for the headless commands: scan, pick the series and slice, load
only that frame, resolve the window. ``xmedgpt render`` and ``xmedgpt analyze`` share it, so both
name series, slices and windows the same way and give the same one-line errors.

Slices on the command line are numbered as the viewer numbers them ("Im 18/32" is 18) and as reports
name them ("key image 18"): from 1. :func:`slice_numbers` is the one rule for every command's
``--slice``/``--slices``; inside, and in JSON (``frame``, ``slices``, ``key_slice``), indices are from 0."""

from __future__ import annotations

import logging
import os
import re
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


def one_slice(text: str | None) -> bool:
    """A ``--slice`` that names one slice (a number) or none (the middle)."""
    return text is None or text.strip().lstrip("-").isdigit()


def slice_numbers(text: str | None, count: int, flag: str = "--slice") -> list[int]:
    """Slices as the viewer numbers them, from 1 -- "18", "3,7,20-25", "all" (None or "": all) -- as sorted
    indices from 0 without repeats; a number outside 1..``count`` or a range written backwards is a one-line
    error naming ``flag``."""
    if text is None or not text.strip() or text.strip().lower() == "all":
        return list(range(count))
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if m is None:
            raise XMedError(f"{flag} {text!r}: expected image numbers from 1 as the viewer shows them, a list and "
                            "ranges such as 3,7,20-25, or 'all'")
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a:
            raise XMedError(f"{flag} range {part} runs backwards; write it as {b}-{a}")
        if not 1 <= a <= b <= count:
            raise XMedError(f"{flag} {part}: this series has images 1 to {count}")
        out.update(range(a - 1, b))
    return sorted(out)


def slice_index(text: str | int | None, count: int, flag: str = "--slice") -> int | None:
    """One ``--slice`` number (from 1) as an index from 0; None: not given (the caller's default)."""
    if text is None:
        return None
    t = str(text).strip()
    if not t.isdigit():
        raise XMedError(f"{flag} {text!r}: expected one image number from 1 to {count}")
    return slice_numbers(t, count, flag)[0]


@dataclass
class OpenedSlice:
    scan: ScanResult
    series: Series
    index: int  # slice index from 0 (the viewer's image number is index + 1)
    volume: Volume  # only frame `index` is loaded
    window: Window | None  # None: the header window

    @property
    def count(self) -> int:
        return self.series.frame_count


def open_slice(paths: Iterable[os.PathLike | str], series_key: str = "0", number: str | int | None = None,
               window_text: str = "default") -> OpenedSlice:
    """Scan ``paths`` and load one slice of the chosen series: image ``number`` as the viewer numbers
    it, from 1 (default: the middle one)."""
    result = scan(list(paths))
    for pr in result.problems:
        log.info("skipped %s: %s", pr.path, pr.reason)
    series = pick_series(result.all_series(), series_key)
    n = series.frame_count
    k = slice_index(number, n)
    k = n // 2 if k is None else k
    window = choose_window(window_text, series.modality)
    volume = load_series(series, only=[k])
    if k in volume.frame_problems:
        raise XMedError(f"Image {k + 1} cannot be shown: {volume.frame_problems[k]}")
    if window is not None and window.name == "auto":
        window = auto_window_for(volume, k)
    return OpenedSlice(result, series, k, volume, window)
