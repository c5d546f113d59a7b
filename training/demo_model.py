"""The recipe that builds the embedded demo model end to end, resumably.

    python -m training.demo_model --config training/configs/demo_model.yaml [--out resources/models/demo]

Stages (each skipped when already finished, each training stage resumed from
its last checkpoint, so the recipe can span sessions):

1. ``phantoms``   – training corpus (seed ``train_seed``) and a held-out corpus from a
                    seed never used in training (``eval_seed``): ``corpus.kind`` ``phantoms``
                    (training.phantoms) or ``study`` (training.study_corpus: 512-px slices of
                    phantom CT studies in the reader's windows; ``spec.max_tiles`` > 1 gives the
                    model InternVL's dynamic tiles, thumbnail + grid, through the same processor);
2. ``skeleton``   – a byte-level BPE tokenizer trained on the corpus text (one token per
                    digit, InternVL special tokens and chat template) and a randomly
                    initialised InternVL of the configured size (training.model_factory);
3. ``sft``        – stage-1 SFT on grounding, VQA and reports (training.sft);
4. ``reasoning``  – reasoning SFT on the five-step answers (training.sft);
5. ``dpo``        – DPO on the preference pairs (training.dpo);
6. ``eval``       – ``xmedgpt eval`` on the held-out corpus (and, with ``eval.sample_windows``, on a
                    fresh ``xmedgpt sample`` study per window and lesion size); the model, a model card
                    (commands, seeds, data sizes, wall time, metrics) and MODEL_CARD.md
                    are written to ``--out``.

This is a demonstration model trained on synthetic phantoms: it is not a medical device.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from inference.errors import XMedError
from inference.resources import ROOT
from training.config import apply_overrides, from_dict, load_config, seed_everything

log = logging.getLogger(__name__)

REPO = ROOT
STAGES = ("phantoms", "vision", "skeleton", "sft", "reasoning", "dpo", "grounding", "eval")
MAX_MODEL_BYTES = 50 * 1024 * 1024


def _repo_path(path: str | Path) -> Path:
    """A path from a config: absolute as given, else under the repository."""
    return Path(path) if Path(path).is_absolute() else REPO / path


@dataclass
class SpecSection:
    """Model sizes (training.model_factory.TinySpec fields)."""

    vocab_size: int = 1024
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 384
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 384
    image_size: int = 224
    patch_size: int = 28
    max_tiles: int = 1
    seed: int = 0
    downsample_ratio: float = 0.5   # InternVL's pixel shuffle (run 13: 0.25 -- a finer patch grid, as many tokens)


@dataclass
class CorpusSection:
    #: ``phantoms``: training.phantoms (one 2-D case per image); ``study``: training.study_corpus (slices of
    #: phantom CT studies in the reader's windows, the ``study`` section; ``n`` counts studies)
    kind: str = "phantoms"
    n: int = 6000
    seed: int = 0
    size: int = 224
    kinds: list[str] = field(default_factory=list)
    max_lesions: int = 3
    #: lesion diameter range in mm ([] = the generator's per-organ 6-50 mm); the held-out corpus uses the same
    lesion_mm: list[float] = field(default_factory=list)

    def corpus_config(self):
        from training.phantoms import corpus_config

        return corpus_config(self.kinds, self.max_lesions, self.lesion_mm)

    def cli_flags(self) -> str:
        flags = f"--size {self.size} --max-lesions {self.max_lesions}"
        if self.kinds:
            flags += " --kinds " + ",".join(self.kinds)
        if self.lesion_mm:
            flags += f" --lesion-mm {self.lesion_mm[0]:g} {self.lesion_mm[1]:g}"
        return flags


@dataclass
class StudySection:
    """The study corpus (training.study_corpus.StudyCorpusConfig) when ``corpus.kind`` is ``study``:
    ``corpus.n`` / ``eval.n`` / ``eval.calibration_n`` count studies, ``corpus.size`` is the slice size."""

    n_slices: int = 120
    slices_per_study: int = 12
    empty_fraction: float = 0.25
    windows: list[str] = field(default_factory=lambda: ["soft_tissue", "lung", "liver", "bone", "default"])
    windows_per_slice: int = 2
    max_lesions: int = 6
    xrays: int = -1
    visible_window_share: float = 0.0  # lesion slices rendered only in windows showing a lesion (StudyCorpusConfig)
    preference_errors: list[str] = field(default_factory=list)  # [] = all
    workers: int = 1  # processes drawing studies (the same bytes whatever the number)
    #: training slices moved by up to this many pixels (StudyCorpusConfig.shift); the held-out and calibration
    #: corpora are never moved: they are measured as the viewer shows a study
    shift: int = 0

    def config(self, corpus: CorpusSection, seed: int, studies: int, train: bool = False):
        from training.study_corpus import StudyCorpusConfig

        extra = {"preference_errors": list(self.preference_errors)} if self.preference_errors else {}
        if train and self.shift:
            extra["shift"] = self.shift
        return StudyCorpusConfig(studies=studies, seed=seed, size=corpus.size, n_slices=self.n_slices,
                                 slices_per_study=self.slices_per_study, empty_fraction=self.empty_fraction,
                                 windows=list(self.windows), windows_per_slice=self.windows_per_slice,
                                 max_lesions=self.max_lesions, lesion_mm=list(corpus.lesion_mm), xrays=self.xrays,
                                 visible_window_share=self.visible_window_share, **extra)


@dataclass
class EvalSection:
    n: int = 200
    seed: int = 99
    limit: int = 0  # 0: all held-out images
    samples: int = 5
    max_new_tokens: int = 0  # 0: per-task defaults
    tasks: list[str] = field(default_factory=lambda: ["grounding", "vqa", "report", "reasoning"])
    #: grounding-only eval on this many phantoms drawn with the generator's default (6-50 mm) lesions, so the
    #: card shows how the model does outside its training sizes (0: skip)
    default_sizes_n: int = 100
    #: reliability calibration on a third corpus (its own seed), written as the model's
    #: reliability_calibration.json (0: skip)
    calibration_n: int = 150
    calibration_seed: int = 500
    calibration_samples: int = 10
    #: also evaluate on a fresh ``xmedgpt sample`` study (seed ``sample_seed``, ``sample_slices`` slices) in these
    #: windows, every slice, per window and lesion size (app.synthetic.study_dataset; [] or 0 slices: skip)
    sample_windows: list[str] = field(default_factory=list)
    sample_slices: int = 60
    sample_seed: int = 600
    #: the series pre-read's operating point (app.assistant.preread): fitted at ``preread_fp`` false positives per
    #: volume on ``xmedgpt sample`` studies of ``preread_fit_seeds`` (``preread_slices`` slices each), written as the
    #: model's preread_operating_point.json, then measured on studies of ``preread_held_seeds`` ([]: skip)
    preread_fit_seeds: list[int] = field(default_factory=list)
    preread_held_seeds: list[int] = field(default_factory=list)
    preread_slices: int = 120
    preread_size: int = 512
    preread_fp: float = 1.0
    device: str = "cpu"  # where the held-out evaluation runs (cpu | cuda | auto)


@dataclass
class VisionSection:
    """Dense pretraining of a new vision tower (training.vision_pretrain) before stage 1, when ``minutes`` > 0:
    the tower reads ``image_size``-px tiles in ``patch_size``-px patches, is trained on the training corpus's boxes
    for ``minutes`` (resumable), and replaces ``init_from``'s tower (training.demo_model.transplant_vision), its
    patches joined ``spec.downsample_ratio`` to a side into image tokens. ``spec`` then describes the model
    after the transplant. ``readout`` "token" also trains a projector-shaped head on the image tokens, which
    becomes the new projector's first layers; ``init_tower`` starts the tower from a saved one (e.g. an earlier
    run's ``vision/vision_tower``); ``position`` also trains each patch to say its own place on the grid."""

    minutes: float = 0.0
    image_size: int = 224
    patch_size: int = 14
    batch: int = 32
    lr: float = 1.0e-3
    seed: int = 0
    eval_limit: int = 3000
    readout: str = "cell"
    init_tower: str = ""
    position: bool = False


