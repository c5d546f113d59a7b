"""Remote DICOM nodes (PACS, modalities) and this workstation's own listener identity.

One JSON file (``<data>/pacs/nodes.json``), written atomically, validated on load: a file that
is not valid JSON or does not have the expected shape is set aside (``nodes.json.corrupt-N``)
and an empty list is used, with the problem kept in :attr:`NodeStore.problems`. A single bad
node entry is dropped with a problem; the others are kept.

    {"schema_version": 1,
     "local": {"ae_title": "XMEDGPT", "host": "127.0.0.1", "port": 11112},
     "nodes": [{"name": "pacs", "ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242,
                "retrieve": "move", "dicomweb": "http://10.0.0.5:8042/dicom-web"}]}
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


@dataclass(frozen=True)
class Node:
    name: str
    ae_title: str
    host: str
    port: int
    retrieve: str = "move"
    dicomweb: str = ""

    def validated(self) -> "Node":
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise NodeError(f"Invalid node name {self.name!r}: letters, digits, '.', '_' or '-' (up to 64).")
        if self.retrieve not in RETRIEVE_METHODS:
            raise NodeError(f"Invalid retrieve method {self.retrieve!r}: get or move.")
        return Node(self.name, check_ae_title(self.ae_title), check_host(self.host), check_port(self.port),
                    self.retrieve, check_url(self.dicomweb))

    @classmethod
    def from_dict(cls, d: object) -> "Node":
        if not isinstance(d, dict):
            raise NodeError("a node must be an object")
        try:
            node = cls(name=d["name"], ae_title=d["ae_title"], host=d["host"], port=d["port"],
                       retrieve=d.get("retrieve", "move"), dicomweb=d.get("dicomweb", "") or "")
        except KeyError as exc:
            raise NodeError(f"a node lacks {exc.args[0]!r}") from exc
        return node.validated()


@dataclass(frozen=True)
class LocalAE:
    """How this workstation appears on the network (its Storage SCP)."""

    ae_title: str = DEFAULT_AE
    host: str = DEFAULT_HOST  # the interface the listener binds to
    port: int = DEFAULT_PORT

    def validated(self) -> "LocalAE":
        return LocalAE(check_ae_title(self.ae_title), check_host(self.host), check_port(self.port))


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
                                  local.get("port", DEFAULT_PORT)).validated()
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
        data = {"schema_version": SCHEMA_VERSION, "local": asdict(self.local),
                "nodes": [asdict(n) for n in sorted(self.nodes.values(), key=lambda n: n.name)]}
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
