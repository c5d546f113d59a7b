"""Console-script entry point of ``xmedgpt``.

Adds the GUI commands (``view``, ``screenshot``) to the headless parser of
:mod:`app.cli`, and gives ``analyze --pdf`` its Qt PDF writer. Qt is imported
only when a GUI command runs or a PDF is written, so headless commands start
fast and work on servers without a display.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from app.cli import build_parser, run


def _view(args: argparse.Namespace) -> int:
    from ui.shell.launcher import launch

    return launch(args)


def _screenshot(args: argparse.Namespace) -> int:
    from ui.shell.screenshot import screenshot_command

    return screenshot_command(args)


def _write_pdf(report, path: Path, key_images) -> Path:
    from ui.report.pdf_export import write_pdf  # Qt loads only when a PDF is asked for

    return write_pdf(report, path, key_images)


def _register_gui(sub: argparse._SubParsersAction) -> None:
    # `analyze --pdf` draws with Qt, which app/ may not import: hand it the writer
    sub.choices["analyze"].set_defaults(pdf_writer=_write_pdf)

    p = sub.add_parser("view", help="open the viewer (default command)")
    p.add_argument("path", nargs="?", type=Path, help="study folder, files, DICOMDIR or zip (without it: the study "
                   "list, or the bundled sample while the list is empty)")
    p.add_argument("--model", type=Path, help="local model folder for the assistant")
    p.set_defaults(func=_view)

    p = sub.add_parser("screenshot", help="grab the main window (offscreen) to a PNG")
    p.add_argument("path", nargs="?", type=Path, help="study to open (default: the bundled sample)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--size", default="1600x1000", help="window size WxH (default 1600x1000)")
    p.add_argument("--layout", choices=["1x1", "1x2", "2x2"], default="1x1", help="viewport layout")
    p.set_defaults(func=_screenshot)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(extra=[_register_gui])
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    # `xmedgpt STUDY` and bare `xmedgpt` open the viewer.
    if not argv or (argv[0] not in commands and not argv[0].startswith("-")):
        argv = ["view", *argv]
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
