"""A real PACS for the networking tests: Debian's Orthanc on free loopback ports.

The fixture writes its own configuration (temporary storage and index, no remote access, only
the DICOMweb plug-in) with this workstation's test AE title in ``DicomModalities`` (so Orthanc answers our
C-FIND/C-GET/C-MOVE and can send C-MOVE results to our listener), starts ``/usr/sbin/Orthanc``,
waits (bounded) until its REST API answers, and stops it afterwards (terminate, wait, kill).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_AE = "ORTHANC"
OUR_AE = "XMEDTEST"
START_TIMEOUT = 30.0
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb


def _die_with_parent() -> None:
    """In the child before exec: Linux stops Orthanc when the test process dies, even by SIGKILL (a run
    killed for hanging would otherwise leave it serving on its ports)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OrthancServer:
    dicom_port: int
    http_port: int
    listener_port: int  # where Orthanc sends C-MOVE results (our listener)
    process: subprocess.Popen
    log_path: Path
    ae_title: str = ORTHANC_AE
    our_ae: str = OUR_AE

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, path: str, method: str = "GET", body: bytes | None = None) -> object:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
        return json.loads(data) if data else None

    def studies(self) -> dict[str, int]:
        """StudyInstanceUID -> number of instances Orthanc holds."""
        out = {}
        for sid in self.rest("/studies"):
            info = self.rest(f"/studies/{sid}")
            n = len(self.rest(f"/studies/{sid}/instances"))
            out[info["MainDicomTags"]["StudyInstanceUID"]] = n
        return out

    def clear(self) -> None:
        for sid in self.rest("/studies"):
            self.rest(f"/studies/{sid}", method="DELETE")

    def upload(self, files) -> None:
        for f in files:
            self.rest("/instances", method="POST", body=Path(f).read_bytes())


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> OrthancServer:
    if not ORTHANC.exists():
        pytest.skip("Orthanc is not installed (Debian package 'orthanc'; see the Makefile's APT_PACKAGES)")
    root = tmp_path_factory.mktemp("orthanc")
    dicom_port, http_port, listener_port = free_port(), free_port(), free_port()
    while len({dicom_port, http_port, listener_port}) < 3:
        listener_port = free_port()
    config = {
        "Name": "xmedgpt-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomModalities": {"xmedtest": {"AET": OUR_AE, "Host": "127.0.0.1", "Port": listener_port}},
        "DicomScuTimeout": 10,
        "DicomAssociationCloseDelay": 0,
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "SaveJobs": False,
        "LogExportedResources": False,
        "StableAge": 1,
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log_path = root / "orthanc.log"
    proc = subprocess.Popen([str(ORTHANC), str(cfg)], stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                            cwd=root, preexec_fn=_die_with_parent)
    server = OrthancServer(dicom_port, http_port, listener_port, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"Orthanc exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            server.rest("/system")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"Orthanc did not answer in {START_TIMEOUT} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh XMEDGPT_HOME (data locations, audit trail) per test."""
    h = tmp_path / "home"
    monkeypatch.setenv("XMEDGPT_HOME", str(h))
    return h
