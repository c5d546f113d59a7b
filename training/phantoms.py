"""Synthetic phantom corpus for the three training stages and the evaluation harness.

``python -m training.phantoms --out DIR --n N --seed S [--size 224] [--audio]``

Every case is a CT slice of the chest (lung window) or upper abdomen (soft
tissue or liver window), or a frontal chest radiograph, rasterised by
:mod:`app.synthetic.anatomy` and turned into 8-bit pixels by the viewer's own window
pipeline (:mod:`app.dicom.display`), with 0–3 lesions of varied size, density,
margin and position. From the ground truth it writes (formats in
training/README.md):

- ``images/NNNNNN.png`` and ``annotations.jsonl`` (ground truth: boxes in pixels
  and on the 0–1000 scale, attributes), the input of ``xmedgpt eval``;
- ``grounding.jsonl``, ``vqa.jsonl``, ``report.jsonl`` (stage 1 SFT) and
  ``reasoning.jsonl`` (five-step reasoning SFT), InternVL conversations, listed
  with repeat factors in ``meta.json``;
- ``preference.jsonl`` (DPO: correct grounded reasoning against a wrong box, a
  missed or hallucinated lesion, or the wrong side);
- with ``--audio``: ``audio/*.wav`` (espeak-ng, 16 kHz mono) and ``audio.jsonl``.

Case ``i`` depends only on ``(seed, i)``: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import shutil
import subprocess
import sys
import wave
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from app.core.errors import XMedError
from app.dicom.display import to_uint8, window_to_unit
from app.dicom.model import Window
from app.dicom.png import write_png
from app.dicom.presets import find_preset
from app.synthetic.anatomy import (
    Anatomy,
    Grid,
    Lesion,
    Tissue,
    add_noise,
    place_lesion,
    render_ct_slice,
)
from app.synthetic.xray import add_xray_lesions, render_xray
from inference.parsing import BOX_SCALE
from inference.types import STEP_NAMES

log = logging.getLogger(__name__)

KINDS = ("ct_chest", "ct_abdomen", "xray")
KIND_WEIGHTS = (0.45, 0.2, 0.35)
LESION_COUNT_WEIGHTS = (0.25, 0.35, 0.25, 0.15)  # 0, 1, 2, 3 lesions
SIZE_CLASSES = (("small", 0.0, 10.0), ("medium", 10.0, 20.0), ("large", 20.0, 1e9))
AUDIO_RATE = 16000
PREFERENCE_ERRORS = ("wrong_box", "missed_lesion", "hallucinated_lesion", "wrong_laterality")


@dataclass(frozen=True)
class CorpusConfig:
    """What the corpus draws from. Defaults: the mixture the demo model and eval use."""

    kinds: tuple[str, ...] = KINDS
    kind_weights: tuple[float, ...] = KIND_WEIGHTS
    lesion_count_weights: tuple[float, ...] = LESION_COUNT_WEIGHTS  # index = number of lesions
    lesion_mm: tuple[float, float] | None = None  # diameter range; None: per-organ defaults

    def __post_init__(self) -> None:
        if not self.kinds or any(k not in KINDS for k in self.kinds) or len(self.kind_weights) != len(self.kinds):
            raise XMedError(f"Phantom kinds must be among {', '.join(KINDS)}, each with a weight.")
        if not self.lesion_count_weights or sum(self.lesion_count_weights) <= 0:
            raise XMedError("Lesion count weights must hold at least one positive weight.")
        if self.lesion_mm is not None and not (3.0 <= self.lesion_mm[0] <= self.lesion_mm[1] <= 120.0):
            raise XMedError("Lesion diameters must satisfy 3 ≤ min ≤ max ≤ 120 mm.")

    @classmethod
    def restricted(cls, kinds: Sequence[str] | None = None, max_lesions: int | None = None,
                   lesion_mm: tuple[float, float] | None = None) -> "CorpusConfig":
        """Defaults narrowed to some kinds and/or at most ``max_lesions`` per image."""
        ks = tuple(kinds) if kinds else KINDS
        weights = tuple(KIND_WEIGHTS[KINDS.index(k)] if k in KINDS else 0.0 for k in ks)
        counts = LESION_COUNT_WEIGHTS if max_lesions is None else LESION_COUNT_WEIGHTS[:max_lesions + 1]
        return cls(ks, weights, counts, lesion_mm)

    def as_dict(self) -> dict:
        return {"kinds": list(self.kinds), "kind_weights": list(self.kind_weights),
                "lesion_count_weights": list(self.lesion_count_weights),
                "lesion_mm": list(self.lesion_mm) if self.lesion_mm else None}

    @classmethod
    def from_dict(cls, data: dict) -> "CorpusConfig":
        """The inverse of :meth:`as_dict` (e.g. a model card's corpus)."""
        mm = data.get("lesion_mm")
        return cls(tuple(data["kinds"]), tuple(data["kind_weights"]), tuple(data["lesion_count_weights"]),
                   (float(mm[0]), float(mm[1])) if mm else None)


def size_class(size_mm: float) -> str:
    """"small" (< 10 mm), "medium" (10–20 mm) or "large" (≥ 20 mm)."""
    return next(name for name, lo, hi in SIZE_CLASSES if lo <= size_mm < hi)


@dataclass
class LesionTruth:
    """One lesion as the image shows it."""

    id: str
    organ: str  # lung | liver
    side: str  # right | left (the patient's)
    location: str  # "right upper lobe", "left lower zone", "right hepatic lobe"
    kind: str  # solid nodule | ground-glass nodule | mass | hypodense lesion | hyperdense lesion | cyst
    density: str  # solid | ground-glass | hypodense | hyperdense
    margin: str  # smooth | lobulated | spiculated
    size_mm: float
    box: tuple[int, int, int, int]  # pixels, x1/y1 exclusive
    box_1000: tuple[int, int, int, int]

    @property
    def size_class(self) -> str:
        return size_class(self.size_mm)

    @property
    def phrase(self) -> str:
        return f"{self.kind} in the {self.location}"


@dataclass
class PhantomCase:
    """One generated image with everything known about it."""

    index: int
    kind: str  # ct_chest | ct_abdomen | xray
    image: np.ndarray  # uint8 (rows, cols)
    window: Window
    pixel_spacing_mm: float
    structures: list[str]
    lesions: list[LesionTruth] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.index:06d}"

    @property
    def modality(self) -> str:
        return "DX" if self.kind == "xray" else "CT"

    @property
    def description(self) -> str:
        if self.kind == "xray":
            return "frontal chest radiograph"
        region = "chest" if self.kind == "ct_chest" else "upper abdomen"
        return f"axial CT slice of the {region} in {self.window.name} window"


