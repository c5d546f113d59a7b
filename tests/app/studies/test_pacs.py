"""DICOM networking against a real PACS (Orthanc on loopback): send, find, get, move, listen.

Every network wait is bounded; each test stays well under 60 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE

from app.cli import main
from app.studies import storage as storage_mod
from app.studies.db import StudyDB
from app.studies.locations import StudyPaths
from app.studies.nodes import LocalAE, Node, NodeStore
from app.studies.scp import Listener, Receiver
from app.studies.scu import Query, find, get_study, send_files
from app.synthetic.sample import write_ct_study
from tests.app.studies.conftest import OUR_AE, free_port

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "resources" / "sample" / "ct-demo"
SAMPLE_FILES = sorted(SAMPLE.glob("*.dcm"))
SAMPLE_UID = str(pydicom.dcmread(SAMPLE_FILES[0], stop_before_pixels=True).StudyInstanceUID)


def _cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().out


def _configure(orthanc, capsys, retrieve: str = "get") -> None:
    assert _cli(capsys, "pacs", "nodes", "local", "--ae", OUR_AE, "--port", str(orthanc.listener_port))[0] == 0
    assert _cli(capsys, "pacs", "nodes", "add", "orthanc", "--ae", orthanc.ae_title, "--host", "127.0.0.1",
                "--port", str(orthanc.dicom_port), "--retrieve", retrieve)[0] == 0


def _local_studies(capsys) -> dict[str, dict]:
    rc, out = _cli(capsys, "studies", "--json")
    assert rc == 0
    return {s["study_instance_uid"]: s for s in json.loads(out)["studies"]}


def _audit_actions(home: Path) -> list[dict]:
    path = home / "data" / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def sample_in_orthanc(orthanc):
    orthanc.clear()
    orthanc.upload(SAMPLE_FILES)
    assert orthanc.studies() == {SAMPLE_UID: len(SAMPLE_FILES)}
    return orthanc


# ---- nodes (no network) ----------------------------------------------------------------------

def test_nodes_add_list_remove_validate_and_bad_file(home, capsys):
    rc, out = _cli(capsys, "pacs", "nodes", "add", "main", "--ae", "PACS1", "--host", "10.1.2.3", "--port", "104",
                   "--retrieve", "move", "--dicomweb", "http://10.1.2.3:8042/dicom-web/")
    assert rc == 0 and "Added 'main'" in out
    rc, out = _cli(capsys, "pacs", "nodes", "list", "--json")
    data = json.loads(out)
    assert data["nodes"] == [{"name": "main", "ae_title": "PACS1", "host": "10.1.2.3", "port": 104,
                              "retrieve": "move", "dicomweb": "http://10.1.2.3:8042/dicom-web"}]
    assert data["local"] == {"ae_title": "XMEDGPT", "host": "127.0.0.1", "port": 11112}
    assert main(["pacs", "nodes", "add", "bad", "--ae", "A" * 17, "--host", "h", "--port", "1"]) == 1
    assert main(["pacs", "nodes", "add", "bad", "--ae", "OK", "--host", "no such host!", "--port", "1"]) == 1
    assert main(["pacs", "nodes", "add", "bad", "--ae", "OK", "--host", "h", "--port", "70000"]) == 1
    assert main(["pacs", "nodes", "add", "main", "--ae", "X", "--host", "h", "--port", "1"]) == 1  # exists
    assert "does not" not in capsys.readouterr().err
    assert _cli(capsys, "pacs", "nodes", "remove", "main")[0] == 0
    assert main(["pacs", "nodes", "remove", "main"]) == 1
    nodes_file = StudyPaths.detect().nodes_file
    nodes_file.write_text("{ not json")
    rc, out = _cli(capsys, "pacs", "nodes", "list")
    assert rc == 0 and "was invalid" in out and "No nodes" in out
    assert (nodes_file.parent / "nodes.json.corrupt-1").read_text() == "{ not json"
    # one bad entry is dropped, the good one kept
    nodes_file.write_text(json.dumps({"nodes": [{"name": "ok", "ae_title": "OK", "host": "127.0.0.1", "port": 1},
                                                {"name": "bad", "ae_title": "", "host": "x", "port": 1}]}))
    store = NodeStore.load(nodes_file)
    assert list(store.nodes) == ["ok"] and store.problems


# ---- against Orthanc -------------------------------------------------------------------------

def test_round_trip_send_find_get_move_and_store_back(orthanc, home, capsys, tmp_path):
    orthanc.clear()
    _configure(orthanc, capsys, retrieve="get")
    rc, out = _cli(capsys, "pacs", "echo", "--node", "orthanc")
    assert rc == 0 and "OK" in out
    rc, out = _cli(capsys, "pacs", "send", "--node", "orthanc", str(SAMPLE))
    assert rc == 0 and f"Sent {len(SAMPLE_FILES)} instances" in out, out
    assert orthanc.studies() == {SAMPLE_UID: len(SAMPLE_FILES)}

    rc, out = _cli(capsys, "pacs", "find", "--node", "orthanc", "--patient-name", "PHANTOM*", "--json")
    (hit,) = json.loads(out)["results"]
    assert hit["StudyInstanceUID"] == SAMPLE_UID and hit["NumberOfStudyRelatedInstances"] == len(SAMPLE_FILES)
    assert hit["ModalitiesInStudy"] == ["CT"]
    rc, out = _cli(capsys, "pacs", "find", "--node", "orthanc", "--level", "series", "--study", SAMPLE_UID, "--json")
    (series,) = json.loads(out)["results"]
    assert series["Modality"] == "CT" and series["NumberOfSeriesRelatedInstances"] == len(SAMPLE_FILES)
    rc, out = _cli(capsys, "pacs", "find", "--node", "orthanc")
    assert rc == 0 and SAMPLE_UID in out and "PHANTOM, CHEST" in out

    t0 = time.perf_counter()
    rc, out = _cli(capsys, "pacs", "get", "--node", "orthanc", "--study", SAMPLE_UID, "--json")
    res = json.loads(out)
    assert rc == 0 and res["received"] == len(SAMPLE_FILES) and res["state"] == "complete", res
    print(f"C-GET {len(SAMPLE_FILES)} instances: {time.perf_counter() - t0:.2f} s")
    study = _local_studies(capsys)[SAMPLE_UID]
    assert study["instances"] == len(SAMPLE_FILES) and study["complete"] and study["origin"] == "retrieved"
    stored = sorted(StudyPaths.detect().storage.rglob("*.dcm"))
    assert len(stored) == len(SAMPLE_FILES)
    by_sop = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in SAMPLE_FILES}
    for f in stored[:4]:  # the same images (Orthanc may transcode RLE losslessly)
        ds = pydicom.dcmread(f)
        assert np.array_equal(ds.pixel_array, pydicom.dcmread(by_sop[ds.SOPInstanceUID]).pixel_array)

    # again: nothing new, still complete
    rc, out = _cli(capsys, "pacs", "get", "--node", "orthanc", "--study", SAMPLE_UID, "--json")
    res = json.loads(out)
    assert res["received"] == 0 and res["duplicates"] == len(SAMPLE_FILES) and res["state"] == "complete"

    # C-MOVE into a fresh workstation: our listener is the destination (started for the move)
    os.environ["XMEDGPT_HOME"] = str(tmp_path / "home2")
    _configure(orthanc, capsys, retrieve="move")
    t0 = time.perf_counter()
    rc, out = _cli(capsys, "pacs", "move", "--node", "orthanc", "--study", SAMPLE_UID, "--json")
    res = json.loads(out)
    assert rc == 0 and res["received"] == len(SAMPLE_FILES) and res["completed"] == len(SAMPLE_FILES), res
    print(f"C-MOVE {len(SAMPLE_FILES)} instances: {time.perf_counter() - t0:.2f} s")
    study = _local_studies(capsys)[SAMPLE_UID]
    assert study["instances"] == len(SAMPLE_FILES) and study["complete"]

    # C-STORE a new file back and find it in Orthanc
    new = write_ct_study(tmp_path / "new", n_slices=2, size=32, seed=11, noise_hu=0)
    new_uid = str(pydicom.dcmread(next(new.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
    rc, out = _cli(capsys, "pacs", "send", "--node", "orthanc", str(next(new.glob("*.dcm"))))
    assert rc == 0 and "Sent 1 instance" in out
    assert orthanc.studies()[new_uid] == 1
    rc, out = _cli(capsys, "pacs", "send", "--node", "orthanc", str(new))  # the folder: ground_truth.json skipped
    assert rc == 0 and "Sent 2 instances" in out and "1 files skipped" in out, out
    assert orthanc.studies()[new_uid] == 2

    actions = [r["action"] for r in _audit_actions(tmp_path / "home2")]
    assert {"pacs.association", "pacs.move", "pacs.receive", "pacs.send"} <= set(actions), actions
    move = next(r for r in _audit_actions(tmp_path / "home2") if r["action"] == "pacs.move")
    assert move["study_uid"] == SAMPLE_UID and move["data"]["node"] == "orthanc"
    assert move["data"]["instances"] == len(SAMPLE_FILES)
    first = {r["action"] for r in _audit_actions(home)}
    assert {"pacs.echo", "pacs.send", "pacs.find", "pacs.get"} <= first
    assert main(["audit", "verify"]) == 0


def test_a_node_that_does_not_know_this_workstation_is_named_as_the_cause_at_once(sample_in_orthanc, home,
                                                                                   capsys):
    """Orthanc accepts the association of a caller not in its DicomModalities, then aborts it on the C-FIND
    / C-GET / C-MOVE: the reader is told, in one line and within seconds, to add this AE on the node (it
    said "no response (timeout or connection lost)", and a C-MOVE waited 30 s for it)."""
    orthanc = sample_in_orthanc
    assert _cli(capsys, "pacs", "nodes", "local", "--ae", "STRANGER", "--port", str(free_port()))[0] == 0
    for method in ("get", "move"):
        assert _cli(capsys, "pacs", "nodes", "add", method, "--ae", orthanc.ae_title, "--host", "127.0.0.1",
                    "--port", str(orthanc.dicom_port), "--retrieve", method)[0] == 0
    assert _cli(capsys, "pacs", "echo", "--node", "get")[0] == 0  # C-ECHO is answered for anyone
    for argv in (("find", "--node", "get"), ("get", "--node", "get", "--study", SAMPLE_UID),
                 ("move", "--node", "move", "--study", SAMPLE_UID)):
        t0 = time.monotonic()
        rc = main(["pacs", *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and time.monotonic() - t0 < 10, (argv, err)
        assert len(err.splitlines()) == 1 and "does not accept queries and retrieves from this workstation" in err
        assert "'STRANGER'" in err and "DicomModalities" in err, err
    assert _local_studies(capsys) == {}


def test_find_takes_dates_as_a_reader_types_them_and_prints_them_so(sample_in_orthanc, home, capsys):
    from app.studies.db import dicom_date_range

    assert [dicom_date_range(t) for t in ("", "2025-01-01", "20250101", "2024-12-01-2025-01-31",
                                          "20241201-20250131", "2024-12-01..2025-01-31", "2025-01-02-",
                                          "-2024-12-31")] == \
        ["", "20250101", "20250101", "20241201-20250131", "20241201-20250131", "20241201-20250131", "20250102-",
         "-20241231"]
    for bad in ("x", "2025-13-01", "2025-02-30", "2025-02-01-2025-01-01", "2025-01-01 2025-02-01", "-"):
        with pytest.raises(ValueError):
            dicom_date_range(bad)
    _configure(sample_in_orthanc, capsys)
    rc, out = _cli(capsys, "pacs", "find", "--node", "orthanc", "--date", "2024-12-01-2025-01-31")
    assert rc == 0 and out.splitlines()[1].startswith("2025-01-01  PHANTOM, CHEST"), out  # the sample's date
    assert _cli(capsys, "pacs", "find", "--node", "orthanc", "--date", "2025-01-02-")[1].strip() == "No matches."
    assert main(["pacs", "find", "--node", "orthanc", "--date", "2025-13-01"]) == 1
    assert capsys.readouterr().err.strip() == "xmedgpt: --date: no such date: '2025-13-01'."


def test_listen_command_rejects_unknown_ae_and_is_the_move_destination(sample_in_orthanc, home, capsys):
    orthanc = sample_in_orthanc
    _configure(orthanc, capsys, retrieve="move")
    env = {**os.environ, "XMEDGPT_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "-v", "listen"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not any("Listening as" in line for line in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.05)
        assert any(f"Listening as {OUR_AE} on 127.0.0.1:{orthanc.listener_port}" in line for line in lines), lines
        intruder = AE(ae_title="INTRUDER")
        intruder.add_requested_context("1.2.840.10008.1.1")
        assoc = intruder.associate("127.0.0.1", orthanc.listener_port, ae_title=OUR_AE)
        assert assoc.is_rejected
        # C-MOVE: Orthanc (a configured node) sends to the running listener
        rc, out = _cli(capsys, "pacs", "move", "--node", "orthanc", "--study", SAMPLE_UID, "--json")
        res = json.loads(out)
        assert rc == 0 and res["completed"] == len(SAMPLE_FILES) and res["state"] == "complete", res
        study = _local_studies(capsys)[SAMPLE_UID]
        assert study["instances"] == len(SAMPLE_FILES) and study["complete"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        reader.join(5)
    rest = "".join(lines)
    assert "REJECTED association from AE 'INTRUDER'" in rest, rest
    # the administrator watching the console sees each arrival in a line of its own
    arrived = [line for line in lines if "received from ORTHANC" in line]
    assert len(arrived) == 1 and f"PHANTOM, CHEST, accession PH000000: {len(SAMPLE_FILES)} new; study complete" \
        in arrived[0], rest
    assert "Stopped." in rest
    records = _audit_actions(home)
    rejected = [r for r in records if r["action"] == "pacs.association" and r["data"]["result"] == "rejected"]
    assert rejected and rejected[0]["data"]["calling_ae"] == "INTRUDER"
    received = [r for r in records if r["action"] == "pacs.receive"]
    assert sum(r["data"]["instances"] for r in received) == len(SAMPLE_FILES)
    assert all(r["data"]["node"] == "orthanc" and r["data"]["calling_ae"] == orthanc.ae_title for r in received)


def _listener(tmp_path, storage: Path | None = None, allowed=("SENDER",)):
    paths = StudyPaths.detect().ensure()
    db = StudyDB(paths.database)
    receiver = Receiver(db, storage or paths.storage)
    local = LocalAE(OUR_AE, "127.0.0.1", free_port())
    return db, Listener(receiver, local, allowed_ae_titles=list(allowed)).start()


def test_same_instance_twice_is_stored_once(home, tmp_path):
    db, listener = _listener(tmp_path)
    try:
        node = Node("us", OUR_AE, "127.0.0.1", listener.port)
        r1 = send_files(node, [SAMPLE_FILES[0]], local=LocalAE("SENDER"))
        r2 = send_files(node, [SAMPLE_FILES[0], SAMPLE_FILES[0]], local=LocalAE("SENDER"))
        assert r1.sent == 1 and r2.sent == 1 and r1.ok and r2.ok  # duplicates acknowledged, as success
        listener.wait_idle(10)
    finally:
        listener.stop()
    assert len(list(StudyPaths.detect().storage.rglob("*.dcm"))) == 1
    assert db.get(SAMPLE_UID).instances == 1
    assert not list(StudyPaths.detect().storage.rglob("*.tmp"))


def test_both_ends_of_our_associations_poll_quickly(home, tmp_path):
    """pynetdicom's connection thread pauses 1 ms whenever a poll finds nothing to do, and each stored
    instance waits for about two such pauses: half of a 300-instance C-GET's time. Our associations, the
    ones we open and the ones our listener accepts, pause DUL_POLL_S instead. If a pynetdicom release
    renames the attribute this fails, rather than retrieves silently getting twice as slow."""
    from pynetdicom import evt
    from pynetdicom.sop_class import Verification

    from app.studies.scp import DUL_POLL_S, on_connection_open
    assert DUL_POLL_S < 0.001
    db, listener = _listener(tmp_path)
    try:
        caller = AE(ae_title="SENDER")
        caller.add_requested_context(Verification)
        assoc = caller.associate("127.0.0.1", listener.port, ae_title=OUR_AE,
                                 evt_handlers=[(evt.EVT_CONN_OPEN, on_connection_open)])
        assert assoc.is_established
        try:
            assert assoc.dul._run_loop_delay == DUL_POLL_S  # the end we opened
            accepted = listener.server.active_associations
            assert accepted and all(a.dul._run_loop_delay == DUL_POLL_S for a in accepted)  # the listener's end
            assert assoc.send_c_echo().Status == 0
        finally:
            assoc.release()
        assert listener.wait_idle(10)
    finally:
        listener.stop()
        db.close()


def test_files_are_sent_as_they_are_on_disk_and_a_file_with_thin_meta_still_goes(home, tmp_path, monkeypatch):
    """C-STORE sends a file's own bytes (read in chunks, not decoded and re-encoded by pynetdicom); a file whose
    meta lacks the SOP instance is decoded by us and sent. Both arrive whole; pynetdicom's switch is off after."""
    import pynetdicom.association
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pynetdicom import _config

    def no_decoding(*_a, **_k):
        raise AssertionError("pynetdicom decoded a file it was to send as it is")
    monkeypatch.setattr(pynetdicom.association, "dcmread", no_decoding)

    thin = tmp_path / "thin.dcm"
    ds = pydicom.dcmread(SAMPLE_FILES[1])
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(thin, enforce_file_format=False)
    db, listener = _listener(tmp_path)
    try:
        node = Node("us", OUR_AE, "127.0.0.1", listener.port)
        res = send_files(node, [SAMPLE_FILES[0], thin], local=LocalAE("SENDER"))
        assert res.sent == 2 and res.ok, res.failed
        listener.wait_idle(10)
    finally:
        listener.stop()
        db.close()
    stored = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f
              for f in StudyPaths.detect().storage.rglob("*.dcm")}
    assert len(stored) == 2

    def body(path: Path) -> bytes:  # the dataset as encoded in the file, after its meta
        raw = pydicom.dcmread(path)
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, raw.file_meta.TransferSyntaxUID.is_implicit_VR
        write_dataset(buf, raw)
        return buf.getvalue()
    original = pydicom.dcmread(SAMPLE_FILES[0])
    assert body(stored[original.SOPInstanceUID]) == body(SAMPLE_FILES[0])
    assert pydicom.dcmread(stored[ds.SOPInstanceUID]).PixelData == ds.PixelData
    assert _config.STORE_SEND_CHUNKED_DATASET is False  # other users of pynetdicom in the process see its default


