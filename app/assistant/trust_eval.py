"""Does the light mean what a radiologist reads it to mean? The reliability pass measured on sample studies.

Each chosen slice of a study written by ``xmedgpt sample`` is asked about in each chosen window exactly
as the viewer asks (:class:`app.assistant.ask.Assistant`: the frame as rendered in that window, the
five-step prompt) and the full reliability pass runs on the answer (:func:`app.assistant.session.check_answer`:
re-asked questions, boxes grounded again, the evidence checks against the pixels, the reasoning checked
against itself, negatives re-read). The ground truth (``ground_truth.json``, only the lesions that slice
shows in that window: :func:`app.synthetic.study_dataset.study_examples`) labels what came out:

* a **finding** (a boxed phrase) is *right* when its box overlaps a true lesion box on that slice with
  IoU ≥ :data:`RIGHT_IOU` and the side its sentence states (if any) is the lesion's side;
* an **answer** is a *false negative* when it gives no box although the slice shows a lesion.

:func:`fit` chooses the green and amber thresholds on one split of the records (studies, else slices) and
:func:`measure` reports on the other: per-finding AUROC of the reliability score for right vs wrong,
green precision and coverage, and the share of false-negative answers shown green. Green under a
threshold is recomputed from what the pass recorded (a finding is green when its consistency score
clears the threshold and every check it and its answer got ran and passed — the rule of
:mod:`inference.reliability.tiers`); :func:`collect` verifies that rule against the tiers the pass
actually produced at the thresholds it ran with, and counts any disagreement (``tier_mismatches``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.assistant.ask import Assistant, AssistantAnswer
from app.assistant.session import PRESET_QUESTIONS, _stated_location, check_answer, finding_sentence
from app.core.errors import XMedError
from app.dicom.loader import load_series
from app.dicom.scan import scan
from app.synthetic.sample import ground_truth_path, load_ground_truth
from app.synthetic.study_dataset import is_study_folder, study_examples
from app.synthetic.volumes import study_window
from inference.phrases import phrase_key
from inference.reliability.calibration import auroc, choose_thresholds
from inference.reliability.scoring import (
    Reliability,
    State,
    Thresholds,
    Tier,
    thresholds_for,
)
from inference.types import Box, Engine

log = logging.getLogger(__name__)

#: a finding is right when its box overlaps a true lesion box this much (and its side is right)
RIGHT_IOU = 0.3
#: what the viewer's "Describe findings" button asks (the five-step chain): measured as it is used. It used to
#: be "Describe the findings.", which the viewer never sends and which the demo model answered with broken steps.
DEFAULT_QUESTION = dict(PRESET_QUESTIONS)["Describe findings"]


@dataclass
class FindingRecord:
    study: str
    slice: int  # 0-based
    window: str
    phrase: str
    score: float | None  # worst consistency (what the thresholds apply to)
    checks_ok: bool  # every check of the finding and of its answer ran and passed
    done: bool  # the consistency pass finished for this finding
    tier: str  # the tier the pass produced (at the thresholds it ran with)
    right: bool
    iou: float
    side_ok: bool | None  # None: the sentence states no side
    lesion_id: str | None
    size_mm: float | None


@dataclass
class AnswerRecord:
    study: str
    slice: int
    window: str
    n_shown: int  # true lesions this slice shows in this window
    n_boxes: int
    tier: str
    score: float | None
    answer_checks_ok: bool
    done: bool
    findings: list[int] = field(default_factory=list)  # indexes into the finding records
    contradictions: int = 0  # between the reasoning steps (inference.reliability.consistency)
    missing_steps: int = 0  # of the five

    @property
    def false_negative(self) -> bool:
        return self.n_boxes == 0 and self.n_shown > 0


@dataclass
class Collected:
    findings: list[FindingRecord]
    answers: list[AnswerRecord]
    thresholds: Thresholds  # what the pass ran with
    tier_mismatches: int  # findings/answers whose recomputed green disagreed with the pass's tier
    seconds: float
    studies: list[str]

    def to_json(self) -> dict:
        return {
            "findings": [asdict(f) for f in self.findings],
            "answers": [{**asdict(a), "false_negative": a.false_negative} for a in self.answers],
            "thresholds_used": {"green": self.thresholds.green, "amber": self.thresholds.amber},
            "tier_mismatches": self.tier_mismatches,
            "seconds": round(self.seconds, 1),
            "studies": self.studies,
        }


def study_folders(data: Path) -> list[Path]:
    """``data`` itself when it is a sample study, else the sample studies directly inside it (sorted)."""
    data = Path(data)
    if is_study_folder(data):
        return [data]
    if data.is_dir():
        found = sorted(p for p in data.iterdir() if p.is_dir() and is_study_folder(p))
        if found:
            return found
    raise XMedError(f"{data} is not a study written by 'xmedgpt sample' (DICOM files with a ground_truth.json), "
                    "nor a folder of such studies.")


def _side(text: str) -> str | None:
    words = text.casefold().split()
    if "right" in words:
        return "right"
    if "left" in words:
        return "left"
    return None


def _checks_ok(checks) -> bool:
    return all(c.passed is True for c in checks)


def green_at(score: float | None, checks_ok: bool, done: bool, green: float) -> bool:
    """The rule of :mod:`inference.reliability.tiers` for green: assessed, the score clears the threshold and
    every check ran and passed."""
    return done and score is not None and checks_ok and score >= green


def label_finding(answer: AssistantAnswer, phrase: str, box: Box, shown: Sequence[dict]) -> tuple[bool, float, bool | None,
                                                                                             str | None, float | None]:
    """(right, best IoU, side correct or None, matched lesion id, its section size in mm)."""
    best, match = 0.0, None
    for les in shown:
        x0, y0, x1, y1 = les["box"]
        iou = box.iou(Box(float(x0), float(y0), float(x1), float(y1)))
        if iou > best:
            best, match = iou, les
    f = next(f for f in answer.findings if f.phrase == phrase)
    stated = _side(_stated_location(finding_sentence(answer, f), phrase) or finding_sentence(answer, f))
    side_ok = None
    if match is not None and stated is not None:
        truth_side = _side(match.get("location", ""))
        side_ok = truth_side is None or stated == truth_side
    right = match is not None and best >= RIGHT_IOU and side_ok is not False
    return (right, float(best), side_ok, None if match is None else str(match["id"]),
            None if match is None else float(match["size_mm"]))


def records_for_answer(study: str, k: int, window: str, answer: AssistantAnswer, rel: Reliability,
                       shown: Sequence[dict], thresholds: Thresholds) -> tuple[list[FindingRecord], AnswerRecord, int]:
    """The records of one answer and how many of them disagree with the pass's own tiers."""
    answer_ok = _checks_ok(rel.checks)
    mismatches = 0
    by_id = {fr.finding_id: fr for fr in rel.findings}
    out: list[FindingRecord] = []
    seen: set[str] = set()
    for f in answer.findings:
        key = phrase_key(f.phrase)
        if not key or key in seen:
            continue
        seen.add(key)
        fr = by_id.get(key)
        right, iou, side_ok, lesion, size = label_finding(answer, f.phrase, f.box_px, shown)
        done = fr is not None and fr.state is State.DONE
        score = None if fr is None else fr.reliability
        ok = fr is not None and _checks_ok(fr.checks) and answer_ok
        tier = Tier.NONE.value if fr is None else fr.tier.value
        if fr is not None and green_at(score, _checks_ok(fr.checks), done, thresholds.green) != (fr.tier is Tier.GREEN):
            mismatches += 1
        out.append(FindingRecord(study, k, window, f.phrase, score, ok, done, tier, right, iou, side_ok, lesion, size))
    assessed = [fr for fr in rel.findings if fr.reliability is not None or fr.tier is not Tier.NONE]
    ans = AnswerRecord(study, k, window, len(shown), len(answer.findings), rel.tier.value, rel.score, answer_ok,
                       rel.state is State.DONE and bool(assessed), contradictions=len(rel.contradictions),
                       missing_steps=len(answer.parsed.missing_steps))
    recomputed = ans.done and answer_ok and all(
        green_at(fr.reliability, _checks_ok(fr.checks), fr.state is State.DONE, thresholds.green) for fr in assessed)
    if recomputed != (rel.tier is Tier.GREEN):
        mismatches += 1
    return out, ans, mismatches


