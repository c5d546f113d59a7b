"""``xmedgpt listen``: run the Storage SCP in the foreground (servers, C-MOVE destination, tests).

``--preread``: each study that arrives is pre-read in the background (:mod:`app.studies.queue`): when
the association that brought it is released and it is complete, or when no new instance has come
for ``--quiet-seconds``, its image series are queued, and one job at a time runs the series pre-read
(:class:`app.assistant.study_preread.StudyPrereader`) with the model (``--model``, else Settings, else
the demo model) loaded once, in the background. Jobs are kept in the study database: a restart
carries on with those left. The study list shows each study's AI state and worst tier.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path

from app.assistant.preread import PrereadOptions
from app.assistant.study_preread import StudyPrereader
from app.commands.analyze import QUANTIZATIONS, load_engine, resolve_model
from app.core.errors import XMedError
from app.core.names import NameStyle, person_name
from app.core.settings import Settings
from app.report.audit import AuditLog
from app.studies.importer import open_library
from app.studies.locations import StudyPaths
from app.studies.nodes import LocalAE, NodeStore
from app.studies.queue import ArrivalWatcher, Job, JobQueue
from app.studies.scp import Listener, Receiver

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "listen", help="receive studies (DICOM Storage SCP) until stopped",
        description="Accept C-STORE from the configured nodes (their AE titles), write each instance "
        "(fsynced) into managed storage and index it. Binds to the configured interface (default 127.0.0.1); "
        "speaks TLS when the local AE has a certificate ('pacs nodes local --tls-cert').")
    p.add_argument("--ae", help="our AE title (default: the configured one, XMEDGPT)")
    p.add_argument("--port", type=int, help="port (default: the configured one, 11112)")
    p.add_argument("--host", help="interface to bind (default: the configured one, 127.0.0.1)")
    p.add_argument("--open", action="store_true", help="accept any calling AE title (not only configured nodes)")
    p.add_argument("--preread", action="store_true",
                   help="pre-read each study that arrives (one series at a time, in the background)")
    p.add_argument("--quiet-seconds", type=float, default=None, metavar="S",
                   help="a study is complete after S seconds without a new instance (default: Settings, 30)")
    p.add_argument("--model", type=Path, default=None, help="model folder for --preread (default: Settings, "
                   "then the demo model)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="auto")
    p.add_argument("--no-reasoning", action="store_true", help="--preread: sweep and link only")
    p.set_defaults(func=run)


def _say(text: str) -> None:
    """One line on the console, time-stamped: what a foreground server shows its administrator."""
    print(f"{time.strftime('%H:%M:%S')}  {text}", flush=True)


def _study_label(study, study_uid: str) -> str:
    if study is None:
        return study_uid
    who = person_name(study.patient_name, NameStyle.LIST) or study.patient_id or "no name"
    return f"{who}, accession {study.accession}" if study.accession else f"{who}, study {study_uid}"


def _say_transfer(db, queue: JobQueue | None, t, outcome: str) -> None:
    """A line per study an association brought instances of (new or already here), and one for instances it
    could not store."""
    ended = "" if outcome == "released" else f" (association {outcome})"
    if not t.studies and not t.duplicates and not t.failed:
        return
    for uid in sorted(set(t.studies) | set(t.duplicates)):
        study = db.get(uid)
        parts = [f"{t.studies.get(uid, 0)} new"]
        if t.duplicates.get(uid):
            parts.append(f"{t.duplicates[uid]} already here")
        state = study.state if study is not None else "not indexed"
        if study is not None and study.expected_instances:
            state += f", {study.instances} of {study.expected_instances}"
        queued = queue is not None and any(j.state in ("queued", "running") for j in queue.jobs(uid))
        _say(f"received from {t.calling_ae or t.address}{ended}: {_study_label(study, uid)}: {', '.join(parts)}; "
             f"study {state}" + ("; pre-read queued" if queued else ""))
    if t.failed:
        _say(f"{t.failed} instance(s) from {t.calling_ae or t.address} could not be stored"
             + (": the disk is full" if t.disk_full else "") + " (the sender was told; nothing acknowledged is lost)")


def _say_job(db, job: Job) -> None:
    label = _study_label(db.get(job.study_uid), job.study_uid)
    if job.state == "running":
        _say(f"pre-read started: {label} ({job.instances} images)")
    elif job.state == "done":
        found = "no lesion listed (not a negative read)" if not job.lesions else f"{job.lesions} lesion(s)"
        _say(f"pre-read done: {label}: {found}" + (f", worst tier {job.tier}" if job.tier else ""))
    elif job.state == "failed":
        _say(f"pre-read failed: {label}: {job.error}")


def run(args: argparse.Namespace) -> int:
    paths = StudyPaths.detect().ensure()
    store = NodeStore.load(paths.nodes_file)
    for problem in store.problems:
        print(f"warning: {problem}", flush=True)
    cur = store.local
    local = LocalAE(args.ae or cur.ae_title, args.host or cur.host, args.port or cur.port, cur.tls_cert,
                    cur.tls_key, cur.tls_ca).validated()
    settings = Settings.load()
    quiet = args.quiet_seconds if args.quiet_seconds is not None else settings.preread_quiet_seconds
    if quiet <= 0:
        raise XMedError("--quiet-seconds must be positive.")
    audit = AuditLog(settings.audit_log_path())
    db = open_library(paths, audit=audit)
    allowed = None if args.open else sorted({n.ae_title for n in store.nodes.values()})
    receiver = Receiver(db, paths.storage, audit=audit, nodes=store)
    listener = Listener(receiver, local, allowed_ae_titles=allowed)
    queue: JobQueue | None = None
    watcher: ArrivalWatcher | None = None
    console = threading.Lock()  # an arrival's line before its pre-read's: the worker may start the job at once
    if args.preread:
        folder = resolve_model(args.model)  # checked now, loaded by the queue's thread on the first job
        options = PrereadOptions(reasoning=not args.no_reasoning, n_samples=settings.reliability_samples,
                                 n_questions=min(settings.reliability_questions, 3))
        runner = StudyPrereader(db, lambda: load_engine(folder, args.device, args.quantization),
                                paths.preread_results, options=options, audit=audit)
        queue = JobQueue(db, runner, audit=audit)
        watcher = ArrivalWatcher(queue, quiet_seconds=quiet)
        receiver.on_stored.append(watcher.instance_stored)

        def say_job(job: Job) -> None:
            with console:
                _say_job(db, job)

        queue.listeners.append(say_job)

    def transfer_finished(t, outcome: str) -> None:
        with console:  # queue the study's pre-read and say it arrived before the worker can say it started
            if watcher is not None:
                watcher.association_finished(t, outcome)
            _say_transfer(db, queue, t, outcome)

    receiver.on_finished.append(transfer_finished)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    listener.start()
    if queue is not None:
        queue.start()
    audit.append("pacs.listen", {"ae_title": local.ae_title, "host": local.host, "port": listener.port,
                                 "open": bool(args.open), "allowed": allowed or [], "tls": local.tls,
                                 "preread": bool(args.preread)})
    who = "any caller" if allowed is None else ", ".join(allowed)
    print(f"Listening as {local.ae_title} on {local.host}:{listener.port}{' over TLS' if local.tls else ''} "
          f"(accepting {who}); storage {paths.storage}"
          + (f"; pre-reading arrivals (complete after {quiet:g} s quiet)" if queue is not None else "")
          + ". Ctrl+C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        listener.wait_idle(10)
        listener.stop()
        if queue is not None:
            queue.stop()
        audit.append("pacs.listen.stop", {"ae_title": local.ae_title, "port": listener.port})
        db.close()
        print("Stopped.", flush=True)
    return 0
