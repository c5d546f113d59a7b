"""The shared prompt head (the system prompt, ~350 tokens of the ~420 a sweep request reads) is read once and
its key/value cache reused: the answers must be those of reading every prompt whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import inference.engine.local as local_mod
from inference.engine.local import LocalEngine
from inference.types import ChatRequest
from tests.inference.engine.test_local import greedy_by_hand, sequence_logprobs

SYSTEM = ("You are XMedGPT, a medical imaging assistant helping a radiologist read one image from a DICOM study. "
          "Describe only what is visible in this image; your answer is a draft for the radiologist to check.")


@pytest.fixture
def engine(tiny_model_dir) -> LocalEngine:
    return LocalEngine.from_folder(tiny_model_dir, device="cpu")


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_a_long_system_prompt_is_read_once_and_answers_match_whole_prompts(engine):
    image = _images(1)[0]
    request = ChatRequest("Where is the nodule?", image, system=SYSTEM, max_new_tokens=8)
    inputs = engine.encode([request])
    head, pads = engine._shared_head(inputs["input_ids"], inputs["attention_mask"])
    assert pads.tolist() == [0]
    first_image = int(torch.isin(inputs["input_ids"][0], engine._image_ids).nonzero()[0])
    assert local_mod.HEAD_CACHE_MIN_TOKENS <= head <= first_image  # the system prompt, never the image

    result = engine.generate(request)
    assert len(engine._heads) == 1
    tokens, logprobs = greedy_by_hand(engine, request, 8)  # full forwards, no cache at all
    kept = [t for t in tokens if t not in engine.eos_ids]
    assert result.token_ids == kept
    assert np.allclose(result.token_logprobs, logprobs[: len(kept)], atol=1e-4)
    assert "".join(engine.stream(request)) == result.text  # the streamed path reads the head from the cache too
    assert len(engine._heads) == 1  # same head: read once


def test_a_batch_sharing_the_head_answers_as_each_request_alone(engine):
    requests = [ChatRequest("Locate every lesion.", im, system=SYSTEM, max_new_tokens=6) for im in _images(3)]
    batch = engine.generate_batch(requests)
    for request, got in zip(requests, batch):
        tokens, logprobs = greedy_by_hand(engine, request, 6)
        kept = [t for t in tokens if t not in engine.eos_ids]
        assert got.token_ids == kept
        assert np.allclose(got.token_logprobs, logprobs[: len(kept)], atol=1e-4)


def test_a_left_padded_batch_shares_the_head_and_answers_as_each_request_alone(engine):
    """Questions of different lengths (the reliability pass's) are left padded: each row's head sits after its
    padding, and the cache is laid out so."""
    images = _images(3)
    mixed = [ChatRequest("Where?", images[0], system=SYSTEM, max_new_tokens=6),
             ChatRequest("Is there a mass in the right lower lobe of this lung, and how large is it?", images[1],
                         system=SYSTEM, max_new_tokens=6),
             ChatRequest("Which side is the nodule on?", None, system=SYSTEM, max_new_tokens=6)]
    inputs = engine.encode(mixed)
    head, pads = engine._shared_head(inputs["input_ids"], inputs["attention_mask"])
    assert head >= local_mod.HEAD_CACHE_MIN_TOKENS and pads.min() == 0 and pads.max() > 0
    answers = engine.generate_batch(mixed)
    assert len(engine._heads) == 1
    for request, got in zip(mixed, answers):
        tokens, logprobs = greedy_by_hand(engine, request, 6)  # alone, unpadded, no cache at all
        kept = [t for t in tokens if t not in engine.eos_ids]
        assert got.token_ids == kept
        assert np.allclose(got.token_logprobs, logprobs[: len(kept)], atol=1e-4)
    drawn = engine.sample(mixed, n=2, temperature=1.0, top_p=0.95, seed=4)
    for request, samples in zip(mixed, drawn):
        for s in samples:
            assert np.allclose(s.token_logprobs, sequence_logprobs(engine, request, s.token_ids), atol=1e-4)


def test_other_heads_read_whole_prompts_and_the_cache_is_bounded(engine, monkeypatch):
    image = _images(1)[0]
    other = [ChatRequest("Where?", image, system=SYSTEM, max_new_tokens=4),
             ChatRequest("Where?", image, system="Answer in one word. " + SYSTEM, max_new_tokens=4)]
    inputs = engine.encode(other)
    assert engine._shared_head(inputs["input_ids"], inputs["attention_mask"]) is None  # they differ early
    answers = engine.generate_batch(other)
    monkeypatch.setattr(local_mod, "HEAD_CACHE_MIN_TOKENS", 10**9)
    assert [a.token_ids for a in answers] == [engine.generate(r).token_ids for r in other]

    monkeypatch.setattr(local_mod, "HEAD_CACHE_MIN_TOKENS", 16)
    monkeypatch.setattr(local_mod, "HEAD_CACHE_ENTRIES", 2)
    for i in range(4):
        engine.generate(ChatRequest("Where?", image, system=f"{SYSTEM} Variant {i}.", max_new_tokens=2))
    assert len(engine._heads) == 2  # bounded


def test_sampling_from_the_head_cache_scores_like_a_whole_forward(engine):
    request = ChatRequest("Where is the nodule?", _images(1)[0], system=SYSTEM, max_new_tokens=6)
    samples = engine.sample([request], n=3, temperature=1.0, top_p=0.95, seed=3)[0]
    assert len(engine._heads) == 1
    for s in samples:
        assert np.allclose(s.token_logprobs, sequence_logprobs(engine, request, s.token_ids), atol=1e-4)


def test_a_batch_drops_rows_that_finished_and_the_others_answer_as_before(engine, monkeypatch):
    """A greedy batch decodes FIRST_PASS_TOKENS for every row, then only the rows still writing."""
    requests = [ChatRequest(f"Locate every lesion ({i}).", im, system=SYSTEM, max_new_tokens=14)
                for i, im in enumerate(_images(3))]
    monkeypatch.setattr(local_mod, "FIRST_PASS_TOKENS", 10**6)  # one pass: the reference
    reference = engine.generate_batch(requests, top_logprobs=2)
    lengths = [len(a.token_ids) for a in reference]
    assert min(lengths) < 8 < max(lengths)  # this tiny model: one row ends early, others write on

    monkeypatch.setattr(local_mod, "FIRST_PASS_TOKENS", 8)
    calls = []
    run = engine._run_generate
    monkeypatch.setattr(engine, "_run_generate",
                        lambda *a, **kw: calls.append(kw["input_ids"].shape[0]) or run(*a, **kw))
    two_pass = engine.generate_batch(requests, top_logprobs=2)
    assert calls == [3, sum(n > 8 for n in lengths)]  # the second pass carries only the rows still writing
    for got, want in zip(two_pass, reference):
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
        assert np.allclose(got.token_logprobs, want.token_logprobs, atol=1e-4)
        assert [[t for t, _ in step] for step in got.top_logprobs] == [[t for t, _ in step] for step in want.top_logprobs]


def test_questions_without_a_system_prompt_are_not_padded_to_one_with_it(engine, monkeypatch):
    """A reliability pass samples short questions (no system prompt) with a grounding request (the system
    prompt): batched apart, one batch per system prompt, each as if sampled alone, in the order asked."""
    image = _images(1)[0]
    questions = [ChatRequest("Is there a mass? Answer yes or no.", image, max_new_tokens=5),
                 ChatRequest("Which side?", image, max_new_tokens=5)]
    grounding = ChatRequest("Locate the mass.", image, system=SYSTEM, max_new_tokens=5)
    widths = []
    encode = engine.encode
    monkeypatch.setattr(engine, "encode", lambda reqs, **kw: widths.append(encode(reqs, **kw)["input_ids"].shape) or
                        encode(reqs, **kw))
    mixed = engine.sample([questions[0], grounding, questions[1]], n=3)
    assert [w[0] for w in widths] == [2, 1]  # two batches: the questions, then the grounding request
    alone_q = engine.sample(questions, n=3)
    alone_g = engine.sample([grounding], n=3)
    ids = lambda row: [s.token_ids for s in row]  # noqa: E731
    assert [ids(r) for r in mixed] == [ids(alone_q[0]), ids(alone_g[0]), ids(alone_q[1])]


def test_a_four_bit_model_reads_the_head_from_the_cache_as_it_reads_it_whole(tiny_model_dir, monkeypatch):
    """The workstation's real checkpoints run in NF4: the head cache must hold there too."""
    engine = LocalEngine.from_folder(tiny_model_dir, device="cpu", quantization="nf4")
    requests = [ChatRequest(f"Where is the nodule ({i})?", im, system=SYSTEM, max_new_tokens=6)
                for i, im in enumerate(_images(2))]
    cached = [a.token_ids for a in engine.generate_batch(requests)] + [engine.generate(requests[0]).token_ids]
    assert len(engine._heads) == 1
    monkeypatch.setattr(local_mod, "HEAD_CACHE_MIN_TOKENS", 10**9)
    whole = [a.token_ids for a in engine.generate_batch(requests)] + [engine.generate(requests[0]).token_ids]
    assert cached == whole


def test_a_loaded_model_reads_the_assistants_system_prompt_before_the_first_question(tiny_model_dir, monkeypatch):
    from app.assistant.session import ModelChoice, open_engine
    from inference.prompts import Task, build_prompt

    engine = open_engine(ModelChoice("local", folder=tiny_model_dir), device="cpu")
    assert len(engine._heads) == 1  # read at load
    kept_before = []
    head_cache = engine._head_cache
    monkeypatch.setattr(engine, "_head_cache",
                        lambda head, rows: kept_before.append(tuple(head.tolist()) in engine._heads) or
                        head_cache(head, rows))
    prompt = build_prompt(Task.REASONING, "Describe the findings on this slice.")  # a viewer button's question
    engine.generate(ChatRequest(prompt.user, _images(1)[0], system=prompt.system, max_new_tokens=2))
    assert kept_before == [True] and len(engine._heads) == 1  # the first question found its head read
