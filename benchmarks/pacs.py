"""DICOM networking speed against a local Orthanc, beside dcmtk, plus the study-list search.

A synthetic 300-slice 512² CT (``xmedgpt sample``, explicit VR little endian, ~150 MB) is sent
to a private Orthanc on loopback ports (temporary storage, no plug-ins), then retrieved:

- C-STORE of the study to Orthanc: ours (``send_files``) vs dcmtk ``storescu``;
- C-GET of the study: ours (``get_study``: every instance durable and indexed) vs dcmtk ``getscu``;
- C-MOVE of the study to a listener: ours (``move_study`` with our Storage SCP) vs dcmtk ``movescu``
  (its own built-in store SCP).
- For each retrieve, the time to the first image a viewer could show: ours, the first instance in the
  study index (durable; what the study list opens early) read and decoded; dcmtk's, the first file in
  its output folder that reads and decodes whole.

dcmtk writes files without fsync and indexes nothing; ours makes every retrieved instance durable
(fsync of the files, then of each folder, in groups) and indexes it in SQLite before the study is
settled. Each retrieve goes into an empty folder; the median of ``--repeats`` runs is reported, wall
time and the client's CPU time (this process, all threads, for ours; the waited-for dcmtk process for
theirs: Orthanc's share is in neither). Then the study list: a search over 10,000 indexed studies.

    python benchmarks/pacs.py [--slices 300] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ORTHANC = "/usr/sbin/Orthanc"
OUR_AE = "XMEDBENCH"
#: dcmtk (Orthanc and the dcmtk tools) switch Nagle's algorithm off with this; ours does it per socket.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_orthanc(root: Path, dicom_port: int, http_port: int, listener_port: int) -> subprocess.Popen:
    cfg = {"Name": "bench", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
           "StorageCompression": False, "HttpPort": http_port, "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "DicomAet": "ORTHANC", "DicomPort": dicom_port,
           "DicomCheckCalledAet": False, "Plugins": [], "SaveJobs": False,
           "DicomModalities": {"bench": {"AET": OUR_AE, "Host": "127.0.0.1", "Port": listener_port}}}
    (root / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=open(root / "orthanc.log", "wb"),
                            env=DCMTK_ENV,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=2).read()
            return proc
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"Orthanc did not start:\n{(root / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)


#: CPU seconds spent by the last :func:`timed` call: this process (every thread) plus the children it waited
#: for (the dcmtk tools). On a loaded machine wall time mostly measures the share of CPU a tool gets; CPU
#: time says what it costs.
LAST_CPU = [0.0]


def _cpu() -> float:
    import resource
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(fn) -> float:
    c0 = _cpu()
    t0 = time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    LAST_CPU[0] = _cpu() - c0
    return wall


class FirstViewable:
    """Polls (every 5 ms, on its own thread) for the first retrieved image a viewer could show: a file
    that ``candidates()`` names and that pydicom reads and decodes whole. ``seconds`` from ``start()``."""

    def __init__(self, candidates) -> None:
        import threading
        self.candidates = candidates
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FirstViewable":
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def _run(self) -> None:
        import pydicom
        while not self._stop.is_set():
            for path in self.candidates():
                try:
                    pydicom.dcmread(path).pixel_array  # noqa: B018 - decoded as the viewer would
                except Exception:  # not there yet, or still being written
                    continue
                self.seconds = time.perf_counter() - self._t0
                return
            time.sleep(0.005)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join(5)
        return self.seconds


#: seconds to the first viewable image of the last retrieve run by ``run()`` (None: not measured)
FIRST: list[float | None] = [None]


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".sqlite", "-wal", "-shm")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--studies", type=int, default=10_000, help="studies in the search benchmark")
    args = ap.parse_args()

    from app.studies.db import InstanceRecord, StudyDB
    from app.studies.nodes import LocalAE, Node
    from app.studies.scu import get_study, move_study, send_files
    from app.synthetic.sample import write_ct_study
    from pynetdicom import ALL_TRANSFER_SYNTAXES

    work = Path(tempfile.mkdtemp(prefix="xmedgpt-bench-pacs-"))
    rows: list[tuple[str, str, float, int]] = []
    proc = None
    try:
        t0 = time.perf_counter()
        study = write_ct_study(work / "ct", n_slices=args.slices, size=args.size, seed=1, noise_hu=0)
        files = sorted(study.glob("*.dcm"))
        mb = sum(f.stat().st_size for f in files) / 1e6
        import pydicom
        uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        print(f"study: {len(files)} × {args.size}² CT, {mb:.0f} MB (written in {time.perf_counter() - t0:.0f} s)")
        dicom_port, http_port, listener_port = free_port(), free_port(), free_port()
        (work / "orthanc").mkdir()
        proc = start_orthanc(work / "orthanc", dicom_port, http_port, listener_port)
        node = Node("orthanc", "ORTHANC", "127.0.0.1", dicom_port)
        local = LocalAE(OUR_AE, "127.0.0.1", listener_port)
        dcm_common = ["-aet", OUR_AE, "-aec", "ORTHANC", "-to", "30", "-ta", "30", "-td", "30"]
        key = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={uid}"]

        def clear_orthanc() -> None:
            for sid in json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http_port}/studies").read()):
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{http_port}/studies/{sid}",
                                                              method="DELETE")).read()

        def run(label: str, tool: str, fn, out: Path | None) -> None:
            times, cpus, firsts = [], [], []
            for i in range(args.repeats):
                if out is not None:
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir(parents=True)
                FIRST[0] = None
                times.append(fn(out))
                cpus.append(LAST_CPU[0])
                if FIRST[0] is not None:
                    firsts.append(FIRST[0])
                if out is not None:
                    n = count_files(out)
                    assert n >= len(files), f"{label} {tool}: {n} files of {len(files)}"
            first = statistics.median(firsts) if firsts else None
            rows.append((label, tool, statistics.median(times), len(files), statistics.median(cpus), first))
            print(f"{label:28} {tool:24} {statistics.median(times):6.2f} s  ({', '.join(f'{t:.2f}' for t in times)})"
                  f"  CPU {statistics.median(cpus):.2f} s" + (f"  first image {first:.2f} s" if first else ""),
                  flush=True)

        def ours_timed(db: StudyDB, call) -> float:
            """``call()`` timed, watching the index for its first image (what the study list opens early)."""
            watch = FirstViewable(lambda: [Path(p) for p in db.instance_paths(uid)[:1]]).start()
            try:
                return timed(call)
            finally:
                FIRST[0] = watch.stop()

        def dcmtk_timed(out: Path, cmd: list[str]) -> float:
            watch = FirstViewable(lambda: [p for p in out.rglob("*") if p.is_file()][:3]).start()
            try:
                return timed(lambda: subprocess.run(cmd, check=True, capture_output=True, env=DCMTK_ENV))
            finally:
                FIRST[0] = watch.stop()

        # ---- C-STORE ----
        def ours_store(_out):
            clear_orthanc()
            return timed(lambda: send_files(node, files, local=local))

        def dcmtk_store(_out):
            clear_orthanc()
            return timed(lambda: subprocess.run(["storescu", *dcm_common, "+sd", "+sp", "*.dcm", "127.0.0.1",
                                                 str(dicom_port), str(study)], check=True, capture_output=True, env=DCMTK_ENV))
        run("C-STORE to Orthanc", "dcmtk storescu", dcmtk_store, None)
        run("C-STORE to Orthanc", "xmedgpt send_files", ours_store, None)

        # ---- C-GET ----
        def ours_get(out):
            db = StudyDB(out / "s.sqlite")
            try:
                return ours_timed(db, lambda: get_study(node, local, uid, db, out / "storage"))
            finally:
                db.close()

        def dcmtk_get(out):
            return dcmtk_timed(out, ["getscu", *dcm_common, "-S", *key, "-od", str(out), "127.0.0.1", str(dicom_port)])
        def floor_get(_out):
            """pynetdicom alone: the same C-GET association (our connection settings) whose C-STORE handler
            keeps nothing: what the library costs before a byte is written or indexed."""
            from pydicom.dataset import Dataset
            from pynetdicom import AE, evt, build_role
            from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

            from app.studies.scp import on_connection_open
            ae = AE(ae_title=OUR_AE)
            ae.maximum_pdu_size = 0
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            sop_class = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPClassUID)
            ae.add_requested_context(sop_class, ALL_TRANSFER_SYNTAXES)
            got = [0]

            def keep_nothing(_event) -> int:
                got[0] += 1
                return 0x0000

            def call() -> None:
                assoc = ae.associate("127.0.0.1", dicom_port, ae_title="ORTHANC",
                                     ext_neg=[build_role(sop_class, scp_role=True)],
                                     evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open),
                                                   (evt.EVT_C_STORE, keep_nothing)])
                ident = Dataset()
                ident.QueryRetrieveLevel = "STUDY"
                ident.StudyInstanceUID = uid
                for _status, _ds in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet):
                    pass
                assoc.release()
            wall = timed(call)
            assert got[0] == len(files), f"pynetdicom alone: {got[0]} of {len(files)}"
            return wall
        run("C-GET study", "dcmtk getscu", dcmtk_get, work / "get-dcmtk")
        run("C-GET study", "xmedgpt get_study", ours_get, work / "get-ours")
        run("C-GET study", "pynetdicom alone (keeps nothing)", floor_get, None)

        # ---- C-MOVE ----
        def ours_move(out):
            db = StudyDB(out / "s.sqlite")
            try:
                return ours_timed(db, lambda: move_study(node, local, uid, db, out / "storage"))
            finally:
                db.close()

        def dcmtk_move(out):
            return dcmtk_timed(out, ["movescu", *dcm_common, "-aem", OUR_AE, "--port", str(listener_port),
                                     "-S", *key, "-od", str(out), "127.0.0.1", str(dicom_port)])
        run("C-MOVE study to listener", "dcmtk movescu", dcmtk_move, work / "move-dcmtk")
        run("C-MOVE study to listener", "xmedgpt move_study", ours_move, work / "move-ours")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    # ---- study list search ----
    db = StudyDB(work / "search.sqlite")
    t0 = time.perf_counter()
    db.add_instances((InstanceRecord(
        sop_instance_uid=f"1.2.826.0.1.{i}.1", study_uid=f"1.2.826.0.1.{i}", series_uid=f"1.2.826.0.1.{i}.2",
        path=f"/data/{i}.dcm", patient_name=f"PATIENT{i:05d}^TEST", patient_id=f"ID{i:06d}", accession=f"A{i:07d}",
        study_date=f"20{10 + i % 16:02d}{1 + i % 12:02d}{1 + i % 28:02d}", modality=("CT", "MR", "CR", "US")[i % 4])
        for i in range(args.studies)), origin="import")
    index_s = time.perf_counter() - t0
    searches = {"name part": {"text": "patient04242"}, "patient ID prefix": {"text": "ID0042"},
                "accession (exact)": {"accession": "A0004242"},
                "date range (1 year)": {"date_from": "2020-01-01", "date_to": "2020-12-31"},
                "modality MR": {"modality": "MR"}, "newest 1000 (no filter)": {}}
    search_rows = []
    for label, kw in searches.items():
        db.search(**kw)
        times = [db.timed_search(**kw)[1] for _ in range(5)]
        n = len(db.search(**kw))
        search_rows.append((label, statistics.median(times) * 1000, n))
    db.close()
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n| operation ({args.slices} × {args.size}² CT, loopback Orthanc 1.10) | tool | median s | instances/s "
          "| × dcmtk | CPU s (client) | first image viewable s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    dcmtk = {label: seconds for label, tool, seconds, *_ in rows if tool.startswith("dcmtk")}
    for label, tool, seconds, n, cpu, first in rows:
        ratio = "" if tool.startswith("dcmtk") or label not in dcmtk else f"{dcmtk[label] / seconds:.2f}"
        print(f"| {label} | {tool} | {seconds:.2f} | {n / seconds:.0f} | {ratio} | {cpu:.2f} | "
              f"{'' if first is None else f'{first:.2f}'} |")
    print(f"\n| study-list search over {args.studies:,} studies (indexed in {index_s:.1f} s) | median ms | matches |")
    print("|---|---:|---:|")
    for label, ms, n in search_rows:
        print(f"| {label} | {ms:.1f} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
