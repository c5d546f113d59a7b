"""Build a tiny, randomly initialised native InternVL model folder, fully offline.

The model is real (transformers' ``InternVLForConditionalGeneration`` with an
InternViT-style vision tower and a Qwen2 text model) but a few layers deep and
64 wide, so tests can load, quantize, generate and convert it in seconds. The
tokenizer is a byte-level BPE trained here by the ``tokenizers`` library on a
small radiology text, with InternVL's special tokens and chat template.

The same builder makes the untrained skeleton the demo model starts from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from inference.engine.processor import CHAT_TEMPLATE

log = logging.getLogger(__name__)

#: InternVL special tokens, in the order they get ids after the BPE vocabulary.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<video>",
)


_CORPUS = """\
Structure identification: the image is an axial CT slice of the chest in a lung window.
Region localization: a nodule in the right upper lobe <ref>nodule</ref><box>[[120,200,180,260]]</box>.
Detailed description: a well circumscribed solid nodule measuring 8 mm with smooth margins.
Holistic analysis: no pleural effusion, no lymphadenopathy, the heart and mediastinum are normal.
Report synthesis: solitary pulmonary nodule, follow-up CT in three months is recommended.
The liver, spleen, kidneys and pancreas are unremarkable. No free fluid. No fracture.
Brain MRI: no acute infarct, no haemorrhage, ventricles of normal size, midline structures central.
Hand radiograph: no fracture or dislocation; joint spaces are preserved; soft tissues normal.
Question: where is the lesion? Answer: the lesion is in the left lower lobe, posterior basal segment.
The structure asked for is not visible in this image.
0 1 2 3 4 5 6 7 8 9 10 100 250 500 750 1000 [ ] , . : ; ( ) mm cm HU
"""


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model. Defaults give a ~1 MB model that runs in milliseconds."""

    vocab_size: int = 512  # BPE vocabulary before special tokens
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 128
    image_size: int = 56  # tile size in pixels
    patch_size: int = 14
    max_tiles: int = 6
    seed: int = 0
    #: Embedding rows when larger than the tokenizer (real models pad their vocabulary).
    model_vocab: int | None = None
    use_mean_pooling: bool = True  # InternViT has no final layer norm
    #: InternVL's pixel shuffle: each image token joins (1 / ratio)^2 neighbouring patches (InternVL2: 0.5)
    downsample_ratio: float = 0.5


def build_tokenizer(spec: TinySpec = TinySpec(), corpus: str = _CORPUS) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``corpus`` with InternVL's special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=4096,
    )


def image_tokens_per_tile(spec: TinySpec) -> int:
    side = spec.image_size // spec.patch_size
    return int(side * side * spec.downsample_ratio * spec.downsample_ratio)


def build_config(tokenizer: PreTrainedTokenizerFast, spec: TinySpec = TinySpec()) -> InternVLConfig:
    vocab = max(len(tokenizer), spec.model_vocab or 0)
    return InternVLConfig(
        vision_config=dict(
            hidden_size=spec.vision_hidden,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=spec.vision_heads,
            intermediate_size=spec.vision_intermediate,
            image_size=[spec.image_size, spec.image_size],
            patch_size=[spec.patch_size, spec.patch_size],
            attention_bias=True,
            use_mean_pooling=spec.use_mean_pooling,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=vocab,
            hidden_size=spec.text_hidden,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=spec.text_heads,
            num_key_value_heads=spec.text_kv_heads,
            intermediate_size=spec.text_intermediate,
            max_position_embeddings=4096,
            bos_token_id=None,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=image_tokens_per_tile(spec),
        downsample_ratio=spec.downsample_ratio,
        tie_word_embeddings=False,
    )


def eight_b_class_spec() -> TinySpec:
    """InternVL2-8B's shapes (InternViT-300M + a Qwen2-7B-sized language model, 448-px tiles) with a small
    tokenizer: random weights for the GPU benchmarks (memory, first token, decode and sweep speed)."""
    return TinySpec(vocab_size=1024, text_hidden=3584, text_layers=28, text_heads=28, text_kv_heads=4,
                    text_intermediate=18944, vision_hidden=1024, vision_layers=24, vision_heads=16,
                    vision_intermediate=4096, image_size=448, patch_size=14, max_tiles=6, model_vocab=151674)


def build_image_processor(spec: TinySpec = TinySpec()) -> GotOcr2ImageProcessorPil:
    return GotOcr2ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=spec.max_tiles,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def build_tiny_model(
    folder: Path,
    spec: TinySpec = TinySpec(),
    name: str = "tiny InternVL (random)",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a complete model folder (config, safetensors, tokenizer, image processor).

    ``device``/``dtype`` only matter for large specs (an 8B-class skeleton is
    quicker to initialise on a GPU in bf16).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    tokenizer = build_tokenizer(spec)
    config = build_config(tokenizer, spec)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = InternVLForConditionalGeneration(config).eval()
        finally:
            torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    build_image_processor(spec).save_pretrained(folder)
    processor_config = {"processor_class": "InternVLProcessor", "image_seq_length": config.image_seq_length}
    (folder / "processor_config.json").write_text(json.dumps(processor_config, indent=2))
    (folder / "model_card.json").write_text(json.dumps({"name": name, "trained": False}, indent=2))
    log.info("wrote tiny InternVL to %s", folder)
    return folder


def eight_b_class_model(folder: Path, device: str = "cuda") -> Path:
    """The 8B-class random InternVL (:func:`eight_b_class_spec`) at ``folder``, written there first when it is
    not (bf16 on CUDA, where it is quick to initialise): the GPU benchmarks share one copy of its ~16 GB."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        build_tiny_model(folder, eight_b_class_spec(), name="8B-class InternVL (random)", device=device,
                         dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return folder
