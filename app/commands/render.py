"""``xmedgpt render PATH --out PNG``: one slice, windowed as a reader would see it, to a PNG file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from app.dicom.display import VOI_LUT, render
from app.dicom.png import write_png
from app.dicom.slice_request import open_slice

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
    p.add_argument("--slice", default=None, help="image number from 1, as the viewer shows it (default: the middle)")
    p.add_argument(
        "--window", default="default",
        help="preset name (soft tissue, lung, liver, bone, brain, …), WIDTH/LEVEL such as 400/40, "
        "'default' (header window), 'voi' (header VOI LUT) or 'auto'",
    )
    p.add_argument("--invert", action="store_true", help="invert grey levels")
    # MPR (issue #17): a reformatted plane or thick slab of the whole series
    p.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default=None,
                   help="reslice the series: --slice then counts planes of this orientation (default: the middle)")
    p.add_argument("--slab", type=float, default=0.0, metavar="MM",
                   help="thick slab of MM millimetres centred on the plane (with --plane; default 0: one plane)")
    p.add_argument("--mode", choices=("mip", "minip", "mean"), default="mip",
                   help="how a slab combines its planes (default mip)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "plane", None) is not None or getattr(args, "slab", 0.0):
        return _run_plane(args)
    opened = open_slice(args.paths, args.series, args.slice, args.window)
    series, k, n, volume, window = opened.series, opened.index, opened.count, opened.volume, opened.window
    image = render(volume, k, window, invert=args.invert)
    write_png(args.out, image)
    used = window or volume.default_window
    print(
        f"wrote {args.out} ({image.shape[1]}×{image.shape[0]}), series {series.description!r} "
        f"slice {k + 1}/{n}, window {used.name + ' ' if used and used.name else ''}"
        f"{f'{used.width:g}/{used.center:g}' if used and used is not VOI_LUT else 'VOI LUT' if used else 'auto'}"
    )
    return 0


def _run_plane(args: argparse.Namespace) -> int:
    """``--plane``/``--slab``: the whole series is loaded and resliced (app.viewer.mpr)."""
    from app.viewer.mpr import render_plane

    plane = args.plane or "axial"
    r = render_plane(args.paths, args.series, plane, args.slice, args.slab, args.mode, args.window, args.invert)
    write_png(args.out, r.image)
    slab = f", {r.plane_image.mode} slab {r.plane_image.slab_mm:.1f} mm" if r.plane_image.mode else ""
    used = r.window
    print(
        f"wrote {args.out} ({r.image.shape[1]}×{r.image.shape[0]}), series {r.series.description!r} "
        f"{plane} {r.index + 1}/{r.count}{slab}, window "
        f"{f'{used.width:g}/{used.center:g}' if used and used is not VOI_LUT else 'VOI LUT' if used else 'auto'}"
    )
    return 0
