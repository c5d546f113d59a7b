"""``xmedgpt info PATH [--json]``: what a folder, file, DICOMDIR or zip holds, and what is wrong with it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app.dicom.model import ScanResult, Series
from app.dicom.scan import scan


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="list patients, studies, series and unreadable files (headers only)",
        description="Scan PATH (folder, files, DICOMDIR or zip) and list what it holds, "
        "series warnings and every file that cannot be opened, with the reason.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def series_dict(s: Series, index: int) -> dict:
    first = s.instances[0] if s.instances else None
    return {
        "index": index,
        "uid": s.uid,
        "number": s.number,
        "description": s.description,
        "modality": s.modality,
        "body_part": s.body_part,
        "instances": len(s.instances),
        "frames": s.frame_count,
        "rows": first.rows if first else None,
        "columns": first.columns if first else None,
        "pixel_spacing": list(first.pixel_spacing) if first and first.pixel_spacing else None,
        "transfer_syntax": first.transfer_syntax_uid if first else None,
        "warnings": list(s.warnings),
        "problems": [{"path": str(p.path), "reason": p.reason} for p in s.problems],
    }


def to_dict(result: ScanResult) -> dict:
    index = 0
    patients = []
    for p in result.patients:
        studies = []
        for st in p.studies:
            series = []
            for s in st.series:
                series.append(series_dict(s, index))
                index += 1
            studies.append({
                "uid": st.uid, "date": st.date, "time": st.time,
                "description": st.description, "accession": st.accession, "series": series,
            })
        patients.append({"id": p.id, "name": p.name, "birth_date": p.birth_date, "sex": p.sex, "studies": studies})
    return {
        "patients": patients,
        "series_count": index,
        "problems": [{"path": str(pr.path), "reason": pr.reason} for pr in result.problems],
    }


def run(args: argparse.Namespace) -> int:
    result = scan(args.paths)
    if args.json:
        json.dump(to_dict(result), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_text(result)
    return 0 if result.all_series() else 1


def print_text(result: ScanResult) -> None:
    index = 0
    for p in result.patients:
        print(f"Patient {p.name or '(no name)'}  ID {p.id or '-'}  {p.sex} {p.birth_date}".rstrip())
        for st in p.studies:
            print(f"  Study {st.date} {st.description or ''}  accession {st.accession or '-'}  UID {st.uid}")
            for s in st.series:
                first = s.instances[0] if s.instances else None
                size = f"{first.columns}×{first.rows}" if first else ""
                print(
                    f"    [{index}] Series {s.number if s.number is not None else '-'} {s.modality} "
                    f"{s.description!r}: {len(s.instances)} instances, {s.frame_count} frames {size}  UID {s.uid}"
                )
                for w in s.warnings:
                    print(f"        warning: {w}")
                for pr in s.problems:
                    print(f"        problem: {pr.path}: {pr.reason}")
                index += 1
    if result.problems:
        print(f"{len(result.problems)} file(s) could not be opened:")
        for pr in result.problems:
            print(f"  {pr.path}: {pr.reason}")
    if not result.patients:
        print("No DICOM images found.")