def test_aborted_association_leaves_incomplete_study_a_retrieve_completes(sample_in_orthanc, home, tmp_path):
    orthanc = sample_in_orthanc
    db, listener = _listener(tmp_path)
    try:
        sender = AE(ae_title="SENDER")
        head = pydicom.dcmread(SAMPLE_FILES[0], stop_before_pixels=True)
        sender.add_requested_context(head.SOPClassUID, head.file_meta.TransferSyntaxUID)
        assoc = sender.associate("127.0.0.1", listener.port, ae_title=OUR_AE)
        assert assoc.is_established
        for f in SAMPLE_FILES[:5]:
            assert assoc.send_c_store(f).Status == 0
        assoc.abort()
        assert listener.wait_idle(10)
        deadline = time.monotonic() + 10
        while db.get(SAMPLE_UID).state != "incomplete" and time.monotonic() < deadline:
            time.sleep(0.05)
        s = db.get(SAMPLE_UID)
        assert (s.state, s.instances) == ("incomplete", 5)
    finally:
        listener.stop()
    node = Node("orthanc", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, "get")
    res = get_study(node, LocalAE(OUR_AE), SAMPLE_UID, db, StudyPaths.detect().storage)
    assert (res.received, res.duplicates, res.state) == (len(SAMPLE_FILES) - 5, 5, "complete"), res
    assert db.get(SAMPLE_UID).instances == len(SAMPLE_FILES)
    assert find(node, LocalAE(OUR_AE), Query(study_uid=SAMPLE_UID))[0]["NumberOfStudyRelatedInstances"] == 32


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root can mount one); None where mounting is not allowed (or
    XMEDGPT_TEST_NO_TMPFS is set): the test then simulates ENOSPC in the writer."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    ok = not os.environ.get("XMEDGPT_TEST_NO_TMPFS") and shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                                  capture_output=True).returncode == 0
    try:
        yield mnt if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_refused_clearly_and_loses_nothing_acknowledged(home, tmp_path, tiny_disk, monkeypatch, caplog):
    if tiny_disk is None:  # no tmpfs: the writer hits ENOSPC after 3 instances
        import errno
        real = storage_mod._write
        calls = {"n": 0}

        def full_after_three(target, write):
            calls["n"] += 1
            if calls["n"] > 3:
                raise storage_mod.StorageFull(f"Disk full: cannot store {target.name} "
                                              f"({os.strerror(errno.ENOSPC)}).")
            return real(target, write)
        monkeypatch.setattr(storage_mod, "_write", full_after_three)
    storage = tiny_disk or tmp_path / "storage"
    print("full disk:", "1 MiB tmpfs" if tiny_disk else "simulated ENOSPC")
    db, listener = _listener(tmp_path, storage=storage)
    try:
        node = Node("us", OUR_AE, "127.0.0.1", listener.port)
        with caplog.at_level("ERROR", logger="app.studies.scp"):
            res = send_files(node, SAMPLE_FILES, local=LocalAE("SENDER"))
        listener.wait_idle(10)
    finally:
        listener.stop()
    assert 0 < res.sent < len(SAMPLE_FILES) and not res.ok
    assert all("0xA700" in reason for _, reason in res.failed), res.failed[:3]
    assert "Disk full" in caplog.text
    stored = sorted(storage.rglob("*.dcm"))
    assert len(stored) == res.sent == db.get(SAMPLE_UID).instances
    assert not list(storage.rglob("*.tmp"))
    by_sop = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in SAMPLE_FILES}
    for f in stored:  # every acknowledged instance is whole
        ds = pydicom.dcmread(f)
        assert ds.PixelData == pydicom.dcmread(by_sop[ds.SOPInstanceUID]).PixelData
    assert db.get(SAMPLE_UID).state == "incomplete"


