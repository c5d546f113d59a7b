"""Types shared by engines, parsers, reliability and speech. Plain dataclasses.

Coordinates: a :class:`Box` is in *image pixels* of the frame the model saw
(x = column, y = row, x1/y1 exclusive edges), unless a docstring says it is on
the model's 0–1000 grounding scale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

#: The five reasoning steps, in order (XMedGPT's clinical workflow).
STEP_NAMES: tuple[str, ...] = (
    "Structure identification",
    "Region localization",
    "Detailed description",
    "Holistic analysis",
    "Report synthesis",
)


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def contains(self, other: "Box") -> bool:
        """Whether ``other`` lies wholly inside this box (edges may touch)."""
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1

    def iou(self, other: "Box") -> float:
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class GroundedPhrase:
    """A phrase the model tied to one or more boxes (``<ref>…</ref><box>…</box>``)."""

    phrase: str
    boxes: tuple[Box, ...]  # on the 0–1000 grounding scale as parsed; see inference.imaging for mapping


@dataclass
class ReasoningStep:
    index: int  # 1..5
    title: str
    text: str
    phrases: list[GroundedPhrase] = field(default_factory=list)


@dataclass
class Generation:
    """One generated answer with its token log-probabilities (natural log)."""

    text: str
    token_logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop", "length", "cancelled"

    @property
    def sum_logprob(self) -> float:
        return float(np.sum(self.token_logprobs)) if self.token_logprobs else 0.0

    @property
    def mean_logprob(self) -> float:
        return float(np.mean(self.token_logprobs)) if self.token_logprobs else 0.0


@dataclass
class ChatRequest:
    """A question about one image. ``image`` is RGB uint8 (rows, cols, 3) or None."""

    prompt: str
    image: np.ndarray | None = None
    system: str | None = None
    max_new_tokens: int = 512


CancelFn = Callable[[], bool]

#: Seeds are kept below 2**63 (what every torch generator and an OpenAI-compatible ``seed`` accept).
SEED_MASK = (1 << 63) - 1


def sampling_seed(requests: Sequence[ChatRequest], n: int, temperature: float, top_p: float) -> int:
    """The seed that sampled answers to ``requests`` are drawn with: a digest of what is asked (each
    prompt, system text, token budget and image, pixel for pixel) and how (n, temperature, top_p).
    The same question about the same image gets the same samples, so the reliability light a reader
    sees does not change when the question is asked again, and an audited answer can be reproduced;
    another question or image gets other samples."""
    h = hashlib.sha256(f"xmedgpt-sample|{n}|{float(temperature)!r}|{float(top_p)!r}".encode())
    for r in requests:
        h.update(f"|{len(r.prompt)}:{r.prompt}|{r.system!r}|{r.max_new_tokens}|".encode("utf-8", "surrogatepass"))
        if r.image is None:
            h.update(b"no image")
        else:
            image = np.ascontiguousarray(r.image)
            h.update(f"{image.shape}{image.dtype.str}".encode())
            h.update(memoryview(image).cast("B"))
    return int.from_bytes(h.digest()[:8], "little") & SEED_MASK


@runtime_checkable
class Engine(Protocol):
    """What every engine (local transformers, remote OpenAI-compatible) provides."""

    @property
    def model_id(self) -> str: ...

    def describe(self) -> str:
        """Short label for the UI, e.g. "demo model · CPU" or "XMedGPT-8B · 4-bit · RTX A4000"."""
        ...

    def generate(self, request: ChatRequest, cancel: CancelFn | None = None) -> Generation: ...

    def stream(self, request: ChatRequest, cancel: CancelFn | None = None) -> Iterator[str]:
        """Yield text pieces as they are decoded (special tokens kept)."""
        ...

    def sample(
        self,
        requests: Sequence[ChatRequest],
        n: int,
        temperature: float = 1.0,
        top_p: float = 0.9,
        cancel: CancelFn | None = None,
    ) -> list[list[Generation]]:
        """``n`` sampled answers per request, with token log-probs; batched where possible. Drawn with
        :func:`sampling_seed` of the call unless a ``seed`` keyword says otherwise (engines that take one):
        the same call gives the same answers."""
        ...
