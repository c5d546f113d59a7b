"""One rule for phrases and sentences: where a sentence ends, which one mentions a phrase."""

from __future__ import annotations

from inference.phrases import (
    phrase_key,
    sentence_spans,
    sentence_with,
    split_sentences,
    strip_grounding,
)


def test_phrase_key_folds_spaces_and_case():
    assert phrase_key("  Pleural \n Effusion ") == phrase_key("pleural effusion") == "pleural effusion"
    assert phrase_key("") == ""


def test_sentences_end_at_stop_and_space_or_line_break_not_in_numbers_or_abbreviations():
    text = ("There is an approx. 2.5 cm nodule (i.e. small), seen by Dr. Smith. Is it new? Yes!\n"
            "- Mass in the RLL\n\n- No effusion...  Fig. 2 shows it")
    assert split_sentences(text) == [
        "There is an approx. 2.5 cm nodule (i.e. small), seen by Dr. Smith.",
        "Is it new?",
        "Yes!",
        "- Mass in the RLL",
        "- No effusion...",
        "Fig. 2 shows it",
    ]
    assert [text[a:b] for a, b in sentence_spans(text)] == split_sentences(text)
    assert split_sentences("") == [] and split_sentences("  \n ") == []
    # a stop not followed by white space does not end the sentence; a sentence-ending "cm." does
    assert split_sentences("Size 3 cm. No e.g.,x. End") == ["Size 3 cm.", "No e.g.,x.", "End"]


def test_sentence_with_finds_the_phrase_without_tags_case_or_spacing():
    text = "Lungs clear. An approx. 3 cm <ref>Hypodense  lesion</ref><box>[[1, 2, 3, 4]]</box> in the liver. Spleen."
    assert strip_grounding(text) == "Lungs clear. An approx. 3 cm Hypodense lesion in the liver. Spleen."
    assert sentence_with(text, " hypodense LESION") == "An approx. 3 cm Hypodense lesion in the liver."
    assert sentence_with(text, "kidney") == ""
    assert sentence_with("", "x") == ""
