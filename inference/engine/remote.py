"""The remote engine: any OpenAI-compatible chat-completions server (vLLM, LMDeploy, ``xmedgpt serve``).

Stdlib HTTP only (no extra dependency). Images travel as base64 PNG data URLs;
``n`` samples and per-token ``logprobs`` come from the same API. The request
asks the server to keep special tokens (vLLM's ``skip_special_tokens: false``)
so that ``<ref>``/``<box>`` grounding survives.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import socket
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from inference.errors import XMedError
from inference.types import CancelFn, ChatRequest, Generation, sampling_seed

log = logging.getLogger(__name__)


class RemoteEngineError(XMedError):
    """The remote model server could not be reached or refused the request."""


def image_data_url(image: np.ndarray) -> str:
    """RGB uint8 array → ``data:image/png;base64,…``."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_messages(request: ChatRequest) -> list[dict]:
    """OpenAI chat messages for one request: optional system, then the image and the question."""
    messages: list[dict] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    content: list[dict] = []
    if request.image is not None:
        content.append({"type": "image_url", "image_url": {"url": image_data_url(request.image)}})
    content.append({"type": "text", "text": request.prompt})
    messages.append({"role": "user", "content": content})
    return messages


def _generation(choice: dict) -> Generation:
    content = (choice.get("message") or {}).get("content") or ""
    lp = choice.get("logprobs") or {}
    logprobs = [float(t["logprob"]) for t in (lp.get("content") or [])]
    return Generation(text=content, token_logprobs=logprobs, finish_reason=choice.get("finish_reason") or "stop")


class RemoteEngine:
    """An :class:`~inference.types.Engine` that talks to ``{base_url}/chat/completions``.

    ``base_url`` is the OpenAI-style root, e.g. ``http://gpu-server:8000/v1``.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_parallel: int = 8,
    ) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteEngineError(f"'{base_url}' is not a server address; use e.g. http://gpu-server:8000/v1.")
        self.base_url = base_url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path or ""
        self.api_key = api_key
        self.timeout = timeout
        self.max_parallel = max_parallel
        self._model = model

    # ----------------------------------------------------------------- HTTP
    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=self.timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _open(self, method: str, path: str, body: dict | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection()
        data = json.dumps(body).encode() if body is not None else None
        try:
            conn.request(method, self._path + path, body=data, headers=self._headers())
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise RemoteEngineError(
                f"The model server at {self.base_url} cannot be reached; check the address and that it is running.",
                detail=str(exc),
            ) from exc
        if response.status >= 400:
            raw = response.read()
            conn.close()
            raise self._http_error(response.status, raw)
        return conn, response

    def _http_error(self, status: int, raw: bytes) -> RemoteEngineError:
        try:
            message = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace")[:200]
        if status == 401:
            return RemoteEngineError(f"The model server at {self.base_url} refused the API key.", detail=message)
        if status == 413:
            return RemoteEngineError("The request was too large for the model server (image too big?).", detail=message)
        return RemoteEngineError(f"The model server answered with an error ({status}): {message}", detail=message)

    def _json(self, method: str, path: str, body: dict | None = None) -> dict:
        conn, response = self._open(method, path, body)
        try:
            return json.loads(response.read())
        except ValueError as exc:
            raise RemoteEngineError(f"The model server at {self.base_url} sent an unreadable answer.") from exc
        finally:
            conn.close()

    # ----------------------------------------------------------------- identity
    @property
    def model_id(self) -> str:
        if self._model is None:
            models = self._json("GET", "/models").get("data") or []
            if not models:
                raise RemoteEngineError(f"The model server at {self.base_url} offers no model.")
            self._model = str(models[0]["id"])
        return self._model

    def describe(self) -> str:
        return f"{self.model_id} · remote ({self._host})"

    # ----------------------------------------------------------------- Engine
    def _body(self, request: ChatRequest, **extra) -> dict:
        return {
            "model": self.model_id,
            "messages": chat_messages(request),
            "max_tokens": request.max_new_tokens,
            "skip_special_tokens": False,  # vLLM: keep <ref>/<box>
            **extra,
        }

    def generate(self, request: ChatRequest, cancel: CancelFn | None = None) -> Generation:
        if cancel is not None and cancel():
            return Generation(text="", finish_reason="cancelled")
        answer = self._json("POST", "/chat/completions", self._body(request, temperature=0.0, logprobs=True))
        return _generation(answer["choices"][0])

    def generate_batch(self, requests: Sequence[ChatRequest], cancel: CancelFn | None = None) -> list[Generation]:
        """Greedy answers to several requests, sent concurrently (up to ``max_parallel`` at a time) so a
        server with continuous batching (vLLM) runs them together; in the order given. A request not yet
        sent when ``cancel()`` turns True is answered empty with ``finish_reason`` "cancelled"."""
        if not requests:
            return []
        if len(requests) == 1:
            return [self.generate(requests[0], cancel)]
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_parallel, len(requests)))) as pool:
            return list(pool.map(lambda r: self.generate(r, cancel), requests))

    def stream(self, request: ChatRequest, cancel: CancelFn | None = None) -> Iterator[str]:
        conn, response = self._open("POST", "/chat/completions", self._body(request, temperature=0.0, stream=True))
        try:
            for raw in response:
                if cancel is not None and cancel():
                    return
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RemoteEngineError(f"The model server failed while answering: {chunk['error'].get('message')}")
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
        except (OSError, http.client.HTTPException, socket.timeout) as exc:
            raise RemoteEngineError(f"The connection to the model server at {self.base_url} broke off.") from exc
        finally:
            conn.close()

    def sample(
        self,
        requests: Sequence[ChatRequest],
        n: int,
        temperature: float = 1.0,
        top_p: float = 0.9,
        cancel: CancelFn | None = None,
        *,
        seed: int | None = None,
    ) -> list[list[Generation]]:
        """One call per request with ``n`` choices; requests run concurrently so the server can batch them.
        Each call carries a ``seed`` (``seed``, or :func:`~inference.types.sampling_seed` of that request):
        vLLM and this project's server then answer the same question about the same image with the same
        samples."""

        def one(request: ChatRequest) -> list[Generation]:
            if cancel is not None and cancel():
                return [Generation(text="", finish_reason="cancelled") for _ in range(n)]
            drawn = sampling_seed([request], n, temperature, top_p) if seed is None else seed
            body = self._body(request, n=n, temperature=temperature, top_p=top_p, logprobs=True, seed=drawn)
            choices = sorted(self._json("POST", "/chat/completions", body)["choices"], key=lambda c: c["index"])
            return [_generation(c) for c in choices]

        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_parallel, len(requests)))) as pool:
            return list(pool.map(one, requests))