def test_dicomweb_stow_qido_wado(orthanc, home, capsys, tmp_path):
    if not orthanc.rest("/plugins").count("dicom-web"):
        pytest.skip("orthanc-dicomweb plug-in not installed")
    orthanc.clear()
    assert _cli(capsys, "pacs", "nodes", "add", "web", "--ae", orthanc.ae_title, "--host", "127.0.0.1",
                "--port", str(orthanc.dicom_port), "--dicomweb", orthanc.dicomweb)[0] == 0
    rc, out = _cli(capsys, "pacs", "send", "--node", "web", "--web", str(SAMPLE))
    assert rc == 0 and f"Sent {len(SAMPLE_FILES)} instances" in out, out
    assert orthanc.studies() == {SAMPLE_UID: len(SAMPLE_FILES)}
    rc, out = _cli(capsys, "pacs", "find", "--node", "web", "--web", "--patient-id", "XMED-PHANTOM-0000", "--json")
    (hit,) = json.loads(out)["results"]
    assert hit["StudyInstanceUID"] == SAMPLE_UID and hit["NumberOfStudyRelatedInstances"] == len(SAMPLE_FILES)
    rc, out = _cli(capsys, "pacs", "find", "--node", "web", "--web", "--level", "series", "--study", SAMPLE_UID,
                   "--json")
    assert json.loads(out)["results"][0]["NumberOfSeriesRelatedInstances"] == len(SAMPLE_FILES)
    rc, out = _cli(capsys, "pacs", "get", "--node", "web", "--web", "--study", SAMPLE_UID, "--json")
    res = json.loads(out)
    assert rc == 0 and res["received"] == len(SAMPLE_FILES) and res["state"] == "complete", res
    study = _local_studies(capsys)[SAMPLE_UID]
    assert study["instances"] == len(SAMPLE_FILES) and study["complete"]
    f = sorted(StudyPaths.detect().storage.rglob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    src = next(p for p in SAMPLE_FILES if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == ds.SOPInstanceUID)
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(src).pixel_array)
    assert {r["data"].get("via") for r in _audit_actions(home) if r["action"].startswith("pacs.")} == {"dicomweb"}
