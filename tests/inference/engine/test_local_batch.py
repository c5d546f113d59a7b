"""LocalEngine.generate_batch: several requests in one left-padded generate give each request's own greedy
answer (prompts and images of different sizes, so rows are padded), in order; cancel stops the batch.
RemoteEngine.generate_batch sends the requests concurrently."""

from __future__ import annotations

import platform
import threading
import time

import numpy as np
import pytest
import torch

from inference.engine.local import LocalEngine
from inference.engine.remote import RemoteEngine
from inference.types import ChatRequest, Generation


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> LocalEngine:
    return LocalEngine.from_folder(tiny_model_dir, device="cpu")


def requests() -> list[ChatRequest]:
    rng = np.random.default_rng(3)
    shapes = [(64, 64, 3), (90, 200, 3), (150, 60, 3)]  # different tile counts: different prompt lengths
    prompts = ["Locate every lesion in this image and give its bounding box.", "Where?", "Locate every lesion."]
    return [ChatRequest(prompt=p, image=rng.integers(0, 256, size=s, dtype=np.uint8), max_new_tokens=m)
            for p, s, m in zip(prompts, shapes, (12, 16, 9))]


def test_batch_equals_one_by_one(engine):
    reqs = requests()
    lengths = {int(engine.encode([r])["input_ids"].shape[1]) for r in reqs}
    assert len(lengths) == 3  # really padded
    single = [engine.generate(r) for r in reqs]
    batch = engine.generate_batch(reqs)
    assert len(batch) == 3
    for a, b, r in zip(single, batch, reqs):
        assert b.token_ids == a.token_ids and b.text == a.text
        assert len(b.token_ids) <= r.max_new_tokens
        np.testing.assert_allclose(b.token_logprobs, a.token_logprobs, atol=1e-4)
        assert b.finish_reason == a.finish_reason


def test_empty_batch_and_cancel(engine):
    assert engine.generate_batch([]) == []
    out = engine.generate_batch(requests(), cancel=lambda: True)
    assert all(g.finish_reason == "cancelled" for g in out)


def test_remote_generate_batch_runs_requests_concurrently(monkeypatch):
    remote = RemoteEngine("http://127.0.0.1:9/v1", model="m", max_parallel=4)
    active, peak = [0], [0]
    lock = threading.Lock()

    def fake_generate(request, cancel=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return Generation(text=request.prompt)

    monkeypatch.setattr(remote, "generate", fake_generate)
    reqs = [ChatRequest(prompt=str(i)) for i in range(8)]
    out = remote.generate_batch(reqs)
    assert [g.text for g in out] == [str(i) for i in range(8)]  # in order
    assert peak[0] == 4  # max_parallel requests in flight at once


def test_generate_encoded_answers_as_generate_batch(engine):
    """The split the pre-read's sweep pipelines: encode (on the CPU, on another thread, while the engine is
    busy generating) + generate_encoded gives exactly generate_batch's answers."""
    reqs = requests()
    reference = engine.generate_batch(reqs)
    encoded: dict = {}
    started = threading.Event()

    def encode_ahead() -> None:
        started.wait(10)
        encoded["inputs"] = engine.encode(reqs, on_device=False)
        encoded["thread"] = threading.current_thread().name

    worker = threading.Thread(target=encode_ahead, name="encode-ahead")
    worker.start()

    def busy() -> bool:  # generation is under way: let the other thread encode now
        started.set()
        return False

    during = engine.generate_batch(reqs, cancel=busy)
    worker.join(10)
    assert encoded["thread"] == "encode-ahead"
    assert set(encoded["inputs"]) >= {"input_ids", "attention_mask", "pixel_values"}
    assert all(t.device.type == "cpu" for t in encoded["inputs"].values())
    out = engine.generate_encoded(reqs, encoded["inputs"])
    for ref, a, b in zip(reference, during, out):
        assert b.token_ids == ref.token_ids == a.token_ids and b.text == ref.text
        assert b.token_logprobs == ref.token_logprobs and b.finish_reason == ref.finish_reason
    assert engine.generate_encoded([], encoded["inputs"]) == []
    with pytest.raises(ValueError, match="3 encoded rows for 2 requests"):
        engine.generate_encoded(reqs[:2], encoded["inputs"])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_cpu_engine_reuses_the_blocks_a_growing_cache_frees(engine):
    """Generation on the CPU grows each layer's key/value cache by one copy per token (16 rows: ~2 MB tensors);
    glibc is told to reuse the freed blocks instead of mapping fresh pages for each. Counted on this thread
    (RUSAGE_THREAD: the process-wide count also holds the suite's other threads; one clean-clone run read 1 082
    there): in fresh processes this loop took 9 600–12 300 faults on its thread with glibc's defaults and 0–501
    with the engine's setting."""
    import resource

    from inference.engine import local

    def grow() -> list[torch.Tensor]:
        layers = [torch.zeros(16, 2, 420, 32) for _ in range(8)]
        step = torch.ones(16, 2, 1, 32)
        for _ in range(96):
            layers = [torch.cat([k, step], dim=2) for k in layers]
        return layers

    grow()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    assert grow()[0].shape == (16, 2, 516, 32)
    assert resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before < 3000
    assert local._allocator_tuned is True and local.keep_freed_memory() is True
