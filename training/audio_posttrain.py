"""Audio post-training: a Whisper encoder and an MLP projector feed the language model.

    python -m training.audio_posttrain --config training/configs/audio_demo.yaml [--resume]
    bash training/launch/audio.sh training/configs/audio_8b.yaml

Each ``<audio>`` placeholder in a human turn becomes ``audio_tokens`` copies of
``<AUDIO_CONTEXT>`` (a special token added to the tokenizer); their embeddings
are replaced by the projected Whisper encoder states, as ``<IMG_CONTEXT>``
carries the image features. The projector stacks ``stack`` consecutive encoder
frames (Whisper's 1500 frames per 30 s → 375 tokens with 4) and maps them
through LayerNorm → Linear → GELU → Linear to the LLM width. The vision tower is
frozen; the LLM is frozen (``train.freeze_llm``) or adapted with LoRA
(``train.mode: lora``); the encoder is frozen unless ``audio.train_encoder``.

The finished folder is a normal InternVL model folder (vocabulary grown by one
token) plus ``audio_encoder/`` (Whisper encoder + feature extractor) and
``audio_projector.safetensors`` + ``audio_config.json``: the checkpoint carries
its audio encoder and projector. :func:`load_audio_model` reads it back; the modules and the
loader live in :mod:`inference.engine.audio`, where the workstation runs them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import wave
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from inference.engine.audio import AUDIO_CONTEXT, SAMPLE_RATE, AudioProjector, AudioVLM
from inference.engine.audio import load_audio_model as _load_audio_model
from inference.errors import XMedError
from training.config import (
    ConfigError,
    DataSection,
    LoraSection,
    ModelSection,
    TrainSection,
    seed_everything,
)
from training.data import (
    AUDIO_PLACEHOLDER,
    Sample,
    chat_segments,
    encode_segments,
    load_samples,
    pad_batch,
    record_images,
)
from training.model import processor_for
from training.saving import export_model, save_processor, write_run_info
from training.stage import run_stage
from training.trainer import (
    CheckpointFilesCallback,
    MetricsLogCallback,
    resume_checkpoint,
    trainer_class,
    training_arguments,
)

log = logging.getLogger(__name__)


@dataclass
class AudioSection:
    encoder: str = ""  # a local Whisper model folder; empty: a randomly initialised encoder from the sizes below
    train_encoder: bool = False
    stack: int = 4  # encoder frames per audio token
    projector_hidden: int = 0  # 0: the LLM width
    # sizes of a random encoder (tests, demo): Whisper-tiny-like but smaller
    d_model: int = 64
    layers: int = 2
    heads: int = 4
    ffn: int = 128
    mel_bins: int = 80
    chunk_s: int = 4  # seconds of audio per clip (Whisper: 30)


@dataclass
class AudioConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=lambda: TrainSection(freeze_vision=True, freeze_llm=True))
    lora: LoraSection = field(default_factory=LoraSection)
    audio: AudioSection = field(default_factory=AudioSection)
    stage: str = "audio"


# ----------------------------------------------------------------------------- audio input


def read_audio(path: Path) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at 16 kHz (WAV through the standard library, others via soundfile)."""
    try:
        if path.suffix.casefold() == ".wav":
            with wave.open(str(path)) as w:
                rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
                raw = w.readframes(w.getnframes())
            if width != 2:
                raise XMedError(f"{path}: only 16-bit PCM WAV is read without soundfile.")
            x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
            x = x.reshape(-1, channels).mean(axis=1)
        else:
            import soundfile

            x, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            x = x.mean(axis=1)
    except (OSError, wave.Error, EOFError) as exc:
        raise XMedError(f"Cannot read the audio file {path}.") from exc
    except ImportError as exc:
        raise XMedError(f"Reading {path.suffix} audio needs the soundfile package.") from exc
    if rate != SAMPLE_RATE:
        t_new = np.arange(int(len(x) * SAMPLE_RATE / rate)) / SAMPLE_RATE
        x = np.interp(t_new, np.arange(len(x)) / rate, x).astype(np.float32)
    return x


