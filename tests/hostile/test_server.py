"""``xmedgpt serve`` against a hostile client on loopback (issue #19, server part).

Each test replays one attacker finding against a real server on 127.0.0.1 (port 0): raw
sockets for malformed framing and slow clients, a blocking fake engine for the concurrency
budgets, the tiny real engine where its tokenizer matters.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator

import pytest

from inference.errors import XMedError
from inference.server import EngineServer
from inference.types import ChatRequest, Generation

LIMIT = 2_000_000  # bytes per request on the servers below


# --------------------------------------------------------------------- engines and servers
class FakeEngine:
    """An engine that answers at once, or (``blocking``) only when ``release`` is set.

    ``honour_cancel=False`` makes a blocked generation ignore the server's deadline.
    """

    model_id = "fake"
    context_length = 1000

    def __init__(self, blocking: bool = False, honour_cancel: bool = True) -> None:
        self.release = threading.Event()
        if not blocking:
            self.release.set()
        self.honour_cancel = honour_cancel
        self.started = threading.Event()
        self.requests: list[ChatRequest] = []

    def describe(self) -> str:
        return "fake"

    def _wait(self, cancel) -> bool:
        """True when released, False when the server cancelled."""
        while not self.release.wait(0.02):
            if self.honour_cancel and cancel is not None and cancel():
                return False
        return True

    def generate(self, request: ChatRequest, cancel=None) -> Generation:
        self.requests.append(request)
        self.started.set()
        if not self._wait(cancel):
            return Generation("", [], "cancelled")
        return Generation("ok", [-0.1], "stop")

    def stream(self, request: ChatRequest, cancel=None) -> Iterator[str]:
        self.requests.append(request)
        self.started.set()
        yield "o"
        if self._wait(cancel):
            yield "k"

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None) -> list[list[Generation]]:
        self.requests.extend(requests)
        return [[Generation("ok", [-0.1], "stop") for _ in range(n)] for _ in requests]


@pytest.fixture
def make_server() -> Iterator[Callable[..., EngineServer]]:
    """Start servers over fake engines (or a given engine) with the given budgets; all stop afterwards."""
    started: list[tuple[EngineServer, object]] = []

    def make(engine=None, **budgets) -> EngineServer:
        engine = engine or FakeEngine()
        server = EngineServer(engine, host="127.0.0.1", port=0, max_request_bytes=LIMIT, **budgets).start()
        started.append((server, engine))
        return server

    yield make
    for server, engine in started:
        if isinstance(engine, FakeEngine):
            engine.release.set()
        server.shutdown()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[EngineServer]:
    with EngineServer(FakeEngine(), host="127.0.0.1", port=0, max_request_bytes=LIMIT) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_dir):
    from inference.engine.local import LocalEngine

    return LocalEngine.from_folder(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def tiny_server(tiny_engine) -> Iterator[EngineServer]:
    with EngineServer(tiny_engine, host="127.0.0.1", port=0, max_request_bytes=LIMIT) as server:
        yield server


# --------------------------------------------------------------------- clients
def _post(server: EngineServer, body: dict | bytes, timeout: float = 30) -> tuple[int, dict, http.client.HTTPMessage]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection(*server.address, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else {}), response.headers
    finally:
        conn.close()


def _raw(server: EngineServer, data: bytes, timeout: float = 5) -> tuple[int, dict[str, str], dict]:
    """Send raw bytes without closing our side; read the answer until the server closes."""
    with socket.create_connection(server.address, timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, (json.loads(body) if body.startswith(b"{") else {})


def _head(*lines: str) -> bytes:
    return ("\r\n".join(["POST /v1/chat/completions HTTP/1.1", "Host: 127.0.0.1", *lines]) + "\r\n\r\n").encode()


def _chat(content="Hello", **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], **extra}


def _message(data: dict) -> str:
    return data["error"]["message"]


def _one_clean_line(message: str) -> bool:
    """One line, and nothing of a Python exception in it."""
    leaks = ("Traceback", "Error", " at 0x", "attribute", "'int'", "'dict'", "NoneType")
    return "\n" not in message and not any(leak in message for leak in leaks)


def _wait_for(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def _png(width: int, height: int, pixels: bool = True) -> bytes:
    """An 8-bit greyscale PNG; ``pixels=False`` gives only a header (the pixel data is never there)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if pixels:
        comp = zlib.compressobj(9)
        row = b"\0" * (width + 1)
        idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    else:
        idat = zlib.compress(b"\0")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _with_image(png: bytes) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return _chat([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Describe."}])


# --------------------------------------------------------------------- framing
def test_negative_content_length_is_refused_before_reading_the_body(fake_server):
    body = json.dumps(_chat()).encode() + b" " * 100_000  # the client keeps its side open
    status, headers, data = _raw(fake_server, _head("Content-Type: application/json", "Content-Length: -1") + body)
    assert status == 400 and "Content-Length" in _message(data)
    assert headers["connection"] == "close"


@pytest.mark.parametrize("value", ["+20", "2_0", "0x14", "20 20", "20, 20", "abc"])
def test_content_length_that_is_not_a_plain_number_is_refused(fake_server, value):
    body = b'{"messages": []}    '  # 20 bytes
    status, _, data = _raw(fake_server, _head(f"Content-Length: {value}") + body)
    assert status == 400 and "Content-Length must be a whole, non-negative number" in _message(data)


@pytest.mark.parametrize("second", ["20", "7"])
def test_duplicate_or_conflicting_content_length_is_refused(fake_server, second):
    body = json.dumps(_chat("Hi")).encode()[:20].ljust(20)
    status, _, data = _raw(fake_server, _head("Content-Length: 20", f"Content-Length: {second}") + body)
    assert status == 400 and "exactly one Content-Length" in _message(data)


def test_chunked_transfer_encoding_is_refused_with_411_and_the_connection_closed(fake_server):
    body = json.dumps(_chat()).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    status, headers, data = _raw(fake_server, _head("Transfer-Encoding: chunked") + chunked)
    assert status == 411 and "Transfer-Encoding is not supported" in _message(data)
    assert headers["connection"] == "close"


def test_transfer_encoding_together_with_content_length_is_refused(fake_server):
    body = json.dumps(_chat()).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    status, _, data = _raw(fake_server, _head("Transfer-Encoding: chunked", f"Content-Length: {len(chunked)}")
                           + chunked)
    assert status == 400 and "not both" in _message(data)


def test_expect_continue_with_an_oversized_length_gets_413_before_any_body_is_sent(fake_server):
    with socket.create_connection(fake_server.address, timeout=5) as sock:
        sock.sendall(_head(f"Content-Length: {LIMIT * 10}", "Expect: 100-continue"))
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")  # never "100 Continue"


# --------------------------------------------------------------------- JSON schema
WRONG_TYPES = {
    "system content is a number": {"messages": [{"role": "system", "content": 5},
                                                {"role": "user", "content": "Hi"}]},
    "image url is a number": _chat([{"type": "image_url", "image_url": {"url": 5}}]),
    "text part is an object": _chat([{"type": "text", "text": {"a": 1}}]),
    "system part is a number": {"messages": [{"role": "system", "content": [5]},
                                             {"role": "user", "content": "Hi"}]},
    "stream is a string": _chat(stream="yes"),
    "max_tokens is a fraction": _chat(max_tokens=1.5),
    "model is a list": _chat(model=["fake"]),
}


@pytest.mark.parametrize("body", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_wrong_json_types_get_400_with_one_line_and_no_exception_text(fake_server, body):
    status, data, _ = _post(fake_server, body)
    assert status == 400, data
    assert _one_clean_line(_message(data)) and "must be" in _message(data)


def test_deeply_nested_json_gets_400_not_500(fake_server):
    body = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, data, _ = _post(fake_server, body)
    assert status == 400 and _message(data) == "The request body is nested too deeply."


def test_undecodable_image_error_carries_no_exception_text(fake_server):
    status, data, _ = _post(fake_server, _with_image(b"\x89PNG\r\n\x1a\n not really a png"))
    assert status == 400 and "could not be decoded" in _message(data)
    assert "0x" not in _message(data) and "BytesIO" not in _message(data)


# --------------------------------------------------------------------- images
def test_image_over_the_pixel_budget_is_refused_from_its_header_without_decoding(fake_server, monkeypatch):
    from PIL import ImageFile

    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original(self))
    png = _png(8000, 8000)  # 64 megapixels in a ~60 KB request (256 MB once decoded)
    assert len(png) < 200_000
    t0 = time.monotonic()
    status, data, _ = _post(fake_server, _with_image(png))
    assert status == 400 and "megapixels" in _message(data) and data["error"]["code"] == "image_too_large"
    assert decoded == [] and time.monotonic() - t0 < 5


def test_decompression_bomb_header_gets_400_not_500(fake_server):
    status, data, _ = _post(fake_server, _with_image(_png(20000, 20000, pixels=False)))
    assert status == 400 and "megapixels" in _message(data)


def test_image_within_the_budget_still_reaches_the_engine(make_server):
    engine = FakeEngine()
    server = make_server(engine, max_image_pixels=10_000)
    status, data, _ = _post(server, _with_image(_png(100, 100)))
    assert status == 200 and engine.requests[-1].image.shape == (100, 100, 3)
    status, data, _ = _post(server, _with_image(_png(101, 100)))
    assert status == 400 and "0.01 megapixels" in _message(data)


# --------------------------------------------------------------------- tokens and work
def test_prompt_far_beyond_the_context_is_refused_before_tokenizing(tiny_server):
    t0 = time.monotonic()
    status, data, _ = _post(tiny_server, _chat("lesion " * 15_000))  # ~100 KB for a 4096-token model
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    assert "4096 tokens" in _message(data) and time.monotonic() - t0 < 5


def test_prompt_plus_max_tokens_must_fit_the_context_counted_by_the_engine_tokenizer(tiny_server, tiny_engine):
    prompt = "The liver shows a lesion. " * 200  # ~5 KB: passes the character bound, ~2600 tokens
    tokens = int(tiny_engine.encode([ChatRequest(prompt)])["input_ids"].shape[1])
    assert 4096 - 2000 < tokens < 4096
    status, data, _ = _post(tiny_server, _chat(prompt, max_tokens=2000))
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    assert f"the prompt has {tokens}" in _message(data)
    status, data, _ = _post(tiny_server, _chat(prompt * 2))  # over the context even without max_tokens
    assert status == 400 and data["error"]["code"] == "context_length_exceeded"
    status, data, _ = _post(tiny_server, _chat(prompt, max_tokens=4))
    assert status == 200 and data["usage"]["prompt_tokens"] == tokens


def test_default_max_tokens_shrinks_to_what_the_context_leaves(fake_server):
    engine = fake_server.httpd.service.engine  # context 1000 tokens, no tokenizer: 3 characters a token
    status, _, _ = _post(fake_server, _chat("x" * 2400))
    assert status == 200 and engine.requests[-1].max_new_tokens == 1000 - 800


def test_n_times_max_tokens_is_capped(fake_server):
    status, data, _ = _post(fake_server, _chat(n=32, max_tokens=4096, temperature=1.0))
    assert status == 400 and "n × max_tokens is 131072" in _message(data)


# --------------------------------------------------------------------- concurrency and timeouts
def test_requests_beyond_the_queue_get_503_with_retry_after_at_once(make_server):
    engine = FakeEngine(blocking=True)
    server = make_server(engine, max_concurrent=1, max_queue=1)
    answers: dict[str, tuple] = {}
    heavy = threading.Thread(target=lambda: answers.setdefault("heavy", _post(server, _chat("heavy"))))
    queued = threading.Thread(target=lambda: answers.setdefault("queued", _post(server, _chat("queued"))))
    heavy.start()
    assert engine.started.wait(5)
    queued.start()
    _wait_for(lambda: server.httpd.admission.waiting == 1)
    t0 = time.monotonic()
    status, data, _ = _post(server, _chat("small"), timeout=5)
    assert status == 503 and data["error"]["code"] == "server_busy" and time.monotonic() - t0 < 2
    engine.release.set()
    heavy.join(10)
    queued.join(10)
    assert answers["heavy"][0] == 200 and answers["queued"][0] == 200


def test_busy_answer_carries_retry_after(make_server):
    engine = FakeEngine(blocking=True)
    server = make_server(engine, max_concurrent=1, max_queue=0)
    heavy = threading.Thread(target=_post, args=(server, _chat("heavy")))
    heavy.start()
    assert engine.started.wait(5)
    status, data, headers = _post(server, _chat("small"), timeout=5)
    assert status == 503 and int(headers["Retry-After"]) > 0 and data["error"]["code"] == "server_busy"
    engine.release.set()
    heavy.join(10)


def test_generation_past_the_request_timeout_is_cancelled_with_504(make_server):
    engine = FakeEngine(blocking=True)
    server = make_server(engine, request_timeout=0.5)
    t0 = time.monotonic()
    status, data, _ = _post(server, _chat("never ends"), timeout=10)
    assert status == 504 and data["error"]["code"] == "timeout" and time.monotonic() - t0 < 5
    engine.release.set()
    status, data, _ = _post(server, _chat("again"), timeout=10)  # the slot was given back
    assert status == 200 and data["choices"][0]["message"]["content"] == "ok"


def test_stream_past_the_request_timeout_ends_with_an_in_band_error(make_server):
    engine = FakeEngine(blocking=True)
    server = make_server(engine, request_timeout=0.5)
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(_chat(stream=True)).encode())
    response = conn.getresponse()
    events = [line for line in response.read().decode().splitlines() if line.startswith("data: ")]
    conn.close()
    assert response.status == 200 and '"code": "timeout"' in events[-1]


def test_waiting_in_the_queue_is_bounded_by_the_request_timeout(make_server):
    engine = FakeEngine(blocking=True, honour_cancel=False)
    server = make_server(engine, max_concurrent=1, max_queue=4, request_timeout=0.5)
    heavy = threading.Thread(target=_post, args=(server, _chat("heavy")))
    heavy.start()
    assert engine.started.wait(5)
    t0 = time.monotonic()
    status, _, headers = _post(server, _chat("small"), timeout=10)
    assert status == 503 and "Retry-After" in headers and 0.4 < time.monotonic() - t0 < 5
    engine.release.set()
    heavy.join(10)


# --------------------------------------------------------------------- slow and many connections
def _closed_within(sock: socket.socket, seconds: float, drip: bytes | None) -> tuple[bool, bytes]:
    """Drip one byte every 0.1 s until the server answers or closes; (closed, what it said)."""
    received = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if select.select([sock], [], [], 0.1)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    return True, received
                received += chunk
            elif drip:
                sock.sendall(drip)
        except OSError:
            return True, received
    return False, received


def test_slow_drip_headers_are_cut_off_at_the_read_timeout(make_server):
    server = make_server(read_timeout=1.0)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nX-Drip: ")
        t0 = time.monotonic()
        closed, _ = _closed_within(sock, 6, drip=b"a")
    assert closed and time.monotonic() - t0 < 4


def test_slow_drip_body_gets_408_at_the_read_timeout(make_server):
    server = make_server(read_timeout=1.0)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(_head("Content-Length: 1000"))
        t0 = time.monotonic()
        closed, answer = _closed_within(sock, 6, drip=b" ")
    assert closed and answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 4


def test_idle_connection_is_closed_at_the_read_timeout(make_server):
    server = make_server(read_timeout=0.5)
    with socket.create_connection(server.address, timeout=5) as sock:
        closed, _ = _closed_within(sock, 4, drip=None)
    assert closed


def test_open_connections_are_bounded(make_server):
    server = make_server(max_connections=2)
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(2)]
    try:
        with socket.create_connection(server.address, timeout=5) as extra:
            answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After:" in answer
    finally:
        for sock in idle:
            sock.close()

    def healthy() -> bool:  # a closed connection frees its place
        conn = http.client.HTTPConnection(*server.address, timeout=5)
        try:
            conn.request("GET", "/health")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    _wait_for(healthy)