def answer_green(a: AnswerRecord, per_answer: dict, green: float) -> bool:
    """The answer's light is green under ``green``: every assessed result of it is green and its own checks passed."""
    parts = per_answer.get((a.study, a.slice, a.window))
    if parts is None or not a.done or not a.answer_checks_ok:
        return False
    return all(green_at(s, ok, d, green) for s, ok, d in parts)


def collect(engine: Engine, folders: Sequence[Path], windows: Sequence[str], slices: str | None = None,
            question: str = DEFAULT_QUESTION, n_samples: int = 5, n_questions: int = 5,
            max_new_tokens: int = 512, progress: Callable[[str], None] | None = None,
            cancel: Callable[[], bool] | None = None) -> tuple[Collected, dict]:
    """Ask about every chosen slice × window of each study and run the reliability pass on each answer.

    Returns the records and, per answer, the (score, checks ok, done) of each assessed result of its
    reliability — what :func:`answer_green` recomputes the answer's light from."""
    thresholds = thresholds_for(getattr(engine, "folder", None))
    assistant = Assistant(engine, max_new_tokens=max_new_tokens)
    findings: list[FindingRecord] = []
    answers: list[AnswerRecord] = []
    per_answer: dict = {}
    mismatches = 0
    t0 = time.perf_counter()
    for folder in folders:
        truth = study_examples(folder, list(windows), slices)
        gt = load_ground_truth(folder)
        gt_file = ground_truth_path(folder)
        dicom = (gt_file.parent / gt.get("dicom_folder", ".")).resolve() if gt_file else folder
        series = [s for s in scan(dicom if dicom.is_dir() else folder).all_series()
                  if s.series_instance_uid == gt.get("series_instance_uid")]
        if not series:
            raise XMedError(f"The series of {folder}'s ground truth is not in its DICOM files.")
        volume = load_series(series[0])
        description = series[0].description or ""
        for ex in truth.examples:
            if cancel is not None and cancel():
                raise XMedError("Cancelled.")
            k = int(ex.id.split()[1]) - 1
            window = ex.group
            answer = assistant.ask(volume, k, study_window(window), question, study_description=description)
            rel = check_answer(engine, answer, n_samples, n_questions)
            frs, ans, bad = records_for_answer(folder.name, k, window, answer, rel, ex.lesions, thresholds)
            mismatches += bad
            start = len(findings)
            findings.extend(frs)
            ans.findings = list(range(start, len(findings)))
            answers.append(ans)
            assessed = [fr for fr in rel.findings if fr.reliability is not None or fr.tier is not Tier.NONE]
            per_answer[(ans.study, k, window)] = [(fr.reliability, _checks_ok(fr.checks), fr.state is State.DONE)
                                                  for fr in assessed]
            if progress is not None:
                progress(f"{folder.name} slice {k + 1} {window}: {len(frs)} findings "
                         f"({sum(f.right for f in frs)} right), light {rel.tier.value}")
    return Collected(findings, answers, thresholds, mismatches, time.perf_counter() - t0,
                     [f.name for f in folders]), per_answer


