"""The ``xmedgpt`` command line: parser and dispatch for the headless commands.

Qt-free. The GUI commands (``view``, ``screenshot``) are added by ``ui.shell.cli``,
which is the console-script entry point and reuses :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Callable, Sequence

from app import commands
from app.core.errors import XMedError

log = logging.getLogger(__name__)


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmedgpt",
        description="XMedGPT Workstation: AI-assisted DICOM viewer and headless tools.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    for register in extra:
        register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, default: str | None = None) -> int:
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # pynetdicom's connection errors come back as our one-line message ("Cannot reach …"), and the
        # model loader's console progress bars ("Loading weights 0%|…") are not for an administrator
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if args.command is None:
        if default is None:
            parser.print_help()
            return 2
        args = parser.parse_args([default, *(argv or sys.argv[1:])])
    try:
        return int(args.func(args) or 0)
    except XMedError as exc:
        print(f"xmedgpt: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("xmedgpt: cancelled", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Headless entry point (no GUI commands)."""
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