# --------------------------------------------------------------------- settings
def test_engine_server_treats_a_blank_api_key_as_none():
    with pytest.raises(XMedError, match="API key"):
        EngineServer(FakeEngine(), host="0.0.0.0", port=0, api_key="   ")


@pytest.mark.parametrize("budgets", [{"port": 70000}, {"max_request_bytes": -1}, {"max_concurrent": 0},
                                     {"read_timeout": float("nan")}], ids=str)
def test_engine_server_refuses_impossible_settings_with_one_line(budgets):
    settings = {"host": "127.0.0.1", "port": 0, **budgets}
    with pytest.raises(XMedError) as info:
        EngineServer(FakeEngine(), **settings)
    assert "\n" not in str(info.value)


def _serve(argv: list[str], monkeypatch) -> argparse.Namespace:
    """Parse ``serve`` arguments; loading a model fails the test (it must not happen)."""
    from app.commands import serve
    from inference.engine.local import LocalEngine

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(LocalEngine, "from_folder", no_loading)
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


BAD_ARGUMENTS = {
    "port 70000": (["--port", "70000"], "70000"),
    "port -1": (["--port", "-1"], "-1"),
    "negative request size": (["--max-request-mb", "-1"], "--max-request-mb"),
    "nan request size": (["--max-request-mb", "nan"], "--max-request-mb"),
    "blank key on 0.0.0.0": (["--host", "0.0.0.0", "--api-key", "   "], "API key"),
    "no concurrency": (["--max-concurrent", "0"], "--max-concurrent"),
    "zero read timeout": (["--read-timeout", "0"], "--read-timeout"),
    "tiny context": (["--context-tokens", "3"], "--context-tokens"),
    "key with spaces": (["--api-key", "my key"], "API key"),
}


