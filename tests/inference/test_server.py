"""The OpenAI-compatible server on loopback, driven by RemoteEngine and by the openai client."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest

from inference.engine.local import LocalEngine
from inference.engine.remote import RemoteEngine, RemoteEngineError
from inference.errors import XMedError
from inference.server import EngineServer
from inference.types import ChatRequest

KEY = "s3cret-token"


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> LocalEngine:
    return LocalEngine.from_folder(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def server(engine):
    with EngineServer(engine, host="127.0.0.1", port=0, max_request_bytes=2_000_000) as srv:
        yield srv


@pytest.fixture(scope="module")
def secured(engine):
    with EngineServer(engine, host="127.0.0.1", port=0, api_key=KEY) as srv:
        yield srv


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(64, 120, 3), dtype=np.uint8)


def test_remote_engine_generate_equals_the_local_engine(server, engine, image):
    remote = RemoteEngine(server.url)
    assert remote.model_id == engine.model_id
    assert remote.describe() == "tiny InternVL (random) · remote (127.0.0.1)"
    request = ChatRequest("Where is the nodule?", image, system="Be brief.", max_new_tokens=8)
    local = engine.generate(request)
    answer = remote.generate(request)
    assert answer.text == local.text  # the PNG data URL carries the exact pixels
    assert np.allclose(answer.token_logprobs, local.token_logprobs, atol=1e-5)
    assert answer.finish_reason == local.finish_reason


def test_remote_engine_streams(server, engine, image):
    request = ChatRequest("Describe the image.", image, max_new_tokens=8)
    pieces = list(RemoteEngine(server.url).stream(request))
    assert len(pieces) > 1 and "".join(pieces) == engine.generate(request).text


def test_remote_engine_samples_n_with_logprobs(server, image):
    requests = [ChatRequest("Where?", image, max_new_tokens=5), ChatRequest("What organ?", None, max_new_tokens=3)]
    results = RemoteEngine(server.url).sample(requests, n=3, temperature=1.0, top_p=0.95)
    assert [len(r) for r in results] == [3, 3]
    for request, samples in zip(requests, results):
        for s in samples:
            assert 0 < len(s.token_logprobs) <= request.max_new_tokens
            assert all(lp <= 0 for lp in s.token_logprobs)


def test_remote_samples_are_reproducible_and_a_client_seed_is_honoured(server, engine, image):
    """RemoteEngine sends a seed drawn from the request (vLLM honours it, as this server does): the same
    question about the same image samples the same answers, here and through the local engine."""
    remote = RemoteEngine(server.url)
    request = ChatRequest("Where?", image, max_new_tokens=6)
    first = remote.sample([request], n=3, temperature=1.0, top_p=0.95)[0]
    again = remote.sample([request], n=3, temperature=1.0, top_p=0.95)[0]
    assert [g.text for g in again] == [g.text for g in first]
    local = engine.sample([request], n=3, temperature=1.0, top_p=0.95)[0]
    assert [g.text for g in local] == [g.text for g in first]  # the same seed, the same pixels
    seeded = [[g.text for g in remote.sample([request], n=3, temperature=1.0, top_p=0.95, seed=s)[0]]
              for s in (11, 11, 12)]
    assert seeded[0] == seeded[1] != seeded[2]


def test_openai_client_plain_stream_and_n_with_logprobs(server, engine, image):
    openai = pytest.importorskip("openai")
    from inference.engine.remote import chat_messages

    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [engine.model_id]
    request = ChatRequest("Where is the nodule?", image, max_new_tokens=6)
    messages = chat_messages(request)

    plain = client.chat.completions.create(model=engine.model_id, messages=messages, max_tokens=6, temperature=0)
    assert plain.choices[0].message.content == engine.generate(request).text
    assert plain.usage.prompt_tokens == engine.encode([request])["input_ids"].shape[1]
    assert plain.usage.completion_tokens == len(engine.generate(request).token_ids)

    chunks = client.chat.completions.create(model=engine.model_id, messages=messages, max_tokens=6, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content

    sampled = client.chat.completions.create(model=engine.model_id, messages=messages, max_tokens=6, n=4,
                                             temperature=1.0, logprobs=True, top_logprobs=2)
    assert sorted(c.index for c in sampled.choices) == [0, 1, 2, 3]
    for choice in sampled.choices:
        content = choice.logprobs.content
        assert len(content) > 0
        if "\ufffd" not in choice.message.content:  # a token may hold half a UTF-8 character
            assert "".join(t.token for t in content) == choice.message.content
        for t in content:
            assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
            assert t.logprob <= t.top_logprobs[0].logprob + 1e-6

    stream_n = client.chat.completions.create(model=engine.model_id, messages=messages, max_tokens=4, n=2,
                                              temperature=0.8, logprobs=True, stream=True)
    texts = {0: "", 1: ""}
    for chunk in stream_n:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert all(texts.values())


def test_api_key_is_required_when_configured(secured):
    with pytest.raises(RemoteEngineError, match="refused the API key"):
        RemoteEngine(secured.url, api_key="wrong").generate(ChatRequest("Hi", None, max_new_tokens=2))
    with pytest.raises(RemoteEngineError, match="refused the API key"):
        _ = RemoteEngine(secured.url).model_id
    answer = RemoteEngine(secured.url, api_key=KEY).generate(ChatRequest("Hi", None, max_new_tokens=2))
    assert answer.token_logprobs


def test_non_loopback_bind_needs_an_api_key(engine):
    with pytest.raises(XMedError, match="API key"):
        EngineServer(engine, host="0.0.0.0", port=0)


def _post(server, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    host, port = server.address
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    status, data = response.status, json.loads(response.read())
    conn.close()
    return status, data


def test_oversized_request_is_rejected_before_reading(server):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 3_000_000}]}).encode()
    status, data = _post(server, big)
    assert status == 413 and "exceeds the limit" in data["error"]["message"]


def test_bad_requests_get_clear_json_errors(server):
    status, data = _post(server, b"{not json")
    assert status == 400 and data["error"]["message"] == "The request body is not valid JSON."
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.org/x.png"}}, {"type": "text", "text": "?"}]}]}
    status, data = _post(server, json.dumps(body).encode())
    assert status == 400 and "fetches nothing" in data["error"]["message"]
    status, data = _post(server, json.dumps({"messages": [{"role": "user", "content": "a"}], "n": 3}).encode())
    assert status == 400 and "temperature" in data["error"]["message"]
    for seed, says in (("7", "whole number"), (1.5, "whole number"), (2**70, "between")):
        body = {"messages": [{"role": "user", "content": "a"}], "n": 2, "temperature": 1.0, "seed": seed}
        status, data = _post(server, json.dumps(body).encode())
        assert status == 400 and "'seed'" in data["error"]["message"] and says in data["error"]["message"]


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(RemoteEngineError, match="cannot be reached"):
        RemoteEngine("http://127.0.0.1:9/v1", model="x", timeout=2).generate(ChatRequest("Hi"))


def test_client_leaving_a_stream_frees_the_model(server, image):
    import time

    from inference.engine.remote import chat_messages

    host, port = server.address
    body = json.dumps({"messages": chat_messages(ChatRequest("Describe.", image)), "max_tokens": 2000,
                       "stream": True}).encode()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    assert response.readline().startswith(b"data: ")
    conn.close()  # the reader goes away long before 2000 tokens
    t0 = time.monotonic()
    answer = RemoteEngine(server.url).generate(ChatRequest("Hi", None, max_new_tokens=2))
    assert answer.token_logprobs and time.monotonic() - t0 < 20