@dataclass
class DemoConfig:
    work_dir: str = "checkpoints/demo-recipe"
    out: str = "resources/models/demo"
    name: str = "XMedGPT demo (phantoms)"
    corpus: CorpusSection = field(default_factory=CorpusSection)
    study: StudySection = field(default_factory=StudySection)
    eval: EvalSection = field(default_factory=EvalSection)
    spec: SpecSection = field(default_factory=SpecSection)
    vision: VisionSection = field(default_factory=VisionSection)
    sft_config: str = "training/configs/sft_stage1_demo.yaml"
    reasoning_config: str = "training/configs/sft_reasoning_demo.yaml"
    dpo_config: str = "training/configs/dpo_demo.yaml"
    stage_overrides: dict[str, list[str]] = field(default_factory=dict)  # stage → extra "section.key=value"
    #: repeat factors per phantom dataset: localization is the hard skill, so grounding dominates stage 1;
    #: ``phantom_grounding_empty`` (:data:`EMPTY_GROUNDING`) repeats the lesion-free grounding answers on top
    stage1_mix: dict[str, float] = field(default_factory=lambda: {
        "phantom_grounding": 10, "phantom_reasoning": 0.25, "phantom_vqa": 0.5, "phantom_report": 0.5,
        "app_vqa": 0.25})
    reasoning_mix: dict[str, float] = field(default_factory=lambda: {
        "phantom_reasoning": 1, "app_reasoning": 1, "phantom_grounding": 0.5})
    #: the corpus's DPO pair files the DPO stage reads: "preference" (five-step chains: box errors and
    #: self-contradictions; runs 1-13c) and/or "grounding_preference" (the grounding question: invented, moved
    #: or missed boxes -- the pre-read sweep's mistakes; study corpora only); two or more are pooled
    dpo_sets: list[str] = field(default_factory=lambda: ["preference"])
    #: a last SFT stage after DPO ("grounding", the SFT config, ``stage_overrides["grounding"]``) on these sets, e.g.
    #: ``{phantom_grounding: 1, phantom_grounding_empty: 2}``: the five-step chains and DPO take back the empty
    #: answers a grounding stage taught, a few hundred steps at the end give them back (run 24,
    #: docs/demo-512-run-19.md); empty: no such stage (runs 1-23)
    grounding_mix: dict[str, float] = field(default_factory=dict)
    threads: int = 0
    #: start from this trained model folder (its weights and tokenizer; same sizes as ``spec``, whose
    #: ``max_tiles`` it gets) instead of a random skeleton: what it already knows is kept ("" = random)
    init_from: str = ""
    #: the questions of the app-prompt reasoning set: "default" (runs 1-5: "Analyse this image." only) or "all"
    #: (inference.prompts.REASONING_QUESTIONS, every question the workstation sends; run 5b)
    app_questions: str = "default"
    #: what the model cannot do that its card's own measurements do not show (measured elsewhere, e.g. with
    #: training.position_probe): sentences for the card's "What it cannot do"
    known_limits: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- corpora


def write_recipe_corpus(config: DemoConfig, folder: Path, n: int, seed: int, train: bool = False) -> dict:
    """Write the recipe's kind of corpus (``corpus.kind``) with ``n`` cases (studies) and ``seed`` (``train``:
    the training corpus, with its augmentation); returns {"counts", "lesions_per_image"}."""
    if config.corpus.kind == "study":
        from training.study_corpus import write_study_corpus

        s = write_study_corpus(folder, config.study.config(config.corpus, seed, n, train), workers=config.study.workers)
        return {"counts": s.counts, "lesions_per_image": s.lesions_per_image, "windows": s.windows,
                "size_classes": s.size_classes}
    if config.corpus.kind != "phantoms":
        raise XMedError(f"corpus.kind must be 'phantoms' or 'study', not {config.corpus.kind!r}.")
    from training.phantoms import write_corpus

    p = write_corpus(folder, n, seed, config.corpus.size, config=config.corpus.corpus_config())
    return {"counts": p.counts, "lesions_per_image": p.lesions_per_image}


def corpus_command(config: DemoConfig, folder: Path, n: int, seed: int, train: bool = False) -> str:
    """The shell command that writes the same corpus as :func:`write_recipe_corpus`."""
    if config.corpus.kind == "study":
        cfg = config.study.config(config.corpus, seed, n, train)
        return f"python -m training.study_corpus --out {folder} --studies {n} --seed {seed} {cfg.cli_flags()}"
    return f"python -m training.phantoms --out {folder} --n {n} --seed {seed} {config.corpus.cli_flags()}"


# ----------------------------------------------------------------------------- state


class RecipeState:
    """``work_dir/recipe_state.json``: finished stages with their wall time and details."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict = json.loads(path.read_text()) if path.is_file() else {"stages": {}}

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def finish(self, stage: str, wall_s: float, **details) -> None:
        self.data["stages"][stage] = {"wall_s": round(wall_s, 1), **details}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")

    @property
    def wall_s(self) -> float:
        return sum(s["wall_s"] for s in self.data["stages"].values())


# ----------------------------------------------------------------------------- skeleton


def corpus_text(folder: Path) -> list[str]:
    """Every prompt and answer of the training corpus (what the tokenizer must encode well)."""
    lines: list[str] = []
    for name in ("grounding", "vqa", "report", "reasoning"):
        for line in (folder / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            for turn in json.loads(line)["conversations"]:
                lines.extend(turn["value"].replace("<image>", "").splitlines())
    for line in (folder / "preference.jsonl").read_text(encoding="utf-8").splitlines():
        lines.extend(json.loads(line)["rejected"].splitlines())
    return [x for x in lines if x.strip()]


def build_demo_tokenizer(lines: Sequence[str], vocab_size: int):
    """Byte-level BPE with one token per digit (coordinates are learnt digit by digit)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from training.model_factory import CHAT_TEMPLATE, SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        chat_template=CHAT_TEMPLATE, padding_side="left", model_max_length=4096)


def _save_processor_files(folder: Path, tiny, image_seq_length: int) -> None:
    """The image processor of ``tiny`` (a TinySpec: tile, tiles) and the processor config with its token count."""
    from training.model_factory import build_image_processor

    build_image_processor(tiny).save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps(
        {"processor_class": "InternVLProcessor", "image_seq_length": image_seq_length}, indent=2))


def build_skeleton(folder: Path, spec: SpecSection, lines: Sequence[str], name: str) -> Path:
    """Tokenizer trained on the corpus + randomly initialised InternVL (model_factory's config and processor)."""
    from transformers import InternVLForConditionalGeneration

    from training.model_factory import TinySpec, build_config

    tiny = TinySpec(**{k: v for k, v in asdict(spec).items() if k in TinySpec.__dataclass_fields__})
    torch.manual_seed(spec.seed)
    tokenizer = build_demo_tokenizer(lines, spec.vocab_size)
    config = build_config(tokenizer, tiny)
    model = InternVLForConditionalGeneration(config).eval()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    _save_processor_files(folder, tiny, config.image_seq_length)
    (folder / "model_card.json").write_text(json.dumps({"name": f"{name} (untrained)", "trained": False}))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("skeleton: %d parameters, vocabulary %d", n_params, len(tokenizer))
    return folder


