"""The direct audio path: a spoken question goes to the model as audio, not as text.

A model folder written by audio post-training (``training/audio_posttrain.py``)
is a normal InternVL folder (vocabulary grown by ``<AUDIO_CONTEXT>``) plus

- ``audio_encoder/``: a Whisper encoder and its feature extractor,
- ``audio_projector.safetensors``: the MLP projector,
- ``audio_config.json``: token id, tokens per clip, projector sizes.

The projector stacks ``stack`` consecutive encoder frames and maps them through
LayerNorm → Linear → GELU → Linear to the LLM width; the result replaces the
embeddings of the ``<AUDIO_CONTEXT>`` tokens, as ``<IMG_CONTEXT>`` carries the
image. The same modules are trained by ``training/audio_posttrain.py`` (it
imports them from here) and run by :class:`AudioQueryEngine`.

:class:`AudioQueryEngine` is a complete :class:`~inference.types.Engine` (text
questions go to the wrapped :class:`~inference.engine.local.LocalEngine`) that
also answers :meth:`~AudioQueryEngine.generate_audio` /
:meth:`~AudioQueryEngine.stream_audio`: 16 kHz audio + image in, answer out,
with no transcription anywhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inference.errors import XMedError
from inference.types import CancelFn, ChatRequest, Generation

log = logging.getLogger(__name__)

AUDIO_CONTEXT = "<AUDIO_CONTEXT>"
#: Where the spoken question goes in a prompt (the training data's placeholder).
AUDIO_PLACEHOLDER = "<audio>"
SAMPLE_RATE = 16000
AUDIO_CONFIG = "audio_config.json"
AUDIO_PROJECTOR = "audio_projector.safetensors"


class AudioModelError(XMedError):
    """The model folder's audio encoder or projector is missing or unreadable."""


# ----------------------------------------------------------------------------- modules


