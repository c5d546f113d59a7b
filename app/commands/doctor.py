"""``xmedgpt doctor [--json]``: environment and feature check for support engineers."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="print the environment and which features will work, with reasons")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from app.models.doctor import format_report, run_doctor

    report = run_doctor()
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0
