"""training.compare_models: one table of every candidate on the same studies (the formatting and the refusals;
the measurements are the CLI commands' own, tested with them)."""

from __future__ import annotations

from pathlib import Path

from training import compare_models as cm


def _result(model: str, iou: float, cpm: float, probe_hit: int) -> dict:
    r = {"model": model}
    for i, s in enumerate(cm.GROUNDING_SEEDS):
        r[f"s{s}"] = {"mean_iou": iou + i / 100, "large": 2 * iou, "empty": 0.9 + i / 100}
    r["froc"] = {"cpm": cpm, "false_positives": 6}
    r["froc2"] = {"cpm": cpm + 0.03, "false_positives": 18}
    r["probe"] = {s: (0.7 if s == probe_hit else 0.0) for s in cm.PROBE_SHIFTS}
    return r


def test_the_table_has_one_column_per_model_and_every_measurement():
    text = cm.table([_result("resources/models/demo", 0.2, 0.278, -24),
                     _result("checkpoints/demo-recipe-512-run14-phase2/dpo/final", 0.1, 0.3, 0)])
    lines = text.splitlines()
    assert lines[0] == "| | resources-models-demo | checkpoints-demo-recipe-512-run14-phase2-dpo-final |"
    assert len(lines) == 2 + 6 and all(line.count("|") == 4 for line in lines)
    assert "| 0.200 / 0.210 / 0.220 / 0.230 |" in text and "0.90–0.93" in text
    assert "0.278; 6" in text and "0.308; 18" in text
    probe = lines[-1].split("|")
    assert probe[2].split() == ["0.00", "0.00", "0.70", "0.00", "0.00", "0.00", "0.00", "0.00", "0.00"]
    assert probe[3].split()[4] == "0.70"  # the second model boxes the mass where it is


def test_a_folder_that_is_not_a_model_is_refused_before_anything_runs(tmp_path, capsys):
    assert cm.main([str(tmp_path / "nothing"), "--work", str(tmp_path / "w")]) == 2
    assert "not a model folder" in capsys.readouterr().err and not (tmp_path / "w").exists()
    assert cm.model_key(Path("/a/b/final")) == "a-b-final"
