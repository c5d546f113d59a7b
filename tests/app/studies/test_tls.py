"""DICOM over TLS on loopback, both sides ours: our Storage SCP with a certificate (and a CA its callers
must chain to), our SCU with the CA that signed the listener. A throwaway CA is made with the openssl
command line; a second, unrelated CA shows the refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from app.cli import main
from app.report.audit import AuditLog
from app.studies.db import StudyDB
from app.studies.locations import StudyPaths
from app.studies.nodes import LocalAE, Node, NodeStore
from app.studies.scp import Listener, Receiver
from app.studies.scu import PacsError, echo, send_files
from tests.app.studies.conftest import free_port

REPO = Path(__file__).resolve().parents[3]
SAMPLE_FILES = sorted((REPO / "resources" / "sample" / "ct-demo").glob("*.dcm"))

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


def _leaf(d: Path, name: str, ca: tuple[Path, Path], san: str, usage: str) -> tuple[Path, Path]:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-out", f"{name}.pem", "-extfile", str(ext), cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = _ca(d, "ca")
    other = _ca(d, "other-ca")
    server = _leaf(d, "server", ca, "IP:127.0.0.1,DNS:localhost", "serverAuth")
    client = _leaf(d, "client", ca, "DNS:workstation", "clientAuth")
    stranger = _leaf(d, "stranger", other, "DNS:stranger", "clientAuth")
    return {"ca": ca[0], "other_ca": other[0], "server": server[0], "server_key": server[1],
            "client": client[0], "client_key": client[1], "stranger": stranger[0], "stranger_key": stranger[1]}


@pytest.fixture
def tls_listener(home, pki):
    paths = StudyPaths.detect().ensure()
    db = StudyDB(paths.database)
    audit = AuditLog(home / "audit.jsonl")
    local = LocalAE("XMEDTLS", "127.0.0.1", free_port(), str(pki["server"]), str(pki["server_key"]),
                    str(pki["ca"])).validated()
    listener = Listener(Receiver(db, paths.storage, audit=audit), local, allowed_ae_titles=["SENDER"]).start()
    try:
        yield listener, db, audit
    finally:
        listener.stop()
        db.close()


def _node(listener: Listener, pki: dict[str, Path], *, ca: str = "ca", cert: str = "client") -> Node:
    return Node("secure", "XMEDTLS", "127.0.0.1", listener.port, tls=True, tls_ca=str(pki[ca]),
                tls_cert=str(pki[cert]) if cert else "", tls_key=str(pki[f"{cert}_key"]) if cert else "").validated()


def _actions(audit: AuditLog) -> list[dict]:
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


def test_echo_and_send_over_mutual_tls_on_loopback(tls_listener, pki):
    listener, db, audit = tls_listener
    node = _node(listener, pki)
    assert echo(node, LocalAE("SENDER"), audit=audit) > 0
    result = send_files(node, SAMPLE_FILES[:3], local=LocalAE("SENDER"), audit=audit)
    assert result.ok and result.sent == 3
    listener.wait_idle(10)
    uid = str(pydicom.dcmread(SAMPLE_FILES[0], stop_before_pixels=True).StudyInstanceUID)
    assert db.get(uid).instances == 3
    out = [r for r in _actions(audit) if r["action"] == "pacs.association" and r["data"]["direction"] == "out"]
    assert out and all(r["data"]["tls"] is True and r["data"]["result"] == "accepted" for r in out)
    received = [r for r in _actions(audit) if r["action"] == "pacs.receive"]
    assert sum(r["data"]["instances"] for r in received) == 3


def test_a_server_certificate_from_another_ca_is_refused_clearly(tls_listener, pki):
    listener, db, audit = tls_listener
    node = _node(listener, pki, ca="other_ca")
    with pytest.raises(PacsError, match="certificate of the node was not accepted"):
        echo(node, LocalAE("SENDER"), audit=audit)
    with pytest.raises(PacsError):
        send_files(node, SAMPLE_FILES[:1], local=LocalAE("SENDER"), audit=audit)
    assert db.count() == 0
    failed = [r for r in _actions(audit) if r["action"] == "pacs.association" and r["data"]["result"] == "failed"]
    assert failed and "certificate" in failed[0]["data"]["reason"]


def test_the_listener_refuses_callers_without_a_certificate_from_its_ca(tls_listener, pki):
    listener, db, audit = tls_listener
    for node in (_node(listener, pki, cert="stranger"), _node(listener, pki, cert="")):
        with pytest.raises(PacsError):
            send_files(node, SAMPLE_FILES[:1], local=LocalAE("SENDER"), audit=audit)
    plain = AE(ae_title="SENDER")  # no TLS at all: the handshake never happens, no association
    plain.add_requested_context("1.2.840.10008.1.1")
    plain.acse_timeout = plain.network_timeout = 5
    assoc = plain.associate("127.0.0.1", listener.port, ae_title="XMEDTLS")
    assert not assoc.is_established
    assert db.count() == 0
    # and the listener still serves a proper caller afterwards
    assert echo(_node(listener, pki), LocalAE("SENDER")) > 0


def test_tls_settings_on_the_command_line(home, pki, capsys):
    assert main(["pacs", "nodes", "add", "secure", "--ae", "PACS", "--host", "127.0.0.1", "--port", "2762",
                 "--tls", "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client"]),
                 "--tls-key", str(pki["client_key"])]) == 0
    assert "over TLS" in capsys.readouterr().out
    assert main(["pacs", "nodes", "local", "--tls-cert", str(pki["server"]), "--tls-key", str(pki["server_key"])]) == 0
    capsys.readouterr()
    assert main(["pacs", "nodes", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (node,) = data["nodes"]
    assert node["tls"] is True and node["tls_ca"] == str(pki["ca"]) and node["tls_key"] == str(pki["client_key"])
    assert data["local"]["tls_cert"] == str(pki["server"]) and "tls_ca" not in data["local"]
    store = NodeStore.load(StudyPaths.detect().nodes_file)
    assert store.local.tls and store.get("secure").tls
    assert main(["pacs", "nodes", "local", "--no-tls"]) == 0
    assert not NodeStore.load(StudyPaths.detect().nodes_file).local.tls
    # TLS files without --tls are refused (a half-configured node would silently go plain)
    bad = Node("x", "X", "127.0.0.1", 1, tls_ca=str(pki["ca"]))
    with pytest.raises(Exception, match="TLS is off"):
        bad.validated()