def skeleton_from(folder: Path, init: Path, spec: SpecSection, name: str) -> Path:
    """The starting model copied from the trained model ``init`` (weights, tokenizer, chat template) with the
    image processor of ``spec`` (its ``max_tiles``); refuses a model whose sizes differ from ``spec``, except a
    larger tile (``spec.image_size`` a multiple of the model's, same patch size): then the vision tower's
    position embeddings are resized to the finer patch grid (:func:`grow_tile`) and every tile gives more
    image tokens."""
    from training.model_factory import TinySpec, image_tokens_per_tile

    init = _repo_path(init)
    if not (init / "config.json").is_file():
        raise XMedError(f"init_from: no model at {init}.")
    cfg = json.loads((init / "config.json").read_text())
    vision, text = cfg["vision_config"], cfg["text_config"]
    have = {"vision_hidden": vision["hidden_size"], "vision_layers": vision["num_hidden_layers"],
            "vision_heads": vision["num_attention_heads"], "vision_intermediate": vision["intermediate_size"],
            "image_size": vision["image_size"][0], "patch_size": vision["patch_size"][0],
            "text_hidden": text["hidden_size"], "text_layers": text["num_hidden_layers"],
            "text_heads": text["num_attention_heads"], "text_kv_heads": text["num_key_value_heads"],
            "text_intermediate": text["intermediate_size"], "downsample_ratio": cfg.get("downsample_ratio", 0.5)}
    differ = {k: (v, getattr(spec, k)) for k, v in have.items() if v != getattr(spec, k)}
    deeper = {}
    for k in ("vision_layers", "text_layers"):   # a deeper model: whole multiples of the trained depth are grown into
        if k in differ and differ[k][1] > differ[k][0] and differ[k][1] % differ[k][0] == 0:
            deeper[k] = differ.pop(k)[1]
    grow = differ.pop("image_size", None)
    if grow and (spec.image_size <= grow[0] or spec.image_size % grow[0]):
        differ["image_size"] = grow   # only a larger tile, a whole multiple of the trained one, is grown into
    ratio = differ.pop("downsample_ratio", None)
    if ratio and not (grow and "image_size" not in differ
                      and abs(spec.image_size * spec.downsample_ratio - grow[0] * ratio[0]) < 1e-6):
        differ["downsample_ratio"] = ratio   # a finer shuffle only with a tile grown so the tokens stay as many
    if differ:
        raise XMedError("init_from: the model's sizes differ from spec: "
                        + ", ".join(f"{k} {a} != {b}" for k, (a, b) in differ.items()))
    folder.mkdir(parents=True, exist_ok=True)
    keep = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "special_tokens_map.json")
    for f in keep:
        if (init / f).is_file():
            shutil.copy2(init / f, folder / f)
    tiny = TinySpec(**{k: v for k, v in asdict(spec).items() if k in TinySpec.__dataclass_fields__})
    if grow:
        cfg = grow_tile(folder, spec.image_size, image_tokens_per_tile(tiny), spec.downsample_ratio)
    if deeper:
        cfg = grow_depth(folder, deeper.get("vision_layers", have["vision_layers"]),
                         deeper.get("text_layers", have["text_layers"]), spec.seed)
    _save_processor_files(folder, tiny, cfg["image_seq_length"])
    (folder / "model_card.json").write_text(json.dumps({"name": f"{name} (from {init.name})", "trained": False}))
    log.info("skeleton: copied from %s (max_tiles %d)", init, spec.max_tiles)
    return folder


