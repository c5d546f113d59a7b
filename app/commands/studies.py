"""``xmedgpt studies``: list and search the local study database."""

from __future__ import annotations

import argparse
import json

from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name
from app.studies.importer import open_library


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "studies", help="list/search the local study database",
        description="List the studies the workstation has imported or received, newest first. "
        "--search matches patient name (any part), the start of the patient ID or accession, or a study UID.")
    p.add_argument("--search", default="", metavar="TEXT", help="name, patient ID, accession or study UID")
    p.add_argument("--patient-id", default="", help="exact patient ID")
    p.add_argument("--accession", default="", help="exact accession number")
    p.add_argument("--from", dest="date_from", default="", metavar="DATE", help="study date on or after (YYYY-MM-DD)")
    p.add_argument("--to", dest="date_to", default="", metavar="DATE", help="study date on or before (YYYY-MM-DD)")
    p.add_argument("--modality", default="", help="one modality in the study (CT, MR, …)")
    p.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    db = open_library()
    try:
        if db.recovered_from is not None:
            print(f"warning: the study database was damaged; kept as {db.recovered_from} and rebuilt from the files")
        try:
            found, seconds = db.timed_search(args.search, patient_id=args.patient_id, accession=args.accession,
                                             date_from=args.date_from, date_to=args.date_to,
                                             modality=args.modality, limit=args.limit)
        except ValueError as exc:
            raise XMedError(str(exc)) from exc
    finally:
        db.close()
    if args.json:
        out = []
        for s in found:
            d = s.to_dict()
            d["study_instance_uid"] = d.pop("study_uid")
            out.append(d)
        print(json.dumps({"studies": out, "count": len(out), "search_ms": round(seconds * 1000, 2)}, indent=2))
        return 0
    if not found:
        print("No studies.")
        return 0
    print(f"{'date':10}  {'patient':24}  {'ID':14}  {'accession':12}  {'mod':6}  {'ser':>3}  {'inst':>5}  "
          f"{'state':10}  {'AI':12}  {'report':6}  study UID")
    for s in found:
        patient = person_name(s.patient_name, NameStyle.LIST)
        print(f"{display_date(s.study_date):10}  {patient[:24]:24}  {s.patient_id[:14]:14}  {s.accession[:12]:12}  "
              f"{'/'.join(s.modalities)[:6]:6}  {s.series:>3}  {s.instances:>5}  {s.state:10}  "
              f"{_ai(s):12}  {s.report_state:6}  {s.study_uid}")
    return 0


def _ai(s) -> str:
    """The AI pre-read state as the study list shows it: ``done red``, ``queued``, ``failed``…"""
    if s.ai_state == "done":
        return f"done {s.ai_worst_tier or 'none listed'}"
    return "" if s.ai_state == "none" else s.ai_state
