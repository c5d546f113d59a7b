"""The reliability pass on the real local engine (tiny random InternVL, CPU)."""

from __future__ import annotations

import math

import numpy as np
import torch

from inference.reliability.decomposition import DraftFinding
from inference.reliability.pipeline import ReliabilitySettings, assess
from inference.reliability.scoring import State, Thresholds, Tier


def test_random_model_babble_is_red_through_the_local_engine(tiny_model_dir):
    """An untrained model answers each question with different noise: every sample its own
    cluster, none agreeing with the draft -> red, with log-probs carried through."""
    from inference.engine.local import LocalEngine

    engine = LocalEngine.from_folder(tiny_model_dir, device="cpu")
    finding = DraftFinding("f1", "nodule in the right upper lobe", "nodule",
                           {"presence": "yes", "location": "right upper lobe"})
    torch.manual_seed(0)
    rel = assess(engine, [finding], np.zeros((32, 32, 3), np.uint8), thresholds=Thresholds(green=0.7, amber=0.4),
                 settings=ReliabilitySettings(n_samples=4, max_questions=2))
    assert rel.state is State.DONE and rel.tier is Tier.RED
    assert [q.question.attribute for q in rel.questions] == ["presence", "location"]
    for q in rel.questions:
        assert len(q.answers) == 4 and q.cluster_ids == (0, 1, 2, 3)
        assert q.draft_agreement == 0.0 and q.tier is Tier.RED
        # confidence-weighted entropy of 4 distinct unsure answers exceeds the discrete ln 4
        assert q.entropy > math.log(4)
    assert rel.worst == min(q.reliability for q in rel.questions)
