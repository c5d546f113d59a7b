"""The one lesion-size rule: buckets by the lesion's longest diameter in millimetres.

Shared by the synthetic sample study and its ground truth, the training corpus and
``xmedgpt eval``, so "small", "medium" and "large" mean the same lesions everywhere.
"""

from __future__ import annotations

#: (name, lower bound inclusive, upper bound exclusive), diameters in mm.
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 10.0),
    ("medium", 10.0, 20.0),
    ("large", 20.0, float("inf")),
)
BUCKET_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SIZE_BUCKETS)


def size_bucket(diameter_mm: float) -> str:
    """The bucket of a lesion of this diameter: small < 10 mm ≤ medium < 20 mm ≤ large."""
    if not diameter_mm >= 0.0:  # also catches NaN
        raise ValueError(f"a lesion diameter must be a non-negative number of mm, not {diameter_mm!r}")
    return next(name for name, lo, hi in SIZE_BUCKETS if lo <= diameter_mm < hi)
