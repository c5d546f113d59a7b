"""The light measured on sample studies (issue #13.6 and its proof): app.assistant.trust_eval and
``xmedgpt calibrate --data STUDY``.

Studies are drawn with seeds made in the test (appearing nowhere in the repository). Scripted models
play a reader's two nightmares: a model that is always right and one that is *consistently* wrong
(the same shifted box every time it is asked again) — self-consistency alone cannot tell them apart,
so the fitted thresholds must never make the second one green.
"""

from __future__ import annotations

import hashlib
import json
import secrets

import numpy as np
import pytest

from app.assistant import trust_eval
from app.assistant.ask import Assistant
from app.dicom.loader import load_series
from app.dicom.scan import scan
from app.synthetic.sample import load_ground_truth, write_ct_study
from app.synthetic.study_dataset import study_examples
from app.synthetic.volumes import study_window
from inference.imaging import ImageSpec
from inference.parsing import format_grounding
from inference.reliability.scoring import Thresholds
from inference.types import Box, Generation

SPEC = ImageSpec(tile_size=56, max_tiles=6)
WINDOWS = ["soft_tissue", "lung"]
SEED = 10_000 + secrets.randbelow(10**8)  # a study nobody tuned anything on


def _key(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def _steps(step2: str, step5: str, n: int) -> str:
    step3 = "Round, with smooth margins." if n else "Normal appearance."
    step4 = f"{n} focal lesion{'s' if n > 1 else ''} in total." if n else "No abnormality."
    return (f"Step 1: Structure identification\nAxial CT slice.\nStep 2: Region localization\n{step2}\n"
            f"Step 3: Detailed description\n{step3}\n"
            f"Step 4: Holistic analysis\n{step4}\nStep 5: Report synthesis\n{step5}\n")


class StudyModel:
    """Answers each slice (found by the model image's hash) with the boxes of the lesions it shows in that
    window, shifted by ``shift`` pixels (0: right; a shift beyond the lesion: consistently wrong), on the
    lesion's true side; answers every check question the same way and grounds again to the same box."""

    image_spec = SPEC

    def __init__(self, folder, volume, shift: int = 0) -> None:
        self.draft: dict[str, str] = {}
        self.box_of: dict[str, str] = {}
        assistant = Assistant(self, image_spec=SPEC)
        truth = study_examples(folder, WINDOWS)
        for ex in truth.examples:
            k = int(ex.id.split()[1]) - 1
            prep = assistant.prepare(volume, k, study_window(ex.group), trust_eval.DEFAULT_QUESTION)
            t = prep.image.transform
            step2, step5, grounded = [], [], ""
            for les in ex.lesions:
                x0, y0, x1, y1 = les["box"]
                box = t.source_to_norm(Box(x0 + shift, y0 + shift, x1 + shift, y1 + shift))
                grounded = format_grounding("lesion", [box])
                step2.append(f"There is a {grounded} in the {les['location']}.")
                step5.append(f"Lesion in the {les['location']}.")
            key = _key(prep.request.image)
            self.draft[key] = _steps(" ".join(step2) or "No focal lesion.", " ".join(step5) or "No focal lesion.",
                                     len(ex.lesions))
            self.box_of[key] = grounded

    @property
    def model_id(self) -> str:
        return "study-model"

    def describe(self) -> str:
        return "study-model · test"

    def stream(self, request, cancel=None):
        yield self.draft[_key(request.image)]

    def generate(self, request, cancel=None) -> Generation:
        return Generation("presence | Is there a lesion in this image? | yes", [-0.01])

    def generate_batch(self, requests, cancel=None):
        return [self.generate(r) for r in requests]

    def sample(self, requests, n, temperature=1.0, top_p=0.9, cancel=None):
        out = []
        for r in requests:
            if "<ref>" in r.prompt:
                text = self.box_of.get(_key(r.image)) or "It is absent from this image."
            else:
                text = "yes"
            out.append([Generation(text, [-0.01])] * n)
        return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    folder = write_ct_study(root / "study", n_slices=40, size=128, seed=SEED)
    volume = load_series(scan([folder]).all_series()[0])
    return folder, volume


def _collect(folder, model):
    return trust_eval.collect(model, [folder], WINDOWS, n_samples=3, n_questions=2)


def test_a_right_model_is_labelled_right_and_its_light_matches_the_recomputed_rule(study):
    folder, volume = study
    collected, per_answer = _collect(folder, StudyModel(folder, volume))
    shown = sum(len(ex.lesions) for ex in study_examples(folder, WINDOWS).examples)
    assert shown > 0, f"seed {SEED}: the study shows no lesion"
    assert len(collected.findings) > 0 and all(f.right for f in collected.findings), SEED
    assert all(f.iou > 0.9 for f in collected.findings)
    assert collected.tier_mismatches == 0  # green recomputed from the records = the tiers the pass produced
    assert not any(a.false_negative for a in collected.answers)
    cal = trust_eval.fit(collected, per_answer, holdout=0.5, seed=1, min_count=2)
    assert cal.held_out["green_precision"] == 1.0
    assert cal.held_out["green_coverage_of_right"] > 0.5
    assert cal.held_out["false_negative_answers"] == 0
    assert cal.held_out["answers_contradicting"] == 0 and cal.held_out["answers_missing_steps"] == 0


def test_a_consistently_wrong_model_is_never_green_after_calibration(study):
    folder, volume = study
    collected, per_answer = _collect(folder, StudyModel(folder, volume, shift=40))
    assert collected.findings and not any(f.right for f in collected.findings)
    assert collected.tier_mismatches == 0
    cal = trust_eval.fit(collected, per_answer, holdout=0.5, seed=1, min_count=2)
    assert cal.green > 1.0  # no threshold gives < 5 % errors: green is never shown for this model
    assert cal.held_out["green"] == 0 and cal.fit["green"] == 0
    assert "held-out, fitted thresholds" in trust_eval.format_table(cal)


def test_a_false_negative_answer_is_counted_and_green_is_recomputed_for_it():
    fs = [trust_eval.FindingRecord("s", 1, "lung", "lesion", 0.9, True, True, "green", True, 0.8, None, "L1", 12.0)]
    answers = [trust_eval.AnswerRecord("s", 1, "lung", 1, 1, "green", 0.9, True, True, [0]),
               trust_eval.AnswerRecord("s", 2, "lung", 1, 0, "green", 0.8, True, True),
               trust_eval.AnswerRecord("s", 3, "lung", 1, 0, "red", 0.2, True, True)]
    per_answer = {("s", 1, "lung"): [(0.9, True, True)], ("s", 2, "lung"): [(0.8, True, True)],
                  ("s", 3, "lung"): [(0.2, True, True)]}
    c = trust_eval.Collected(fs, answers, Thresholds(0.5, 0.1), 0, 0.0, ["s"])
    m = trust_eval.measure(c, per_answer, {("s", 1), ("s", 2), ("s", 3)}, green=0.5, amber=0.1)
    assert m["false_negative_answers"] == 2 and m["false_negative_green"] == 1
    assert m["false_negative_green_share"] == 0.5
    m = trust_eval.measure(c, per_answer, {("s", 1), ("s", 2), ("s", 3)}, green=0.85, amber=0.1)
    assert m["false_negative_green"] == 0 and m["green"] == 1


def test_a_failed_check_keeps_a_high_score_out_of_green_and_auroc_ranks_right_above_wrong():
    fs, answers, per = [], [], {}
    rng = np.random.default_rng(7)
    for i in range(60):
        right = i % 2 == 0
        score = float(rng.uniform(0.75, 1.0) if right else rng.uniform(0.0, 0.7))
        ok = i != 1  # one wrong finding with a failed check
        if i == 1:
            score = 0.99
        fs.append(trust_eval.FindingRecord("s", i, "lung", "lesion", score, ok, True, "", right, 0.5 if right else 0.0,
                                           None, None, None))
        answers.append(trust_eval.AnswerRecord("s", i, "lung", 1, 1, "", score, True, True, [i]))
        per[("s", i, "lung")] = [(score, ok, True)]
    c = trust_eval.Collected(fs, answers, Thresholds(0.5, 0.1), 0, 0.0, ["s"])
    keys = {("s", i) for i in range(60)}
    m = trust_eval.measure(c, per, keys, green=0.7, amber=0.3)
    assert m["auroc_score"] > 0.85 and m["auroc_light"] >= m["auroc_score"]
    assert m["green_precision"] == 1.0  # the 0.99 finding with the failed check is not green
    cal = trust_eval.fit(c, per, holdout=0.5, seed=3, min_count=5)
    assert 0.7 <= cal.green <= 0.8 and cal.held_out["green_precision"] == 1.0


def test_calibrate_command_on_a_study_writes_the_table_and_a_calibration_file(study, tmp_path, monkeypatch, capsys):
    from app.cli import main

    folder, volume = study
    model = StudyModel(folder, volume)
    monkeypatch.setattr("app.commands.analyze.load_engine", lambda *a, **k: (model, SPEC))
    monkeypatch.setattr("app.commands.analyze.resolve_model", lambda explicit: tmp_path)
    out, records = tmp_path / "cal.json", tmp_path / "records.json"
    rc = main(["calibrate", "--data", str(folder), "--window", "soft_tissue,lung", "--samples", "2",
               "--questions", "1", "--min-count", "2", "--out", str(out), "--json", str(records)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| held-out, fitted thresholds |" in text and f"wrote {out}" in text
    doc = json.loads(out.read_text())
    assert doc["calibrated"] is True and 0.0 <= doc["thresholds"]["amber"] <= doc["thresholds"]["green"]
    assert "held_out" in doc["metrics"]["study"] and "sample studies" in doc["note"]
    # the file the viewer reads takes the new thresholds
    from inference.reliability.scoring import load_thresholds

    assert load_thresholds(out).green == pytest.approx(doc["thresholds"]["green"])
    rec = json.loads(records.read_text())
    assert rec["records"]["tier_mismatches"] == 0 and rec["records"]["findings"]
    assert (records.stat().st_mode & 0o777) == 0o600  # patient-derived records are private
    assert load_ground_truth(folder)  # the study is untouched
    # without --out, the model's own file is written only when the fit rests on --min-count checked findings
    # (a measurement on a few slices once replaced the demo model's calibration with never-green thresholds)
    own = tmp_path / "reliability_calibration.json"
    rc = main(["calibrate", "--data", str(folder), "--window", "soft_tissue,lung", "--samples", "2",
               "--questions", "1", "--min-count", "10000"])
    assert rc == 0 and not own.exists()
    assert "not written: the thresholds rest on" in capsys.readouterr().out
    rc = main(["calibrate", "--data", str(folder), "--window", "soft_tissue,lung", "--samples", "2",
               "--questions", "1", "--min-count", "2"])
    assert rc == 0 and json.loads(own.read_text())["calibrated"] is True


def test_the_evaluation_asks_what_the_viewer_asks():
    """Measured where it is used: the question is the viewer's own "Describe findings" (it was "Describe the
    findings.", which no button sends and the demo model answered with broken steps)."""
    from app.assistant.session import PRESET_QUESTIONS

    assert trust_eval.DEFAULT_QUESTION in {q for _, q in PRESET_QUESTIONS}