# ----------------------------------------------------------------------------- model


def build_encoder(section: AudioSection):
    """(Whisper encoder, feature extractor) from a local folder or a random config."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if section.encoder:
        folder = Path(section.encoder)
        try:
            features = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
            config = WhisperConfig.from_pretrained(folder, local_files_only=True)
            if (folder / "audio_encoder_only").is_file():
                encoder = WhisperEncoder.from_pretrained(folder, local_files_only=True)
            else:
                encoder = WhisperModel.from_pretrained(folder, local_files_only=True).encoder
        except (OSError, ValueError) as exc:
            raise ConfigError(f"audio.encoder {folder} is not a readable Whisper model folder.") from exc
        return encoder, features
    frames = section.chunk_s * 100  # 10 ms hop
    config = WhisperConfig(d_model=section.d_model, encoder_layers=section.layers,
                           encoder_attention_heads=section.heads, encoder_ffn_dim=section.ffn,
                           decoder_layers=1, decoder_attention_heads=section.heads, decoder_ffn_dim=section.ffn,
                           num_mel_bins=section.mel_bins, max_source_positions=frames // 2, vocab_size=64,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    features = WhisperFeatureExtractor(feature_size=section.mel_bins, sampling_rate=SAMPLE_RATE,
                                       chunk_length=section.chunk_s)
    return WhisperEncoder(config), features


# ----------------------------------------------------------------------------- data


class AudioDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Sample], processor, features, tokens_per_clip: int, max_length: int):
        self.samples = list(samples)
        self.processor = processor
        self.features = features
        self.tokens = tokens_per_clip
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.samples[i]
        rec = s.record
        if AUDIO_PLACEHOLDER not in "".join(t.get("value", "") for t in rec.get("conversations", [])):
            raise XMedError(f"{s.source}: no {AUDIO_PLACEHOLDER} placeholder in the conversation.")
        segments = [(t.replace(AUDIO_PLACEHOLDER, AUDIO_CONTEXT * self.tokens), trained)
                    for t, trained in chat_segments(rec["conversations"])]
        item = encode_segments(self.processor, segments, record_images(s), self.max_length)
        path = Path(rec["audio"]) if Path(rec["audio"]).is_absolute() else s.root / rec["audio"]
        wav = read_audio(path)
        feats = self.features(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]
        item["input_features"] = feats
        return item


class AudioCollator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features):
        batch = pad_batch(features, self.pad_id)
        batch["input_features"] = torch.cat([f["input_features"] for f in features])
        return batch


# ----------------------------------------------------------------------------- build / save / load


def add_audio_token(processor, vlm) -> int:
    tok = processor.tokenizer
    if AUDIO_CONTEXT not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [AUDIO_CONTEXT]}, replace_extra_special_tokens=False)
    token_id = tok.convert_tokens_to_ids(AUDIO_CONTEXT)
    if token_id >= vlm.get_input_embeddings().weight.shape[0]:
        vlm.resize_token_embeddings(len(tok), mean_resizing=False)
    return token_id


def build_model(config: AudioConfig, processor):
    from transformers import InternVLForConditionalGeneration

    from training.model import freeze, lora_target_regex, torch_dtype

    if config.train.mode not in ("full", "lora"):
        raise ConfigError("audio post-training runs with train.mode full (frozen or trained LLM) or lora.")
    vlm = InternVLForConditionalGeneration.from_pretrained(config.model.path, dtype=torch_dtype(config.model.dtype),
                                                           local_files_only=True)
    token_id = add_audio_token(processor, vlm)
    encoder, features = build_encoder(config.audio)
    text_dim = vlm.config.text_config.hidden_size
    projector = AudioProjector(encoder.config.d_model, text_dim, config.audio.stack, config.audio.projector_hidden)
    if config.train.mode == "lora":
        from peft import LoraConfig, get_peft_model

        vlm = get_peft_model(vlm, LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                                             lora_dropout=config.lora.dropout,
                                             target_modules=lora_target_regex(config.lora)))
    else:
        freeze(vlm, config.train)
    for name, p in vlm.named_parameters():  # vision always frozen here
        if "vision_tower" in name or "multi_modal_projector" in name:
            p.requires_grad_(False)
    encoder.requires_grad_(config.audio.train_encoder)
    model = AudioVLM(vlm, encoder, projector, token_id)
    if config.train.gradient_checkpointing:
        model.inner_vlm().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, features


def save_audio_parts(model: AudioVLM, features, folder: Path, stack: int) -> None:
    enc_dir = folder / "audio_encoder"
    model.audio_encoder.save_pretrained(enc_dir, safe_serialization=True)
    features.save_pretrained(enc_dir)
    (enc_dir / "audio_encoder_only").write_text("WhisperEncoder weights only (no decoder)\n")
    save_file({k: v.detach().contiguous() for k, v in model.audio_projector.state_dict().items()},
              str(folder / "audio_projector.safetensors"))
    p = model.audio_projector
    (folder / "audio_config.json").write_text(json.dumps({
        "audio_token": AUDIO_CONTEXT, "audio_token_id": model.audio_token_id, "tokens_per_clip": model.tokens_per_clip,
        "stack": stack, "audio_dim": p.norm.normalized_shape[0] // stack, "hidden": p.fc1.out_features,
        "text_dim": p.fc2.out_features, "sample_rate": SAMPLE_RATE, "encoder": "audio_encoder"}, indent=2) + "\n")


def load_audio_model(folder: Path | str) -> tuple[AudioVLM, object, object]:
    """(AudioVLM, InternVL processor with the audio token, Whisper feature extractor) from a finished folder;
    the processor pads on the right, as for training."""
    model, processor, features = _load_audio_model(folder)
    processor.tokenizer.padding_side = "right"
    return model, processor, features


# ----------------------------------------------------------------------------- training


def train_audio(config: AudioConfig, resume: bool = False) -> Path:
    from transformers import Trainer

    seed_everything(config.train.seed)
    out = Path(config.train.output_dir)
    processor = processor_for(config.model.path)
    model, features = build_model(config, processor)
    samples = load_samples(config.data.meta, config.data.datasets, seed=config.train.seed)
    dataset = AudioDataset(samples, processor, features, model.tokens_per_clip, config.data.max_length)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("audio post-training: %d trainable parameters, %d audio tokens per clip", trainable,
             model.tokens_per_clip)
    write_run_info(out, config, {"records": len(samples), "tokens_per_clip": model.tokens_per_clip})
    args = training_arguments(config.train, workers=config.data.num_workers)
    trainer = trainer_class(Trainer)(model=model, args=args, train_dataset=dataset,
                      data_collator=AudioCollator(processor.tokenizer.pad_token_id),
                      callbacks=[MetricsLogCallback(out / "metrics.jsonl", config.stage),
                                 CheckpointFilesCallback(processor)])
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(out, resume))
    trainer.save_state()
    final = out / "final"
    if trainer.is_world_process_zero():
        card = {"name": f"{Path(config.model.path).name} + audio", "trained": True, "stage": config.stage,
                "base": str(config.model.path), "mode": config.train.mode, "global_step": trainer.state.global_step,
                "train_loss": result.training_loss, "wall_s": round(time.monotonic() - start, 1),
                "records": len(samples), "audio": asdict(config.audio)}
        if config.train.mode == "lora":
            # the base for merging must have the grown vocabulary: save it first
            from transformers import InternVLForConditionalGeneration

            base_dir = out / "base_with_audio_token"
            base = InternVLForConditionalGeneration.from_pretrained(config.model.path, local_files_only=True)
            base.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
            base.save_pretrained(base_dir)
            export_model(model.vlm, processor, final, base_dir, "lora", card)
        else:
            export_model(model.vlm, processor, final, config.model.path, "full", card)
        save_audio_parts(model, features, final, config.audio.stack)
        save_processor(processor, final)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(argv, "training.audio_posttrain", 'Audio post-training: Whisper encoder + MLP projector into the language model.', AudioConfig, train_audio)


if __name__ == "__main__":
    sys.exit(main())
