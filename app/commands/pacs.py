"""``xmedgpt pacs``: remote DICOM nodes (add/list/remove), echo/find/get/move/send against them, and the
outbox of signed results (``pacs outbox [--json] [--retry]``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.core.errors import XMedError
from app.core.names import NameStyle, display_date, person_name
from app.core.settings import Settings
from app.report.audit import AuditLog
from app.studies.db import dicom_date_range
from app.studies.dicomweb import qido, stow, wado_study
from app.studies.importer import open_library
from app.studies.locations import StudyPaths
from app.studies.nodes import LocalAE, Node, NodeStore
from app.studies.outbox import OUTBOX_STATES, Outbox
from app.studies.scu import Query, echo, find, get_study, move_study, send_files


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pacs", help="DICOM nodes: configure, echo, find, get, move, send; the outbox",
                              description="Talk to PACS and modalities over DICOM (pynetdicom).")
    sub = p.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)

    nodes = sub.add_parser("nodes", help="add, list or remove remote nodes")
    nsub = nodes.add_subparsers(dest="nodes_command", metavar="ACTION", required=True)
    a = nsub.add_parser("add", help="add a remote node")
    a.add_argument("name")
    a.add_argument("--ae", required=True, help="the node's AE title")
    a.add_argument("--host", required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--retrieve", choices=("get", "move"), default="move",
                   help="how studies are fetched from it (default: move, to our listener)")
    a.add_argument("--dicomweb", default="", metavar="URL", help="its DICOMweb root, if it has one")
    a.add_argument("--tls", action="store_true", help="call the node over TLS (DICOM TLS, PS3.15 B.1)")
    a.add_argument("--tls-ca", default="", metavar="PEM", help="CA certificate(s) the node's certificate must chain "
                   "to (default: the system's)")
    a.add_argument("--tls-cert", default="", metavar="PEM", help="our client certificate, if the node asks for one")
    a.add_argument("--tls-key", default="", metavar="PEM", help="its private key (default: in --tls-cert)")
    a.add_argument("--replace", action="store_true", help="replace a node of the same name")
    a.set_defaults(func=_nodes_add)
    ls = nsub.add_parser("list", help="list the nodes and this workstation's AE")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_nodes_list)
    r = nsub.add_parser("remove", help="remove a node")
    r.add_argument("name")
    r.set_defaults(func=_nodes_remove)
    loc = nsub.add_parser("local", help="set this workstation's AE title, listening interface and port")
    loc.add_argument("--ae")
    loc.add_argument("--host", help="interface the listener binds to (default 127.0.0.1)")
    loc.add_argument("--port", type=int)
    loc.add_argument("--tls-cert", metavar="PEM", help="the listener's certificate: it then accepts TLS only")
    loc.add_argument("--tls-key", metavar="PEM", help="its private key (default: in --tls-cert)")
    loc.add_argument("--tls-ca", metavar="PEM", help="require callers to present a certificate signed by this CA")
    loc.add_argument("--no-tls", action="store_true", help="listen without TLS again (forget the certificates)")
    loc.set_defaults(func=_nodes_local)

    e = sub.add_parser("echo", help="C-ECHO a node")
    e.add_argument("--node", required=True)
    e.set_defaults(func=_echo)

    f = sub.add_parser("find", help="C-FIND studies (or the series of one study)")
    f.add_argument("--node", required=True)
    f.add_argument("--level", choices=("study", "series"), default="study")
    f.add_argument("--patient-name", default="", help="DICOM wildcards allowed, e.g. 'DOE*'")
    f.add_argument("--patient-id", default="")
    f.add_argument("--accession", default="")
    f.add_argument("--date", default="", help="study date or range: 2026-12-06, 2026-12-01-2026-12-06, "
                   "2026-12-01- (from), -2026-12-06 (until); YYYYMMDD also")
    f.add_argument("--modality", default="")
    f.add_argument("--study", default="", metavar="UID")
    f.add_argument("--json", action="store_true")
    f.add_argument("--web", action="store_true", help="use the node's DICOMweb URL (QIDO-RS) instead of C-FIND")
    f.set_defaults(func=_find)

    for name, helptext in (("get", "C-GET a study into the local database"),
                           ("move", "C-MOVE a study to this workstation's listener")):
        g = sub.add_parser(name, help=helptext)
        g.add_argument("--node", required=True)
        g.add_argument("--study", required=True, metavar="UID")
        g.add_argument("--json", action="store_true")
        if name == "get":
            g.add_argument("--web", action="store_true", help="use the node's DICOMweb URL (WADO-RS) instead of C-GET")
        g.set_defaults(func=_retrieve, method=name, web=False)

    s = sub.add_parser("send", help="C-STORE files or folders to a node")
    s.add_argument("--node", required=True)
    s.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    s.add_argument("--web", action="store_true", help="use the node's DICOMweb URL (STOW-RS) instead of C-STORE")
    s.set_defaults(func=_send)

    o = sub.add_parser("outbox", help="signed results waiting to be sent, sent, or failed",
                       description="The outbox: each signed report's SR and PDF (Encapsulated PDF) queued for the "
                       "node in Settings, sent in the background by the viewer with retries and back-off.")
    o.add_argument("--state", choices=OUTBOX_STATES, help="only items in this state")
    o.add_argument("--limit", type=int, default=100, help="at most this many, newest first (default 100)")
    o.add_argument("--retry", action="store_true", help="send failed and waiting items again, now")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=_outbox)


def _store() -> NodeStore:
    store = NodeStore.load(StudyPaths.detect().ensure().nodes_file)
    for problem in store.problems:
        print(f"warning: {problem}")
    return store


def _audit() -> AuditLog:
    return AuditLog(Settings.load().audit_log_path())


def _nodes_add(args: argparse.Namespace) -> int:
    store = _store()
    tls = bool(args.tls or args.tls_ca or args.tls_cert or args.tls_key)
    node = store.add(Node(args.name, args.ae, args.host, args.port, args.retrieve, args.dicomweb, tls, args.tls_ca,
                          args.tls_cert, args.tls_key), replace=args.replace)
    print(f"Added '{node.name}': {node.ae_title} at {node.host}:{node.port}, retrieve by C-{node.retrieve.upper()}"
          + (f", DICOMweb {node.dicomweb}" if node.dicomweb else "") + (", over TLS" if node.tls else "") + ".")
    print(f"On that node, allow this workstation: AE '{store.local.ae_title}' at this host, port {store.local.port}.")
    return 0


def _nodes_list(args: argparse.Namespace) -> int:
    store = _store()
    if args.json:
        print(json.dumps({"local": store.local.to_dict(), "nodes": [n.to_dict() for n in store.nodes.values()]},
                         indent=2))
        return 0
    print(f"this workstation: {store.local.ae_title} listening on {store.local.host}:{store.local.port}"
          + (" (TLS)" if store.local.tls else ""))
    if not store.nodes:
        print("No nodes. Add one with 'xmedgpt pacs nodes add NAME --ae AE --host HOST --port PORT'.")
    for n in sorted(store.nodes.values(), key=lambda n: n.name):
        print(f"{n.name:16} {n.ae_title:16} {n.host}:{n.port}  {n.retrieve}" + ("  TLS" if n.tls else "")
              + (f"  {n.dicomweb}" if n.dicomweb else ""))
    return 0


def _nodes_remove(args: argparse.Namespace) -> int:
    node = _store().remove(args.name)
    print(f"Removed '{node.name}'.")
    return 0


def _nodes_local(args: argparse.Namespace) -> int:
    store = _store()
    cur = store.local
    if args.no_tls:
        tls = ("", "", "")
    else:
        tls = (args.tls_cert if args.tls_cert is not None else cur.tls_cert,
               args.tls_key if args.tls_key is not None else cur.tls_key,
               args.tls_ca if args.tls_ca is not None else cur.tls_ca)
    local = store.set_local(LocalAE(args.ae or cur.ae_title, args.host or cur.host, args.port or cur.port, *tls))
    print(f"This workstation: {local.ae_title} listening on {local.host}:{local.port}"
          + (" over TLS" + (" (callers need a certificate from the CA)" if local.tls_ca else "") if local.tls else "")
          + ".")
    return 0


def _echo(args: argparse.Namespace) -> int:
    store = _store()
    node = store.get(args.node)
    seconds = echo(node, store.local, audit=_audit())
    print(f"C-ECHO {node.name} ({node.ae_title} at {node.host}:{node.port}): OK in {seconds * 1000:.0f} ms")
    return 0


def _find(args: argparse.Namespace) -> int:
    store = _store()
    node = store.get(args.node)
    try:
        date = dicom_date_range(args.date)
    except ValueError as exc:
        raise XMedError(f"--date: {exc}.") from None
    query = Query(level=args.level, patient_name=args.patient_name, patient_id=args.patient_id,
                  accession=args.accession, study_date=date, modality=args.modality, study_uid=args.study)
    results = qido(node, query, audit=_audit()) if args.web else find(node, store.local, query, audit=_audit())
    if args.json:
        print(json.dumps({"node": node.name, "level": args.level, "results": results}, indent=2))
        return 0
    if not results:
        print("No matches.")
        return 0
    if args.level == "study":
        print(f"{'date':10}  {'patient':24}  {'ID':14}  {'accession':12}  {'mod':8}  {'ser':>3}  {'inst':>5}  study UID")
        for r in results:
            mods = "/".join(r["ModalitiesInStudy"] or [])
            patient = person_name(r["PatientName"], NameStyle.LIST)
            print(f"{display_date(r['StudyDate']):10}  {patient[:24]:24}  {r['PatientID'][:14]:14}  "
                  f"{r['AccessionNumber'][:12]:12}  {mods[:8]:8}  {r['NumberOfStudyRelatedSeries'] or '':>3}  "
                  f"{r['NumberOfStudyRelatedInstances'] or '':>5}  {r['StudyInstanceUID']}")
    else:
        print(f"{'no':>4}  {'mod':4}  {'description':30}  {'inst':>5}  series UID")
        for r in results:
            print(f"{r['SeriesNumber'] if r['SeriesNumber'] is not None else '':>4}  {r['Modality']:4}  "
                  f"{r['SeriesDescription'][:30]:30}  {r['NumberOfSeriesRelatedInstances'] or '':>5}  "
                  f"{r['SeriesInstanceUID']}")
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    store = _store()
    node = store.get(args.node)
    paths = StudyPaths.detect().ensure()
    audit = _audit()
    db = open_library(paths, audit=audit)
    try:
        if args.web:
            result = wado_study(node, args.study, db, paths.storage, audit=audit)
        else:
            fn = get_study if args.method == "get" else move_study
            result = fn(node, store.local, args.study, db, paths.storage, audit=audit, nodes=store)
    finally:
        db.close()
    if args.json:
        print(json.dumps({**result.__dict__, "ok": result.ok}, indent=2))
    else:
        how = "WADO-RS" if args.web else f"C-{args.method.upper()}"
        print(f"{how} {args.study} from {node.name}: {result.received} new, "
              f"{result.duplicates} already here, {result.failed} failed; remote {result.status}; "
              f"study {result.state or 'not received'}"
              + (f" ({result.expected} expected)" if result.expected is not None else "") + ".")
        for problem in result.problems:
            print(f"problem: {problem}")
    return 0 if result.ok else 1


def _send(args: argparse.Namespace) -> int:
    store = _store()
    node = store.get(args.node)
    if args.web:
        result = stow(node, args.paths, audit=_audit())
    else:
        result = send_files(node, args.paths, local=store.local, audit=_audit())
    print(f"Sent {result.sent} instance{'s' if result.sent != 1 else ''} to {node.name} "
          f"({len(result.studies)} stud{'ies' if len(result.studies) != 1 else 'y'}); {len(result.failed)} failed"
          + (f", {len(result.skipped)} files skipped (not DICOM)" if result.skipped else "") + ".")
    for path, reason in result.failed[:20]:
        print(f"failed {path}: {reason}")
    for path, reason in result.skipped[:5]:
        print(f"skipped {path}: {reason}")
    return 0 if result.ok else 1


def _outbox(args: argparse.Namespace) -> int:
    store = _store()
    paths = StudyPaths.detect().ensure()
    audit = _audit()
    db = open_library(paths, audit=audit)
    try:
        outbox = Outbox(db, store, local=store.local, audit=audit)
        summary = None
        if args.retry:
            outbox.recover()
            outbox.retry()
            summary = outbox.send_due()
        items = outbox.items(args.state, limit=args.limit)
        counts = outbox.counts()
    finally:
        db.close()
    if args.json:
        print(json.dumps({"counts": counts, "sent_now": summary, "items": [i.to_dict() for i in items]}, indent=2))
        return 0 if not (summary and summary["failed"] + summary["retry"]) else 1
    if summary is not None:
        print(f"Sent {summary['sent']}; {summary['retry']} will be tried again; {summary['failed']} failed.")
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    if not items:
        print("The outbox is empty.")
    for i in items:
        line = (f"{i.id:>5}  {i.state:8}  {i.node:14}  {i.via:8}  {i.kind:4}  {i.attempts:>2}x  "
                f"{Path(i.path).name}")
        if i.last_error and i.state != "sent":
            line += f"  — {i.last_error}"
        print(line)
    return 0 if not (summary and summary["failed"] + summary["retry"]) else 1
