"""The study corpus: training images as the viewer shows them (512-px CT slices in a reader's window).

``python -m training.study_corpus --out DIR --studies N --seed S [--slices-per-study 12] [...]``

The phantom corpus (:mod:`training.phantoms`) draws one 224-px slice per case with its lesion
centred on it, in the one window that suits the region. Readers see something else: 512-px
slices of a whole study (0.74 mm/px), a lesion cut anywhere between its edge and its centre,
most slices without one, and whatever window they chose. This corpus is drawn from that:

- phantom CT studies made as ``xmedgpt sample`` makes its study
  (:func:`app.synthetic.volumes.random_study`: jittered anatomy, 0-6 lung and liver lesions of
  the generator's 6-50 mm, stored values as in the DICOM files), of which
  ``--slices-per-study`` axial slices are taken (about ``--empty-fraction`` of them crossing no
  lesion), each rendered in ``--windows-per-slice`` of the reader's windows (soft tissue, lung,
  liver, bone, the header's default) by the viewer's window function
  (:func:`app.synthetic.volumes.render_stored`, bit-identical to :func:`app.dicom.display.render`);
- frontal chest radiographs (:func:`app.synthetic.cases.make_case`, kind ``xray``) at the same size.

What a slice shows is decided from its pixels (:func:`app.synthetic.volumes.lesion_visibility`):
a lesion whose cross-section there is under 4 mm or whose contrast in the window is under 6 grey
levels is not in the slice's targets (a ground-glass nodule vanishes in soft tissue window, a liver
lesion in bone window). Slices where a lesion is borderline (section 1-4 mm, contrast 3-12 grey
levels) or where lung and liver lesions show together are skipped, so no target says more or less
than the image shows. Each shown lesion is one :class:`app.synthetic.truth.LesionTruth` with its
box on this slice (pixels and 0-1000) and its size on this slice (``size_mm``, bucketed by
:func:`inference.evaluation.sizes.size_bucket`).

Files (formats in training/README.md; the same as :mod:`training.phantoms` writes, so the recipe,
the validators and ``xmedgpt eval --data DIR`` read them unchanged): ``images/NNNNNN.png``,
``annotations.jsonl`` (with ``source``: study, slice and window, and ``hidden_lesions``: lesions
the slice crosses but does not show in that window), ``grounding.jsonl``, ``vqa.jsonl``,
``report.jsonl``, ``reasoning.jsonl`` (the five steps built from the same lesion list by
:mod:`training.phantom_text`), ``preference.jsonl`` (box errors and self-contradicting chains,
:data:`training.phantoms.ALL_PREFERENCE_ERRORS`), ``grounding_preference.jsonl`` (DPO pairs on the
grounding question: the true boxes against an invented lesion, a moved box or a missed lesion --
never against the empty answer itself, :func:`training.phantom_text.rejected_grounding`; drawn apart,
so the other files' bytes do not depend on it), ``meta.json``, ``manifest.json``.

Study ``j`` and radiograph ``i`` depend only on ``(seed, j)`` / ``(seed, i)`` and the options:
the same command writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from app.core.errors import XMedError
from app.dicom.model import Window
from app.dicom.png import write_png
from app.synthetic.anatomy import Tissue
from app.synthetic.cases import (
    _CT_STRUCTURES,
    CorpusConfig,
    PhantomCase,
    _renumber,
    make_case,
)
from app.synthetic.truth import to_1000
from app.synthetic.volumes import (
    HEADER_WINDOW,
    MIN_CONTRAST,
    MIN_SECTION_MM,
    STUDY_WINDOWS,
    PhantomStudy,
    StudySlice,
    lesion_visibility,
    random_study,
    render_stored,
    section_size_mm,
    slice_truth,
    study_window,
)
from inference.parsing import BOX_SCALE
from inference.types import STEP_NAMES, Box
from training import phantom_text as txt
from training.phantoms import (
    ALL_PREFERENCE_ERRORS,
    DATASETS,
    _annotation,
    _conversation,
)

log = logging.getLogger(__name__)


@dataclass
class StudyCorpusConfig:
    """What the study corpus is drawn from (recorded in manifest.json and the model card)."""

    studies: int = 10
    seed: int = 0
    size: int = 512  # slice and radiograph size in pixels (the sample study's 512)
    n_slices: int = 120  # slices per study (covering the same 330 mm: 2.75 mm apart)
    slices_per_study: int = 12
    empty_fraction: float = 0.35  # of a study's slices, about this many cross no lesion
    windows: list[str] = field(default_factory=lambda: list(STUDY_WINDOWS))
    windows_per_slice: int = 2
    max_lesions: int = 6  # per study
    lesion_mm: list[float] = field(default_factory=list)  # [] = the generator's 6-50 mm
    xrays: int = -1  # radiographs (-1: 15 % of the CT images)
    #: of the slices crossing a lesion, this share has its windows drawn only from those where one of its
    #: lesions shows (0: any window; the rest still teach that a lesion can vanish in a window)
    visible_window_share: float = 0.0
    preference_errors: list[str] = field(default_factory=lambda: list(ALL_PREFERENCE_ERRORS))
    #: > 0: each slice-window gives square crops of this many pixels at the slice's own scale (1:1) instead of
    #: the whole slice -- the zoom pass's view (:mod:`inference.zoom`): a crop around lesions (each lesion whole
    #: inside or wholly outside it) and one showing none; a slice without lesions gives one crop anywhere
    crop: int = 0
    #: > 0: each slice moved by a random whole-pixel offset of up to this many pixels in x and y (air comes in
    #: at the edge, boxes move with it), so a lesion's place in the image is not what the model learns: the
    #: committed demo model boxed the sample's 32 mm mass once the slice was moved 25 px up, and missed it where
    #: the study has it
    shift: int = 0

    def __post_init__(self) -> None:
        for name in self.windows:
            try:
                study_window(name)
            except ValueError as exc:
                raise XMedError(str(exc)) from None
        if self.studies < 0 or self.size < 64 or self.n_slices < 1 or self.slices_per_study < 1:
            raise XMedError("A study corpus needs >= 0 studies of >= 1 slice of >= 64 px, >= 1 slice per study.")
        if not 0.0 <= self.visible_window_share <= 1.0 or not 0.0 <= self.empty_fraction <= 1.0:
            raise XMedError("visible_window_share and empty_fraction are shares between 0 and 1.")
        if self.crop and not 64 <= self.crop <= self.size:
            raise XMedError(f"A crop must be 64..{self.size} px (the slice size).")
        if not 0 <= self.shift <= self.size // 4:
            raise XMedError(f"A shift must be 0..{self.size // 4} px (a quarter of the slice).")
        if not 1 <= self.windows_per_slice <= len(self.windows):
            raise XMedError(f"windows_per_slice must be 1..{len(self.windows)} (the windows listed).")
        unknown = set(self.preference_errors) - set(ALL_PREFERENCE_ERRORS)
        if unknown:
            raise XMedError(f"Unknown preference error(s) {', '.join(sorted(unknown))}.")

    def mm(self) -> tuple[float, float] | None:
        return (float(self.lesion_mm[0]), float(self.lesion_mm[1])) if self.lesion_mm else None

    def cli_flags(self) -> str:
        flags = (f"--size {self.size} --n-slices {self.n_slices} --slices-per-study {self.slices_per_study} "
                 f"--empty-fraction {self.empty_fraction:g} --windows {','.join(self.windows)} "
                 f"--windows-per-slice {self.windows_per_slice} --max-lesions {self.max_lesions} --xrays {self.xrays}")
        if self.lesion_mm:
            flags += f" --lesion-mm {self.lesion_mm[0]:g} {self.lesion_mm[1]:g}"
        if self.visible_window_share:
            flags += f" --visible-window-share {self.visible_window_share:g}"
        if self.crop:
            flags += f" --crop {self.crop}"
        if self.shift:
            flags += f" --shift {self.shift}"
        if list(self.preference_errors) != list(ALL_PREFERENCE_ERRORS):
            flags += f" --preference-errors {','.join(self.preference_errors)}"
        return flags


@dataclass
class StudyCorpusSummary:
    out: Path
    counts: dict[str, int]
    lesions_per_image: dict[str, int]
    kinds: dict[str, int]
    windows: dict[str, int]
    size_classes: dict[str, int]
    skipped: dict[str, int]
    seconds: float


# ----------------------------------------------------------------------------- slices


def _pick_slices(study: PhantomStudy, cfg: StudyCorpusConfig, rng: np.random.Generator) -> list[int]:
    """About ``empty_fraction`` slices crossing no lesion, the rest crossing one (by a section >= 4 mm)."""
    n = len(study.depths)
    crossing: set[int] = set()
    for lesion in study.lesions:
        for k in study.lesion_slices(lesion):
            u = (study.depths[k] - lesion.s) / lesion.rs
            if lesion.diameter_mm * np.sqrt(max(0.0, 1.0 - u * u)) >= MIN_SECTION_MM:
                crossing.add(k)
    near = {k for lesion in study.lesions for k in study.lesion_slices(lesion)}
    empty = [k for k in range(n) if k not in near]
    lesion_slices = sorted(crossing)
    want = min(cfg.slices_per_study, n)
    n_lesion = min(len(lesion_slices), int(round(want * (1.0 - cfg.empty_fraction))))
    # empty slices in proportion to the lesion slices taken (a study with few lesion slices does not fill its
    # quota with empty ones: that would make most targets "No lesion is seen."); a study without lesions gives
    # its share of empty slices
    f = cfg.empty_fraction
    share = want if f >= 1.0 else int(round((n_lesion if n_lesion else want * (1.0 - f)) * f / (1.0 - f)))
    n_empty = min(len(empty), want - n_lesion, share)
    picked = []
    if n_lesion:
        picked += [int(k) for k in rng.choice(lesion_slices, size=n_lesion, replace=False)]
    if n_empty:
        picked += [int(k) for k in rng.choice(empty, size=n_empty, replace=False)]
    return sorted(picked)


def _kind_of(labels: np.ndarray, organs: set[str]) -> str:
    if "lung" in organs:
        return "ct_chest"
    if "liver" in organs:
        return "ct_abdomen"
    lung = int(np.count_nonzero((labels == Tissue.LUNG_RIGHT) | (labels == Tissue.LUNG_LEFT)))
    liver = int(np.count_nonzero(labels == Tissue.LIVER))
    return "ct_abdomen" if liver > lung else "ct_chest"


def _structures(labels: np.ndarray) -> list[str]:
    present = {int(v) for v in np.unique(labels)}
    return [name for tissues, name in _CT_STRUCTURES if any(int(t) in present for t in tissues)]


def study_cases(study: PhantomStudy, cfg: StudyCorpusConfig, rng: np.random.Generator, skipped: dict[str, int]):
    """(case, source, hidden lesions) for each chosen slice and window of ``study`` (cases not yet numbered)."""
    by_id = {lesion.id: lesion for lesion in study.lesions}
    for k in _pick_slices(study, cfg, rng):
        sl = study.render(k)
        offset = (0, 0)
        if cfg.shift:
            offset = tuple(int(v) for v in rng.integers(-cfg.shift, cfg.shift + 1, size=2))
            sl = shifted(sl, *offset)
        rendered: dict[str, np.ndarray] = {}

        def render(name: str) -> np.ndarray:  # each window rendered once, and only if needed
            if name not in rendered:
                rendered[name] = render_stored(sl.stored, study_window(name))
            return rendered[name]

        pool = list(cfg.windows)
        if cfg.visible_window_share > 0 and sl.boxes and rng.random() < cfg.visible_window_share:
            showing = [name for name in cfg.windows
                       if any(lesion_visibility(render(name), box, study.spacing_mm)[0] for box in sl.boxes.values())]
            pool = showing or pool
        names = [str(w) for w in rng.choice(pool, size=min(cfg.windows_per_slice, len(pool)), replace=False)]
        for name in names:
            preset = study_window(name)
            window = HEADER_WINDOW if preset is None else preset
            image = render(name)
            shown, hidden, borderline = [], [], False
            for lid, box in sl.boxes.items():
                visible, contrast = lesion_visibility(image, box, study.spacing_mm)
                section = section_size_mm(box, study.spacing_mm)
                if section < MIN_SECTION_MM:
                    borderline |= section >= 2 * study.spacing_mm  # a dot of 2+ px a reader might call
                elif MIN_CONTRAST / 2 <= contrast < 2 * MIN_CONTRAST:
                    borderline = True  # faint in this window
                (shown if visible else hidden).append(slice_truth(study, by_id[lid], box))
            organs = {t.organ for t in shown}
            if borderline:
                skipped["borderline_lesion"] = skipped.get("borderline_lesion", 0) + 1
                continue
            if len(organs) > 1:
                skipped["lung_and_liver"] = skipped.get("lung_and_liver", 0) + 1
                continue
            if len(shown) > 3:
                skipped["over_3_lesions"] = skipped.get("over_3_lesions", 0) + 1
                continue
            case = PhantomCase(0, _kind_of(sl.labels, organs), image, Window(window.width, window.center,
                               window.name), study.spacing_mm, _structures(sl.labels), _renumber(shown))
            source = {"study": study.index, "seed": study.seed, "slice": k, "window": name,
                      "z_mm": round(-float(study.depths[k]), 2), **({"shift": list(offset)} if cfg.shift else {})}
            if cfg.crop:
                yield from _crops(case, sl.labels, source, hidden, cfg.crop, rng, skipped)
            else:
                yield case, source, hidden


def shifted(sl: StudySlice, dx: int, dy: int) -> StudySlice:
    """Slice ``sl`` moved ``dx`` px right and ``dy`` px down: what leaves the image is dropped, what comes in is
    air outside the scanner's field (stored 0, label 0); each lesion's box moves with it and is cut to the
    image (a shift of a quarter of the slice at most leaves the body's lesions whole)."""
    h, w = sl.stored.shape

    def move(a: np.ndarray) -> np.ndarray:
        out = np.zeros_like(a)
        out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = a[max(0, -dy):h - max(0, dy),
                                                                     max(0, -dx):w - max(0, dx)]
        return out

    boxes = {}
    for lid, (x0, y0, x1, y1) in sl.boxes.items():
        box = (max(0, x0 + dx), max(0, y0 + dy), min(w, x1 + dx), min(h, y1 + dy))
        if box[0] < box[2] and box[1] < box[3]:
            boxes[lid] = box
    return replace(sl, stored=move(sl.stored), labels=move(sl.labels), boxes=boxes)


# ----------------------------------------------------------------------------- crops (the zoom pass's view)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(box: tuple[int, int, int, int], frame: tuple[int, int, int, int]) -> bool:
    return Box(*frame).contains(Box(*box))


def _in_crop(t, x: int, y: int, c: int):
    """Lesion truth ``t`` on the ``c``-pixel crop at (x, y): its box shifted there and clipped to the crop."""
    assert t.box is not None
    box = (max(0, t.box[0] - x), max(0, t.box[1] - y), min(c, t.box[2] - x), min(c, t.box[3] - y))
    return replace(t, box=box, box_1000=to_1000(box, c, c))


def _crop_case(case: PhantomCase, labels: np.ndarray, x: int, y: int, c: int) -> PhantomCase:
    """``case`` seen through the ``c``-pixel square at (x, y): its image, structures and the lesions wholly inside."""
    frame = (x, y, x + c, y + c)
    lesions = [_in_crop(t, x, y, c) for t in case.lesions if t.box is not None and _inside(t.box, frame)]
    return PhantomCase(0, case.kind, np.ascontiguousarray(case.image[y:y + c, x:x + c]), case.window,
                       case.pixel_spacing_mm, _structures(labels[y:y + c, x:x + c]), _renumber(lesions))


def _crops(case: PhantomCase, labels: np.ndarray, source: dict, hidden: list, c: int, rng: np.random.Generator,
           skipped: dict[str, int], tries: int = 30):
    """The crops of one slice-window: around a lesion (every other lesion whole inside or wholly outside; a
    draw that cuts one is redrawn) and one showing no lesion; one crop anywhere when the slice shows none."""
    h, w = case.image.shape
    boxes = [t.box for t in case.lesions if t.box is not None]

    def emit(x: int, y: int):
        # a hidden lesion in the crop: what of it the crop holds
        seen = [_in_crop(t, x, y, c) for t in hidden if t.box is not None and _overlaps(t.box, (x, y, x + c, y + c))]
        return _crop_case(case, labels, x, y, c), {**source, "crop": [x, y, c]}, seen

    if boxes:
        for _ in range(tries):
            target = boxes[int(rng.integers(len(boxes)))]
            lo_x, hi_x = max(0, target[2] - c), min(target[0], w - c)
            lo_y, hi_y = max(0, target[3] - c), min(target[1], h - c)
            if lo_x > hi_x or lo_y > hi_y:
                break  # the lesion is larger than a crop
            x, y = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
            frame = (x, y, x + c, y + c)
            if all(_inside(b, frame) or not _overlaps(b, frame) for b in boxes):
                yield emit(x, y)
                break
        else:
            skipped["crop_cuts_lesion"] = skipped.get("crop_cuts_lesion", 0) + 1
    for _ in range(tries):
        x, y = int(rng.integers(0, w - c + 1)), int(rng.integers(0, h - c + 1))
        if not any(_overlaps(b, (x - 2, y - 2, x + c + 2, y + c + 2)) for b in boxes):
            yield emit(x, y)
            break


# ----------------------------------------------------------------------------- writing


def _study_items(cfg: StudyCorpusConfig, j: int) -> tuple[list, dict[str, int]]:
    """Every (case, source, hidden lesions) of study ``j``, and what was skipped (depends on (cfg, j) alone)."""
    study = random_study(cfg.seed, j, cfg.n_slices, cfg.size, cfg.max_lesions, cfg.mm())
    skipped: dict[str, int] = {}
    items = list(study_cases(study, cfg, np.random.default_rng([cfg.seed, j, 2]), skipped))
    return items, skipped


def _study_items_of(args: tuple[StudyCorpusConfig, int]) -> tuple[list, dict[str, int]]:
    return _study_items(*args)


def write_study_corpus(out: Path | str, cfg: StudyCorpusConfig,
                       progress: Callable[[int, int], None] | None = None, workers: int = 1) -> StudyCorpusSummary:
    """Write the corpus of ``cfg`` into ``out`` (see the module docstring for the files); ``workers`` > 1 draws
    the studies in that many processes (same bytes)."""
    start = time.monotonic()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    files: dict[str, list[dict]] = {name: [] for name in ("annotations", "grounding", "vqa", "report", "reasoning",
                                                          "preference", "grounding_preference")}
    stats: dict[str, dict[str, int]] = {"kinds": {}, "windows": {}, "lesions": {}, "sizes": {}}
    skipped: dict[str, int] = {}
    errors = tuple(cfg.preference_errors)

    def bump(table: str, key: str) -> None:
        stats[table][key] = stats[table].get(key, 0) + 1

    def add(case: PhantomCase, source: dict, hidden: list) -> None:
        index = len(files["annotations"])
        case.index = index
        rng = np.random.default_rng([cfg.seed, index, 1])  # text choices: independent of the pixels' draws
        image = f"images/{case.name}.png"
        write_png(out / image, case.image)
        desc = case.description
        ann = _annotation(case, image)
        ann["source"] = source
        ann["hidden_lesions"] = [t.to_dict() for t in hidden]
        files["annotations"].append(ann)
        grounding_prompt = str(rng.choice(txt.GROUNDING_PROMPTS)).format(desc=desc)
        grounding = txt.grounding_answer(case.lesions)
        files["grounding"].append(_conversation(image, grounding_prompt, grounding))
        files["report"].append(_conversation(image, str(rng.choice(txt.REPORT_PROMPTS)).format(desc=desc),
                                             txt.findings_and_impression(case, case.lesions)))
        prompt = str(rng.choice(txt.REASONING_PROMPTS)).format(desc=desc)
        chosen = txt.reasoning_answer(case, case.lesions)
        files["reasoning"].append(_conversation(image, prompt, chosen))
        for q in txt.questions(case, rng):
            files["vqa"].append(_conversation(image, q.question, q.answer, question_type=q.qtype))
        if txt.chain_error_kinds(case, errors):
            error, rejected = txt.rejected_reasoning(case, rng, errors)
            files["preference"].append({"image": image, "prompt": f"<image>\n{prompt}", "chosen": chosen,
                                        "rejected": rejected, "error": error})
        pair = txt.rejected_grounding(case, np.random.default_rng([cfg.seed, index, 3]))  # its own draws
        if pair is not None:
            files["grounding_preference"].append({"image": image, "prompt": f"<image>\n{grounding_prompt}",
                                                  "chosen": grounding, "rejected": pair[1], "error": pair[0]})
        bump("kinds", case.kind)
        bump("windows", source.get("window", "radiograph"))
        bump("lesions", str(len(case.lesions)))
        for t in case.lesions:
            bump("sizes", t.size_class)

    def studies():
        if workers <= 1:
            yield from (_study_items(cfg, j) for j in range(cfg.studies))
            return
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:  # in study order: the same bytes as one worker
            yield from pool.imap(_study_items_of, [(cfg, j) for j in range(cfg.studies)], chunksize=2)

    for j, (items, skipped_here) in enumerate(studies()):
        for case, source, hidden in items:
            add(case, source, hidden)
        for key, n in skipped_here.items():
            skipped[key] = skipped.get(key, 0) + n
        if progress is not None:
            progress(j + 1, cfg.studies)
    n_ct = len(files["annotations"])
    # radiographs are whole images: none by default in a corpus of crops
    n_xray = (0 if cfg.crop else int(round(0.15 * n_ct))) if cfg.xrays < 0 else cfg.xrays
    xray_cfg = CorpusConfig.restricted(["xray"], 3, cfg.mm())
    for i in range(n_xray):
        case = make_case(cfg.seed, i, cfg.size, xray_cfg)
        add(case, {"radiograph": i, "seed": cfg.seed}, [])
    for key, records in files.items():
        with (out / f"{key}.jsonl").open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    meta = {name: {"root": ".", "annotation": fname, "data_augment": False, "repeat_time": repeat,
                   "length": len(files[fname.removesuffix(".jsonl")])}
            for name, (fname, repeat) in DATASETS.items()}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    counts = {key: len(v) for key, v in files.items()}
    errors_written: dict[str, int] = {}
    for rec in files["preference"]:
        errors_written[rec["error"]] = errors_written.get(rec["error"], 0) + 1
    summary = StudyCorpusSummary(out, counts, dict(sorted(stats["lesions"].items())), dict(sorted(stats["kinds"].items())),
                                 dict(sorted(stats["windows"].items())), dict(sorted(stats["sizes"].items())),
                                 dict(sorted(skipped.items())), round(time.monotonic() - start, 1))
    manifest = {"generator": "training.study_corpus", "config": asdict(cfg), "counts": counts,
                "ct_images": n_ct, "radiographs": n_xray, "lesions_per_image": summary.lesions_per_image,
                "kinds": summary.kinds, "windows": summary.windows, "size_classes": summary.size_classes,
                "skipped_slice_windows": summary.skipped, "preference_errors": dict(sorted(errors_written.items())),
                "visibility": {"min_section_mm": MIN_SECTION_MM, "min_contrast_grey_levels": MIN_CONTRAST},
                "step_names": list(STEP_NAMES), "box_scale": BOX_SCALE}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("wrote %d images (%d CT slices, %d radiographs) to %s in %.1f s", n_ct + n_xray, n_ct, n_xray, out,
             summary.seconds)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    defaults = StudyCorpusConfig()
    parser = argparse.ArgumentParser(prog="python -m training.study_corpus",
                                     description="Write the study corpus: 512-px CT slices of phantom studies in "
                                     "the reader's windows, plus radiographs (SFT/DPO JSONL + annotations).")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--studies", type=int, required=True, help="number of phantom CT studies")
    parser.add_argument("--seed", type=int, default=0, help="seed (same seed, same bytes)")
    parser.add_argument("--size", type=int, default=defaults.size, help="slice size in pixels (default 512)")
    parser.add_argument("--n-slices", type=int, default=defaults.n_slices, help="slices per study (default 120)")
    parser.add_argument("--slices-per-study", type=int, default=defaults.slices_per_study,
                        help="slices taken from each study (default 12)")
    parser.add_argument("--empty-fraction", type=float, default=defaults.empty_fraction,
                        help="share of those slices crossing no lesion (default 0.35)")
    parser.add_argument("--windows", default=",".join(defaults.windows),
                        help=f"windows to render in (default {','.join(STUDY_WINDOWS)})")
    parser.add_argument("--windows-per-slice", type=int, default=defaults.windows_per_slice,
                        help="windows drawn per slice (default 2)")
    parser.add_argument("--max-lesions", type=int, default=defaults.max_lesions, help="lesions per study (0..N)")
    parser.add_argument("--lesion-mm", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="lesion diameter range in mm (default: the generator's, 6-50 mm)")
    parser.add_argument("--visible-window-share", type=float, default=defaults.visible_window_share,
                        help="share of lesion slices rendered only in windows where a lesion shows (default 0)")
    parser.add_argument("--xrays", type=int, default=-1, help="radiographs (default: 15 %% of the CT images)")
    parser.add_argument("--preference-errors", help="comma-separated DPO error kinds (default: all of "
                        f"{','.join(ALL_PREFERENCE_ERRORS)})")
    parser.add_argument("--crop", type=int, default=0,
                        help="square crops of N px at the slice's scale instead of whole slices (the zoom pass's view)")
    parser.add_argument("--shift", type=int, default=0,
                        help="move each slice by up to N px in x and y, boxes with it (default 0: not moved)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing studies (same bytes; default 1)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        cfg = StudyCorpusConfig(
            studies=args.studies, seed=args.seed, size=args.size, n_slices=args.n_slices,
            slices_per_study=args.slices_per_study, empty_fraction=args.empty_fraction,
            windows=[w.strip() for w in args.windows.split(",") if w.strip()],
            windows_per_slice=args.windows_per_slice, max_lesions=args.max_lesions,
            lesion_mm=list(args.lesion_mm or []), xrays=args.xrays,
            visible_window_share=args.visible_window_share, crop=args.crop, shift=args.shift,
            preference_errors=([e.strip() for e in args.preference_errors.split(",") if e.strip()]
                               if args.preference_errors else list(ALL_PREFERENCE_ERRORS)))
        summary = write_study_corpus(args.out, cfg, workers=args.workers)
    except XMedError as exc:
        sys.stderr.write(f"study_corpus: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {summary.counts['annotations']} images to {summary.out} in {summary.seconds:.1f} s: "
                     + ", ".join(f"{k} {v}" for k, v in summary.counts.items())
                     + f"; windows {summary.windows}; lesion sizes {summary.size_classes}; skipped {summary.skipped}\n")
    return 0


def sample_study_examples(folder: Path, n_slices: int, seed: int, windows: Sequence[str]):
    """A fresh ``xmedgpt sample`` study in ``folder`` (written once) and its slices rendered as the viewer
    renders them in ``windows``: what the demo recipe's sample-study evaluation scores."""
    from app.synthetic.sample import write_ct_study
    from app.synthetic.study_dataset import study_examples

    if not (Path(folder) / "ground_truth.json").is_file():
        write_ct_study(folder, n_slices=n_slices, seed=seed)
    return study_examples(folder, list(windows))


if __name__ == "__main__":
    sys.exit(main())
