"""The evaluation harness behind ``xmedgpt eval``: run a model on a labelled dataset and measure it.

DIR holds the documented JSONL files (training/README.md), any subset of:

- ``grounding.jsonl`` — "locate every lesion" prompts; the reference answer's
  ``<ref>…</ref><box>[[…]]</box>`` boxes are the ground truth unless
  ``annotations.jsonl`` gives the lesions (with their ``size_mm``);
- ``vqa.jsonl`` — questions with short reference answers (``question_type`` optional);
- ``report.jsonl`` — FINDINGS / IMPRESSION reports; findings are compared as
  "kind | location" pairs named in the annotations (or a record's ``findings`` list);
- ``reasoning.jsonl`` — five-step answers; step 2's boxes are scored like grounding;
- any record may carry a numeric ``outcome``: Kendall's tau-b against the first
  number of the model's answer.

:func:`evaluate` returns the metrics (JSON-ready), :func:`format_table` the table
``xmedgpt eval`` prints. :func:`evaluate_examples` scores in-memory images instead of a folder
(:class:`ImageExample`: RGB image, truth boxes with ``size_mm``, id, group such as the display window;
the app builds them from a DICOM study, :mod:`app.synthetic.study_dataset`), overall and per group. Localization is mean IoU and accuracy@0.5 per lesion-size
bucket: the one size rule (:func:`inference.evaluation.sizes.size_bucket`) on the
annotation's ``size_mm``, "unknown" for a lesion without one (boxes taken from a
reference answer have none). Reliability AUROC per estimator comes from N sampled
answers to each VQA question (question level, and per image with its first 1, 3
and 5 questions predicting whether the image's draft is right).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inference.errors import XMedError
from inference.evaluation import metrics as ev
from inference.evaluation.sizes import size_bucket
from inference.parsing import parse_answer
from inference.prompts import grounding_question
from inference.resources import DEMO_MODEL_DIR
from inference.types import Box, ChatRequest, Engine
from inference.zoom import zoom_ground

log = logging.getLogger(__name__)

QUESTION_COUNTS = (1, 3, 5)
TOKENS = {"grounding": 96, "vqa": 16, "report": 192, "reasoning": 448}
UNKNOWN_SIZE = ev.UNKNOWN_SIZE  # the bucket of a lesion without a size annotation


@dataclass
class Options:
    limit: int | None = None  # images
    samples: int = 5  # answers sampled per VQA question for the reliability AUROC (0: skip)
    tasks: tuple[str, ...] = ("grounding", "vqa", "report", "reasoning")
    temperature: float = 1.0  # sampling for the reliability AUROC: as the live pass
    top_p: float = 0.9
    max_new_tokens: int | None = None  # caps every task's answer length (default: per task)
    labelled_out: Path | None = None  # write the sampled VQA answers as an `xmedgpt calibrate` set here
    zoom: int = 0  # > 0: grounding by the zoom pass over crops of this many pixels (inference.zoom)
    zoom_overlap: int = 80  # pixels neighbouring crops share (at least the largest lesion)


@dataclass
class Example:
    image: str
    prompt: str
    system: str | None
    reference: str
    record: dict


def _read(path: Path) -> list[dict]:
    out = []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise XMedError(f"{path.name} line {no} is not valid JSON.") from exc
    return out


def _example(rec: dict, where: str) -> Example:
    conv = rec.get("conversations") or []
    system = next((t["value"] for t in conv if t.get("from") == "system"), None)
    turns = [t for t in conv if t.get("from") in ("human", "gpt")]
    if len(turns) < 2 or turns[0]["from"] != "human" or turns[1]["from"] != "gpt":
        raise XMedError(f"{where}: expected a human question followed by a gpt answer.")
    image = rec.get("image")
    image = image[0] if isinstance(image, list) else image
    prompt = turns[0]["value"].replace("<image>\n", "").replace("<image>", "").strip()
    return Example(image or "", prompt, system, turns[1]["value"], rec)


def load_task(data: Path, task: str, images: set[str] | None) -> list[Example]:
    path = data / f"{task}.jsonl"
    if not path.is_file():
        return []
    out = [_example(r, f"{path.name} line {i}") for i, r in enumerate(_read(path), start=1)]
    return [e for e in out if images is None or e.image in images]


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except OSError as exc:
        raise XMedError(f"Cannot read the image {path}.") from exc


class _Runner:
    def __init__(self, engine: Engine, data: Path, max_new_tokens: int | None = None,
                 images: dict[str, np.ndarray] | None = None, zoom: int = 0, zoom_overlap: int = 80) -> None:
        self.engine = engine
        self.data = data
        self.max_new_tokens = max_new_tokens
        self.zoom, self.zoom_overlap = zoom, zoom_overlap
        self._images: dict[str, np.ndarray] = dict(images or {})  # in-memory examples: their images by id
        self.timing: dict[str, ev.Timing] = {}

    def image(self, rel: str) -> np.ndarray | None:
        if not rel:
            return None
        if rel not in self._images:
            self._images[rel] = load_rgb(self.data / rel)
        return self._images[rel]

    def request(self, ex: Example, task: str) -> ChatRequest:
        tokens = TOKENS[task] if self.max_new_tokens is None else min(TOKENS[task], self.max_new_tokens)
        return ChatRequest(prompt=ex.prompt, image=self.image(ex.image), system=ex.system, max_new_tokens=tokens)

    def answer(self, ex: Example, task: str):
        start = time.perf_counter()
        request = self.request(ex, task)
        if task == "grounding" and self.zoom > 0 and request.image is not None:
            gen = zoom_ground(self.engine, request, self.zoom, self.zoom_overlap).generation()
        else:
            gen = self.engine.generate(request)
        self.timing.setdefault(task, ev.Timing()).add(time.perf_counter() - start, len(gen.token_logprobs))
        return gen


def lesion_bucket(lesion: dict) -> str:
    """The size bucket of an annotated lesion from its ``size_mm`` (the one size rule,
    :func:`inference.evaluation.sizes.size_bucket`); "unknown" when it has no size."""
    size = lesion.get("size_mm")
    return UNKNOWN_SIZE if size is None else size_bucket(float(size))


def _truth(annotations: dict[str, dict], ex: Example) -> tuple[list[Box], list[str]]:
    ann = annotations.get(ex.image)
    if ann is not None:
        lesions = ann.get("lesions", [])
        try:
            buckets = [lesion_bucket(les) for les in lesions]
        except (TypeError, ValueError) as exc:
            raise XMedError(f"annotations.jsonl, {ex.image}: a lesion's size_mm is not a size ({exc}).") from exc
        return [Box(*map(float, les["box_1000"])) for les in lesions], buckets
    boxes = [b for p in parse_answer(ex.reference).phrases for b in p.boxes]  # no annotation: no size
    return boxes, [UNKNOWN_SIZE] * len(boxes)


def _boxes(text: str, step: int | None = None) -> list[Box]:
    parsed = parse_answer(text)
    return [b for g in parsed.groundings if step is None or g.step in (step, None) for b in g.phrase.boxes]


class _StepTally:
    """How often five-step answers contradict themselves (inference.reliability.consistency.check_steps, the
    live pass's detector): answers, those with a contradiction, those with a missing step or leaked heading."""

    def __init__(self) -> None:
        self.answers = self.contradicting = self.incomplete = 0
        self.examples: list[str] = []

    def add(self, text: str) -> None:
        from inference.reliability.consistency import check_steps

        check = check_steps(parse_answer(text).steps, 5, text)
        self.answers += 1
        self.contradicting += bool(check.contradictions)
        self.incomplete += bool(check.missing_steps or check.leaked_headers)
        if check.contradictions and len(self.examples) < 3:
            self.examples.append(check.contradictions[0].message)

    def as_dict(self) -> dict:
        n = max(1, self.answers)
        return {"answers": self.answers, "contradicting": self.contradicting, "incomplete": self.incomplete,
                "contradiction_rate": self.contradicting / n, "incomplete_rate": self.incomplete / n,
                "examples": self.examples}


def _first_number(text: str) -> float | None:
    m = re.search(r"[-+]?\d+(?:\.\d+)?", text)
    return float(m.group()) if m else None


def _clean(value):
    """JSON-safe: NaN → None, dataclasses → dicts."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def evaluate(engine: Engine, data: Path, options: Options = Options()) -> dict:
    """Run every task present in ``data`` and return the metrics (JSON-ready)."""
    data = Path(data)
    if not data.is_dir():
        raise XMedError(f"No evaluation data at {data}: expected a folder of JSONL files.")
    ann_path = data / "annotations.jsonl"
    annotations = {a["image"]: a for a in _read(ann_path)} if ann_path.is_file() else {}
    all_images: list[str] = list(annotations)
    for task in ("grounding", "vqa", "report", "reasoning"):
        for ex in load_task(data, task, None):
            if ex.image not in all_images:
                all_images.append(ex.image)
    chosen = set(all_images[: options.limit] if options.limit else all_images)
    runner = _Runner(engine, data, options.max_new_tokens, zoom=options.zoom, zoom_overlap=options.zoom_overlap)
    result: dict = {"model": engine.describe(), "data": str(data), "images": len(chosen)}
    started = time.perf_counter()
    draft_right: dict[str, bool] = {}
    predicted_counts: dict[str, int] = {}
    outcomes: list[tuple[float, float]] = []

    def note_outcome(ex: Example, text: str) -> None:
        if "outcome" in ex.record:
            score = _first_number(text)
            if score is not None:
                outcomes.append((score, float(ex.record["outcome"])))

    for task in ("grounding", "reasoning"):
        examples = load_task(data, task, chosen) if task in options.tasks else []
        if not examples:
            continue
        scored = []
        tally = _StepTally()
        for ex in examples:
            text = runner.answer(ex, task).text
            if task == "reasoning":
                tally.add(text)
            truth, buckets = _truth(annotations, ex)
            pred = _boxes(text, step=2 if task == "reasoning" else None)
            im = ev.score_image(pred, truth, buckets)
            scored.append(im)
            predicted_counts.setdefault(ex.image, len(pred))
            if task == "grounding":
                draft_right[ex.image] = im.correct
            note_outcome(ex, text)
        key = "localization" if task == "grounding" else "reasoning_localization"
        result[key] = asdict(ev.summarize_localization(scored))
        if task == "reasoning":
            result["reasoning_consistency"] = tally.as_dict()

    vqa_rows: list[tuple[Example, str, bool, list[float]]] = []
    if "vqa" in options.tasks:
        for ex in load_task(data, "vqa", chosen):
            gen = runner.answer(ex, "vqa")
            vqa_rows.append((ex, gen.text.strip(), ev.vqa_correct(gen.text, ex.reference), gen.token_logprobs))
            note_outcome(ex, gen.text)
        if vqa_rows:
            result["vqa"] = ev.vqa_accuracy((ex.record.get("question_type", ""), pred, ex.reference)
                                            for ex, pred, _ok, _lp in vqa_rows)

    if "report" in options.tasks:
        reports = load_task(data, "report", chosen)
        if reports:
            kinds = {les["kind"] for a in annotations.values() for les in a.get("lesions", [])}
            places = {les["location"] for a in annotations.values() for les in a.get("lesions", [])}
            preds, truths = [], []
            for ex in reports:
                text = parse_answer(runner.answer(ex, "report").text).text
                ann = annotations.get(ex.image)
                if ann is not None:
                    preds.append(ev.extract_findings(text, kinds, places))
                    truths.append([f"{les['kind'].casefold()} | {les['location'].casefold()}"
                                   for les in ann.get("lesions", [])])
                else:
                    labels = [str(f) for f in ex.record.get("findings", [])]
                    preds.append([f for f in labels if f.casefold() in text.casefold()])
                    truths.append(labels)
                note_outcome(ex, text)
            prf = ev.finding_prf(preds, truths)
            result["findings"] = prf.as_dict()

    if options.samples > 0 and vqa_rows:
        result["reliability"] = _reliability(runner, vqa_rows, draft_right, options)

    pairs = [(float(predicted_counts[i]), float(len(annotations[i].get("lesions", []))))
             for i in predicted_counts if i in annotations]
    kendall = {}
    if len(pairs) >= 3:
        k = ev.kendall_tau_b([p for p, _ in pairs], [t for _, t in pairs])
        kendall["lesion_count"] = asdict(k)
    if len(outcomes) >= 3:
        kendall["outcome"] = asdict(ev.kendall_tau_b([s for s, _ in outcomes], [o for _, o in outcomes]))
    if kendall:
        result["kendall_tau_b"] = kendall
    result["timing"] = {task: t.summary() for task, t in runner.timing.items()}
    result["wall_s"] = time.perf_counter() - started
    return _clean(result)


# ----------------------------------------------------------------------------- in-memory examples

#: the grounding question asked of in-memory examples (the phantom corpus's first grounding prompt; the series
#: pre-read's sweep asks the same, so this evaluation measures what it finds)
GROUNDING_PROMPT = grounding_question()
EXAMPLE_TASKS = ("grounding", "reasoning")


@dataclass
class ImageExample:
    """One image in memory with its ground truth, for :func:`evaluate_examples`.

    ``lesions`` are annotation-style dicts (training/README.md): ``box_1000`` on the 0–1000 scale of
    this image and ``size_mm`` (bucketed by the one size rule; missing: "unknown"). ``group`` names
    a slice of the results (e.g. the display window): every metric is also given per group.
    ``modality`` / ``body_part`` go into the reasoning prompt as the app sends it.
    """

    id: str
    image: np.ndarray  # RGB uint8 (rows, cols, 3): the frame as the reader sees it
    lesions: list[dict]
    group: str = ""
    modality: str = ""
    body_part: str = ""


def evaluate_examples(engine: Engine, examples: list[ImageExample], options: Options = Options(),
                      data: str = "(in memory)", group_by: str = "group") -> dict:
    """Localization of in-memory examples: grounding (:data:`GROUNDING_PROMPT`) and/or the app's five-step
    reasoning prompt (step 2's boxes), scored as :func:`evaluate` scores a folder, overall and per group
    and lesion size. Other tasks in ``options.tasks`` are ignored (no reference answers here)."""
    from inference.prompts import ImageContext, Task, build_prompt

    examples = list(examples[: options.limit] if options.limit else examples)
    tasks = [t for t in EXAMPLE_TASKS if t in options.tasks]
    if not tasks:
        raise XMedError(f"In-memory examples are evaluated on {' and '.join(EXAMPLE_TASKS)} only; "
                        f"asked for {', '.join(options.tasks)}.")
    if len({e.id for e in examples}) != len(examples):
        raise XMedError("Every in-memory example needs its own id.")
    runner = _Runner(engine, Path("."), options.max_new_tokens, images={e.id: e.image for e in examples},
                     zoom=options.zoom, zoom_overlap=options.zoom_overlap)
    groups = list(dict.fromkeys(e.group for e in examples))
    result: dict = {"model": engine.describe(), "data": data, "images": len(examples), "group_by": group_by,
                    "groups": groups, "per_group": {g: {"images": 0} for g in groups}}
    started = time.perf_counter()
    predicted_counts: dict[str, int] = {}
    for task in tasks:
        scored: dict[str, list] = {g: [] for g in groups}
        tally = _StepTally()
        for ex in examples:
            if task == "grounding":
                prompt, system = GROUNDING_PROMPT, None
            else:
                p = build_prompt(Task.REASONING, "", ImageContext(modality=ex.modality, body_part=ex.body_part))
                prompt, system = p.user, p.system
            item = Example(ex.id, prompt, system, "", {"image": ex.id})
            text = runner.answer(item, task).text
            if task == "reasoning":
                tally.add(text)
            try:
                buckets = [lesion_bucket(les) for les in ex.lesions]
            except (TypeError, ValueError) as exc:
                raise XMedError(f"example {ex.id}: a lesion's size_mm is not a size ({exc}).") from exc
            truth = [Box(*map(float, les["box_1000"])) for les in ex.lesions]
            pred = _boxes(text, step=2 if task == "reasoning" else None)
            scored[ex.group].append(ev.score_image(pred, truth, buckets))
            if task == "grounding":
                predicted_counts[ex.id] = len(pred)
        key = "localization" if task == "grounding" else "reasoning_localization"
        result[key] = asdict(ev.summarize_localization([im for g in groups for im in scored[g]]))
        for g in groups:
            result["per_group"][g][key] = asdict(ev.summarize_localization(scored[g]))
        if task == "reasoning":
            result["reasoning_consistency"] = tally.as_dict()
    for ex in examples:
        result["per_group"][ex.group]["images"] += 1
    truth_counts = {e.id: len(e.lesions) for e in examples}
    pairs = [(float(n), float(truth_counts[i])) for i, n in predicted_counts.items()]
    if len(pairs) >= 3:
        result["kendall_tau_b"] = {"lesion_count": asdict(ev.kendall_tau_b([p for p, _ in pairs],
                                                                             [t for _, t in pairs]))}
    result["timing"] = {task: t.summary() for task, t in runner.timing.items()}
    result["wall_s"] = time.perf_counter() - started
    return _clean(result)


def run_eval_examples(model: Path, examples: list[ImageExample], options: Options, device: str = "auto",
                      quantization: str = "auto", data: str = "(in memory)", group_by: str = "group") -> dict:
    """:func:`evaluate_examples` with the local model in folder ``model``."""
    return evaluate_examples(_local_engine(model, device, quantization), examples, options, data, group_by)


def _reliability(runner: _Runner, rows, draft_right: dict[str, bool], options: Options) -> dict:
    """AUROC per estimator: per question (is this answer right?) and per image from its first k questions
    (is the image's grounded draft right?)."""
    from inference.evaluation.calibrate import Record, uncertainties, write_records
    from inference.reliability import calibration as cal
    from inference.reliability.judges import ClosedFormJudge

    judge = ClosedFormJudge()
    records: list[tuple[Example, dict[str, float], bool]] = []
    labelled: list[Record] = []
    batch = 8
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        requests = [runner.request(ex, "vqa") for ex, *_ in chunk]
        start = time.perf_counter()
        samples = runner.engine.sample(requests, n=options.samples, temperature=options.temperature,
                                       top_p=options.top_p)
        runner.timing.setdefault("reliability_sampling", ev.Timing()).add(time.perf_counter() - start)
        for (ex, pred, ok, lp), gens in zip(chunk, samples):
            rec = Record(ex.prompt, pred, int(ok), None, list(gens), list(lp), ex.record.get("image", ""))
            records.append((ex, uncertainties(rec, judge), ok))
            labelled.append(rec)
    if options.labelled_out is not None:
        write_records(options.labelled_out, labelled,
                      [str((runner.data / ex.image).resolve()) if ex.image else "" for ex, _u, _ok in records])
    names = list(records[0][1])

    def aurocs(us: list[dict[str, float]], labels: list[bool]) -> dict[str, float]:
        out = {"n": len(labels), "wrong": sum(1 for x in labels if not x)}
        for name in names:
            vals = [u[name] for u in us]
            keep = [k for k, v in enumerate(vals) if not math.isnan(v)]
            out[name] = cal.auroc([vals[k] for k in keep], [int(labels[k]) for k in keep]) if keep else float("nan")
        return out

    result = {"samples": options.samples, "question": aurocs([u for _e, u, _ok in records],
                                                             [ok for _e, _u, ok in records])}
    by_image: dict[str, list[dict[str, float]]] = {}
    for ex, u, _ok in records:
        by_image.setdefault(ex.image, []).append(u)
    for k in QUESTION_COUNTS:
        images = [i for i in by_image if i in draft_right and len(by_image[i]) >= 1]
        if len(images) < 2:
            continue
        us = [{n: float(np.mean([u[n] for u in by_image[i][:k]])) for n in names} for i in images]
        result[f"image@{k}"] = aurocs(us, [draft_right[i] for i in images])
    return result


# ----------------------------------------------------------------------------- output


def _f(x, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _localization_lines(loc: dict, title: str) -> list[str]:
    lines = [f"{title}   lesions  mean IoU  acc@0.5",
             f"  all                         {loc['lesions']:5d}    {_f(loc['mean_iou'])}    "
             f"{_f(loc['accuracy_at_05'])}"]
    for bucket, m in loc["per_bucket"].items():
        lines.append(f"  {bucket:<26}  {int(m['n']):5d}    {_f(m['mean_iou'])}    {_f(m['accuracy_at_05'])}")
    lines.append(f"  images without lesions: {loc['empty_images']}, said so: {_f(loc['empty_correct'])}; "
                 f"false boxes per image {_f(loc['false_positives_per_image'], '{:.2f}')}; "
                 f"images entirely right {_f(loc['image_accuracy'])}")
    lines.append("")
    return lines


def format_table(result: dict) -> str:
    lines = [f"model: {result['model']}", f"data:  {result['data']} ({result['images']} images)", ""]
    for key, title in (("localization", "grounding"), ("reasoning_localization", "reasoning step 2")):
        loc = result.get(key)
        if loc:
            lines += _localization_lines(loc, f"localization ({title})")
    for group, per in (result.get("per_group") or {}).items():
        for key, title in (("localization", "grounding"), ("reasoning_localization", "reasoning step 2")):
            if per.get(key):
                lines += _localization_lines(per[key], f"{result.get('group_by', 'group')} {group} ({title})")
    steps = result.get("reasoning_consistency")
    if steps:
        lines.append(f"five-step answers: {steps['answers']}; contradicting themselves "
                     f"{_f(steps['contradiction_rate'])} ({steps['contradicting']}); a step missing or run into "
                     f"another {_f(steps['incomplete_rate'])} ({steps['incomplete']})")
        lines.append("")
    if result.get("vqa"):
        lines.append("VQA                 n  accuracy")
        for qtype, m in result["vqa"].items():
            lines.append(f"  {qtype:<14} {int(m['n']):5d}  {_f(m['accuracy'])}")
        lines.append("")
    if result.get("findings"):
        f = result["findings"]
        lines.append(f"report findings: precision {_f(f['precision'])}  recall {_f(f['recall'])}  "
                     f"F1 {_f(f['f1'])}  (tp {f['tp']}, fp {f['fp']}, fn {f['fn']})")
        lines.append("")
    rel = result.get("reliability")
    if rel:
        levels = [k for k in rel if k == "question" or k.startswith("image@")]
        names = [n for n in rel["question"] if n not in ("n", "wrong")]
        lines.append(f"reliability AUROC ({rel['samples']} samples)  " + "  ".join(f"{lv:>9}" for lv in levels))
        for name in names:
            lines.append(f"  {name:<30}" + "  ".join(f"{_f(rel[lv].get(name)):>9}" for lv in levels))
        lines.append("  " + " " * 30 + "  ".join(f"{'n=' + str(rel[lv]['n']):>9}" for lv in levels))
        lines.append("")
    for name, k in (result.get("kendall_tau_b") or {}).items():
        lines.append(f"Kendall tau-b ({name}): {_f(k['tau_b'])}  p {_f(k['p_value'], '{:.3g}')}  n {k['n']}")
    if result.get("kendall_tau_b"):
        lines.append("")
    lines.append("timing            n   mean s  median s  tokens/s")
    for task, t in result.get("timing", {}).items():
        if t.get("n"):
            lines.append(f"  {task:<14} {t['n']:4d}  {_f(t['mean_s'])}   {_f(t['median_s'])}    "
                         f"{_f(t.get('tokens_per_s'), '{:.1f}')}")
    lines.append(f"wall time {result['wall_s']:.1f} s")
    return "\n".join(lines)


def run_eval(model: Path, data: Path, options: Options, device: str = "auto", quantization: str = "auto") -> dict:
    """:func:`evaluate` with the local model in folder ``model`` (the demo model unless given)."""
    return evaluate(_local_engine(model, device, quantization), data, options)


def _local_engine(model: Path, device: str, quantization: str) -> Engine:
    from inference.engine.local import LocalEngine

    if Path(model) == DEMO_MODEL_DIR and not (DEMO_MODEL_DIR / "config.json").is_file():
        raise XMedError("The demo model has not been built yet: run 'make demo-model' "
                        "(python -m training.demo_model) or give --model DIR.")
    return LocalEngine.from_folder(model, device=device, quantization=quantization)
