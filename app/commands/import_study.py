"""``xmedgpt import PATH [--copy]``: index a folder, files, DICOMDIR or zip into the study database."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.core.settings import Settings
from app.report.audit import AuditLog
from app.studies.importer import import_paths, open_library
from app.studies.locations import StudyPaths


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import", help="index studies into the local database (in place, or --copy into managed storage)",
        description="Read the headers under PATH (folder, files, DICOMDIR or zip; pixels are not decoded) "
        "and index every study. Without --copy the files stay where they are; with --copy they are copied "
        "into managed storage under the data folder. Zips are always copied.")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--copy", action="store_true", help="copy the files into managed storage")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = StudyPaths.detect().ensure()
    audit = AuditLog(Settings.load().audit_log_path())
    db = open_library(paths, audit=audit)
    try:
        result = import_paths(db, args.paths, copy=args.copy, storage=paths.storage,
                              sources_file=paths.sources_file, audit=audit)
        for uid, n in result.studies.items():
            s = db.get(uid)
            print(f"{uid}: {n} instance{'s' if n != 1 else ''} "
                  f"({s.patient_name if s else ''}, {s.study_date if s else ''}, {s.state if s else ''})")
    finally:
        db.close()
    total = sum(result.studies.values())
    print(f"Imported {len(result.studies)} stud{'ies' if len(result.studies) != 1 else 'y'}, {total} instances "
          f"({result.new_instances} new{f', {result.copied} copied' if args.copy or result.copied else ''}).")
    for pr in result.problems[:20]:
        print(f"skipped {pr.path}: {pr.reason}")
    if len(result.problems) > 20:
        print(f"… and {len(result.problems) - 20} more skipped files")
    return 0 if result.studies or not result.problems else 1
