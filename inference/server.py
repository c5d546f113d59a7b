"""An OpenAI-compatible chat-completions server over any :class:`~inference.types.Engine`.

``POST /v1/chat/completions`` (``stream`` as server-sent events, ``n``,
``logprobs``, ``top_logprobs``), ``GET /v1/models``, ``GET /health``.
Loopback by default; binding to any other address requires a bearer token.
Requests above a size limit are refused before they are read. Images are
accepted only inline as base64 data URLs: the server never fetches anything.

Sampling: without ``temperature`` (or with 0) answers are greedy, the reading a
radiologist expects to be reproducible; ``temperature`` > 0 samples.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import io
import ipaddress
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image, UnidentifiedImageError

from inference.errors import XMedError
from inference.types import ChatRequest, Engine, Generation

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_TOKENS = 4096
MAX_N = 32
MAX_TOP_LOGPROBS = 20
#: An oversized body up to this size is read and dropped so the client sees the 413; beyond, the socket closes.
DRAIN_LIMIT = 256 * 1024 * 1024


class ApiError(Exception):
    """An error answered to the client as OpenAI-style JSON."""

    def __init__(self, status: HTTPStatus, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach ("" and 0.0.0.0 mean every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------- requests
@dataclass
class CompletionParams:
    request: ChatRequest
    n: int
    temperature: float
    top_p: float
    stream: bool
    logprobs: bool
    top_logprobs: int

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _decode_image(url: str) -> np.ndarray:
    if not url.startswith("data:"):
        raise ApiError(HTTPStatus.BAD_REQUEST, "Images must be sent inline as base64 data URLs; this server fetches nothing.")
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Image data URLs must be base64 encoded.")
    try:
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as img:
            return np.asarray(img.convert("RGB"))
    except (binascii.Error, UnidentifiedImageError, OSError) as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"The image could not be decoded: {exc}") from exc


def _number(body: dict, key: str, default, kind, low, high):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"'{key}' must be a number.", code="invalid_value")
    if not low <= value <= high:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"'{key}' must be between {low} and {high}.", code="invalid_value")
    return kind(value)


def parse_completion(body: dict) -> CompletionParams:
    """Validate an OpenAI chat-completions body into a :class:`ChatRequest` and sampling settings."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(HTTPStatus.BAD_REQUEST, "'messages' must be a non-empty list.", code="invalid_value")
    system_parts: list[str] = []
    users = []
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "Each message must be an object.")
        role = message.get("role")
        if role in ("system", "developer"):
            content = message.get("content")
            system_parts.append(content if isinstance(content, str) else
                                " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict)))
        elif role == "user":
            users.append(message)
        else:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Only single-turn conversations (system + one user message) are served.")
    if len(users) != 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Send exactly one user message.")
    content = users[0].get("content")
    texts: list[str] = []
    images: list[np.ndarray] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                url = part.get("image_url")
                images.append(_decode_image(url.get("url", "") if isinstance(url, dict) else str(url)))
            else:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"Unsupported content part type '{kind}'.")
    else:
        raise ApiError(HTTPStatus.BAD_REQUEST, "The user message has no content.")
    if len(images) > 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, "Send at most one image per request.")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    request = ChatRequest(
        prompt="\n".join(texts),
        image=images[0] if images else None,
        system="\n".join(system_parts) or None,
        max_new_tokens=_number({"max_tokens": max_tokens}, "max_tokens", 512, int, 1, MAX_TOKENS),
    )
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise ApiError(HTTPStatus.BAD_REQUEST, "'logprobs' must be true or false.")
    top = _number(body, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise ApiError(HTTPStatus.BAD_REQUEST, "'top_logprobs' needs 'logprobs': true.")
    params = CompletionParams(
        request=request,
        n=_number(body, "n", 1, int, 1, MAX_N),
        temperature=_number(body, "temperature", 0.0, float, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0),
        stream=bool(body.get("stream", False)),
        logprobs=logprobs,
        top_logprobs=top,
    )
    if params.greedy and params.n > 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, "n > 1 needs a temperature above 0 (greedy answers are all the same).")
    return params


# --------------------------------------------------------------------- answers
def _finish_reason(gen: Generation) -> str:
    return "length" if gen.finish_reason == "length" else "stop"


def _token_entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def logprobs_content(gen: Generation, top: int) -> list[dict]:
    """OpenAI ``logprobs.content`` from a generation (token strings where the engine gives them)."""
    tokens = getattr(gen, "tokens", None) or [""] * len(gen.token_logprobs)
    alternatives = getattr(gen, "top_logprobs", None) or [[] for _ in tokens]
    entries = []
    for token, lp, alts in zip(tokens, gen.token_logprobs, alternatives):
        entry = _token_entry(token, lp)
        entry["top_logprobs"] = [_token_entry(t, v) for t, v in alts[:top]] if top else []
        entries.append(entry)
    return entries


