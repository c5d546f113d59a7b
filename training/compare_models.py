"""Compare demo-model candidates on the same fresh studies, one table: the check a run passes before it is adopted.

Runs 13e and 9b taught that a candidate chosen on two development studies can be worse everywhere else
(docs/demo-512-run-12.md): a run is compared with the committed model on four studies (grounding, soft tissue and
lung window, every slice), both pre-read FROC sets and the sample's 32 mm mass moved up and down
(:mod:`training.position_probe`) before it is called better. This writes the studies once (``xmedgpt sample``, 120
slices, seeds used nowhere in training) into ``--work`` and runs the same commands for every model:

    python -m training.compare_models --work /tmp/compare resources/models/demo checkpoints/demo-512-run14-phase2

Each model's command outputs stay in ``--work/<model name>/`` (JSON), so a second call only runs new models
(``--again`` runs them all again). The card's held-out slices are on each model's card, not here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

#: grounding studies: 7331 and 2468 were the development studies of runs 9-13, 1000 and 1002 the others
GROUNDING_SEEDS = (7331, 2468, 1000, 1002)
#: pre-read FROC sets (xmedgpt eval-volume): 8101-8103 held out, 8201-8206 the ranking's development seeds
FROC_SETS = {"froc": (8101, 8102, 8103), "froc2": (8201, 8202, 8203, 8204, 8205, 8206)}
SLICES = 120
PROBE_SHIFTS = (-48, -36, -24, -12, 0, 12, 24, 36, 48)


def _run(cmd: Sequence[str], log: Path) -> None:
    with log.open("w") as out:
        done = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {done.returncode}); see {log}")


def write_studies(work: Path, xmedgpt: str) -> dict[str, Path]:
    """The studies (written once): ``s<seed>`` for grounding, ``froc/s<seed>`` and ``froc2/s<seed>``."""
    where: dict[str, Path] = {}
    plan = [(f"s{s}", s) for s in GROUNDING_SEEDS] + [(f"{name}/s{s}", s) for name, seeds in FROC_SETS.items()
                                                       for s in seeds]
    for rel, seed in plan:
        folder = work / "studies" / rel
        if not (folder / "ground_truth.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            _run([xmedgpt, "sample", "--out", str(folder), "--slices", str(SLICES), "--seed", str(seed)],
                 work / "studies" / f"{rel.replace('/', '-')}.log")
        where[rel] = folder
    for name in FROC_SETS:
        where[name] = work / "studies" / name
    return where


def model_key(model: Path) -> str:
    """A model's name in the table and its results folder: its path, slashes as dashes (``…/dpo/final`` are many)."""
    return str(model).strip("/").replace("/", "-")


def measure(model: Path, work: Path, studies: dict[str, Path], xmedgpt: str, again: bool = False) -> dict:
    """Every measurement of one model (cached as JSON in ``work/<model key>``)."""
    out = work / model_key(model)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"model": str(model)}
    for seed in GROUNDING_SEEDS:
        path = out / f"s{seed}.json"
        if again or not path.is_file():
            _run([xmedgpt, "eval", "--data", str(studies[f"s{seed}"]), "--model", str(model), "--tasks", "grounding",
                  "--window", "soft_tissue,lung", "--samples", "0", "--json", str(path)], out / f"s{seed}.log")
        loc = json.loads(path.read_text())["localization"]
        result[f"s{seed}"] = {"mean_iou": loc["mean_iou"], "large": loc["per_bucket"]["large"]["mean_iou"],
                              "empty": loc["empty_correct"]}
    for name in FROC_SETS:
        path = out / f"{name}.json"
        if again or not path.is_file():
            _run([xmedgpt, "eval-volume", "--data", str(studies[name]), "--model", str(model), "--json", str(path)],
                 out / f"{name}.log")
        doc = json.loads(path.read_text())
        result[name] = {"cpm": doc["froc"]["cpm"], "false_positives": doc["froc"]["false_positives"]}
    path = out / "probe.json"
    if again or not path.is_file():
        _run([sys.executable, "-m", "training.position_probe", "--model", str(model), "--study",
              str(studies["s1000"]), "--lesion", "L3", "--window", "lung",
              "--shifts=" + ",".join(str(s) for s in PROBE_SHIFTS), "--json", str(path)], out / "probe.log")
    rows = json.loads(path.read_text())
    result["probe"] = {r["shift_px"]: r["iou"] for r in rows}
    return result


def table(results: Sequence[dict]) -> str:
    names = [model_key(Path(r["model"])) for r in results]
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(results)]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")

    row("seeds " + " / ".join(str(s) for s in GROUNDING_SEEDS) + ": mean IoU",
        lambda r: " / ".join(f"{r[f's{s}']['mean_iou']:.3f}" for s in GROUNDING_SEEDS))
    row("large lesions (>= 20 mm): mean IoU",
        lambda r: " / ".join(f"{r[f's{s}']['large']:.3f}" for s in GROUNDING_SEEDS))
    row("lesion-free slice-windows called empty",
        lambda r: f"{min(r[f's{s}']['empty'] for s in GROUNDING_SEEDS):.2f}–"
                  f"{max(r[f's{s}']['empty'] for s in GROUNDING_SEEDS):.2f}")
    for name, seeds in FROC_SETS.items():
        row(f"pre-read CPM ({seeds[0]}–{seeds[-1]}); false positives",
            lambda r, n=name: f"{r[n]['cpm']:.3f}; {r[n]['false_positives']}")
    row("seed 1000's 32 mm mass, lung window, moved " + " / ".join(f"{s:+d}" for s in PROBE_SHIFTS) + " px: IoU",
        lambda r: " ".join(f"{r['probe'][s]:.2f}" if s in r["probe"] else "-" for s in PROBE_SHIFTS))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.compare_models", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model folders (the committed one first)")
    parser.add_argument("--work", type=Path, required=True, help="where the studies and each model's results go")
    parser.add_argument("--again", action="store_true", help="measure every model again")
    parser.add_argument("--xmedgpt", default=str(Path(sys.executable).with_name("xmedgpt")),
                        help="the xmedgpt command (default: beside this Python)")
    args = parser.parse_args(argv)
    missing = [str(m) for m in args.models if not (m / "config.json").is_file()]
    if missing:
        print(f"error: not a model folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        studies = write_studies(args.work, args.xmedgpt)
        results = [measure(m, args.work, studies, args.xmedgpt, args.again) for m in args.models]
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table(results))
    (args.work / "compare.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