# ----------------------------------------------------------------------------- geometry


def to_1000(box: tuple[int, int, int, int], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (x1/y1 exclusive edges) → integers on the 0–1000 grounding scale, never empty."""
    x0 = int(math.floor(box[0] * BOX_SCALE / width))
    y0 = int(math.floor(box[1] * BOX_SCALE / height))
    x1 = max(x0 + 1, min(BOX_SCALE, int(math.ceil(box[2] * BOX_SCALE / width))))
    y1 = max(y0 + 1, min(BOX_SCALE, int(math.ceil(box[3] * BOX_SCALE / height))))
    return x0, y0, x1, y1


def _lesion_diameter(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _margin(rng: np.random.Generator) -> float:
    return float(rng.choice([0.0, 0.0, 0.12, 0.28]))


def _separate(x: float, y: float, s: float, r: float, placed: Sequence[Lesion]) -> bool:
    return all(math.dist((x, y, s), (o.x, o.y, o.s)) > r + max(o.rx, o.ry) * (1 + o.margin) + 6.0 for o in placed)


# ----------------------------------------------------------------------------- CT cases


def _ct_lung_lesion(rng: np.random.Generator, anatomy: Anatomy, s: float, i: int,
                    placed: list[Lesion], mm: tuple[float, float] | None = None) -> Lesion | None:
    side = "right" if rng.random() < 0.5 else "left"
    label = Tissue.LUNG_RIGHT if side == "right" else Tissue.LUNG_LEFT
    diameter = _lesion_diameter(rng, *(mm or (6.0, 45.0)))
    margin = _margin(rng) if diameter < 30 else float(rng.choice([0.12, 0.28]))
    ground_glass = diameter < 30 and rng.random() < 0.25
    r = diameter / 2.0 / (1.0 + margin)
    for _ in range(4):
        spot = place_lesion(anatomy, (label,), s, r + 2.0, rng)
        if spot is not None and _separate(spot[0], spot[1], s, r, placed):
            break
    else:
        return None
    kind = "ground-glass nodule" if ground_glass else ("mass" if diameter >= 30 else "solid nodule")
    hu = float(rng.uniform(-650, -400)) if ground_glass else float(rng.uniform(0, 60))
    return Lesion(id=f"L{i + 1}", organ="lung", location="", side=side, kind=kind, x=spot[0], y=spot[1], s=s,
                  rx=r, ry=r * float(rng.uniform(0.8, 1.0)), rs=r * float(rng.uniform(0.8, 1.1)), hu=hu,
                  margin=margin, lobes=int(rng.integers(5, 10)), phase=float(rng.uniform(0, 2 * math.pi)))


def _ct_liver_lesion(rng: np.random.Generator, anatomy: Anatomy, s: float, i: int,
                     placed: list[Lesion], mm: tuple[float, float] | None = None) -> Lesion | None:
    diameter = _lesion_diameter(rng, *(mm or (8.0, 50.0)))
    margin = float(rng.choice([0.0, 0.0, 0.1]))
    r = diameter / 2.0 / (1.0 + margin)
    for _ in range(4):
        spot = place_lesion(anatomy, (Tissue.LIVER,), s, r + 2.0, rng)
        if spot is not None and _separate(spot[0], spot[1], s, r, placed):
            break
    else:
        return None
    liver_hu = next(b.hu for b in anatomy.structures if b.name == "liver")
    roll = rng.random()
    if roll < 0.25:
        kind, hu, margin = "cyst", float(rng.uniform(0, 12)), 0.0
    elif roll < 0.75:
        kind, hu = "hypodense lesion", liver_hu - float(rng.uniform(35, 80))
    else:
        kind, hu = "hyperdense lesion", liver_hu + float(rng.uniform(45, 90))
    side = "right" if spot[0] < -0.05 * anatomy.cavity[0] else "left"
    return Lesion(id=f"L{i + 1}", organ="liver", location=f"{side} hepatic lobe", side=side, kind=kind,
                  x=spot[0], y=spot[1], s=s, rx=r, ry=r * float(rng.uniform(0.8, 1.0)), rs=r, hu=hu,
                  margin=margin, lobes=int(rng.integers(4, 8)), phase=float(rng.uniform(0, 2 * math.pi)))


def _lung_lobe(lesion: Lesion, heart_level: bool, lung_cy: float) -> str:
    if not heart_level:
        return f"{lesion.side} upper lobe"
    if lesion.side == "right" and lesion.y < lung_cy - 10.0:
        return "right middle lobe"
    return f"{lesion.side} lower lobe"


_CT_STRUCTURES = (
    ((Tissue.LUNG_RIGHT,), "right lung"), ((Tissue.LUNG_LEFT,), "left lung"), ((Tissue.HEART,), "heart"),
    ((Tissue.AIRWAY,), "airway"), ((Tissue.LIVER,), "liver"), ((Tissue.SPLEEN,), "spleen"),
    ((Tissue.STOMACH,), "stomach"), ((Tissue.KIDNEY,), "kidneys"), ((Tissue.BONE,), "spine and ribs"),
)


def _ct_case(index: int, rng: np.random.Generator, kind: str, size: int, n_lesions: int,
             lesion_mm: tuple[float, float] | None) -> PhantomCase:
    anatomy = Anatomy.random(rng)
    E = anatomy.extent_mm
    grid = Grid(size, float(rng.uniform(360.0, 400.0)))
    chest = kind == "ct_chest"
    s = float(rng.uniform(0.22, 0.58) * E) if chest else float(rng.uniform(0.74, 0.92) * E + anatomy.dome_shift)
    make = _ct_lung_lesion if chest else _ct_liver_lesion
    lesions: list[Lesion] = []
    for i in range(n_lesions):
        lesion = make(rng, anatomy, s, len(lesions), lesions, lesion_mm)
        if lesion is not None:
            lesions.append(lesion)
    sl = render_ct_slice(anatomy, s, grid, lesions)
    add_noise(sl.hu, rng, float(rng.uniform(6.0, 18.0)))
    sl.hu[~grid.fov_mask] = -1024.0
    if chest:
        window = find_preset("lung")
    else:
        window = find_preset("liver") if rng.random() < 0.3 else find_preset("soft tissue")
    assert window is not None
    image = to_uint8(window_to_unit(sl.hu, window))
    present = {int(v) for v in np.unique(sl.labels)}
    structures = [name for labels, name in _CT_STRUCTURES if any(int(t) in present for t in labels)]
    heart_level = int(Tissue.HEART) in present
    truths = []
    for lesion in lesions:
        box = sl.boxes.get(lesion.id)
        if box is None:
            continue
        location = lesion.location or _lung_lobe(lesion, heart_level, anatomy.lung_centre(lesion.side)[1])
        truths.append(_truth(lesion, location, box, size, size))
    return PhantomCase(index, kind, image, window, grid.spacing, structures, _renumber(truths))


# ----------------------------------------------------------------------------- radiographs


def _xray_case(index: int, rng: np.random.Generator, size: int, n_lesions: int,
               lesion_mm: tuple[float, float] | None) -> PhantomCase:
    anatomy = Anatomy.random(rng)
    fov = float(rng.uniform(380.0, 420.0))
    sp = fov / size
    base = render_xray(anatomy, size, fov_mm=fov)
    lung_rows = np.flatnonzero(base.lung_mask.any(axis=1))
    top, bottom = float(lung_rows[0]), float(lung_rows[-1])
    lesions: list[Lesion] = []
    for _ in range(n_lesions):
        diameter = _lesion_diameter(rng, *(lesion_mm or (8.0, 50.0)))
        margin = _margin(rng)
        r = diameter / 2.0 / (1.0 + margin)
        rp = int(math.ceil(r / sp)) + 1
        inner = _erode(base.lung_mask, rp)
        rows, cols = np.nonzero(inner)
        if len(rows) == 0:
            continue
        for _ in range(20):
            k = int(rng.integers(len(rows)))
            x = (cols[k] + 0.5 - size / 2.0) * sp
            s = base.s_top + (rows[k] + 0.5) * sp
            if _separate(x, 0.0, s, r, lesions):
                break
        else:
            continue
        side = "right" if x < 0 else "left"
        third = (rows[k] - top) / max(bottom - top, 1.0)
        zone = "upper" if third < 1 / 3 else ("middle" if third < 2 / 3 else "lower")
        lesions.append(Lesion(
            id=f"L{len(lesions) + 1}", organ="lung", location=f"{side} {zone} zone", side=side,
            kind="mass" if diameter >= 30 else "nodule", x=x, y=0.0, s=s, rx=r, ry=r, rs=r * float(rng.uniform(0.85, 1.1)),
            hu=float(rng.uniform(-100, 60)), margin=margin, lobes=int(rng.integers(5, 10)),
            phase=float(rng.uniform(0, 2 * math.pi))))
    xr = add_xray_lesions(base, lesions)
    values = xr.values
    body = values > 0.1 * float(values.max())
    lo, hi = np.percentile(values[body], [1.0, 99.7])
    values = values + rng.standard_normal(values.shape).astype(np.float32) * np.float32((hi - lo) * 0.012)
    window = Window(width=float(hi - lo), center=float(hi + lo) / 2.0, name="radiograph")
    image = to_uint8(window_to_unit(values, window))
    truths = [_truth(les, les.location, xr.boxes[les.id], size, size) for les in lesions if les.id in xr.boxes]
    structures = ["right lung", "left lung", "cardiac silhouette", "mediastinum", "diaphragm", "ribs", "clavicles"]
    return PhantomCase(index, "xray", image, window, sp, structures, _renumber(truths))


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels whose (2r+1)-square neighbourhood is all inside ``mask``."""
    out = mask.copy()
    for axis in (0, 1):
        acc = out.copy()
        for d in range(1, r + 1):
            acc &= np.roll(out, d, axis=axis) & np.roll(out, -d, axis=axis)
        out = acc
    out[:r], out[-r:], out[:, :r], out[:, -r:] = False, False, False, False
    return out


# ----------------------------------------------------------------------------- truth


def _truth(lesion: Lesion, location: str, box: tuple[int, int, int, int], width: int, height: int) -> LesionTruth:
    if lesion.organ == "lung":
        density = "ground-glass" if lesion.kind.startswith("ground-glass") else "solid"
    else:
        density = "hyperdense" if lesion.kind.startswith("hyperdense") else "hypodense"
    return LesionTruth(
        id=lesion.id, organ=lesion.organ, side=lesion.side, location=location, kind=lesion.kind,
        density=density, margin=lesion.margin_name, size_mm=round(lesion.diameter_mm, 1),
        box=tuple(int(v) for v in box), box_1000=to_1000(box, width, height),  # type: ignore[arg-type]
    )


def _renumber(truths: list[LesionTruth]) -> list[LesionTruth]:
    """Lesions from the patient's right to left, then top to bottom, numbered L1…"""
    ordered = sorted(truths, key=lambda t: (t.box[0], t.box[1]))
    for i, t in enumerate(ordered):
        t.id = f"L{i + 1}"
    return ordered


def make_case(seed: int, index: int, size: int = 224, config: CorpusConfig = CorpusConfig()) -> PhantomCase:
    """Case ``index`` of the corpus with ``seed``: the same arguments always give the same case."""
    rng = np.random.default_rng([seed, index])
    kw = np.asarray(config.kind_weights, dtype=float)
    cw = np.asarray(config.lesion_count_weights, dtype=float)
    kind = str(rng.choice(config.kinds, p=kw / kw.sum()))
    n_lesions = int(rng.choice(len(cw), p=cw / cw.sum()))
    if kind == "xray":
        return _xray_case(index, rng, size, n_lesions, config.lesion_mm)
    return _ct_case(index, rng, kind, size, n_lesions, config.lesion_mm)


# ----------------------------------------------------------------------------- speech


def speak(text: str, path: Path, rng: np.random.Generator) -> float:
    """Speak ``text`` with espeak-ng into a 16 kHz mono 16-bit WAV; returns its duration in seconds.

    The voice, speed and pitch vary with ``rng`` so the audio stage hears more
    than one speaker; the same draws give the same bytes.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise XMedError("espeak-ng is not installed: install it (apt-get install espeak-ng) or leave out --audio.")
    voice = str(rng.choice(["en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland"]))
    speed = int(rng.integers(140, 190))
    pitch = int(rng.integers(30, 70))
    proc = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                          capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise XMedError(f"espeak-ng could not speak the query: {proc.stderr.decode(errors='replace').strip()[:200]}")
    with wave.open(io.BytesIO(proc.stdout)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    audio = _resample(pcm, rate, AUDIO_RATE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(AUDIO_RATE)
        out.writeframes(np.clip(np.rint(audio), -32768, 32767).astype("<i2").tobytes())
    return len(audio) / AUDIO_RATE


def _resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by zero-padding or truncating the spectrum."""
    if rate == target or len(x) == 0:
        return x
    n_out = int(round(len(x) * target / rate))
    spectrum = np.fft.rfft(x)
    keep = n_out // 2 + 1
    if keep <= len(spectrum):
        spectrum = spectrum[:keep]
    else:
        spectrum = np.concatenate([spectrum, np.zeros(keep - len(spectrum), dtype=spectrum.dtype)])
    return np.fft.irfft(spectrum, n_out) * (n_out / len(x))


# ----------------------------------------------------------------------------- corpus


#: Conversation datasets listed in meta.json, with how often each is repeated per epoch.
DATASETS: dict[str, tuple[str, int]] = {
    "phantom_grounding": ("grounding.jsonl", 2),  # localization is the hard skill: seen twice
    "phantom_vqa": ("vqa.jsonl", 1),
    "phantom_report": ("report.jsonl", 1),
    "phantom_reasoning": ("reasoning.jsonl", 1),
}


@dataclass
class CorpusSummary:
    out: Path
    seed: int
    n: int
    size: int
    counts: dict[str, int]
    lesions_per_image: dict[str, int]
    kinds: dict[str, int]


def _conversation(image: str, prompt: str, answer: str, **extra: object) -> dict:
    return {"image": image, "conversations": [{"from": "human", "value": f"<image>\n{prompt}"},
                                              {"from": "gpt", "value": answer}], **extra}


def _annotation(case: PhantomCase, image: str) -> dict:
    return {
        "image": image, "kind": case.kind, "modality": case.modality, "width": int(case.image.shape[1]),
        "height": int(case.image.shape[0]), "pixel_spacing_mm": round(case.pixel_spacing_mm, 4),
        "window": {"width": round(case.window.width, 3), "center": round(case.window.center, 3),
                   "name": case.window.name},
        "structures": case.structures,
        "lesions": [{**asdict(t), "size_class": t.size_class} for t in case.lesions],
    }


def write_corpus(out: Path | str, n: int, seed: int, size: int = 224, audio: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 config: CorpusConfig = CorpusConfig()) -> CorpusSummary:
    """Generate ``n`` cases with ``seed`` into ``out`` (see the module docstring for the files)."""
    from training import phantom_text as txt

    if n < 1 or size < 64:
        raise XMedError("A phantom corpus needs at least 1 image of at least 64×64 pixels.")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    files = {name: [] for name in ("annotations", "grounding", "vqa", "report", "reasoning", "preference", "audio")}
    kinds: dict[str, int] = {}
    per_image: dict[str, int] = {}
    for i in range(n):
        case = make_case(seed, i, size, config)
        rng = np.random.default_rng([seed, i, 1])  # text choices: independent of the pixels' draws
        name = f"{case.name}.png"
        write_png(out / "images" / name, case.image)
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
        per_image[str(len(case.lesions))] = per_image.get(str(len(case.lesions)), 0) + 1
        desc = case.description
        files["annotations"].append(_annotation(case, f"images/{name}"))
        image = f"images/{name}"
        files["grounding"].append(_conversation(
            image, str(rng.choice(txt.GROUNDING_PROMPTS)).format(desc=desc), txt.grounding_answer(case.lesions)))
        report_prompt = str(rng.choice(txt.REPORT_PROMPTS)).format(desc=desc)
        files["report"].append(_conversation(image, report_prompt, txt.findings_and_impression(case, case.lesions)))
        prompt = str(rng.choice(txt.REASONING_PROMPTS)).format(desc=desc)
        chosen = txt.reasoning_answer(case, case.lesions)
        files["reasoning"].append(_conversation(image, prompt, chosen))
        qs = txt.questions(case, rng)
        for q in qs:
            files["vqa"].append(_conversation(image, q.question, q.answer, question_type=q.qtype))
        error, wrong = txt.corrupt(case, rng)
        files["preference"].append({"image": image, "prompt": f"<image>\n{prompt}", "chosen": chosen,
                                    "rejected": txt.reasoning_answer(case, wrong), "error": error})
        if audio:
            q = qs[int(rng.integers(len(qs)))]
            wav = f"audio/{case.name}.wav"
            duration = speak(q.question, out / wav, rng)
            files["audio"].append({
                "audio": wav, "image": image, "transcript": q.question, "duration_s": round(duration, 3),
                "conversations": [{"from": "human", "value": "<image>\n<audio>"}, {"from": "gpt", "value": q.answer}],
                "question_type": q.qtype})
        if progress is not None:
            progress(i + 1, n)
    for key, records in files.items():
        if key == "audio" and not audio:
            continue
        with (out / f"{key}.jsonl").open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    meta = {name: {"root": ".", "annotation": fname, "data_augment": False, "repeat_time": repeat,
                   "length": len(files[fname.removesuffix(".jsonl")])}
            for name, (fname, repeat) in DATASETS.items()}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    counts = {key: len(v) for key, v in files.items() if key != "audio" or audio}
    summary = CorpusSummary(out, seed, n, size, counts, dict(sorted(per_image.items())), dict(sorted(kinds.items())))
    manifest = {"generator": "training.phantoms", "seed": seed, "n": n, "size": size, "audio": audio,
                "config": config.as_dict(),
                "counts": counts, "lesions_per_image": summary.lesions_per_image, "kinds": summary.kinds,
                "step_names": list(STEP_NAMES), "box_scale": BOX_SCALE}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("wrote %d phantom cases to %s", n, out)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.phantoms",
                                     description="Write the synthetic phantom corpus (images, SFT/DPO/audio JSONL).")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="seed (same seed, same bytes)")
    parser.add_argument("--size", type=int, default=224, help="image width and height in pixels (default 224)")
    parser.add_argument("--audio", action="store_true", help="also speak one question per image with espeak-ng")
    parser.add_argument("--kinds", help=f"comma-separated subset of {','.join(KINDS)} (default: all)")
    parser.add_argument("--max-lesions", type=int, choices=range(0, len(LESION_COUNT_WEIGHTS)),
                        help="at most this many lesions per image (default 3)")
    parser.add_argument("--lesion-mm", type=float, nargs=2, metavar=("MIN", "MAX"),
                        help="lesion diameter range in mm (default: per organ, 6-50 mm)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
        config = CorpusConfig.restricted(kinds, args.max_lesions, tuple(args.lesion_mm) if args.lesion_mm else None)
        summary = write_corpus(args.out, args.n, args.seed, args.size, audio=args.audio, config=config)
    except XMedError as exc:
        sys.stderr.write(f"phantoms: {exc}\n")
        return 1
    sys.stdout.write(f"wrote {summary.n} images to {summary.out}: " +
                     ", ".join(f"{k} {v}" for k, v in summary.counts.items()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
