"""``xmedgpt audit verify|repair|export``: check the audit trail's hash chain, seal what a crash
left (as a recorded event), export it de-identified."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from app.core.errors import XMedError
from app.core.settings import Settings
from app.report.audit import export_deidentified, repair, verify

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("audit", help="verify or export the audit trail")
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    v = sub.add_parser("verify", help="check that no audit record was altered or removed")
    v.add_argument("--log", type=Path, help="audit log file (default: the one in Settings)")
    v.set_defaults(func=_verify)

    r = sub.add_parser("repair", help="seal an unfinished last record (after a crash) as a recorded repair event",
                       description="Move an unfinished last line (a write interrupted by a crash or a full disk) to a "
                       "side file beside the log, and record in the chain what was sealed and what the head said. "
                       "Damage elsewhere in the chain is not repaired.")
    r.add_argument("--log", type=Path, help="audit log file (default: the one in Settings)")
    r.set_defaults(func=_repair)

    e = sub.add_parser("export", help="write a de-identified copy for research")
    e.add_argument("--deidentify", type=Path, metavar="OUT", required=True,
                   help="output JSON-lines file (only de-identified export exists: patient data stays here)")
    e.add_argument("--log", type=Path, help="audit log file (default: the one in Settings)")
    e.add_argument("--salt", help="fixed salt for pseudonyms, to link two exports (default: random)")
    e.set_defaults(func=_export)


def _log_path(args: argparse.Namespace) -> Path:
    return args.log if args.log else Settings.load().audit_log_path()


def _verify(args: argparse.Namespace) -> int:
    path = _log_path(args)
    if args.log and not path.exists():
        raise XMedError(f"No audit log at {path}.")
    result = verify(path)
    print(f"{path}: {result.summary()}")
    for note in result.notes:
        print(f"note: {note}")
    return 0 if result.ok else 1


def _repair(args: argparse.Namespace) -> int:
    path = _log_path(args)
    result = repair(path, user=Settings.load().reader_name or None)
    if result.record is None:
        print(f"{path}: {result.summary}")
        return 0
    print(f"{path}: repaired as record {result.record.seq}: {result.summary}")
    check = verify(path)
    print(f"{path}: {check.summary()}")
    return 0 if check.ok else 1


def _export(args: argparse.Namespace) -> int:
    path = _log_path(args)
    if not path.exists():
        raise XMedError(f"No audit log at {path}.")
    n = export_deidentified(path, args.deidentify, salt=args.salt)
    print(f"Wrote {n} de-identified records to {args.deidentify}.")
    return 0