class AudioProjector(nn.Module):
    """Stack ``stack`` frames, then LayerNorm → Linear → GELU → Linear to the LLM width."""

    def __init__(self, audio_dim: int, text_dim: int, stack: int = 4, hidden: int = 0) -> None:
        super().__init__()
        self.stack = stack
        hidden = hidden or text_dim
        self.norm = nn.LayerNorm(audio_dim * stack)
        self.fc1 = nn.Linear(audio_dim * stack, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, text_dim)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        b, t, d = states.shape
        t = t - t % self.stack
        x = states[:, :t].reshape(b, t // self.stack, d * self.stack)
        return self.fc2(self.act(self.fc1(self.norm(x))))


class AudioVLM(nn.Module):
    """InternVL + Whisper encoder + projector; ``forward`` returns the LM loss on the assistant tokens."""

    def __init__(self, vlm, encoder, projector: AudioProjector, audio_token_id: int) -> None:
        super().__init__()
        self.vlm = vlm
        self.audio_encoder = encoder
        self.audio_projector = projector
        self.audio_token_id = audio_token_id
        self.config = vlm.config  # what Trainer reads (e.g. to_json for the model card)

    @property
    def tokens_per_clip(self) -> int:
        frames = self.audio_encoder.config.max_source_positions
        return frames // self.audio_projector.stack

    def inner_vlm(self):
        return self.vlm.get_base_model() if hasattr(self.vlm, "get_base_model") else self.vlm

    def audio_embeddings(self, input_features: torch.Tensor) -> torch.Tensor:
        """(clips, tokens_per_clip, LLM width) from Whisper log-mel features."""
        param = next(self.audio_encoder.parameters())
        states = self.audio_encoder(input_features.to(param.device, param.dtype)).last_hidden_state
        proj = next(self.audio_projector.parameters())
        return self.audio_projector(states.to(proj.dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              input_features: torch.Tensor | None) -> torch.Tensor:
        vlm = self.inner_vlm()
        cfg = vlm.config
        audio_mask = input_ids == self.audio_token_id
        embeds = vlm.get_input_embeddings()(input_ids.masked_fill(audio_mask, 0))
        if pixel_values is not None:
            feats = vlm.model.get_image_features(
                pixel_values=pixel_values, vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy, return_dict=True).pooler_output
            image_mask = (input_ids == cfg.image_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(image_mask, feats.to(embeds.dtype))
        if input_features is not None:
            audio = self.audio_embeddings(input_features)
            if int(audio_mask.sum()) != audio.shape[0] * audio.shape[1]:
                raise XMedError(f"{int(audio_mask.sum())} audio tokens for {audio.shape[0] * audio.shape[1]} "
                                "audio features.")
            embeds = embeds.masked_scatter(audio_mask.unsqueeze(-1), audio.to(embeds.device, embeds.dtype))
        return embeds

    def forward(self, input_ids, attention_mask=None, labels=None, pixel_values=None, input_features=None,
                **kwargs):
        embeds = self.embed(input_ids, pixel_values, input_features)
        return self.vlm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)


# ----------------------------------------------------------------------------- folders


def has_audio(folder: Path | str | None) -> bool:
    """Whether a model folder carries an audio encoder and projector (audio post-training's output)."""
    if folder is None:
        return False
    folder = Path(folder)
    return (folder / AUDIO_CONFIG).is_file() and (folder / AUDIO_PROJECTOR).is_file()


def read_audio_config(folder: Path | str) -> dict:
    folder = Path(folder)
    try:
        cfg = json.loads((folder / AUDIO_CONFIG).read_text())
        for key in ("audio_token_id", "stack", "audio_dim", "text_dim", "hidden"):
            int(cfg[key])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AudioModelError(f"The audio configuration of {folder.name} ({AUDIO_CONFIG}) is missing or damaged.",
                              detail=str(exc)) from exc
    cfg.setdefault("encoder", "audio_encoder")
    return cfg


def load_audio_parts(folder: Path | str, cfg: dict | None = None):
    """(Whisper encoder, projector, feature extractor) of a model folder, in float32 on the CPU."""
    from safetensors.torch import load_file
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    folder = Path(folder)
    cfg = cfg or read_audio_config(folder)
    enc_dir = folder / cfg["encoder"]
    try:
        encoder = WhisperEncoder.from_pretrained(enc_dir, local_files_only=True)
        features = WhisperFeatureExtractor.from_pretrained(enc_dir, local_files_only=True)
        projector = AudioProjector(int(cfg["audio_dim"]), int(cfg["text_dim"]), int(cfg["stack"]), int(cfg["hidden"]))
        projector.load_state_dict(load_file(str(folder / AUDIO_PROJECTOR)))
    except (OSError, ValueError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise AudioModelError(f"The audio encoder of {folder.name} could not be loaded: {first}",
                              detail=str(exc)) from exc
    return encoder.eval(), projector.eval(), features


def load_audio_model(folder: Path | str) -> tuple[AudioVLM, object, object]:
    """(AudioVLM, InternVL processor with the audio token, Whisper feature extractor) from a finished folder."""
    from transformers import InternVLForConditionalGeneration

    from inference.engine.processor import load_processor

    folder = Path(folder)
    cfg = read_audio_config(folder)
    vlm = InternVLForConditionalGeneration.from_pretrained(folder, local_files_only=True)
    encoder, projector, features = load_audio_parts(folder, cfg)
    processor = load_processor(folder)
    return AudioVLM(vlm, encoder, projector, int(cfg["audio_token_id"])).eval(), processor, features


def audio_features(features, audio: np.ndarray) -> tuple[torch.Tensor, float]:
    """Log-mel input features of one clip, and the seconds beyond the encoder's window that were dropped."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        raise XMedError("Nothing was heard; hold the key while you speak.")
    limit = int(features.n_samples)
    dropped = max(0, audio.size - limit) / SAMPLE_RATE
    feats = features(audio[:limit], sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]
    return feats, dropped


# ----------------------------------------------------------------------------- engine


class AudioQueryEngine:
    """A local engine whose model also hears: text questions as usual, spoken ones as audio."""

    supports_audio = True

    def __init__(self, engine, encoder, projector: AudioProjector, features, audio_token_id: int) -> None:
        from inference.engine.local import _Suppress

        self.engine = engine  # the LocalEngine answering text questions
        tok = engine.tokenizer
        if tok.convert_tokens_to_ids(AUDIO_CONTEXT) != audio_token_id:
            raise AudioModelError(f"The model's tokenizer has no {AUDIO_CONTEXT} token with id {audio_token_id}; "
                                  "the audio parts do not belong to this model.")
        device = engine.model.device
        self.audio = AudioVLM(engine.model, encoder.to(device), projector.to(device), audio_token_id).eval()
        self.features = features
        self.audio_token_id = audio_token_id
        self.seconds_per_clip = float(features.n_samples) / SAMPLE_RATE
        # an audio placeholder is input only, like an image placeholder: never generated
        engine.suppressed_ids = sorted(set(engine.suppressed_ids) | {audio_token_id})
        engine._suppress = _Suppress(engine.suppressed_ids)
        self._suppress = engine._suppress

    @classmethod
    def from_folder(cls, path: Path | str, device: str = "auto", quantization: str = "auto",
                    progress=None, context: int = 4096, cancel: CancelFn | None = None) -> "AudioQueryEngine":
        """Load a model folder that carries an audio encoder and projector (see :func:`has_audio`)."""
        from inference.engine.local import LocalEngine

        folder = Path(path).expanduser()
        if not has_audio(folder):
            raise AudioModelError(f"{folder.name} has no audio encoder ({AUDIO_CONFIG}); spoken queries go "
                                  "through Whisper for this model.")
        cfg = read_audio_config(folder)
        engine = LocalEngine.from_folder(folder, device, quantization, progress, context, cancel)
        encoder, projector, features = load_audio_parts(folder, cfg)
        return cls(engine, encoder, projector, features, int(cfg["audio_token_id"]))

    # ----------------------------------------------------------------- Engine (text)
    @property
    def model_id(self) -> str:
        return self.engine.model_id

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def folder(self):
        return self.engine.folder

    @property
    def processor(self):
        return self.engine.processor

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def describe(self) -> str:
        return self.engine.describe()

    def generate(self, request: ChatRequest, cancel: CancelFn | None = None, **kwargs):
        return self.engine.generate(request, cancel, **kwargs)

    def stream(self, request: ChatRequest, cancel: CancelFn | None = None) -> Iterator[str]:
        return self.engine.stream(request, cancel)

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None, **kwargs):
        return self.engine.sample(requests, n, temperature, top_p, cancel, **kwargs)

    # ----------------------------------------------------------------- audio
    @property
    def tokens_per_clip(self) -> int:
        return self.audio.tokens_per_clip

    def encode_audio(self, request: ChatRequest, audio: np.ndarray) -> dict[str, torch.Tensor]:
        """Input embeddings + attention mask: ``request.prompt`` with its ``<audio>`` placeholder replaced by
        the clip's audio tokens (without one, they follow the prompt), the image as for a text question."""
        tokens = AUDIO_CONTEXT * self.tokens_per_clip
        prompt = request.prompt
        if AUDIO_PLACEHOLDER in prompt:
            prompt = prompt.replace(AUDIO_PLACEHOLDER, tokens, 1)
        else:
            prompt = f"{prompt}\n{tokens}" if prompt.strip() else tokens
        inputs = self.engine.encode([replace(request, prompt=prompt)])
        feats, dropped = audio_features(self.features, audio)
        if dropped > 0:
            log.warning("spoken query longer than %.0f s: the last %.1f s were not heard",
                        self.seconds_per_clip, dropped)
        ids = inputs["input_ids"]
        if int((ids == self.audio_token_id).sum()) != self.tokens_per_clip:
            raise AudioModelError("The prompt holds the audio placeholder more than once.")
        with torch.inference_mode():
            embeds = self.audio.embed(ids, inputs.get("pixel_values"), feats)
        return {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"]}

    def generate_audio(self, audio: np.ndarray, request: ChatRequest | None = None,
                       cancel: CancelFn | None = None) -> Generation:
        """Greedy answer to a spoken question (16 kHz mono float32) about ``request.image``."""
        from transformers import LogitsProcessorList

        request = request or ChatRequest(prompt=AUDIO_PLACEHOLDER)
        e = self.engine
        with e._lock, torch.inference_mode():
            inputs = self.encode_audio(request, audio)
            stopping, crit = e._stopping(cancel)
            out = e.model.generate(**inputs, do_sample=False, max_new_tokens=request.max_new_tokens,
                                   stopping_criteria=stopping, return_dict_in_generate=True, output_logits=True,
                                   pad_token_id=e.pad_id, logits_processor=LogitsProcessorList([self._suppress]))
        new = out.sequences  # generate() from embeddings returns the new tokens only
        lp, _top = e._token_logprobs(out.logits, new, 0)
        return e._finish(new[0].tolist(), lp[0].tolist(), request.max_new_tokens, bool(crit and crit.cancelled))

    def stream_audio(self, audio: np.ndarray, request: ChatRequest | None = None,
                     cancel: CancelFn | None = None) -> Iterator[str]:
        """The answer to a spoken question piece by piece. Closing the iterator stops generation."""
        request = request or ChatRequest(prompt=AUDIO_PLACEHOLDER)
        try:
            yield from self.engine.stream_greedy(lambda: self.encode_audio(request, audio), request.max_new_tokens,
                                                 self._suppress, cancel, name="xmedgpt-audio-stream")
        except XMedError:
            raise
        except Exception as exc:
            raise XMedError(f"The model stopped with an error while listening: {exc}", detail=repr(exc)) from exc
