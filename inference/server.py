"""An OpenAI-compatible chat-completions server over any :class:`~inference.types.Engine`.

``POST /v1/chat/completions`` (``stream`` as server-sent events, ``n``,
``logprobs``, ``top_logprobs``), ``GET /v1/models``, ``GET /health``.
Loopback by default; binding to any other address requires a bearer token.
Images are accepted only inline as base64 data URLs: the server never fetches anything.

Sampling: without ``temperature`` (or with 0) answers are greedy, the reading a
radiologist expects to be reproducible; ``temperature`` > 0 samples, from the client's
``seed`` or, without one, from a digest of the request: the same request gets the same samples.

Hostile clients. Every budget lives in :class:`ServerLimits` (defaults are the
module constants below; :class:`EngineServer` takes them as parameters):

* the connection: at most ``max_connections`` open at once (more get 503), and
  ``read_timeout`` seconds *in total* to send one request's headers and body;
* the framing: exactly one plain ``Content-Length`` no larger than
  ``max_request_bytes``, checked before the body is read; ``Transfer-Encoding``
  is refused;
* the body: one validation layer (:func:`parse_completion`) checks the type of
  every field the server reads and answers 400 with one line; image sizes are
  read from the file header before anything is decoded;
* the work: at most ``max_concurrent`` requests decode images, count tokens and
  generate at once; up to ``max_queue`` more wait, the rest get 503 with
  ``Retry-After``; a request has ``request_timeout`` seconds from admission to
  its last token; the prompt plus ``max_tokens`` must fit the model's context
  and ``n`` × ``max_tokens`` stays under ``max_work_tokens``.
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
import math
import re
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from inference.errors import XMedError
from inference.types import ChatRequest, Engine, Generation

log = logging.getLogger(__name__)

# ----------------------------------------------------------------- budgets (defaults)
#: Largest request body, in bytes (a base64 PNG of a 40-megapixel image fits).
MAX_REQUEST_BYTES = 32 * 1024 * 1024
#: Context length assumed when the engine does not report one (tokens, prompt + answer).
DEFAULT_CONTEXT_TOKENS = 4096
#: ``max_tokens`` when the client sends none (lowered to what the context leaves).
DEFAULT_MAX_TOKENS = 512
#: Largest ``max_tokens`` a client may ask for.
MAX_TOKENS = 4096
MAX_N = 32
MAX_TOP_LOGPROBS = 20
#: ``n`` × ``max_tokens``: the tokens one request may make the model generate.
MAX_WORK_TOKENS = 16384
#: Pixels in the images of one request, all together (width × height, read from the header).
MAX_IMAGE_PIXELS = 40_000_000
#: Images per request (the engines look at one image).
MAX_IMAGES = 1
#: Image formats decoded; others are refused without trying the rest of PIL's decoders.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
#: No tokenizer packs more characters into a token on average: a prompt longer than
#: context × this is refused before it is tokenized.
MAX_CHARS_PER_TOKEN = 16
#: For engines without a tokenizer: a conservative (short) token, so prompts are over-counted.
FALLBACK_CHARS_PER_TOKEN = 3
#: Requests generating at once (one local engine runs one generation at a time).
MAX_CONCURRENT = 1
#: Admitted requests waiting for a generation slot; beyond, 503 with Retry-After.
MAX_QUEUE = 8
#: Seconds from admission (queue wait included) to the last token; then 504 or an in-band error.
REQUEST_TIMEOUT_S = 300.0
#: Seconds a client has, in total, to send one request's headers and body (and per blocked write).
READ_TIMEOUT_S = 30.0
#: Connections open at once; more are answered 503 and closed.
MAX_CONNECTIONS = 32
#: Seconds a busy answer asks the client to wait before retrying.
RETRY_AFTER_S = 5
#: Seconds a connection is read (and the bytes dropped) after the answer, so that a client still
#: sending gets the answer rather than a reset.
LINGER_S = 1.0
#: An oversized body up to this size is read and dropped so the client sees the 413; beyond, the socket closes.
DRAIN_LIMIT = 256 * 1024 * 1024

_CONTENT_LENGTH = re.compile(r"[0-9]{1,15}")


class ApiError(Exception):
    """An error answered to the client as OpenAI-style JSON."""

    def __init__(self, status: HTTPStatus, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}


def _bad(message: str, code: str | None = "invalid_value") -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message, code=code)


def _busy(message: str) -> ApiError:
    return ApiError(HTTPStatus.SERVICE_UNAVAILABLE, message, kind="server_error", code="server_busy",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach ("" and 0.0.0.0 mean every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------- settings
class LimitError(XMedError):
    """A server budget out of its range; ``field`` names the :class:`ServerLimits` field."""

    def __init__(self, field: str, requirement: str) -> None:
        super().__init__(f"{field} {requirement}.")
        self.field = field
        self.requirement = requirement


#: (lowest, highest) accepted for each :class:`ServerLimits` field.
_LIMIT_RANGES: dict[str, tuple[float, float]] = {
    "max_request_bytes": (1, 1 << 30),
    "context_tokens": (16, 1 << 24),
    "max_image_pixels": (1, 500_000_000),
    "max_work_tokens": (1, 1 << 24),
    "max_concurrent": (1, 64),
    "max_queue": (0, 10_000),
    "request_timeout": (0.1, 86400.0),
    "read_timeout": (0.1, 3600.0),
    "max_connections": (1, 10_000),
}


@dataclass(frozen=True)
class ServerLimits:
    """The budgets one server enforces (see the module docstring); validated on creation.

    ``context_tokens`` None means "the engine's own context length" (resolved by
    :class:`EngineServer`, :data:`DEFAULT_CONTEXT_TOKENS` when the engine does not say).
    """

    max_request_bytes: int = MAX_REQUEST_BYTES
    context_tokens: int | None = None
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_work_tokens: int = MAX_WORK_TOKENS
    max_concurrent: int = MAX_CONCURRENT
    max_queue: int = MAX_QUEUE
    request_timeout: float = REQUEST_TIMEOUT_S
    read_timeout: float = READ_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "context_tokens":
                continue
            low, high = _LIMIT_RANGES[f.name]
            whole = isinstance(low, int)
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                raise LimitError(f.name, "must be a whole number" if whole else "must be a number")
            if not (math.isfinite(value) and low <= value <= high):
                raise LimitError(f.name, f"must be between {low} and {high} (got {value})")

    @property
    def context(self) -> int:
        return self.context_tokens or DEFAULT_CONTEXT_TOKENS


def check_listen(host: str, port: int, api_key: str | None) -> str | None:
    """Validate where to listen and with which key; the key stripped (blank counts as none).

    Raises :class:`XMedError` with one line; cheap, so callers run it before loading a model.
    """
    key = (api_key or "").strip() or None
    if key is not None and not (key.isascii() and key.isprintable() and " " not in key):
        raise XMedError("The API key must be printable ASCII without spaces.")
    if not isinstance(host, str) or not host.strip():
        raise XMedError("No address to listen on; use e.g. 127.0.0.1.")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise XMedError(f"Port {port} is not a TCP port; choose 1-65535 (0 picks a free one).")
    if not is_loopback(host) and key is None:
        raise XMedError(
            f"Serving on {host} would expose the model to the network; set an API key "
            "(--api-key or XMEDGPT_API_KEY) or serve on 127.0.0.1."
        )
    return key


def check_bindable(host: str, port: int) -> None:
    """Bind and release ``host:port`` the way the server will, so a busy port or unknown host
    is reported before a model is loaded."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise XMedError(f"Cannot listen on {host}:{port}: {reason}.") from exc


