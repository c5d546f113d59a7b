"""The direct audio path in inference/: a model folder from audio post-training answers a spoken
question from the audio itself (Whisper encoder → projector → LLM), no transcription involved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.engine.audio import (
    AUDIO_CONTEXT,
    AudioModelError,
    AudioQueryEngine,
    audio_features,
    has_audio,
)
from inference.types import ChatRequest
from tests.audio_model import build_audio_model

SR = 16000


@pytest.fixture(scope="session")
def audio_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return build_audio_model(tiny_model_dir, tmp_path_factory.mktemp("audio-model"))


@pytest.fixture(scope="module")
def engine(audio_model_dir) -> AudioQueryEngine:
    return AudioQueryEngine.from_folder(audio_model_dir, device="cpu")


def tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


IMAGE = np.zeros((64, 64, 3), np.uint8)
IMAGE[16:40, 20:44] = 200


def test_only_a_folder_with_encoder_and_projector_has_audio(audio_model_dir, tiny_model_dir):
    assert has_audio(audio_model_dir) and not has_audio(tiny_model_dir) and not has_audio(None)
    with pytest.raises(AudioModelError, match="no audio encoder") as err:
        AudioQueryEngine.from_folder(tiny_model_dir, device="cpu")
    assert "\n" not in str(err.value)


def test_damaged_audio_config_is_a_one_line_error(audio_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(audio_model_dir, broken)
    (broken / "audio_config.json").write_text("{not json")
    with pytest.raises(AudioModelError, match="damaged") as err:
        AudioQueryEngine.from_folder(broken, device="cpu")
    assert "\n" not in str(err.value)


def test_audio_tokens_carry_the_projected_encoder_states(engine, audio_model_dir):
    request = ChatRequest(prompt="<audio>", image=IMAGE, max_new_tokens=4)
    inputs = engine.encode_audio(request, tone(300.0))
    ids = engine.engine.encode([ChatRequest(prompt=AUDIO_CONTEXT * engine.tokens_per_clip, image=IMAGE)])["input_ids"]
    mask = ids[0] == engine.audio_token_id
    assert int(mask.sum()) == engine.tokens_per_clip == json.loads(
        (audio_model_dir / "audio_config.json").read_text())["tokens_per_clip"]
    feats, dropped = audio_features(engine.features, tone(300.0))
    with torch.inference_mode():
        expected = engine.audio.audio_embeddings(feats)[0]
    assert dropped == 0
    torch.testing.assert_close(inputs["inputs_embeds"][0][mask], expected)
    # the text positions are the model's ordinary token embeddings
    text = ~mask & (ids[0] != engine.processor.image_token_id)
    with torch.inference_mode():
        plain = engine.audio.vlm.get_input_embeddings()(ids[0][text])
    torch.testing.assert_close(inputs["inputs_embeds"][0][text], plain)


def test_answer_comes_from_the_audio(engine):
    request = ChatRequest(prompt="<audio>", image=IMAGE, max_new_tokens=6)
    low = engine.generate_audio(tone(300.0), request)
    high = engine.generate_audio(tone(900.0), request)
    assert low.text and len(low.token_logprobs) == len(low.tokens) > 0
    # same prompt and image, another sound: the model's distribution moves
    assert low.token_logprobs[0] != pytest.approx(high.token_logprobs[0], abs=1e-6)
    assert "".join(engine.stream_audio(tone(300.0), request)) == low.text
    assert AUDIO_CONTEXT not in low.text  # an input-only token is never generated


def test_too_long_a_question_is_cut_to_the_encoder_window(engine, caplog):
    window = engine.seconds_per_clip
    _feats, dropped = audio_features(engine.features, tone(300.0, window + 1.5))
    assert dropped == pytest.approx(1.5, abs=1e-3)
    with pytest.raises(Exception, match="Nothing was heard"):
        audio_features(engine.features, np.zeros(0, np.float32))


def test_text_questions_still_go_to_the_same_model(engine):
    g = engine.generate(ChatRequest(prompt="Any nodule?", image=IMAGE, max_new_tokens=3))
    assert len(g.token_ids) > 0 and engine.model_id == engine.engine.model_id