class EngineService:
    """Runs completions on an engine; shared by all request threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.has_top_logprobs = "top_logprobs" in inspect.signature(engine.generate).parameters

    def prompt_tokens(self, request: ChatRequest) -> int:
        """Prompt length in tokens (image tokens included) where the engine can tell, else 0."""
        encode = getattr(self.engine, "encode", None)
        return int(encode([request])["input_ids"].shape[1]) if callable(encode) else 0

    def complete(self, params: CompletionParams, cancel=None) -> list[Generation]:
        extra = {"top_logprobs": params.top_logprobs} if params.top_logprobs and self.has_top_logprobs else {}
        if params.greedy:
            return [self.engine.generate(params.request, cancel, **extra)]
        return self.engine.sample([params.request], params.n, params.temperature, params.top_p, cancel, **extra)[0]


# --------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"
    protocol_version = "HTTP/1.1"
    server_version = "xmedgpt-serve/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        log.info("%s %s", self.address_string(), format % args)

    def _send_json(self, status: HTTPStatus, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: ApiError) -> None:
        if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            self.close_connection = True
        self._send_json(exc.status, exc.body())

    def _authorised(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), key.encode())):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "A valid API key is required (Authorization: Bearer …).",
                           kind="authentication_error", code="invalid_api_key")

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        try:
            if self.path.rstrip("/") == "/health":
                self._send_json(HTTPStatus.OK, {"status": "ok"})
                return
            self._authorised()
            if self.path.rstrip("/") == "/v1/models":
                model = {"id": self.server.model_name, "object": "model", "created": self.server.started,
                         "owned_by": "xmedgpt"}
                self._send_json(HTTPStatus.OK, {"object": "list", "data": [model]})
                return
            raise ApiError(HTTPStatus.NOT_FOUND, f"No such endpoint: {self.path}", code="not_found")
        except ApiError as exc:
            self._error(exc)

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._authorised()
            if self.path.rstrip("/") != "/v1/chat/completions":
                raise ApiError(HTTPStatus.NOT_FOUND, f"No such endpoint: {self.path}", code="not_found")
            params = parse_completion(self._read_json())
            if params.stream:
                self._stream(params)
            else:
                self._complete(params)
        except ApiError as exc:
            self._error(exc)
        except XMedError as exc:
            self._error(ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, exc.message, kind="server_error"))
        except Exception as exc:  # keep the server alive, tell the client
            log.exception("completion failed")
            self._error(ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"The model failed: {exc}", kind="server_error"))

    def _read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required.")
        try:
            size = int(length)
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number.") from exc
        if size > self.server.max_request_bytes:
            self._drain(size)
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"Request of {size} bytes exceeds the limit of {self.server.max_request_bytes} bytes.",
                           code="request_too_large")
        try:
            body = json.loads(self.rfile.read(size))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, "The request body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "The request body must be a JSON object.")
        return body

    def _drain(self, size: int) -> None:
        """Read and drop an oversized body (never stored) so the client can read the 413 answer.

        Past ``DRAIN_LIMIT`` the connection is simply closed after answering.
        """
        left = min(size, DRAIN_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def _envelope(self, kind: str) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": self.server.model_name}

    def _complete(self, params: CompletionParams) -> None:
        generations = self.server.service.complete(params)
        answer = self._envelope("chat.completion")
        answer["choices"] = [
            {
                "index": i,
                "message": {"role": "assistant", "content": gen.text},
                "logprobs": {"content": logprobs_content(gen, params.top_logprobs)} if params.logprobs else None,
                "finish_reason": _finish_reason(gen),
            }
            for i, gen in enumerate(generations)
        ]
        completion = sum(len(g.token_logprobs) for g in generations)
        prompt = self.server.service.prompt_tokens(params.request)
        answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
        self._send_json(HTTPStatus.OK, answer)

    def _stream(self, params: CompletionParams) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        base = self._envelope("chat.completion.chunk")

        def send(choices: list[dict]) -> None:
            self.wfile.write(f"data: {json.dumps({**base, 'choices': choices})}\n\n".encode())
            self.wfile.flush()

        try:
            send([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                  for i in range(params.n)])
            if params.greedy and not params.logprobs:
                pieces = self.server.service.engine.stream(params.request)
                try:
                    for piece in pieces:
                        send([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
                finally:
                    pieces.close()  # a client that went away stops the generation
                send([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
            else:  # samples / log-probs: computed as one batch, then sent token by token
                for i, gen in enumerate(self.server.service.complete(params)):
                    entries = logprobs_content(gen, params.top_logprobs)
                    tokens = getattr(gen, "tokens", None)
                    if tokens and len(tokens) == len(entries) and "".join(tokens) == gen.text:
                        for token, entry in zip(tokens, entries):
                            lp = {"content": [entry]} if params.logprobs else None
                            send([{"index": i, "delta": {"content": token}, "logprobs": lp, "finish_reason": None}])
                    else:
                        lp = {"content": entries} if params.logprobs else None
                        send([{"index": i, "delta": {"content": gen.text}, "logprobs": lp, "finish_reason": None}])
                    send([{"index": i, "delta": {}, "logprobs": None, "finish_reason": _finish_reason(gen)}])
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("client went away during a stream")
        except Exception as exc:  # headers are gone: report in-band
            log.exception("stream failed")
            error = ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"The model failed: {exc}", kind="server_error")
            try:
                self.wfile.write(f"data: {json.dumps(error.body())}\n\n".encode())
            except OSError:
                pass


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    service: EngineService
    api_key: str | None
    max_request_bytes: int
    model_name: str
    started: int


class EngineServer:
    """The server object: ``start()`` in a background thread, or ``serve_forever()`` in the caller's."""

    def __init__(
        self,
        engine: Engine,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        model_name: str | None = None,
    ) -> None:
        if not is_loopback(host) and not api_key:
            raise XMedError(
                f"Serving on {host} would expose the model to the network; set an API key (--api-key) "
                "or serve on 127.0.0.1."
            )
        try:
            self.httpd = _HTTPServer((host, port), _Handler)
        except OSError as exc:
            raise XMedError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from exc
        self.httpd.service = EngineService(engine)
        self.httpd.api_key = api_key or None
        self.httpd.max_request_bytes = max_request_bytes
        self.httpd.model_name = model_name or engine.model_id
        self.httpd.started = int(time.time())
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/v1"

    def start(self) -> "EngineServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="xmedgpt-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "EngineServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