def grow_depth(folder: Path, vision_layers: int, text_layers: int, seed: int = 0) -> dict:
    """The model in ``folder`` made deeper without changing what it computes (issue #14, run 12: the trained
    model does not fit its own training slices -- mean IoU 0.07 on them -- so it lacks capacity, not data).
    Each trained layer is followed by ``new // old - 1`` new ones, freshly initialised (InternVL's own
    initialisation, seeded) except that they add nothing yet: a vision layer's layer-scale factors
    (``lambda_1``, ``lambda_2``) and a language layer's output projections (``o_proj``, ``down_proj``) start at
    zero, so every new layer passes its input through unchanged and the grown model answers exactly as the
    trained one; training then opens them. Returns the new config."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    trained = InternVLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    cfg = json.loads((folder / "config.json").read_text())
    old_v, old_t = cfg["vision_config"]["num_hidden_layers"], cfg["text_config"]["num_hidden_layers"]
    for new, old in ((vision_layers, old_v), (text_layers, old_t)):
        if new < old or new % old:
            raise XMedError(f"grow_depth: {new} layers is not a whole multiple of the trained {old}.")
    cfg["vision_config"]["num_hidden_layers"] = vision_layers
    cfg["text_config"]["num_hidden_layers"] = text_layers
    cfg["text_config"].pop("layer_types", None)   # rebuilt for the new depth
    torch.manual_seed(seed)
    grown = InternVLForConditionalGeneration(InternVLConfig(**cfg)).to(torch.float32)
    old_layers = (trained.model.vision_tower.encoder.layer, trained.model.language_model.layers)
    new_layers = (grown.model.vision_tower.encoder.layer, grown.model.language_model.layers)
    with torch.no_grad():
        for olds, news in zip(old_layers, new_layers):
            step = len(news) // len(olds)
            for i, layer in enumerate(news):
                if i % step == 0:   # a trained layer, at its new place
                    layer.load_state_dict(olds[i // step].state_dict())
                    continue
                for name, param in layer.named_parameters():
                    if name in ("lambda_1", "lambda_2") or name.endswith(("o_proj.weight", "down_proj.weight")):
                        param.zero_()
        placed = {id(p) for layers in new_layers for p in layers.parameters()}
        trained_params = dict(trained.named_parameters())
        for name, param in grown.named_parameters():   # everything outside the layers, as trained
            if id(param) not in placed:
                param.copy_(trained_params[name])
    grown.generation_config = trained.generation_config
    grown.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    log.info("skeleton: grown from %d + %d to %d + %d layers (vision + language)", old_v, old_t, vision_layers,
             text_layers)
    return cfg


def grow_tile(folder: Path, image_size: int, image_tokens: int, downsample_ratio: float) -> dict:
    """The model in ``folder`` made to read ``image_size``-px tiles: its absolute position embeddings resized
    bicubically to the finer patch grid (the resize InternVL's vision embeddings do on the fly,
    ``InternVLVisionEmbeddings.interpolate_pos_encoding``, done once and stored, so the weights match the
    config), config ``image_size`` and ``image_seq_length`` to match. Returns the new config.

    With a smaller ``downsample_ratio`` (run 13: 0.5 -> 0.25 as the tile grows from 224 to 448 px) the image
    tokens stay as many and where they were -- the language model reads the same 4 x 4 grid -- and each joins
    the 4 x 4 finer patches that cover what its 2 x 2 patches covered: the projector's first layer (and its
    layer norm) gives each finer patch its parent patch's weights, divided among the patches that share it
    (:func:`_spread_projector`), so a tile whose finer patches read as their parents would be projected as
    before."""
    import torch
    from safetensors.torch import load_file, save_file

    cfg = json.loads((folder / "config.json").read_text())
    weights = load_file(folder / "model.safetensors")
    key = next(k for k in weights if k.endswith("vision_tower.embeddings.position_embeddings"))
    pos = weights[key]
    side = round((pos.shape[1] - 1) ** 0.5)
    new_side = image_size // cfg["vision_config"]["patch_size"][0]
    grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    weights[key] = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, -1)],
                             dim=1).contiguous()
    old_ratio = float(cfg.get("downsample_ratio", 0.5))
    if abs(downsample_ratio - old_ratio) > 1e-9:
        _spread_projector(weights, side, new_side, old_ratio, downsample_ratio)
        cfg["downsample_ratio"] = downsample_ratio
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    cfg["vision_config"]["image_size"] = [image_size, image_size]
    cfg["image_seq_length"] = image_tokens
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    log.info("skeleton: tile grown from %d to %d px (%d x %d patches, %d image tokens)",
             side * cfg["vision_config"]["patch_size"][0], image_size, new_side, new_side, image_tokens)
    return cfg


def transplant_vision(folder: Path, init: Path, tower: Path, downsample_ratio: float, seed: int = 0,
                      name: str = "", token_head: Path | None = None) -> dict:
    """A demo model in ``folder`` that reads images with the vision tower saved in ``tower`` (an
    ``InternVLVisionModel``, e.g. :mod:`training.vision_pretrain`'s dense-pretrained one) and writes with the
    language model of the trained model ``init``: its language model, embeddings, head, tokenizer and chat
    template are kept; the vision config and weights are the tower's; the projector is kept when its shapes still
    fit (same width and patches per token) and drawn afresh otherwise. The image processor's tile and the image
    token count follow the tower (``image_seq_length`` = (tile / patch x ``downsample_ratio``)²).
    ``token_head``: the token head trained with the tower (:mod:`training.vision_pretrain`'s ``token_head.pt``);
    its layer norm and first linear layer become the projector's, so the language model starts from tokens whose
    projector already says where a lesion is (only the projector's last layer is drawn afresh).
    Returns the config."""
    from safetensors.torch import load_file
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from training.model_factory import TinySpec

    init, tower, folder = Path(init), Path(tower), Path(folder)
    for need in (init / "config.json", tower / "config.json"):
        if not need.is_file():
            raise XMedError(f"transplant_vision: no model at {need.parent}.")
    cfg = json.loads((init / "config.json").read_text())
    vision = json.loads((tower / "config.json").read_text())
    side = vision["image_size"][0] // vision["patch_size"][0]
    tokens_side = side * downsample_ratio
    if abs(tokens_side - round(tokens_side)) > 1e-9 or round(tokens_side) < 1:
        raise XMedError(f"transplant_vision: a {side} x {side} patch grid does not shuffle by {downsample_ratio}.")
    cfg["vision_config"] = {k: v for k, v in vision.items() if k not in ("architectures", "transformers_version")}
    cfg["downsample_ratio"] = downsample_ratio
    cfg["image_seq_length"] = round(tokens_side) ** 2
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(InternVLConfig(**cfg)).eval()
    old = InternVLForConditionalGeneration.from_pretrained(init, dtype=torch.float32, local_files_only=True)
    mine = model.state_dict()
    kept = {k: v for k, v in old.state_dict().items()
            if not k.startswith("model.vision_tower.") and k in mine and mine[k].shape == v.shape}
    model.load_state_dict(kept, strict=False)
    tower_weights = load_file(tower / "model.safetensors")
    model.model.vision_tower.load_state_dict(tower_weights, strict=True)
    if token_head is not None:
        head = torch.load(token_head, weights_only=True)
        projector = model.model.multi_modal_projector
        for part in ("layer_norm", "linear_1"):
            mine_part = getattr(projector, part)
            got = {k[len(part) + 1:]: v for k, v in head.items() if k.startswith(part + ".")}
            if {k: tuple(v.shape) for k, v in got.items()} != {k: tuple(v.shape) for k, v in
                                                               mine_part.state_dict().items()}:
                raise XMedError(f"transplant_vision: {token_head} does not fit the projector "
                                f"(ratio {downsample_ratio}, width {projector.linear_1.out_features}).")
            mine_part.load_state_dict(got)
            kept.update({f"model.multi_modal_projector.{part}.{k}": v for k, v in got.items()})
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config = old.generation_config
    model.save_pretrained(folder, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (init / f).is_file():
            shutil.copy2(init / f, folder / f)
    pre = json.loads((init / "preprocessor_config.json").read_text()) if (init / "preprocessor_config.json").is_file() \
        else {}
    _save_processor_files(folder, TinySpec(image_size=vision["image_size"][0], patch_size=vision["patch_size"][0],
                                           max_tiles=int(pre.get("max_patches", 1))), cfg["image_seq_length"])
    (folder / "model_card.json").write_text(json.dumps(
        {"name": f"{name or init.name} (from {init.name}'s language model)", "trained": False}))
    projector = sorted({k.split(".")[2] for k in mine if k.startswith("model.multi_modal_projector.")
                        and k not in kept})
    log.info("transplant: %s's language model reads %s's %d x %d patches as %d image tokens (projector %s)",
             init.name, tower.name, side, side, cfg["image_seq_length"],
             "drawn afresh: " + ", ".join(projector) if projector else
             "layer norm and first layer from the token head" if token_head is not None else "kept")
    return cfg


def _shuffled_patches(side: int, ratio: float) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Which patches (row, column of the patch grid, as the vision tower's output is laid out) InternVL's pixel
    shuffle joins into each image token, in the order of the token's channel blocks: read off the model's own
    ``pixel_shuffle`` applied to a grid that holds each patch's position."""
    import torch
    from transformers.models.internvl.modeling_internvl import InternVLModel

    grid = torch.zeros(1, side, side, 2)
    grid[0, :, :, 0] = torch.arange(side).view(-1, 1)
    grid[0, :, :, 1] = torch.arange(side).view(1, -1)
    # channels 2 per patch: the shuffle moves whole channel vectors, so the positions travel with them
    out = InternVLModel.pixel_shuffle(None, grid, ratio)
    return {(a, b): [(int(v[0]), int(v[1])) for v in out[0, a, b].view(-1, 2)]
            for a in range(out.shape[1]) for b in range(out.shape[2])}


def _spread_projector(weights: dict, side: int, new_side: int, old_ratio: float, new_ratio: float) -> None:
    """The projector's layer norm and first linear layer remapped from ``old_ratio`` on a ``side`` grid to
    ``new_ratio`` on a ``new_side`` grid with the same tokens (see :func:`grow_tile`): the channel block of a
    finer patch takes its parent's block (parent = the coarse patch covering it); the linear weights are divided
    by the number of finer patches per parent, so patches that read as their parent sum to the parent's term."""
    import torch

    old, new = _shuffled_patches(side, old_ratio), _shuffled_patches(new_side, new_ratio)
    if old.keys() != new.keys():
        raise XMedError("grow_tile: a finer pixel shuffle must keep the image tokens' grid.")
    scale = new_side // side
    norm_w = next(k for k in weights if k.endswith("multi_modal_projector.layer_norm.weight"))
    prefix = norm_w[: -len("layer_norm.weight")]
    g, b, w1 = (weights[prefix + n] for n in ("layer_norm.weight", "layer_norm.bias", "linear_1.weight"))
    c = g.shape[0] // len(next(iter(old.values())))
    per_token = len(next(iter(new.values())))
    ng, nb, nw = torch.empty(per_token * c), torch.empty(per_token * c), torch.empty(w1.shape[0], per_token * c)
    layout = None
    for token, patches in new.items():
        block_of = {p: n for n, p in enumerate(old[token])}
        parents = [block_of.get((i // scale, j // scale)) for i, j in patches]
        if None in parents:
            raise XMedError("grow_tile: a finer patch's parent is not in its token.")
        if layout is None:
            layout = parents
        elif parents != layout:   # the channel layout is the same for every token, or one remap cannot serve all
            raise XMedError("grow_tile: the pixel shuffle's channel layout differs between tokens.")
    for m, n in enumerate(layout):
        ng[m * c:(m + 1) * c], nb[m * c:(m + 1) * c] = g[n * c:(n + 1) * c], b[n * c:(n + 1) * c]
        nw[:, m * c:(m + 1) * c] = w1[:, n * c:(n + 1) * c] / (scale * scale)
    weights[prefix + "layer_norm.weight"], weights[prefix + "layer_norm.bias"] = ng, nb
    weights[prefix + "linear_1.weight"] = nw.contiguous()


# ----------------------------------------------------------------------------- the recipe


def _command(module: str, config: str, overrides: Sequence[str]) -> str:
    return " ".join([f"python -m {module} --config {config} --resume", *(f"--set {o}" for o in overrides)])


def run_recipe(config: DemoConfig, stop_after: str | None = None) -> Path:
    """Run (or continue) the recipe; returns the output folder (or the work folder when stopped early)."""
    from training.dpo import DPOConfig, train_dpo
    from training.sft import SFTConfig, train_sft

    if config.threads > 0:
        torch.set_num_threads(config.threads)
    work = Path(config.work_dir)
    state = RecipeState(work / "recipe_state.json")
    train_dir, eval_dir, skeleton = work / "phantoms-train", work / "phantoms-eval", work / "skeleton"
    commands: list[str] = []
    if config.corpus.seed == config.eval.seed:
        raise XMedError("The held-out corpus needs a seed not used in training (eval.seed == corpus.seed).")

    def stage(name: str, fn, **details) -> None:
        if state.done(name):
            log.info("stage %s already finished", name)
            return
        log.info("stage %s", name)
        start = time.monotonic()
        extra = fn() or {}
        state.finish(name, time.monotonic() - start, **details, **extra)

    def phantoms() -> dict:
        a = write_recipe_corpus(config, train_dir, config.corpus.n, config.corpus.seed, train=True)
        b = write_recipe_corpus(config, eval_dir, config.eval.n, config.eval.seed)
        return {"train_counts": a["counts"], "eval_counts": b["counts"],
                "train_lesions_per_image": a["lesions_per_image"], "eval_lesions_per_image": b["lesions_per_image"],
                **({"train_windows": a["windows"], "train_size_classes": a["size_classes"]} if "windows" in a else {})}

    def vision_stage() -> dict:
        from training.vision_pretrain import pretrain

        v = config.vision
        result = pretrain(train_dir, work / "vision", _repo_path(config.init_from), image_size=v.image_size,
                          patch=v.patch_size, eval_dir=eval_dir, eval_limit=v.eval_limit, minutes=v.minutes,
                          batch=v.batch, lr=v.lr, seed=v.seed, readout=v.readout,
                          ratio=config.spec.downsample_ratio,
                          init_tower=_repo_path(v.init_tower) if v.init_tower else None, position=v.position)
        return {"vision": {k: result[k] for k in ("steps", "trained_min", "grid", "readout", "held_out")}}

    def skeleton_stage() -> dict:
        if skeleton.exists():
            shutil.rmtree(skeleton)
        if config.init_from:
            import hashlib

            extra, hashed = {}, skeleton / "model.safetensors"
            if config.vision.minutes > 0:
                init = _repo_path(config.init_from)
                head = work / "vision" / "token_head.pt" if config.vision.readout == "token" else None
                transplant_vision(skeleton, init, work / "vision" / "vision_tower", config.spec.downsample_ratio,
                                  config.spec.seed, config.name, token_head=head)
                extra, hashed = {"vision_tower": str(work / "vision" / "vision_tower")}, init / "model.safetensors"
            else:
                skeleton_from(skeleton, Path(config.init_from), config.spec, config.name)
            weights = hashlib.sha256(hashed.read_bytes()).hexdigest()
            return {"init_from": config.init_from, "init_sha256": weights, **extra,
                    "vocabulary": json.loads((skeleton / "config.json").read_text())["text_config"]["vocab_size"]}
        build_skeleton(skeleton, config.spec, corpus_text(train_dir), config.name)
        return {"vocabulary": json.loads((skeleton / "config.json").read_text())["text_config"]["vocab_size"]}

    def sft_stage(name: str, cfg_path: str, base: Path, meta: Path) -> Path:
        out = work / name
        overrides = [f"model.path={base}", f"data.meta={meta}", f"train.output_dir={out}",
                     *config.stage_overrides.get(name, [])]
        commands.append(_command("training.sft", cfg_path, overrides))
        if not state.done(name):
            cfg = load_config(_repo_path(cfg_path), SFTConfig, overrides)
            stage(name, lambda: _card(train_sft(cfg, resume=True)), config=cfg_path, overrides=overrides)
        return out / "final"

    def dpo_stage(base: Path) -> Path:
        out = work / "dpo"
        overrides = [f"model.path={base}", f"data.meta={_preference_file(train_dir, config.dpo_sets)}",
                     f"train.output_dir={out}", *config.stage_overrides.get("dpo", [])]
        commands.append(_command("training.dpo", config.dpo_config, overrides))
        if not state.done("dpo"):
            path = _repo_path(config.dpo_config)
            cfg = load_config(path, DPOConfig, overrides)
            stage("dpo", lambda: _card(train_dpo(cfg, resume=True)), config=config.dpo_config, overrides=overrides)
        return out / "final"

    seed_everything(config.corpus.seed)
    stage("phantoms", phantoms)
    commands.append(corpus_command(config, train_dir, config.corpus.n, config.corpus.seed, train=True))
    commands.append(corpus_command(config, eval_dir, config.eval.n, config.eval.seed))
    if stop_after == "phantoms":
        return work
    if config.vision.minutes > 0:
        if not config.init_from:
            raise XMedError("vision.minutes: a pretrained tower is transplanted into init_from; set init_from.")
        if (config.vision.image_size, config.vision.patch_size) != (config.spec.image_size, config.spec.patch_size):
            raise XMedError("vision: image_size and patch_size must be spec's (spec describes the model after the "
                            "transplant).")
        from training.vision_pretrain import READOUTS

        if config.vision.readout not in READOUTS:
            raise XMedError(f"vision.readout {config.vision.readout!r}: one of {', '.join(READOUTS)}.")
        stage("vision", vision_stage)
        v = config.vision
        commands.append(f"python -m training.vision_pretrain --corpus {train_dir} --eval {eval_dir} --out "
                        f"{work / 'vision'} --like {config.init_from} --image-size {v.image_size} --patch "
                        f"{v.patch_size} --minutes {v.minutes:g} --batch {v.batch} --lr {v.lr:g} --seed {v.seed}"
                        + (f" --readout {v.readout} --ratio {config.spec.downsample_ratio:g}"
                           if v.readout != "cell" else "")
                        + (f" --init-tower {v.init_tower}" if v.init_tower else "")
                        + (" --position" if v.position else ""))
    if stop_after == "vision":
        return work
    stage("skeleton", skeleton_stage)
    if config.init_from:
        sha = state.data["stages"]["skeleton"].get("init_sha256", "?")
        if config.vision.minutes > 0:
            commands.append(f"# the starting model: the language model of {config.init_from} (model.safetensors "
                            f"sha256 {sha}) reading the pretrained tower's {config.spec.image_size}-px tiles "
                            "(training.demo_model.transplant_vision)")
        else:
            commands.append(f"# the starting model: {config.init_from} (model.safetensors sha256 {sha}) with "
                            f"{config.spec.image_size}-px tiles, max_tiles {config.spec.max_tiles} "
                            "(training.demo_model.skeleton_from)")
    if stop_after == "skeleton":
        return work
    sft_final = sft_stage("sft", config.sft_config, skeleton, _mix_meta(train_dir, "meta_stage1.json",
                                                                         config.stage1_mix, config.app_questions))
    if stop_after == "sft":
        return work
    reasoning_meta = _mix_meta(train_dir, "meta_reasoning.json", config.reasoning_mix, config.app_questions)
    reasoning_final = sft_stage("reasoning", config.reasoning_config, sft_final, reasoning_meta)
    if stop_after == "reasoning":
        return work
    final = dpo_stage(reasoning_final)
    if stop_after == "dpo":
        return work
    if config.grounding_mix:
        final = sft_stage("grounding", config.sft_config, final,
                          _mix_meta(train_dir, "meta_grounding_final.json", config.grounding_mix, config.app_questions))
    if stop_after == "grounding":
        return work
    eval_cmd = (f"xmedgpt eval --data {eval_dir} --model {config.out} --json {Path(config.out) / 'eval.json'}"
                f" --samples {config.eval.samples} --tasks {','.join(config.eval.tasks)}"
                + (f" --limit {config.eval.limit}" if config.eval.limit else "")
                + (f" --max-new-tokens {config.eval.max_new_tokens}" if config.eval.max_new_tokens else ""))
    commands.append(eval_cmd)
    stage("eval", lambda: _finish(config, final, eval_dir, state, commands))
    return Path(config.out)


def _preference_file(train_dir: Path, sets: Sequence[str]) -> Path:
    """The DPO stage's pairs: ``preference.jsonl`` itself, or ``preference_mix.jsonl`` pooling ``sets``."""
    if list(sets) == ["preference"]:
        return train_dir / "preference.jsonl"
    missing = [name for name in sets if not (train_dir / f"{name}.jsonl").is_file()]
    if not sets or missing:
        raise XMedError(f"The corpus in {train_dir} has no {', '.join(f'{m}.jsonl' for m in missing) or 'pair set'}"
                        " for the DPO stage (a corpus written before it existed: write it again, same seed).")
    out = train_dir / "preference_mix.jsonl"
    text = "".join((train_dir / f"{name}.jsonl").read_text(encoding="utf-8") for name in sets)
    if not out.is_file() or out.read_text(encoding="utf-8") != text:  # a resumed recipe leaves it untouched
        out.write_text(text, encoding="utf-8")
    return out


def _card(final: Path) -> dict:
    card = json.loads((final / "model_card.json").read_text())
    return {k: card[k] for k in ("global_step", "train_loss", "records", "pairs") if k in card}


#: DICOM modality / body part the viewer would report for each phantom kind
_CONTEXT = {"ct_chest": ("CT", "CHEST"), "ct_abdomen": ("CT", "ABDOMEN"), "xray": ("DX", "CHEST")}


def write_app_prompt_sets(train_dir: Path, questions: str = "default") -> dict[str, dict]:
    """The corpus's answers under the prompts the workstation really sends, so the demo works in the app.

    ``app_reasoning``: the app's system prompt + five-step reasoning template (inference.prompts), under the
    default question, or (``questions="all"``) cycling through :data:`inference.prompts.REASONING_QUESTIONS`;
    ``app_vqa``: the VQA template, and the reliability pass's bare question + answer instruction.
    Returns their meta entries.
    """
    from inference.prompts import REASONING_QUESTIONS, ImageContext, Task, build_prompt
    from inference.reliability.sampling import ANSWER_INSTRUCTION

    kinds = {}
    for line in (train_dir / "annotations.jsonl").read_text(encoding="utf-8").splitlines():
        ann = json.loads(line)
        kinds[ann["image"]] = ann["kind"]

    def context(image: str) -> ImageContext:
        modality, part = _CONTEXT.get(kinds.get(image, ""), ("", ""))
        return ImageContext(modality=modality, body_part=part)

    def conv(image: str, system: str | None, user: str, answer: str) -> dict:
        turns = ([{"from": "system", "value": system}] if system else []) + [
            {"from": "human", "value": f"<image>\n{user}"}, {"from": "gpt", "value": answer}]
        return {"image": image, "conversations": turns}

    sets: dict[str, list[dict]] = {"app_reasoning": [], "app_vqa": []}
    for i, line in enumerate((train_dir / "reasoning.jsonl").read_text(encoding="utf-8").splitlines()):
        rec = json.loads(line)  # the same five steps whichever of the workstation's questions asked for them
        question = REASONING_QUESTIONS[i % len(REASONING_QUESTIONS)] if questions == "all" else ""
        prompt = build_prompt(Task.REASONING, question, context(rec["image"]))
        sets["app_reasoning"].append(conv(rec["image"], prompt.system, prompt.user,
                                          rec["conversations"][-1]["value"]))
    for i, line in enumerate((train_dir / "vqa.jsonl").read_text(encoding="utf-8").splitlines()):
        rec = json.loads(line)
        question = rec["conversations"][0]["value"].replace("<image>\n", "")
        answer = rec["conversations"][-1]["value"]
        if i % 2:
            prompt = build_prompt(Task.VQA, question, context(rec["image"]))
            sets["app_vqa"].append(conv(rec["image"], prompt.system, prompt.user, answer))
        else:
            sets["app_vqa"].append(conv(rec["image"], None, f"{question} {ANSWER_INSTRUCTION}", answer))
    entries = {}
    for name, records in sets.items():
        (train_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        entries[name] = _meta_entry(f"{name}.jsonl", len(records))
    return entries


def _meta_entry(annotation: str, length: int) -> dict:
    """A meta file's entry for a set the recipe writes beside the corpus's own (repeat factor 1 until a mix sets it)."""
    return {"root": ".", "annotation": annotation, "data_augment": False, "repeat_time": 1, "length": length}


#: a set drawn from the corpus's own files when a mix names it: the grounding answers on lesion-free slices ("No
#: lesion is seen."), so a mix can show them more often than the corpus's draw did (docs/demo-512-run-19.md)
EMPTY_GROUNDING = "phantom_grounding_empty"


def write_empty_grounding_set(train_dir: Path) -> dict:
    """``grounding_empty.jsonl``: the grounding records whose slice has no lesion (``annotations.jsonl``); returns
    its meta entry."""
    empty = set()
    for line in (train_dir / "annotations.jsonl").read_text(encoding="utf-8").splitlines():
        a = json.loads(line)
        if not a.get("lesions"):
            empty.add(a["image"])
    rows = [line for line in (train_dir / "grounding.jsonl").read_text(encoding="utf-8").splitlines()
            if json.loads(line)["image"] in empty]
    (train_dir / "grounding_empty.jsonl").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return {EMPTY_GROUNDING: _meta_entry("grounding_empty.jsonl", len(rows))}


def _mix_meta(train_dir: Path, name: str, mix: dict[str, float], app_questions: str = "default") -> Path:
    """A meta file over the corpus's datasets with the recipe's repeat factors (0 leaves a set out)."""
    meta = json.loads((train_dir / "meta.json").read_text())
    if any(k.startswith("app_") for k in mix):
        meta.update(write_app_prompt_sets(train_dir, app_questions))
    if mix.get(EMPTY_GROUNDING, 0) > 0:
        meta.update(write_empty_grounding_set(train_dir))
    unknown = set(mix) - set(meta)
    if unknown:
        raise XMedError(f"The phantom corpus has no dataset(s) {', '.join(sorted(unknown))}.")
    keep = {k: {**meta[k], "repeat_time": float(r)} for k, r in mix.items() if r > 0}
    path = train_dir / name
    path.write_text(json.dumps(keep, indent=2) + "\n")
    return path


def _finish(config: DemoConfig, trained: Path, eval_dir: Path, state: RecipeState, commands: list[str]) -> dict:
    """Copy the model to ``config.out``, evaluate it on the held-out phantoms, write the model cards."""
    from inference.evaluation.harness import Options, run_eval

    out = Path(config.out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("adapter", "training_args.bin"))
    (out / "model_card.json").write_text(json.dumps({"name": config.name, "trained": True}))  # until the full card
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if size > MAX_MODEL_BYTES:
        raise XMedError(f"The demo model is {size / 2**20:.1f} MB, over the 50 MB limit; shrink the spec.")
    options = Options(limit=config.eval.limit or None, samples=config.eval.samples, tasks=tuple(config.eval.tasks),
                      max_new_tokens=config.eval.max_new_tokens or None)
    start = time.monotonic()
    metrics = run_eval(out, eval_dir, options, device=config.eval.device, quantization="none")
    (out / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    default_sizes = default_sizes_eval(config, out, eval_dir.parent / "phantoms-default-sizes", commands)
    sample_study = sample_study_eval(config, out, eval_dir.parent / "sample-study", commands)
    calibration = calibrate_reliability(config, out, eval_dir.parent, commands)
    preread = preread_eval(config, out, eval_dir.parent / "preread", commands)
    wall = state.wall_s + (time.monotonic() - start)
    n_params = sum(p.numel() for p in __import__("transformers").InternVLForConditionalGeneration
                   .from_pretrained(out).parameters())
    card = {
        "name": config.name,
        "trained": True,
        "intended_use": "Demonstration of the workstation on synthetic phantoms. Not a medical device; "
                        "never use it on patient images.",
        "architecture": "InternVLForConditionalGeneration (InternViT-style vision, Qwen2 text)",
        "parameters": n_params,
        "size_bytes": size,
        "spec": asdict(config.spec),
        "seeds": {"train_corpus": config.corpus.seed, "held_out_corpus": config.eval.seed,
                  "model_init": config.init_from or config.spec.seed,
                  **({"calibration_corpus": config.eval.calibration_seed} if calibration else {})},
        "data": {"train": state.data["stages"]["phantoms"].get("train_counts"),
                 "held_out": state.data["stages"]["phantoms"].get("eval_counts"),
                 "train_images": config.corpus.n, "held_out_images": config.eval.n, "image_size": config.corpus.size,
                 "corpus": (config.corpus.corpus_config().as_dict() if config.corpus.kind == "phantoms" else
                            {"kind": "study", **asdict(config.study.config(config.corpus, config.corpus.seed,
                                                                           config.corpus.n))})},
        "stages": state.data["stages"],
        "commands": commands,
        "wall_time_s": round(wall, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "metrics": metrics,
        "metrics_default_sizes": default_sizes,
        "metrics_sample_study": sample_study,
        "reliability_calibration": calibration,
        "known_limits": list(config.known_limits),
        **({"preread": preread} if preread else {}),
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    write_card_markdown(out)
    return {"size_bytes": size, "mean_iou": (metrics.get("localization") or {}).get("mean_iou")}


def default_sizes_eval(config: DemoConfig, model: Path, folder: Path, commands: list[str]) -> dict | None:
    """Localization on phantoms with the generator's default lesion sizes (6-50 mm): what the demo cannot do."""
    from inference.evaluation.harness import Options, run_eval
    from training.phantoms import write_corpus

    if config.eval.default_sizes_n <= 0 or config.corpus.kind != "phantoms":
        return None
    seed = config.eval.seed + 1
    if seed == config.corpus.seed:
        seed += 1
    corpus = replace(config.corpus, lesion_mm=[])  # the training corpus but for the lesion sizes
    if not (folder / "annotations.jsonl").is_file():
        write_corpus(folder, config.eval.default_sizes_n, seed, corpus.size, config=corpus.corpus_config())
    commands.append(f"python -m training.phantoms --out {folder} --n {config.eval.default_sizes_n} --seed {seed} "
                    f"{corpus.cli_flags()}")
    commands.append(f"xmedgpt eval --data {folder} --model {config.out} --samples 0 --tasks grounding")
    options = Options(samples=0, tasks=("grounding",), max_new_tokens=config.eval.max_new_tokens or None)
    metrics = run_eval(model, folder, options, device=config.eval.device, quantization="none")
    return {"seed": seed, "images": config.eval.default_sizes_n, "localization": metrics.get("localization")}


def preread_eval(config: DemoConfig, model: Path, folder: Path, commands: list[str]) -> dict | None:
    """The series pre-read's operating point, fitted and measured on ``xmedgpt sample`` studies (the card's "Series
    pre-read" section; :func:`training.preread_point.fit_and_measure`); None without ``eval.preread_fit_seeds``."""
    from training.preread_point import fit_and_measure

    e = config.eval
    if not e.preread_fit_seeds:
        return None
    return fit_and_measure(model, folder, e.preread_fit_seeds, e.preread_held_seeds, slices=e.preread_slices,
                           size=e.preread_size, fp_per_volume=e.preread_fp, device=e.device, model_label=config.out,
                           commands=commands)


def sample_study_eval(config: DemoConfig, model: Path, folder: Path, commands: list[str]) -> dict | None:
    """Grounding on a fresh ``xmedgpt sample`` study, every slice in each of ``eval.sample_windows``, rendered
    as the viewer renders them, per window and lesion size (what issue #14 is about)."""
    from inference.evaluation.harness import Options, format_table, run_eval_examples
    from training.study_corpus import sample_study_examples

    e = config.eval
    if not e.sample_windows or e.sample_slices <= 0:
        return None
    windows = ",".join(e.sample_windows)
    commands.append(f"xmedgpt sample --out {folder} --slices {e.sample_slices} --seed {e.sample_seed}")
    commands.append(f"xmedgpt eval --data {folder} --model {config.out} --window {windows} --tasks grounding")
    study = sample_study_examples(folder, e.sample_slices, e.sample_seed, e.sample_windows)
    options = Options(samples=0, tasks=("grounding",), max_new_tokens=e.max_new_tokens or None)
    metrics = run_eval_examples(model, study.examples, options, device=config.eval.device, quantization="none",
                                data=f"xmedgpt sample study (seed {e.sample_seed}, {e.sample_slices} slices)",
                                group_by="window")
    metrics["study"] = {"windows": study.windows, "hidden_lesions": study.hidden,
                        "lesion_sections": study.lesions_on_slices}
    metrics["table"] = format_table(metrics)
    return metrics


def write_card_markdown(folder: Path) -> Path:
    """``MODEL_CARD.md`` from the folder's ``model_card.json`` (the recipe's last step; again by hand with
    ``python -m training.demo_model --card DIR`` when the rendering changes)."""
    from inference.evaluation.harness import format_table

    card = json.loads((folder / "model_card.json").read_text())
    path = folder / "MODEL_CARD.md"
    path.write_text(_markdown(card, format_table(card["metrics"]))
                    + _sample_study_markdown(card.get("metrics_sample_study")) + _preread_markdown(card.get("preread"))
                    + _limits_markdown(card))
    return path


def _preread_markdown(preread: dict | None) -> str:
    """The card's series pre-read section: its operating point (``preread_operating_point.json``) and what the
    pre-read lists there on studies it was not fitted on (``xmedgpt eval-volume``, written into the card)."""
    if not preread:
        return ""
    point = preread["operating_point"]
    fit = point["measured"]
    per = "false positive" + ("" if point["fp_per_volume"] == 1 else "s")
    rows = "".join(
        f"| {m['data']} | {m['lesions']} | {m['cpm']:.3f} | {m['sensitivity']:.3f} | "
        f"{m['by_size']['medium']:.3f} / {m['by_size']['large']:.3f} | {m['fp_per_volume']:.2f} |\n"
        for m in preread.get("measured") or [])
    return (f"\n## Series pre-read\n\nOperating point (`preread_operating_point.json`): the pre-read lists a "
            f"candidate scoring >= {point['min_score']:.4f}, the lowest score with at most {point['fp_per_volume']:g} "
            f"{per} per volume on {point['fitted_on']} (there: sensitivity {fit['sensitivity']:.3f}, "
            f"{fit['fp_per_volume']:.2f} false positives per volume).\n\n"
            "| studies | lesions | CPM (every candidate) | sensitivity at the operating point | "
            "medium / large | false positives per volume listed |\n|---|---|---|---|---|---|\n" + rows
            + ("\n```bash\n" + "\n".join(preread["commands"]) + "\n```\n" if preread.get("commands") else ""))


#: Issue #14's bars for the demo model (its proof): grounding mean IoU for lesions >= 10 mm and 6-10 mm, lesion-free
#: slices called empty, five-step answers contradicting themselves.
BARS = {"iou_10mm": 0.5, "iou_small": 0.3, "empty": 0.9, "contradictions": 0.05}


def card_limits(card: dict) -> list[str]:
    """What the model still cannot do, in words, from its card's own measurements against :data:`BARS` (the
    held-out slices and the sample study), plus the recipe's ``known_limits`` (measured elsewhere)."""
    out: list[str] = []
    loc = (card.get("metrics") or {}).get("localization") or {}
    buckets = loc.get("per_bucket") or {}

    def iou(name: str) -> float | None:
        b = buckets.get(name) or {}
        return b.get("mean_iou") if b.get("n") else None

    low = [(name, v) for name in ("medium", "large") if (v := iou(name)) is not None and v < BARS["iou_10mm"]]
    if low:
        out.append("Boxes lesions of 10 mm and more loosely: held-out mean IoU "
                   + ", ".join(f"{v:.2f} ({'10-20' if n == 'medium' else '>= 20'} mm)" for n, v in low)
                   + f" against the {BARS['iou_10mm']:.1f} asked for (XMedGPT: 0.703 on its own data).")
    small = iou("small")
    if small is not None and small < BARS["iou_small"]:
        out.append(f"Finds almost no lesion under 10 mm (held-out mean IoU {small:.2f}; asked for: "
                   f"{BARS['iou_small']:.1f}).")
    empty = loc.get("empty_correct")
    if empty is not None and empty < BARS["empty"]:
        out.append(f"Calls only {empty:.0%} of lesion-free slices empty (asked for: {BARS['empty']:.0%}).")
    rate = ((card.get("metrics") or {}).get("reasoning_consistency") or {}).get("contradiction_rate")
    if rate is not None and rate > BARS["contradictions"]:
        out.append(f"Contradicts itself in {rate:.0%} of its five-step answers (asked for: at most "
                   f"{BARS['contradictions']:.0%}).")
    blind = [g for g, r in sorted(((card.get("metrics_sample_study") or {}).get("per_group") or {}).items())
             if (r.get("localization") or {}).get("lesions") and not (r.get("localization") or {}).get("mean_iou")]
    if blind:
        out.append(f"Boxes no lesion of the sample study in the {', '.join(blind)} window"
                   f"{'s' if len(blind) > 1 else ''}.")
    out.extend(card.get("known_limits") or [])
    out.append("Trained and measured on synthetic phantoms only: it has never seen a patient's image.")
    return out


def _limits_markdown(card: dict) -> str:
    return "\n## What it cannot do\n\n" + "".join(f"- {line}\n" for line in card_limits(card))


def _sample_study_markdown(metrics: dict | None) -> str:
    if not metrics:
        return ""
    return (f"\n## On a `xmedgpt sample` study (512 px, every slice, per window)\n\n```text\n{metrics['table']}\n```\n"
            f"Lesion sections not shown in a window (not scored): {metrics['study']['hidden_lesions']}.\n")


def calibrate_reliability(config: DemoConfig, model: Path, work: Path, commands: list[str]) -> dict | None:
    """Tier thresholds for this model from a third corpus: sampled VQA answers labelled right/wrong,
    closed-form judge (as the live pass), written to ``model/reliability_calibration.json``."""
    from inference.evaluation.calibrate import calibrate, load_records, make_judge
    from inference.evaluation.harness import Options, run_eval
    from inference.reliability.scoring import MODEL_CALIBRATION

    e = config.eval
    if e.calibration_n <= 0:
        return None
    if e.calibration_seed in (config.corpus.seed, e.seed):
        raise XMedError("The calibration corpus needs a seed used neither in training nor in the held-out eval.")
    folder, labelled = work / "phantoms-calibration", work / "calibration"
    if not (folder / "annotations.jsonl").is_file():
        write_recipe_corpus(config, folder, e.calibration_n, e.calibration_seed)
    options = Options(samples=e.calibration_samples, tasks=("vqa",), max_new_tokens=e.max_new_tokens or None,
                      labelled_out=labelled / "vqa.jsonl")
    run_eval(model, folder, options, device=config.eval.device, quantization="none")
    result = calibrate(load_records(labelled), make_judge("closed-form"))
    target = model / MODEL_CALIBRATION
    steps = [corpus_command(config, folder, e.calibration_n, e.calibration_seed),
             f"xmedgpt eval --data {folder} --model {config.out} --tasks vqa --samples {e.calibration_samples} "
             f"--labelled-out {labelled / 'vqa.jsonl'}",
             f"xmedgpt calibrate --data {labelled} --judge closed-form --out {Path(config.out) / MODEL_CALIBRATION}"]
    commands.extend(steps)
    result["source"] = {"model": str(config.out), "data": f"{e.calibration_n} phantoms, seed {e.calibration_seed}",
                        "commands": steps}
    target.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    per = result["metrics"]["per_estimator"]
    return {"thresholds": result["thresholds"], "answers": per.get("confidence_weighted", {}).get("n"),
            "auroc": {name: m["auroc"] for name, m in per.items()}}


def _markdown(card: dict, table: str) -> str:
    cmds = "\n".join(card["commands"])
    unit = "studies" if (card["data"].get("corpus") or {}).get("kind") == "study" else "phantoms"
    return (f"# {card['name']}\n\n**{card['intended_use']}**\n\n"
            f"- architecture: {card['architecture']}, {card['parameters']:,} parameters, "
            f"{card['size_bytes'] / 2**20:.1f} MB\n"
            f"- seeds: {json.dumps(card['seeds'])}\n"
            f"- data: {card['data']['train_images']} training {unit}, {card['data']['held_out_images']} held-out "
            f"{unit} ({card['data']['image_size']} px)\n"
            f"- wall time: {card['wall_time_s'] / 60:.1f} min on {card['machine']['threads']} CPU thread(s)\n\n"
            f"## How it was made\n\n```bash\n{cmds}\n```\n\n"
            f"## Held-out evaluation (new seed)\n\n```text\n{table}\n```\n" + _default_sizes_markdown(card)
            + _calibration_markdown(card))


def _calibration_markdown(card: dict) -> str:
    cal = card.get("reliability_calibration")
    if not cal:
        return ""
    aurocs = ", ".join(f"{name} {v:.3f}" for name, v in cal["auroc"].items())
    return (f"\n## Reliability calibration\n\n`reliability_calibration.json` (seed "
            f"{card['seeds'].get('calibration_corpus')}, {cal['answers']} answers): green >= "
            f"{cal['thresholds']['green']:.3f}, amber >= {cal['thresholds']['amber']:.3f}. AUROC per answer: {aurocs}.\n")


def _default_sizes_markdown(card: dict) -> str:
    extra = card.get("metrics_default_sizes") or {}
    loc = extra.get("localization")
    if not loc:
        return ""
    rows = "".join(f"| {name} | {b['n']} | {b['mean_iou']:.3f} | {b['accuracy_at_05']:.3f} |\n"
                   for name, b in loc["per_bucket"].items())
    corpus = card["data"].get("corpus") or {}
    return (f"\n## Outside the training sizes\n\nTrained on lesions of {corpus.get('lesion_mm')} mm. On "
            f"{extra['images']} phantoms with the generator's default 6-50 mm lesions (seed {extra['seed']}): "
            f"mean IoU {loc['mean_iou']:.3f}, acc@0.5 {loc['accuracy_at_05']:.3f}.\n\n"
            f"| size | lesions | mean IoU | acc@0.5 |\n|---|---|---|---|\n{rows}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo_model",
                                     description="Build and train the embedded demo model (resumable).")
    parser.add_argument("--config", type=Path, default=REPO / "training" / "configs" / "demo_model.yaml")
    parser.add_argument("--out", help="output folder (default: the config's out)")
    parser.add_argument("--work-dir", help="work folder for corpora and checkpoints (default: the config's)")
    parser.add_argument("--stop-after", choices=STAGES, help="stop after this stage (continue later)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--card", type=Path, metavar="MODEL_DIR",
                        help="only write MODEL_DIR/MODEL_CARD.md again from its model_card.json")
    parser.add_argument("--mix-meta", nargs=3, metavar=("TRAIN_DIR", "NAME", "SET=REPEAT,…"),
                        help="only write TRAIN_DIR/NAME: a meta file over a recipe corpus's sets with these repeat "
                             "factors, as the recipe's mixes (e.g. phantom_grounding=1,phantom_grounding_empty=2)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.mix_meta is not None:
        train_dir, name, spec = args.mix_meta
        try:
            mix = {k.strip(): float(v) for k, v in (part.split("=", 1) for part in spec.split(",") if part.strip())}
            if not mix or Path(name).name != name:
                raise ValueError
        except ValueError:
            sys.stderr.write("demo_model: --mix-meta TRAIN_DIR NAME SET=REPEAT[,SET=REPEAT…] (NAME a file name)\n")
            return 1
        try:
            sys.stdout.write(f"{_mix_meta(Path(train_dir), name, mix)}\n")
        except (XMedError, OSError) as exc:
            sys.stderr.write(f"demo_model: {exc}\n")
            return 1
        return 0
    if args.card is not None:
        if not (args.card / "model_card.json").is_file():
            sys.stderr.write(f"demo_model: {args.card} has no model_card.json (not a model built by this recipe).\n")
            return 1
        sys.stdout.write(f"{write_card_markdown(args.card)}\n")
        return 0
    try:
        import yaml

        data = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        apply_overrides(data, args.overrides)
        if args.out:
            data["out"] = args.out
        if args.work_dir:
            data["work_dir"] = args.work_dir
        config = from_dict(DemoConfig, data)
        result = run_recipe(config, args.stop_after)
    except (XMedError, OSError) as exc:
        sys.stderr.write(f"demo_model: {exc}\n")
        return 1
    sys.stdout.write(f"{'stopped; continue with the same command' if args.stop_after else 'demo model'}: {result}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
