"""InternVL's processor without its video half, loaded explicitly from a model folder.

transformers' ``InternVLProcessor`` insists on a video processor, which imports
torchvision; torchvision cannot be installed beside the CPU torch this product
ships, and ``AutoProcessor`` then silently falls back to the bare tokenizer (no
image tokens, no pixel values). :class:`ImageOnlyInternVLProcessor` keeps the
image path (dynamic tiling by the GOT-OCR2 image processor, ``<img>`` +
``<IMG_CONTEXT>``×N + ``</img>`` expansion) and drops video.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from transformers import AutoTokenizer, GotOcr2ImageProcessorPil
from transformers.models.internvl.processing_internvl import InternVLProcessor
from transformers.processing_utils import ProcessorMixin

from inference.errors import XMedError

#: Tokens the processor and the engine rely on.
START_IMAGE = "<img>"
END_IMAGE = "</img>"
IMAGE_CONTEXT = "<IMG_CONTEXT>"
VIDEO = "<video>"


class ImageOnlyInternVLProcessor(InternVLProcessor):
    """``InternVLProcessor`` with ``video_processor=None``: images and text only."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None, **kwargs):
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.video_processor = None
        self.image_seq_length = image_seq_length
        self.start_image_token = START_IMAGE
        self.end_image_token = END_IMAGE
        self.image_token = IMAGE_CONTEXT
        self.video_token = VIDEO
        self.start_image_token_id = tokenizer.convert_tokens_to_ids(START_IMAGE)
        self.end_image_token_id = tokenizer.convert_tokens_to_ids(END_IMAGE)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_CONTEXT)
        self.multimodal_pattern = re.compile(f"(?P<image>{re.escape(IMAGE_CONTEXT)})")


def _image_seq_length(folder: Path) -> int:
    """Image tokens per 448-px tile: from processor_config.json, else from the model config."""
    proc_cfg = folder / "processor_config.json"
    if proc_cfg.is_file():
        data = json.loads(proc_cfg.read_text())
        if "image_seq_length" in data:
            return int(data["image_seq_length"])
    cfg = json.loads((folder / "config.json").read_text())
    if "image_seq_length" in cfg:
        return int(cfg["image_seq_length"])
    vision = cfg.get("vision_config", {})
    size = vision.get("image_size", [448, 448])
    patch = vision.get("patch_size", [14, 14])
    size = size[0] if isinstance(size, list) else size
    patch = patch[0] if isinstance(patch, list) else patch
    ratio = float(cfg.get("downsample_ratio", 0.5))
    return int((size // patch) ** 2 * ratio * ratio)


def load_processor(folder: Path | str) -> ImageOnlyInternVLProcessor:
    """Tokenizer + image processor (+ chat template) from a native InternVL model folder."""
    folder = Path(folder)
    if not (folder / "preprocessor_config.json").is_file():
        raise XMedError(
            f"The model folder {folder} has no image pre-processor (preprocessor_config.json); "
            "it is not a complete InternVL model."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = GotOcr2ImageProcessorPil.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise XMedError(f"The model folder {folder} has an unreadable tokenizer or image pre-processor.",
                        detail=str(exc)) from exc
    missing = [t for t in (START_IMAGE, END_IMAGE, IMAGE_CONTEXT) if t not in tokenizer.get_vocab()]
    if missing:
        raise XMedError(f"The model's tokenizer lacks the image tokens {', '.join(missing)}; "
                        "it is not an InternVL model.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if not tokenizer.chat_template:
        tokenizer.chat_template = _folder_chat_template(folder)
    return ImageOnlyInternVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=_image_seq_length(folder),
        chat_template=tokenizer.chat_template,
    )


#: InternVL-2 chat format (InternLM2 and Qwen2 backbones alike), used when a folder carries no
#: template of its own and written into converted and factory-built folders. An image part
#: becomes ``<IMG_CONTEXT>``, which the processor expands to ``<img>`` + image tokens + ``</img>``.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _folder_chat_template(folder: Path) -> str:
    """The processor-level template (chat_template.jinja / .json) of a folder, else InternVL's format."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    js = folder / "chat_template.json"
    if js.is_file():
        template = json.loads(js.read_text()).get("chat_template")
        if template:
            return template
    return CHAT_TEMPLATE