def engine_context_length(engine: Engine) -> int | None:
    """The engine's context length in tokens: ``context_length``, else the model config's
    ``max_position_embeddings`` (text config first); None when it does not say."""

    def whole(value) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    if (value := whole(getattr(engine, "context_length", None))) is not None:
        return value
    config = getattr(getattr(engine, "model", None), "config", None)
    if config is None:
        return None
    candidates = []
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            candidates.append(get_text())
        except Exception as exc:  # noqa: BLE001 - an odd config only loses this candidate
            log.debug("no text config: %s", exc)
    candidates += [getattr(config, "text_config", None), getattr(config, "llm_config", None), config]
    for cfg in candidates:
        for attr in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
            if (value := whole(getattr(cfg, attr, None))) is not None:
                return value
    return None


# --------------------------------------------------------------------- requests
@dataclass
class CompletionParams:
    """A validated request. ``request.image`` stays None until :meth:`EngineService.prepare`
    decodes ``image_data`` inside a worker slot."""

    request: ChatRequest
    n: int
    temperature: float
    top_p: float
    stream: bool
    logprobs: bool
    top_logprobs: int
    image_data: bytes | None = None
    max_tokens_given: bool = True
    seed: int | None = None  # the client's (OpenAI's ``seed``); None: the engine draws from what is asked

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def _image_formats() -> list[str]:
    Image.init()
    return [f for f in IMAGE_FORMATS if f in Image.OPEN]


