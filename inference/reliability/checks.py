"""One check of a draft and what it found: ``Check(name, passed, detail)``.

``passed`` is True (checked and right), False (checked and wrong) or None (not
checked: the check could not run, e.g. an image without patient geometry, or the
model declined). The light never claims what was not checked, so a None keeps a
finding from green (:mod:`inference.reliability.tiers`).

``kind`` says what a failure costs (:data:`inference.reliability.tiers.FAIL_CAP`):

- ``consistency``: the model's re-readings (its boxes) disagree with the draft;
- ``evidence``: the draft disagrees with the pixels (size, side, density, a box in air);
- ``negative``: a "nothing there" answer whose re-readings keep boxing something;
- ``guardrail``: a structure the series cannot show (the header or body region says so);
- ``steps``: the reasoning contradicts itself, or steps are missing or out of place.

``inputs`` holds the numbers the check compared (for the record; ``detail`` says
them in words).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONSISTENCY = "consistency"
EVIDENCE = "evidence"
NEGATIVE = "negative"
GUARDRAIL = "guardrail"
STEPS = "steps"
KINDS = (CONSISTENCY, EVIDENCE, NEGATIVE, GUARDRAIL, STEPS)


@dataclass(frozen=True, eq=True)
class Check:
    name: str
    passed: bool | None  # None: not checked
    detail: str
    kind: str = EVIDENCE
    inputs: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown check kind {self.kind!r}; one of {KINDS}")

    @property
    def status(self) -> str:
        """"passed", "failed" or "not checked"."""
        return "not checked" if self.passed is None else ("passed" if self.passed else "failed")

    def to_json(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def not_checked(name: str, detail: str, kind: str = EVIDENCE, **inputs: Any) -> Check:
    return Check(name, None, detail, kind, inputs)
