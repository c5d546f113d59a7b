"""LocalEngine on a tiny random InternVL: load, quantize, generate, stream, sample, save, cancel, refuse."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import torch

from inference.engine import memory
from inference.engine.local import _END, LocalEngine, ModelLoadError, _PieceStreamer
from inference.types import ChatRequest, Engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> LocalEngine:
    return LocalEngine.from_folder(tiny_model_dir, device="cpu")


@pytest.fixture
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(90, 200, 3), dtype=np.uint8)  # wide: several tiles


def greedy_by_hand(engine: LocalEngine, request: ChatRequest, steps: int) -> tuple[list[int], list[float]]:
    """Greedy decoding with full forwards (no cache), the reference for the engine's fast path."""
    inputs = engine.encode([request])
    ids = inputs["input_ids"]
    tokens, logprobs = [], []
    with torch.inference_mode():
        for _ in range(steps):
            logits = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  pixel_values=inputs.get("pixel_values")).logits[0, -1]
            logp = torch.log_softmax(logits.float(), -1)
            allowed = logp.clone()
            allowed[engine.suppressed_ids] = -float("inf")  # image placeholders are never generated
            tok = int(allowed.argmax())
            tokens.append(tok)
            logprobs.append(float(logp[tok]))
            if tok in engine.eos_ids:
                break
            ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    return tokens, logprobs


def sequence_logprobs(engine: LocalEngine, request: ChatRequest, token_ids: list[int]) -> list[float]:
    """Log-probs of ``token_ids`` after ``request``'s prompt, from one unpadded forward."""
    inputs = engine.encode([request])
    prompt = inputs["input_ids"]
    ids = torch.cat([prompt, torch.tensor([token_ids])], dim=1)
    with torch.inference_mode():
        logits = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              pixel_values=inputs.get("pixel_values")).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    start = prompt.shape[1] - 1
    return [float(logp[start + i, t]) for i, t in enumerate(token_ids)]


def test_loads_from_folder_and_describes_itself(engine):
    assert isinstance(engine, Engine)
    assert engine.model_id == "tiny InternVL (random)"
    assert engine.describe() == "tiny InternVL (random) · CPU"
    assert engine.model.dtype == torch.float32


def test_progress_is_reported_while_loading(tiny_model_dir):
    seen: list[tuple[str, float]] = []
    LocalEngine.from_folder(tiny_model_dir, device="cpu", progress=lambda m, f: seen.append((m, f)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(seen) >= 3
    assert any(m.startswith("reading weights") for m, _ in seen)


def test_loading_can_be_cancelled_while_weights_are_read(tiny_model_dir):
    from inference.engine.local import LoadCancelled

    with pytest.raises(LoadCancelled, match="cancelled"):
        LocalEngine.from_folder(tiny_model_dir, device="cpu", cancel=lambda: True)


def test_image_is_tiled_and_expanded_into_image_tokens(engine, image):
    inputs = engine.encode([ChatRequest("Where?", image)])
    tiles = inputs["pixel_values"].shape[0]
    assert tiles > 2  # wide image: a grid of tiles plus the thumbnail
    n_ctx = int((inputs["input_ids"] == engine.model.config.image_token_id).sum())
    assert n_ctx == tiles * engine.processor.image_seq_length


def test_generate_matches_greedy_decoding_by_hand(engine, image):
    request = ChatRequest("Where is the nodule?", image, system="You are a radiologist.", max_new_tokens=8)
    result = engine.generate(request)
    tokens, logprobs = greedy_by_hand(engine, request, 8)
    kept = [t for t in tokens if t not in engine.eos_ids]
    assert result.token_ids == kept
    assert np.allclose(result.token_logprobs, logprobs[: len(kept)], atol=1e-4)
    assert result.text == engine.tokenizer.decode(kept, skip_special_tokens=False)
    assert result.finish_reason in ("stop", "length")
    assert engine.generate(request).text == result.text  # greedy is deterministic


def test_top_logprobs_are_sorted_and_contain_the_greedy_token(engine, image):
    result = engine.generate(ChatRequest("Describe.", image, max_new_tokens=4), top_logprobs=3)
    assert len(result.top_logprobs) == len(result.token_ids)
    for chosen, lp, top in zip(result.tokens, result.token_logprobs, result.top_logprobs):
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True) and len(top) == 3
        assert top[0][0] == chosen and top[0][1] == pytest.approx(lp, abs=1e-5)


def test_stream_yields_the_same_text_piece_by_piece(engine, image):
    request = ChatRequest("Where is the nodule?", image, max_new_tokens=10)
    pieces = list(engine.stream(request))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.generate(request).text


def test_streamer_keeps_grounding_tokens_and_drops_eos(engine):
    tok = engine.tokenizer
    out: queue.Queue = queue.Queue()
    streamer = _PieceStreamer(tok, engine._drop_ids, out)
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt, skipped
    text = "<ref>nodule</ref><box>[[120,200,180,260]]</box>"
    for t in tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]:
        streamer.put(torch.tensor([t]))
    streamer.end()
    pieces = []
    while (item := out.get()) is not _END:
        pieces.append(item)
    assert "".join(pieces) == text