def _undecodable() -> ApiError:
    return _bad(f"The image could not be decoded ({', '.join(IMAGE_FORMATS)} expected).")


def _too_many_pixels(limit: int) -> ApiError:
    return _bad(f"The image has too many pixels; this server accepts at most {limit / 1e6:g} megapixels "
                "per request.", code="image_too_large")


def _image_bytes(url: str) -> bytes:
    if not url.startswith("data:"):
        raise _bad("Images must be sent inline as base64 data URLs; this server fetches nothing.")
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise _bad("Image data URLs must be base64 encoded.")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("The image data URL is not valid base64.") from exc


def image_pixels(data: bytes, limit: int = MAX_IMAGE_PIXELS) -> int:
    """Width × height from the image's header, without decoding its pixels (``limit``: for the message)."""
    try:
        with Image.open(io.BytesIO(data), formats=_image_formats()) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # above twice PIL's own ceiling
        raise _too_many_pixels(limit) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: any failure means "not an image"
        raise _undecodable() from exc
    return int(width) * int(height)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB pixels of an image already sized by :func:`image_pixels`; any decoder failure is a 400."""
    try:
        with Image.open(io.BytesIO(data), formats=_image_formats()) as img:
            if img.size[0] * img.size[1] > max_pixels:
                raise _too_many_pixels(max_pixels)
            return np.asarray(img.convert("RGB"))
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(max_pixels) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: truncated, corrupt, unsupported mode
        log.info("image could not be decoded: %s", exc)
        raise _undecodable() from exc


def _typed(value, kinds: tuple[type, ...], path: str, what: str):
    """``value`` when it is one of ``kinds`` (a bool is never a number), else a 400."""
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise _bad(f"'{path}' must be {what}.")
    return value


def _number(body: dict, key: str, default, kind, low, high):
    value = body.get(key)
    if value is None:
        return default
    what = "a whole number" if kind is int else "a number"
    _typed(value, (int, float), key, what)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise _bad(f"'{key}' must be {what}.")
    if not low <= value <= high:
        raise _bad(f"'{key}' must be between {low} and {high}.")
    return kind(value)


def _flag(body: dict, key: str) -> bool:
    value = body.get(key)
    return False if value is None else _typed(value, (bool,), key, "true or false")


def _texts(content, path: str, images: list[str] | None) -> list[str]:
    """Text pieces of a message's content; image URLs go to ``images`` (None: text only)."""
    if isinstance(content, str):
        return [content]
    _typed(content, (list,), path, "a string or a list of content parts")
    texts = []
    for i, part in enumerate(content):
        where = f"{path}[{i}]"
        _typed(part, (dict,), where, "an object")
        kind = _typed(part.get("type"), (str,), f"{where}.type", "a string")
        if kind == "text":
            texts.append(_typed(part.get("text"), (str,), f"{where}.text", "a string"))
        elif kind == "image_url" and images is not None:
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            images.append(_typed(url, (str,), f"{where}.image_url.url", "a data URL string"))
        elif kind == "image_url":
            raise _bad(f"'{where}': only the user message may carry an image.")
        else:
            raise _bad(f"Unsupported content part type '{kind[:40]}'.")
    return texts