def split(collected: Collected, holdout: float = 0.5, seed: int = 0) -> tuple[set, set]:
    """(fit keys, held-out keys): by study when there are several, else by slice; keys are (study, slice)."""
    keys = sorted({(a.study, a.slice) for a in collected.answers})
    studies = sorted({s for s, _ in keys})
    rng = random.Random(seed)
    if len(studies) > 1:
        rng.shuffle(studies)
        n_out = max(1, min(len(studies) - 1, round(len(studies) * holdout)))
        out_studies = set(studies[:n_out])
        held = {k for k in keys if k[0] in out_studies}
    else:
        shuffled = list(keys)
        rng.shuffle(shuffled)
        n_out = max(1, min(len(keys) - 1, round(len(keys) * holdout))) if len(keys) > 1 else 0
        held = set(shuffled[:n_out])
    return set(keys) - held, held


def _finding_score(f: FindingRecord) -> float:
    return -1.0 if f.score is None else float(f.score)


def _light_score(f: FindingRecord) -> float:
    """Order by what the light can show: checked findings above unchecked/failed ones, then the score."""
    base = _finding_score(f)
    return base + (2.0 if f.checks_ok and f.done else 0.0)


def measure(collected: Collected, per_answer: dict, keys: set, green: float, amber: float) -> dict:
    """The trust table over the records whose (study, slice) is in ``keys``, at these thresholds."""
    fs = [f for f in collected.findings if (f.study, f.slice) in keys]
    ans = [a for a in collected.answers if (a.study, a.slice) in keys]
    right = [int(f.right) for f in fs]
    greens = [f for f in fs if green_at(f.score, f.checks_ok, f.done, green)]
    fn = [a for a in ans if a.false_negative]
    fn_green = [a for a in fn if answer_green(a, per_answer, green)]
    two_classes = 0 < sum(right) < len(right)

    def _auc(score_fn) -> float | None:
        # AUROC takes uncertainty (higher = less reliable): negate the score
        return float(auroc([-score_fn(f) for f in fs], right)) if two_classes else None

    by_window: dict[str, dict] = {}
    for w in sorted({f.window for f in fs} | {a.window for a in ans}):
        wf = [f for f in fs if f.window == w]
        wg = [f for f in wf if green_at(f.score, f.checks_ok, f.done, green)]
        wfn = [a for a in ans if a.window == w and a.false_negative]
        by_window[w] = {
            "findings": len(wf), "right": sum(f.right for f in wf), "green": len(wg),
            "green_precision": _ratio(sum(f.right for f in wg), len(wg)),
            "false_negative_answers": len(wfn),
            "false_negative_green": sum(answer_green(a, per_answer, green) for a in wfn),
        }
    return {
        "answers": len(ans),
        "findings": len(fs),
        "right": sum(right),
        "auroc_score": _auc(_finding_score),
        "auroc_light": _auc(_light_score),
        "green": len(greens),
        "green_precision": _ratio(sum(f.right for f in greens), len(greens)),
        "green_coverage_of_right": _ratio(sum(f.right for f in greens), sum(right)),
        "green_share": _ratio(len(greens), len(fs)),
        "amber_or_better": sum(1 for f in fs if f.done and f.score is not None and f.score >= amber),
        "false_negative_answers": len(fn),
        "false_negative_green": len(fn_green),
        "false_negative_green_share": _ratio(len(fn_green), len(fn)),
        "answers_green": sum(answer_green(a, per_answer, green) for a in ans),
        "answers_contradicting": sum(1 for a in ans if a.contradictions),
        "answers_contradicting_share": _ratio(sum(1 for a in ans if a.contradictions), len(ans)),
        "answers_missing_steps": sum(1 for a in ans if a.missing_steps),
        "by_window": by_window,
    }