def test_sample_batches_requests_and_log_probs_match_a_recomputed_forward(engine, image):
    torch.manual_seed(0)
    requests = [
        ChatRequest("Where is the nodule?", image, max_new_tokens=6),
        ChatRequest("Is there a fracture in this hand radiograph?", None, max_new_tokens=4),
    ]
    results = engine.sample(requests, n=3, temperature=1.0, top_p=0.95)
    assert [len(r) for r in results] == [3, 3]
    for request, samples in zip(requests, results):
        assert len({tuple(s.token_ids) for s in samples}) > 1  # really sampled
        for s in samples:
            assert 0 < len(s.token_ids) <= request.max_new_tokens
            assert len(s.token_logprobs) == len(s.token_ids)
            expected = sequence_logprobs(engine, request, s.token_ids)
            assert np.allclose(s.token_logprobs, expected, atol=1e-4)


def test_the_same_question_about_the_same_image_samples_the_same_answers(engine, image):
    """The reliability light is drawn from samples: asked again, the same question about the same slice must
    light the same, and an audited answer must be reproducible. The process's random state is untouched."""
    requests = [ChatRequest("Where is the nodule?", image, max_new_tokens=8)]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = engine.sample(requests, n=4, temperature=1.0, top_p=0.95)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # whatever else ran in between
    again = engine.sample(requests, n=4, temperature=1.0, top_p=0.95)
    assert [s.token_ids for s in again[0]] == [s.token_ids for s in first[0]]
    assert len({tuple(s.token_ids) for s in first[0]}) > 1  # still n different draws

    def draws(**kw) -> list:
        return [s.token_ids for s in engine.sample(**{"requests": requests, "n": 4, "temperature": 1.0,
                                                      "top_p": 0.95, **kw})[0]]
    other_image = image.copy()
    other_image[0, 0, 0] ^= 1  # one pixel
    assert draws(requests=[ChatRequest("Where is the nodule?", other_image, max_new_tokens=8)]) != draws()
    assert draws(requests=[ChatRequest("Where is the mass?", image, max_new_tokens=8)]) != draws()
    assert draws(seed=5) == draws(seed=5) != draws(seed=6)


def test_cancel_stops_generation_early(engine, image):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    result = engine.generate(ChatRequest("Describe.", image, max_new_tokens=40), cancel=cancel)
    assert result.finish_reason == "cancelled"
    assert len(result.token_ids) < 40
    samples = engine.sample([ChatRequest("Describe.", image, max_new_tokens=40)], n=2, cancel=lambda: True)
    assert all(s.finish_reason == "cancelled" and len(s.token_ids) <= 1 for s in samples[0])


def test_closing_a_stream_stops_it_and_frees_the_engine(engine, image):
    stream = engine.stream(ChatRequest("Describe.", image, max_new_tokens=200))
    next(stream)
    stream.close()
    assert engine.generate(ChatRequest("Again.", None, max_new_tokens=2)).token_ids  # lock released


