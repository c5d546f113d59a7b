"""DICOM over TLS (PS3.15 Annex B.1): the ``ssl`` contexts for calling a node and for the listener.

pynetdicom does the rest: ``AE.associate(..., tls_args=(context, host))`` wraps the client socket,
``AE.start_server(..., ssl_context=context)`` every accepted one. Both sides need TLS 1.2 or newer.

- Calling a node (:func:`client_context`): the node's certificate must chain to ``node.tls_ca`` (or,
  when that is empty, to the system's CAs) and name ``node.host``; ``tls_cert``/``tls_key`` are sent
  when the node asks for a client certificate.
- The listener (:func:`server_context`): ``local.tls_cert``/``tls_key`` is its certificate; with
  ``local.tls_ca`` a caller must present a certificate signed by that CA, else the handshake fails
  and no association is made.

A handshake that fails is reported with the TLS library's reason (:func:`handshake_error`), never as
a bare "no answer".
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from app.studies.nodes import LocalAE, Node, NodeError

#: Seconds a TLS handshake may take (an accepted connection that never speaks must not hang the listener).
HANDSHAKE_TIMEOUT = 30.0


def _need(path: str, what: str, whose: str) -> str:
    if not Path(path).is_file():
        raise NodeError(f"The TLS {what} of {whose} ({path}) does not exist or is not a file.")
    return path


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str, whose: str) -> None:
    try:
        ctx.load_cert_chain(_need(cert, "certificate", whose), _need(key, "key", whose) if key else None)
    except ssl.SSLError as exc:
        raise NodeError(f"The TLS certificate/key of {whose} cannot be used: {exc.reason or exc}.") from exc


def _load_ca(ctx: ssl.SSLContext, ca: str, whose: str) -> None:
    try:
        ctx.load_verify_locations(cafile=_need(ca, "CA file", whose))
    except ssl.SSLError as exc:
        raise NodeError(f"The TLS CA file of {whose} cannot be used: {exc.reason or exc}.") from exc


def client_context(node: Node) -> ssl.SSLContext:
    """The context for calling ``node`` over TLS (server certificate and host name verified)."""
    whose = f"node '{node.name}'"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if node.tls_ca:
        _load_ca(ctx, node.tls_ca, whose)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if node.tls_cert:
        _load_chain(ctx, node.tls_cert, node.tls_key, whose)
    return ctx


class _ServerContext(ssl.SSLContext):
    """Bounds the handshake of each accepted connection (pynetdicom wraps it in its accept loop), then
    gives the socket back to pynetdicom in blocking mode, as a plain accepted socket would be."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        sock.settimeout(HANDSHAKE_TIMEOUT)
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        wrapped.settimeout(None)
        return wrapped


def server_context(local: LocalAE) -> ssl.SSLContext | None:
    """The listener's context, or None when it has no certificate (plain DICOM)."""
    if not local.tls_cert:
        return None
    whose = "this workstation's listener"
    ctx = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, local.tls_cert, local.tls_key, whose)
    if local.tls_ca:
        _load_ca(ctx, local.tls_ca, whose)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def handshake_error(node: Node, context: ssl.SSLContext, timeout: float = 10.0) -> str:
    """Why a TLS connection to ``node`` fails ('' when it works or the node is not reachable at all):
    called after an association attempt failed, to say so clearly."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=node.host):
                return ""
    except ssl.SSLCertVerificationError as exc:
        return f"the TLS certificate of the node was not accepted ({exc.verify_message or exc.reason})"
    except ssl.SSLError as exc:
        return f"the TLS handshake failed ({exc.reason or exc})"
    except OSError:
        return ""
