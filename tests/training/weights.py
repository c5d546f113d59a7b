"""Comparing the weights of two saved InternVL model folders (the resume tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import InternVLForConditionalGeneration


def same_weights(a: Path, b: Path, atol: float = 1e-6) -> bool:
    """Every tensor of model folder ``a`` is within ``atol`` of the same tensor in ``b``."""
    wa = InternVLForConditionalGeneration.from_pretrained(a).state_dict()
    wb = InternVLForConditionalGeneration.from_pretrained(b).state_dict()
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=atol) for k in wb)
