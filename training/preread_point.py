"""The series pre-read's operating point for a trained model (the demo recipe's last card step).

``xmedgpt sample`` studies of the fit seeds are pre-read (sweep and linking, :mod:`app.assistant.preread`), the lowest
candidate score with at most ``fp_per_volume`` false positives per volume is written as the model folder's
``preread_operating_point.json`` (:func:`inference.evaluation.froc.fit_operating_point`), and the pre-read is measured
at it on the held seeds' studies. The same as ``xmedgpt eval-volume --fit-operating-point`` and ``eval-volume``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from app.assistant.preread import PrereadOptions, write_operating_point
from app.commands.analyze import load_engine
from app.commands.eval_volume import preread_cases
from app.synthetic.sample import write_ct_study
from inference.evaluation.froc import at_threshold, fit_operating_point, froc, match_volume


def _seed_span(seeds: Sequence[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])


def fit_and_measure(model: Path, folder: Path, fit_seeds: Sequence[int], held_seeds: Sequence[int], *,
                    slices: int = 120, size: int = 512, fp_per_volume: float = 1.0, device: str = "cpu",
                    model_label: str = "", commands: list[str] | None = None) -> dict:
    """Fit the operating point into ``model`` and measure it; returns the card's section: ``{"operating_point":
    {min_score, fp_per_volume, fitted_on, measured}, "measured": [{data, cpm, sensitivity, by_size, …}]}``.
    Studies are written under ``folder`` (fit/, held/) unless they are there already."""
    commands = commands if commands is not None else []
    label = model_label or str(model)

    def studies(name: str, seeds: Sequence[int]) -> list[Path]:
        out = []
        for s in seeds:
            study = folder / name / f"s{s}"
            if not (study / "ground_truth.json").is_file():
                write_ct_study(study, n_slices=slices, size=size, seed=s)
            out.append(study)
        commands.append(f"for s in {' '.join(map(str, seeds))}; do xmedgpt sample --out {folder / name}/s$s "
                        f"--slices {slices} --size {size} --seed $s; done")
        return out

    engine, spec = load_engine(model, device, "auto")
    options = PrereadOptions(reasoning=False, reliability=False, min_score=0.0)
    fit_cases, _ = preread_cases(engine, spec, studies("fit", fit_seeds), options, progress=False)
    fitted = fit_operating_point([match_volume(c) for c in fit_cases], fp_per_volume).to_json()
    fitted_on = (f"{len(fit_seeds)} studies written by 'xmedgpt sample --slices {slices} --seed S', "
                 f"S = {_seed_span(fit_seeds)}")
    point = write_operating_point(model / "preread_operating_point.json", fitted, fp_per_volume, fitted_on,
                                  engine.describe())
    commands.append(f"xmedgpt eval-volume --data {folder / 'fit'} --model {label} "
                    f"--fit-operating-point {fp_per_volume:g}")
    measured = []
    if held_seeds:
        cases, _ = preread_cases(engine, spec, studies("held", held_seeds), options, progress=False)
        at = at_threshold([match_volume(c) for c in cases], fitted["min_score"]).to_json()
        measured.append({"data": f"seeds {_seed_span(held_seeds)}", "cpm": froc(cases).cpm, **at})
        commands.append(f"xmedgpt eval-volume --data {folder / 'held'} --model {label}")
    return {"operating_point": {k: point[k] for k in ("min_score", "fp_per_volume", "fitted_on", "measured")},
            "measured": measured}
