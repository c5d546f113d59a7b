"""Remote DICOM nodes (PACS, modalities) and this workstation's own listener identity.

One JSON file (``<data>/pacs/nodes.json``), written atomically, validated on load: a file that
is not valid JSON or does not have the expected shape is set aside (``nodes.json.corrupt-N``)
and an empty list is used, with the problem kept in :attr:`NodeStore.problems`. A single bad
node entry is dropped with a problem; the others are kept.

    {"schema_version": 1,
     "local": {"ae_title": "XMEDGPT", "host": "127.0.0.1", "port": 11112},
     "nodes": [{"name": "pacs", "ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242,
                "retrieve": "move", "dicomweb": "http://10.0.0.5:8042/dicom-web"}]}

TLS (DICOM over TLS, PS3.15 B.1): a node with ``"tls": true`` is called over TLS; its certificate is
checked against ``tls_ca`` (a PEM bundle; empty: the system's CAs) and its host name; ``tls_cert``/
``tls_key`` are this workstation's client certificate when the node asks for one. The listener uses
TLS when ``local`` has ``tls_cert``/``tls_key``; with ``tls_ca`` it also requires callers to present a
certificate signed by that CA. The keys are written only when set. :mod:`app.studies.tls` makes the
``ssl`` contexts.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.core.errors import XMedError
from app.core.paths import set_aside, write_atomic

SCHEMA_VERSION = 1
DEFAULT_AE = "XMEDGPT"
DEFAULT_PORT = 11112
DEFAULT_HOST = "127.0.0.1"
RETRIEVE_METHODS = ("get", "move")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$")


class NodeError(XMedError):
    """A node definition is invalid or unknown."""


def check_ae_title(ae: str) -> str:
    """A DICOM AE title: 1–16 printable ASCII characters, no backslash, not only spaces."""
    if not isinstance(ae, str):
        raise NodeError("The AE title must be text.")
    ae = ae.strip()
    if not ae or len(ae) > 16 or "\\" in ae or any(not (32 <= ord(c) < 127) for c in ae):
        raise NodeError(f"Invalid AE title {ae!r}: 1 to 16 printable ASCII characters, no backslash.")
    return ae


def check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise NodeError(f"Invalid port {port!r}: a number from 1 to 65535.")
    return port


def check_host(host: str) -> str:
    if not isinstance(host, str) or not host.strip():
        raise NodeError("The host must not be empty.")
    host = host.strip()
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if not _HOST_RE.match(host):
        raise NodeError(f"Invalid host {host!r}: an IP address or a host name.")
    return host


def check_url(url: str) -> str:
    url = (url or "").strip()
    if url and not re.match(r"^https?://[^\s/]+(/\S*)?$", url):
        raise NodeError(f"Invalid DICOMweb URL {url!r}: http(s)://host[:port]/path.")
    return url.rstrip("/")


def check_file(path: str, what: str) -> str:
    """A certificate or key path: text (empty: not set), made absolute; it must be a file when it exists
    (whether it exists is checked when it is used, with a clear message)."""
    if not isinstance(path, str):
        raise NodeError(f"{what} must be a file path.")
    path = path.strip()
    if not path:
        return ""
    p = Path(path).expanduser()
    if p.exists() and not p.is_file():
        raise NodeError(f"{what} {path!r} is not a file.")
    return str(p.resolve())


@dataclass(frozen=True)
class Node:
    name: str
    ae_title: str
    host: str
    port: int
    retrieve: str = "move"
    dicomweb: str = ""
    tls: bool = False
    tls_ca: str = ""  # PEM file of the CA(s) that signed the node's certificate; empty: the system's
    tls_cert: str = ""  # our client certificate (PEM), if the node wants one
    tls_key: str = ""  # its private key (PEM); empty: in tls_cert

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("tls", "tls_ca", "tls_cert", "tls_key"):
            if not d[k]:
                del d[k]
        return d

    def validated(self) -> "Node":
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise NodeError(f"Invalid node name {self.name!r}: letters, digits, '.', '_' or '-' (up to 64).")
        if self.retrieve not in RETRIEVE_METHODS:
            raise NodeError(f"Invalid retrieve method {self.retrieve!r}: get or move.")
        if not isinstance(self.tls, bool):
            raise NodeError(f"Invalid tls {self.tls!r}: true or false.")
        if (self.tls_cert or self.tls_key or self.tls_ca) and not self.tls:
            raise NodeError(f"Node '{self.name}' has TLS files but TLS is off; add --tls.")
        return Node(self.name, check_ae_title(self.ae_title), check_host(self.host), check_port(self.port),
                    self.retrieve, check_url(self.dicomweb), self.tls, check_file(self.tls_ca, "tls_ca"),
                    check_file(self.tls_cert, "tls_cert"), check_file(self.tls_key, "tls_key"))

    @classmethod
    def from_dict(cls, d: object) -> "Node":
        if not isinstance(d, dict):
            raise NodeError("a node must be an object")
        try:
            node = cls(name=d["name"], ae_title=d["ae_title"], host=d["host"], port=d["port"],
                       retrieve=d.get("retrieve", "move"), dicomweb=d.get("dicomweb", "") or "",
                       tls=d.get("tls", False), tls_ca=d.get("tls_ca", "") or "", tls_cert=d.get("tls_cert", "") or "",
                       tls_key=d.get("tls_key", "") or "")
        except KeyError as exc:
            raise NodeError(f"a node lacks {exc.args[0]!r}") from exc
        return node.validated()


@dataclass(frozen=True)
class LocalAE:
    """How this workstation appears on the network (its Storage SCP)."""

    ae_title: str = DEFAULT_AE
    host: str = DEFAULT_HOST  # the interface the listener binds to
    port: int = DEFAULT_PORT
    tls_cert: str = ""  # the listener's certificate (PEM); set: the listener speaks TLS only
    tls_key: str = ""  # its private key (PEM); empty: in tls_cert
    tls_ca: str = ""  # set: callers must present a certificate signed by this CA

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("tls_cert", "tls_key", "tls_ca"):
            if not d[k]:
                del d[k]
        return d

    def validated(self) -> "LocalAE":
        if (self.tls_key or self.tls_ca) and not self.tls_cert:
            raise NodeError("The listener's TLS needs a certificate (--tls-cert).")
        return LocalAE(check_ae_title(self.ae_title), check_host(self.host), check_port(self.port),
                       check_file(self.tls_cert, "tls_cert"), check_file(self.tls_key, "tls_key"),
                       check_file(self.tls_ca, "tls_ca"))


@dataclass
class NodeStore:
    path: Path
    local: LocalAE = field(default_factory=LocalAE)
    nodes: dict[str, Node] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> "NodeStore":
        store = cls(Path(path))
        if not store.path.exists():
            return store
        try:
            data = json.loads(store.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("nodes", []), list):
                raise ValueError("expected an object with a list of nodes")
            local = data.get("local", {})
            if not isinstance(local, dict):
                raise ValueError("'local' must be an object")
            store.local = LocalAE(local.get("ae_title", DEFAULT_AE), local.get("host", DEFAULT_HOST),
                                  local.get("port", DEFAULT_PORT), local.get("tls_cert", "") or "",
                                  local.get("tls_key", "") or "", local.get("tls_ca", "") or "").validated()
        except (OSError, ValueError, NodeError, TypeError) as exc:
            aside = set_aside(store.path, f"invalid node list ({exc})")
            store.problems.append(f"The PACS node list {store.path} was invalid ({exc}); kept as {aside.name}, "
                                  "starting with no nodes.")
            store.local = LocalAE()
            return store
        for item in data.get("nodes", []):
            try:
                node = Node.from_dict(item)
            except (NodeError, TypeError) as exc:
                store.problems.append(f"Ignored an invalid node in {store.path.name}: {exc}")
                continue
            store.nodes[node.name] = node
        return store

    def save(self) -> None:
        data = {"schema_version": SCHEMA_VERSION, "local": self.local.to_dict(),
                "nodes": [n.to_dict() for n in sorted(self.nodes.values(), key=lambda n: n.name)]}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n")

    def add(self, node: Node, *, replace: bool = False) -> Node:
        node = node.validated()
        if node.name in self.nodes and not replace:
            raise NodeError(f"A node named '{node.name}' exists; remove it first.")
        self.nodes[node.name] = node
        self.save()
        return node

    def remove(self, name: str) -> Node:
        node = self.get(name)
        del self.nodes[name]
        self.save()
        return node

    def get(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            known = ", ".join(sorted(self.nodes)) or "none"
            raise NodeError(f"No node named '{name}' (known: {known}). Add it with "
                            "'xmedgpt pacs nodes add'.") from None

    def set_local(self, local: LocalAE) -> LocalAE:
        self.local = local.validated()
        self.save()
        return self.local

    def by_ae_title(self, ae_title: str) -> Node | None:
        for n in self.nodes.values():
            if n.ae_title == ae_title.strip():
                return n
        return None