def parse_completion(body: dict, limits: ServerLimits | None = None) -> CompletionParams:
    """Validate an OpenAI chat-completions body against ``limits``: the one place that reads it.

    Every field read is type-checked (400 with one line naming the field); images are sized
    from their headers but not decoded; the prompt is bounded by characters (tokens are counted
    later, in a worker slot); ``n`` × ``max_tokens`` is bounded by ``max_work_tokens``.
    """
    limits = limits or ServerLimits()
    _typed(body, (dict,), "body", "a JSON object")
    if body.get("model") is not None:
        _typed(body["model"], (str,), "model", "a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list.")
    system_parts: list[str] = []
    users: list[tuple[int, dict]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad("Each message must be an object.")
        role = _typed(message.get("role"), (str,), f"messages[{i}].role", "a string")
        if role in ("system", "developer"):
            content = message.get("content")
            if content is not None:
                system_parts.append(" ".join(_texts(content, f"messages[{i}].content", None)))
        elif role == "user":
            users.append((i, message))
        else:
            raise _bad("Only single-turn conversations (system + one user message) are served.")
    if len(users) != 1:
        raise _bad("Send exactly one user message.")
    index, user = users[0]
    if user.get("content") is None:
        raise _bad("The user message has no content.")
    urls: list[str] = []
    texts = _texts(user["content"], f"messages[{index}].content", urls)
    if len(urls) > MAX_IMAGES:
        raise _bad(f"Send at most {MAX_IMAGES} image per request.")
    images = [_image_bytes(url) for url in urls]
    if sum(image_pixels(data, limits.max_image_pixels) for data in images) > limits.max_image_pixels:
        raise _too_many_pixels(limits.max_image_pixels)

    prompt, system = "\n".join(texts), "\n".join(system_parts) or None
    if len(prompt) + len(system or "") > limits.context * MAX_CHARS_PER_TOKEN:
        raise _bad(f"The prompt is too long: {len(prompt) + len(system or '')} characters, far more than this "
                   f"model's context of {limits.context} tokens.", code="context_length_exceeded")

    max_tokens = _number({"max_tokens": body.get("max_completion_tokens", body.get("max_tokens"))},
                         "max_tokens", None, int, 1, MAX_TOKENS)
    logprobs = _flag(body, "logprobs")
    top = _number(body, "top_logprobs", 0, int, 0, MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise _bad("'top_logprobs' needs 'logprobs': true.")
    params = CompletionParams(
        request=ChatRequest(prompt=prompt, image=None, system=system,
                            max_new_tokens=max_tokens or DEFAULT_MAX_TOKENS),
        n=_number(body, "n", 1, int, 1, MAX_N),
        temperature=_number(body, "temperature", 0.0, float, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, float, 0.0, 1.0),
        stream=_flag(body, "stream"),
        logprobs=logprobs,
        top_logprobs=top,
        image_data=images[0] if images else None,
        max_tokens_given=max_tokens is not None,
        seed=_number(body, "seed", None, int, -(1 << 63), (1 << 63) - 1),
    )
    if params.greedy and params.n > 1:
        raise _bad("n > 1 needs a temperature above 0 (greedy answers are all the same).")
    work = params.n * params.request.max_new_tokens
    if work > limits.max_work_tokens:
        raise _bad(f"n × max_tokens is {work}; this server generates at most {limits.max_work_tokens} tokens "
                   "per request.")
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


class Admission:
    """At most ``workers`` requests hold a slot at once; up to ``queue`` more wait, first come first
    served, until their deadline. Past that, :func:`slot` raises a 503 with ``Retry-After``."""

    def __init__(self, workers: int, queue: int) -> None:
        self.workers = workers
        self.queue = queue
        self.running = 0
        self._waiting: deque[object] = deque()
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextmanager
    def slot(self, deadline: float) -> Iterator[None]:
        with self._cond:
            if self.running >= self.workers or self._waiting:
                if len(self._waiting) >= self.queue:
                    raise _busy(f"The server is busy ({self.running} generating, {len(self._waiting)} waiting); "
                                f"retry in {RETRY_AFTER_S} s.")
                me = object()
                self._waiting.append(me)
                try:
                    while self.running >= self.workers or self._waiting[0] is not me:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise _busy("The server stayed busy for as long as this request may take; retry later.")
                        self._cond.wait(left)
                finally:
                    self._waiting.remove(me)
                    self._cond.notify_all()
            self.running += 1
        try:
            yield
        finally:
            with self._cond:
                self.running -= 1
                self._cond.notify_all()


class EngineService:
    """Runs completions on an engine; shared by all request threads."""

    def __init__(self, engine: Engine, limits: ServerLimits | None = None) -> None:
        self.engine = engine
        self.limits = limits or ServerLimits()
        self.has_top_logprobs = "top_logprobs" in inspect.signature(engine.generate).parameters
        sample_params = inspect.signature(engine.sample).parameters
        self.has_seed = "seed" in sample_params or any(p.kind is p.VAR_KEYWORD for p in sample_params.values())

    def prompt_tokens(self, request: ChatRequest) -> int:
        """Prompt length in tokens, image tokens included where the engine can encode requests;
        else the engine tokenizer's count of the text; else a conservative character estimate."""
        encode = getattr(self.engine, "encode", None)
        if callable(encode):
            return int(encode([request])["input_ids"].shape[1])
        text = "\n".join(t for t in (request.system, request.prompt) if t)
        tokenizer = getattr(self.engine, "tokenizer", None)
        if callable(getattr(tokenizer, "encode", None)):
            return len(tokenizer.encode(text))
        return math.ceil(len(text) / FALLBACK_CHARS_PER_TOKEN)

    def prepare(self, params: CompletionParams) -> int:
        """Inside a worker slot: decode the image, count the prompt and fit ``max_tokens`` to the
        context (a default one shrinks, an explicit one that does not fit is a 400). Returns the
        prompt's token count."""
        request = params.request
        if params.image_data is not None:
            request = replace(request, image=decode_image(params.image_data, self.limits.max_image_pixels))
        prompt = self.prompt_tokens(request)
        context = self.limits.context
        room = context - prompt
        if room < 1 or (params.max_tokens_given and request.max_new_tokens > room):
            raise _bad(f"This model reads at most {context} tokens; the prompt has {prompt} and max_tokens asks "
                       f"for {request.max_new_tokens}. Shorten the prompt or lower max_tokens.",
                       code="context_length_exceeded")
        params.request = replace(request, max_new_tokens=min(request.max_new_tokens, room))
        return prompt

    def complete(self, params: CompletionParams, cancel: Callable[[], bool] | None = None) -> list[Generation]:
        extra = {"top_logprobs": params.top_logprobs} if params.top_logprobs and self.has_top_logprobs else {}
        if params.greedy:
            return [self.engine.generate(params.request, cancel, **extra)]
        if params.seed is not None and self.has_seed:
            extra["seed"] = params.seed
        return self.engine.sample([params.request], params.n, params.temperature, params.top_p, cancel, **extra)[0]


# --------------------------------------------------------------------- HTTP
class _DeadlineReader(io.RawIOBase):
    """Socket reads sharing the handler's ``read_deadline``: a client gets ``read_timeout``
    seconds in total for one request's headers and body, however slowly it drips them."""

    def __init__(self, sock: socket.socket, handler: "_Handler") -> None:
        self._sock = sock
        self._handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self._handler.read_deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not received in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: "_HTTPServer"
    protocol_version = "HTTP/1.1"
    server_version = "xmedgpt-serve/1"
    read_deadline = 0.0
    #: All of this request's bytes have been read: the connection can carry the next one.
    _consumed = False

    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout
        super().setup()
        self.rfile.close()  # replaced by a reader bound to the request's deadline
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        self.read_deadline = time.monotonic() + self.server.limits.read_timeout
        self._consumed = False
        super().handle_one_request()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        log.info("%s %s", self.address_string(), format % args)

    def send_response_only(self, code, message=None) -> None:
        # Writes get their own timeout (the read deadline may be all but spent).
        self.connection.settimeout(self.server.limits.read_timeout)
        super().send_response_only(code, message)

    def _send_json(self, status: HTTPStatus, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: ApiError) -> None:
        if not self._consumed:  # unread body bytes would be taken for the next request
            self.close_connection = True
        try:
            self._send_json(exc.status, exc.body(), exc.headers)
        except OSError:
            self.close_connection = True

    def _authorised(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), key.encode())):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "A valid API key is required (Authorization: Bearer …).",
                           kind="authentication_error", code="invalid_api_key")

    def _check_post_path(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            raise ApiError(HTTPStatus.NOT_FOUND, f"No such endpoint: {self.path[:200]}", code="not_found")

    def handle_expect_100(self) -> bool:
        """Refuse before the client sends its body (``Expect: 100-continue``)."""
        try:
            if self.command == "POST":
                self._authorised()
                self._check_post_path()
                self._check_size(self._body_length())
        except ApiError as exc:
            self._error(exc)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._consumed = not (self.headers.get("Content-Length", "0").strip() != "0"
                              or self.headers.get("Transfer-Encoding"))
        if not self._consumed:
            self.close_connection = True
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
            raise ApiError(HTTPStatus.NOT_FOUND, f"No such endpoint: {self.path[:200]}", code="not_found")
        except ApiError as exc:
            self._error(exc)

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._authorised()
            self._check_post_path()
            params = parse_completion(self._read_json(), self.server.limits)
            deadline = time.monotonic() + self.server.limits.request_timeout
            with self.server.admission.slot(deadline):
                prompt_tokens = self.server.service.prepare(params)

                def cancel() -> bool:
                    return time.monotonic() > deadline

                if params.stream:
                    self._stream(params, cancel)
                else:
                    self._complete(params, prompt_tokens, cancel)
        except ApiError as exc:
            self._error(exc)
        except XMedError as exc:
            self._error(ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, exc.message, kind="server_error"))
        except (ConnectionError, TimeoutError):
            log.info("client %s went away", self.address_string())
            self.close_connection = True
        except Exception:  # keep the server alive, tell the client (no exception text: it is not theirs)
            log.exception("completion failed")
            self._error(ApiError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                 "The model failed on this request; the server log has the details.",
                                 kind="server_error"))

    # ----------------------------------------------------------------- body
    def _body_length(self) -> int:
        """The body's size from its one plain Content-Length; any other framing is refused."""
        if self.headers.get_all("Transfer-Encoding"):
            if self.headers.get_all("Content-Length"):
                raise _bad("Send either Content-Length or Transfer-Encoding, not both.", code="bad_framing")
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Transfer-Encoding is not supported; send a Content-Length.",
                           code="length_required")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required.", code="length_required")
        if len(values) > 1:
            raise _bad("Send exactly one Content-Length header.", code="bad_framing")
        text = values[0].strip()
        if not _CONTENT_LENGTH.fullmatch(text):
            raise _bad("Content-Length must be a whole, non-negative number of bytes.", code="bad_framing")
        return int(text)

    def _check_size(self, size: int) -> None:
        if size > self.server.limits.max_request_bytes:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"Request of {size} bytes exceeds the limit of {self.server.limits.max_request_bytes} "
                           "bytes.", code="request_too_large")

    def _read_json(self) -> dict:
        size = self._body_length()
        try:
            self._check_size(size)
        except ApiError:
            self._drain(size)
            raise
        try:
            data = self.rfile.read(size)
        except TimeoutError as exc:
            raise ApiError(HTTPStatus.REQUEST_TIMEOUT,
                           f"The request was not received within {self.server.limits.read_timeout:g} s.",
                           code="timeout") from exc
        if len(data) < size:
            raise _bad("The request body ended before its Content-Length.", code="bad_framing")
        self._consumed = True
        try:
            body = json.loads(data)
        except RecursionError as exc:
            raise _bad("The request body is nested too deeply.", code="invalid_json") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad("The request body is not valid JSON.", code=None) from exc
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object.", code=None)
        return body

    def _drain(self, size: int) -> None:
        """Read and drop an oversized body (never stored) so the client can read the 413 answer.

        Past ``DRAIN_LIMIT`` or the read deadline the connection is simply closed after answering.
        """
        left = min(size, DRAIN_LIMIT)
        try:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except (TimeoutError, ConnectionError):
            pass

    # ----------------------------------------------------------------- answers
    def _envelope(self, kind: str) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": self.server.model_name}

    def _timed_out(self) -> ApiError:
        return ApiError(HTTPStatus.GATEWAY_TIMEOUT,
                        f"The answer took longer than this server's limit of {self.server.limits.request_timeout:g} s.",
                        kind="server_error", code="timeout")

    def _complete(self, params: CompletionParams, prompt_tokens: int, cancel: Callable[[], bool]) -> None:
        generations = self.server.service.complete(params, cancel)
        if cancel() and any(g.finish_reason == "cancelled" for g in generations):
            raise self._timed_out()
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
        answer["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                           "total_tokens": prompt_tokens + completion}
        self._send_json(HTTPStatus.OK, answer)

    def _stream(self, params: CompletionParams, cancel: Callable[[], bool]) -> None:
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
                pieces = self.server.service.engine.stream(params.request, cancel)
                try:
                    for piece in pieces:
                        send([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
                finally:
                    pieces.close()  # a client that went away stops the generation
                if cancel():
                    raise self._timed_out()
                send([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
            else:  # samples / log-probs: computed as one batch, then sent token by token
                generations = self.server.service.complete(params, cancel)
                if cancel() and any(g.finish_reason == "cancelled" for g in generations):
                    raise self._timed_out()
                for i, gen in enumerate(generations):
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
        except (ConnectionError, TimeoutError):
            log.info("client went away during a stream")
        except Exception as exc:  # headers are gone: report in-band
            if isinstance(exc, ApiError):
                error = exc
            elif isinstance(exc, XMedError):
                error = ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, exc.message, kind="server_error")
            else:
                log.exception("stream failed")
                error = ApiError(HTTPStatus.INTERNAL_SERVER_ERROR,
                                 "The model failed on this request; the server log has the details.",
                                 kind="server_error")
            try:
                self.wfile.write(f"data: {json.dumps(error.body())}\n\n".encode())
            except OSError:
                pass


def _refusal(status: HTTPStatus, message: str) -> bytes:
    body = json.dumps(_busy(message).body()).encode()
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # closing the server does not wait for slow clients
    request_queue_size = 64
    service: EngineService
    admission: Admission
    limits: ServerLimits
    api_key: str | None
    model_name: str
    started: int

    def __init__(self, address: tuple[str, int], limits: ServerLimits) -> None:
        self.limits = limits
        self._connections = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._connections.acquire(blocking=False):
            log.warning("refused a connection from %s: %d already open", client_address[0],
                        self.limits.max_connections)
            try:  # on the accepting thread: answer without waiting on the client
                request.settimeout(0.5)
                request.sendall(_refusal(HTTPStatus.SERVICE_UNAVAILABLE,
                                         "Too many open connections to this server; retry shortly."))
                request.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.close_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def shutdown_request(self, request) -> None:
        """Close after a lingering read: bytes the client still sends (an unread body) are dropped
        for up to :data:`LINGER_S` so that they do not reset the connection before it reads the answer."""
        try:
            request.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            while (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                if not request.recv(1 << 16):
                    break
        except OSError:
            pass
        self.close_request(request)

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.info("connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("unexpected error on the connection from %s", client_address[0])


class EngineServer:
    """The server object: ``start()`` in a background thread, or ``serve_forever()`` in the caller's.

    Budgets (module constants give the defaults; all are checked by :class:`ServerLimits`):

    ``max_request_bytes`` (:data:`MAX_REQUEST_BYTES`, 32 MiB)
        largest body; refused from its Content-Length before reading.
    ``context_tokens`` (the engine's ``max_position_embeddings``, else :data:`DEFAULT_CONTEXT_TOKENS`)
        prompt + ``max_tokens`` must fit (400 otherwise).
    ``max_image_pixels`` (:data:`MAX_IMAGE_PIXELS`, 40 MP)
        pixels of the request's image(s), read from the header before decoding.
    ``max_work_tokens`` (:data:`MAX_WORK_TOKENS`, 16384)
        ``n`` × ``max_tokens``.
    ``max_concurrent`` (:data:`MAX_CONCURRENT`, 1) and ``max_queue`` (:data:`MAX_QUEUE`, 8)
        requests generating at once and waiting; more are answered 503 with Retry-After.
    ``request_timeout`` (:data:`REQUEST_TIMEOUT_S`, 300 s)
        admission to last token, queue wait included (504, or an in-band error when streaming).
    ``read_timeout`` (:data:`READ_TIMEOUT_S`, 30 s)
        for a request's headers and body together (408 or the connection closes).
    ``max_connections`` (:data:`MAX_CONNECTIONS`, 32)
        open at once; more are answered 503 and closed.
    """

    def __init__(
        self,
        engine: Engine,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        model_name: str | None = None,
        *,
        context_tokens: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_work_tokens: int = MAX_WORK_TOKENS,
        max_concurrent: int = MAX_CONCURRENT,
        max_queue: int = MAX_QUEUE,
        request_timeout: float = REQUEST_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        api_key = check_listen(host, port, api_key)
        limits = ServerLimits(
            max_request_bytes=max_request_bytes,
            context_tokens=context_tokens or engine_context_length(engine) or DEFAULT_CONTEXT_TOKENS,
            max_image_pixels=max_image_pixels, max_work_tokens=max_work_tokens, max_concurrent=max_concurrent,
            max_queue=max_queue, request_timeout=request_timeout, read_timeout=read_timeout,
            max_connections=max_connections,
        )
        try:
            self.httpd = _HTTPServer((host, port), limits)
        except (OSError, OverflowError) as exc:
            raise XMedError(f"Cannot listen on {host}:{port}: {getattr(exc, 'strerror', None) or exc}.") from exc
        self.limits = limits
        self.httpd.service = EngineService(engine, limits)
        self.httpd.admission = Admission(limits.max_concurrent, limits.max_queue)
        self.httpd.api_key = api_key
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