def test_four_bit_on_cpu_quantizes_the_language_model_and_reloads(tiny_model_dir, tmp_path, image):
    import bitsandbytes as bnb

    engine = LocalEngine.from_folder(tiny_model_dir, device="cpu", quantization="nf4")
    assert engine.describe() == "tiny InternVL (random) · 4-bit · CPU"
    quantized = [n for n, m in engine.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert any("language_model" in n for n in quantized)
    assert not any("vision_tower" in n or "lm_head" in n for n in quantized)
    request = ChatRequest("Where is the nodule?", image, max_new_tokens=6)
    first = engine.generate(request)
    assert first.token_ids and np.all(np.isfinite(first.token_logprobs))
    engine.save(tmp_path / "saved")
    again = LocalEngine.from_folder(tmp_path / "saved", device="cpu", quantization="nf4")
    assert again.generate(request).token_ids == first.token_ids


def test_save_and_reload_full_precision_gives_the_same_answer(engine, tmp_path, image):
    request = ChatRequest("Where is the nodule?", image, max_new_tokens=6)
    engine.save(tmp_path / "copy")
    reloaded = LocalEngine.from_folder(tmp_path / "copy", device="cpu")
    assert reloaded.model_id == engine.model_id
    assert reloaded.generate(request).token_ids == engine.generate(request).token_ids


def test_refuses_a_model_that_does_not_fit_before_loading_weights(tiny_model_dir, monkeypatch):
    from transformers import InternVLForConditionalGeneration

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024**2)
    monkeypatch.setattr(InternVLForConditionalGeneration, "from_pretrained",
                        classmethod(lambda cls, *a, **k: pytest.fail("weights loaded despite refusal")))
    with pytest.raises(ModelLoadError, match=r"needs about .* GiB .* has only 0\.0 GiB free"):
        LocalEngine.from_folder(tiny_model_dir, device="cpu")


def test_memory_estimate_counts_parameters_exactly(engine):
    counts = memory.count_parameters(engine.model.config.to_dict())
    assert counts.total == sum(p.numel() for p in engine.model.parameters())


def test_memory_estimate_of_an_8b_model_in_4_bit_fits_a_16_gb_gpu_but_not_in_bf16_on_8_gb():
    config = {  # InternVL2-8B after conversion: InternViT-300M + InternLM2-7B shapes
        "downsample_ratio": 0.5,
        "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                          "image_size": 448, "patch_size": 14},
        "text_config": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 92553},
    }
    params = memory.count_parameters(config).total
    assert 7.5e9 < params < 8.5e9
    nf4 = memory.estimate(config, "nf4").total_bytes / memory.GIB
    bf16 = memory.estimate(config, "bf16").total_bytes / memory.GIB
    assert 4.5 < nf4 < 8 and bf16 > 15


def test_clear_errors_for_missing_and_original_layout_folders(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        LocalEngine.from_folder(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text('{"model_type": "internvl_chat"}')
    with pytest.raises(ModelLoadError, match="convert-checkpoint"):
        LocalEngine.from_folder(tmp_path)


def test_stream_stops_when_cancel_says_so(engine, image):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    pieces = list(engine.stream(ChatRequest("Describe.", image, max_new_tokens=60), cancel=cancel))
    full = engine.generate(ChatRequest("Describe.", image, max_new_tokens=60))
    assert len("".join(pieces)) < len(full.text)
    assert full.text.startswith("".join(pieces))


def test_never_generates_image_placeholders(engine):
    for token in ("<img>", "</img>", "<IMG_CONTEXT>"):
        assert engine.tokenizer.convert_tokens_to_ids(token) in engine.suppressed_ids


def test_folder_without_tokenizer_template_uses_its_processor_template(tiny_model_dir, tmp_path, image):
    import json
    import shutil

    folder = tmp_path / "hf-style"
    shutil.copytree(tiny_model_dir, folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    # a processor-level template with the generic <image> placeholder, as some -hf folders carry
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template.replace("<IMG_CONTEXT>", "<image>")}))
    engine = LocalEngine.from_folder(folder, device="cpu")
    assert "<image>" in engine.tokenizer.chat_template  # taken from chat_template.json
    inputs = engine.encode([ChatRequest("Where?", image)])
    assert int((inputs["input_ids"] == engine.model.config.image_token_id).sum()) > 0


def test_corrupt_weights_are_a_one_line_error(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not be loaded") as info:
        LocalEngine.from_folder(folder, device="cpu")
    assert "\n" not in str(info.value)
