"""Types shared by engines, parsers, reliability and speech. Plain dataclasses.

Coordinates: a :class:`Box` is in *image pixels* of the frame the model saw
(x = column, y = row, x1/y1 exclusive edges), unless a docstring says it is on
the model's 0–1000 grounding scale.
"""

from __future__ import annotations

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
        """``n`` sampled answers per request, with token log-probs; batched where possible."""
        ...
