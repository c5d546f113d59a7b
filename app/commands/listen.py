"""``xmedgpt listen``: run the Storage SCP in the foreground (servers, C-MOVE destination, tests)."""

from __future__ import annotations

import argparse
import signal
import threading

from app.core.settings import Settings
from app.report.audit import AuditLog
from app.studies.importer import open_library
from app.studies.locations import StudyPaths
from app.studies.nodes import LocalAE, NodeStore
from app.studies.scp import Listener, Receiver


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "listen", help="receive studies (DICOM Storage SCP) until stopped",
        description="Accept C-STORE from the configured nodes (their AE titles), write each instance "
        "(fsynced) into managed storage and index it. Binds to the configured interface (default 127.0.0.1).")
    p.add_argument("--ae", help="our AE title (default: the configured one, XMEDGPT)")
    p.add_argument("--port", type=int, help="port (default: the configured one, 11112)")
    p.add_argument("--host", help="interface to bind (default: the configured one, 127.0.0.1)")
    p.add_argument("--open", action="store_true", help="accept any calling AE title (not only configured nodes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = StudyPaths.detect().ensure()
    store = NodeStore.load(paths.nodes_file)
    for problem in store.problems:
        print(f"warning: {problem}", flush=True)
    local = LocalAE(args.ae or store.local.ae_title, args.host or store.local.host,
                    args.port or store.local.port).validated()
    audit = AuditLog(Settings.load().audit_log_path())
    db = open_library(paths, audit=audit)
    allowed = None if args.open else sorted({n.ae_title for n in store.nodes.values()})
    listener = Listener(Receiver(db, paths.storage, audit=audit, nodes=store), local, allowed_ae_titles=allowed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    listener.start()
    audit.append("pacs.listen", {"ae_title": local.ae_title, "host": local.host, "port": listener.port,
                                 "open": bool(args.open), "allowed": allowed or []})
    who = "any caller" if allowed is None else ", ".join(allowed)
    print(f"Listening as {local.ae_title} on {local.host}:{listener.port} (accepting {who}); "
          f"storage {paths.storage}. Ctrl+C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        listener.wait_idle(10)
        listener.stop()
        audit.append("pacs.listen.stop", {"ae_title": local.ae_title, "port": listener.port})
        db.close()
        print("Stopped.", flush=True)
    return 0
