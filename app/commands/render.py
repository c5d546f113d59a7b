"""``xmedgpt render PATH --out PNG``: one slice, windowed as a reader would see it, to a PNG file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from app.dicom.display import VOI_LUT, render
from app.dicom.loader import load_series
from app.dicom.model import Series, Window
from app.dicom.png import write_png
from app.dicom.presets import parse_window
from app.dicom.scan import scan
from app.errors import XMedError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "render",
        help="render one slice of a series to a PNG (no display needed)",
        description="Scan PATH, pick a series and a slice, apply the window and write a PNG.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument("--series", default="0", help="series index (as listed by `info`) or UID (default 0)")
    p.add_argument("--slice", type=int, default=None, help="slice index from 0 (default: the middle)")
    p.add_argument(
        "--window", default="default",
        help="preset name (soft tissue, lung, liver, bone, brain, …), WIDTH/LEVEL such as 400/40, "
        "'default' (header window), 'voi' (header VOI LUT) or 'auto'",
    )
    p.add_argument("--invert", action="store_true", help="invert grey levels")
    p.set_defaults(func=run)


def pick_series(all_series: list[Series], key: str) -> Series:
    if not all_series:
        raise XMedError("No DICOM images found there")
    if key.lstrip("-").isdigit():
        i = int(key)
        if not 0 <= i < len(all_series):
            raise XMedError(f"There is no series {i}; choose 0 to {len(all_series) - 1}")
        return all_series[i]
    for s in all_series:
        if s.uid == key or getattr(s, "series_instance_uid", None) == key:
            return s
    raise XMedError(f"No series with UID {key}")


def choose_window(text: str, modality: str) -> Window | None:
    key = text.strip().lower()
    if key in ("default", "header", ""):
        return None
    if key in ("voi", "voi lut", "lut"):
        return VOI_LUT
    if key == "auto":
        return Window(0, 0, "auto")  # resolved against the slice below
    try:
        return parse_window(text, modality)
    except ValueError as exc:
        raise XMedError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    result = scan(args.paths)
    for pr in result.problems:
        log.info("skipped %s: %s", pr.path, pr.reason)
    series = pick_series(result.all_series(), args.series)
    n = series.frame_count
    k = n // 2 if args.slice is None else args.slice
    if not 0 <= k < n:
        raise XMedError(f"Slice {k} is outside this series (0 to {n - 1})")
    window = choose_window(args.window, series.modality)
    volume = load_series(series, only=[k])
    if k in volume.frame_problems:
        raise XMedError(f"Slice {k} cannot be shown: {volume.frame_problems[k]}")
    if window is not None and window.name == "auto":
        from app.dicom.display import auto_window_for

        window = auto_window_for(volume, k)
    image = render(volume, k, window, invert=args.invert)
    write_png(args.out, image)
    used = window or volume.default_window
    print(
        f"wrote {args.out} ({image.shape[1]}×{image.shape[0]}), series {series.description!r} "
        f"slice {k + 1}/{n}, window {used.name + ' ' if used and used.name else ''}"
        f"{f'{used.width:g}/{used.center:g}' if used and used is not VOI_LUT else 'VOI LUT' if used else 'auto'}"
    )
    return 0