def _ratio(a: int, b: int) -> float | None:
    return None if b == 0 else a / b


@dataclass
class StudyCalibration:
    green: float
    amber: float
    green_error_fit: float | None
    fit: dict
    held_out: dict
    at_current: dict  # held-out metrics at the thresholds the model had before
    n_fit_findings: int
    collected: Collected
    fit_keys: list
    held_keys: list

    def to_json(self) -> dict:
        return {
            "thresholds": {"green": self.green, "amber": self.amber},
            "green_error_fit": self.green_error_fit,
            "fit": self.fit,
            "held_out": self.held_out,
            "held_out_at_previous_thresholds": self.at_current,
            "fit_keys": [list(k) for k in self.fit_keys],
            "held_out_keys": [list(k) for k in self.held_keys],
            "records": self.collected.to_json(),
        }


def fit(collected: Collected, per_answer: dict, holdout: float = 0.5, seed: int = 0, max_green_error: float = 0.05,
        max_amber_error: float = 0.25, min_count: int = 10) -> StudyCalibration:
    """Choose thresholds on one split so that checked findings at or above green are wrong < ``max_green_error``
    of the time (amber likewise), and measure them on the other split.

    Only findings whose checks all ran and passed can be green, so the thresholds are chosen among those
    (a finding with a failed check is amber or red whatever its score). Where no threshold meets the target
    green is set above 1: the light then never shows green for this model, which is the honest answer."""
    fit_keys, held = split(collected, holdout, seed)
    eligible = [f for f in collected.findings if (f.study, f.slice) in fit_keys and f.done and f.checks_ok
                and f.score is not None]
    if eligible:
        chosen = choose_thresholds([f.score for f in eligible], [int(f.right) for f in eligible],
                                   max_green_error, max_amber_error, min_count)
        green, amber, err = chosen.green, chosen.amber, chosen.green_error
    else:
        green, amber, err = 1.01, 1.01, None
    before = collected.thresholds
    return StudyCalibration(
        green=green, amber=amber, green_error_fit=err,
        fit=measure(collected, per_answer, fit_keys, green, amber),
        held_out=measure(collected, per_answer, held, green, amber),
        at_current=measure(collected, per_answer, held, before.green, before.amber),
        n_fit_findings=len(eligible), collected=collected, fit_keys=sorted(fit_keys), held_keys=sorted(held))


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def format_table(cal: StudyCalibration) -> str:
    """The trust table in Markdown: held-out split at the fitted thresholds, at the previous ones, and the fit split."""
    rows = [("held-out, fitted thresholds", cal.held_out), ("held-out, previous thresholds", cal.at_current),
            ("fit split, fitted thresholds", cal.fit)]
    head = ("| split | answers | findings (right) | AUROC score | AUROC light | green | green precision | "
            "green coverage of right | false-negative answers | of them green |")
    lines = [head, "|" + "---|" * 10]
    for name, m in rows:
        lines.append(f"| {name} | {m['answers']} | {m['findings']} ({m['right']}) | {_fmt(m['auroc_score'])} | "
                     f"{_fmt(m['auroc_light'])} | {m['green']} | {_fmt(m['green_precision'])} | "
                     f"{_fmt(m['green_coverage_of_right'])} | {m['false_negative_answers']} | "
                     f"{m['false_negative_green']} ({_fmt(m['false_negative_green_share'])}) |")
    lines.append("")
    m = cal.held_out
    lines.append(f"Held-out answers whose reasoning contradicts itself: {m['answers_contradicting']} of {m['answers']} "
                 f"({_fmt(m['answers_contradicting_share'])}); with missing steps: {m['answers_missing_steps']}.")
    lines.append(f"Thresholds: green ≥ {cal.green:.3f}, amber ≥ {cal.amber:.3f} (fitted on {cal.n_fit_findings} "
                 f"checked findings; before: green ≥ {cal.collected.thresholds.green:.3f}). Tier recomputation "
                 f"mismatches: {cal.collected.tier_mismatches}. {cal.collected.seconds:.0f} s.")
    return "\n".join(lines)