@pytest.mark.parametrize("argv, mentions", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_serve_command_checks_arguments_before_loading_the_model(argv, mentions, tmp_path, monkeypatch):
    monkeypatch.delenv("XMEDGPT_API_KEY", raising=False)
    args = _serve(["--model", str(tmp_path), *argv], monkeypatch)
    with pytest.raises(XMedError) as info:
        args.func(args)
    assert mentions in str(info.value) and "\n" not in str(info.value)


def test_serve_command_treats_a_blank_environment_key_as_none(tmp_path, monkeypatch):
    monkeypatch.setenv("XMEDGPT_API_KEY", "  \t")
    args = _serve(["--model", str(tmp_path), "--host", "0.0.0.0"], monkeypatch)
    with pytest.raises(XMedError, match="API key"):
        args.func(args)


def test_serve_command_reports_a_busy_port_before_loading_the_model(tmp_path, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = _serve(["--model", str(tmp_path), "--port", str(taken.getsockname()[1])], monkeypatch)
        with pytest.raises(XMedError, match="Cannot listen"):
            args.func(args)


@pytest.mark.parametrize("config", ['{"architectures": {"a": 1}}', "[]", '{"text_config": "x"}'])
def test_serve_command_refuses_a_malformed_model_folder_before_loading(config, tmp_path, monkeypatch):
    """The same folder check as models add and analyze --model: a broken config is one line, not a traceback."""
    monkeypatch.delenv("XMEDGPT_API_KEY", raising=False)
    (tmp_path / "config.json").write_text(config)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 64)
    args = _serve(["--model", str(tmp_path), "--port", "0"], monkeypatch)
    with pytest.raises(XMedError) as info:
        args.func(args)
    assert "\n" not in str(info.value)
