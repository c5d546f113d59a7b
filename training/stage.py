"""The command line every launch script shares (``python -m training.sft`` / ``dpo`` / ``audio_posttrain``).

``--config`` (a YAML file, training/configs/), ``--resume``, ``--set section.key=value``
and ``-v``: parse, log, load the config, train, report the model folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from inference.errors import XMedError
from training.config import load_config


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, required=True, help="YAML config (training/configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def run_stage(argv, prog: str, description: str, config_cls, train) -> int:
    """The command line every launch script shares: parse, log, load the YAML config, train, report."""
    args = base_parser(f"python -m {prog}", description).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                         format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, config_cls, args.overrides)
        final = train(config, resume=args.resume)
    except XMedError as exc:
        sys.stderr.write(f"{prog.rsplit('.', 1)[-1]}: {exc}\n")
        return 1
    sys.stdout.write(f"model written to {final}\n")
    return 0
