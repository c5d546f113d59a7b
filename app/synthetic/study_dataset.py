"""A study written by ``xmedgpt sample`` as evaluation examples: its slices as the viewer shows them.

:func:`study_examples` reads the DICOM folder through the viewer's own engine (``app.dicom``: scan,
load, :func:`app.dicom.display.render` in each chosen window) and its ``ground_truth.json``, and
returns one :class:`inference.evaluation.harness.ImageExample` per slice and window: the RGB frame,
the lesions that slice shows in that window (box on the 0–1000 scale, ``size_mm`` = the lesion's
size on this slice, :func:`app.synthetic.volumes.section_size_mm`), the window as the group. A
lesion the slice crosses but does not show in that window (:func:`app.synthetic.volumes.lesion_visibility`:
section under 4 mm, or under 6 grey levels of contrast, e.g. a ground-glass nodule in soft tissue
window) is not scored; it is counted in :attr:`StudyExamples.hidden`. The same rule decides the
training targets of :mod:`training.study_corpus`, so the model is asked what it was taught to answer.

Slices are numbered from 1 as the viewer and the files (``InstanceNumber``, ``CT0001.dcm``) number them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.core.errors import XMedError
from app.dicom.display import render
from app.dicom.loader import frame_plan, load_series
from app.dicom.scan import scan
from app.dicom.slice_request import slice_numbers
from app.synthetic.sample import ground_truth_path, load_ground_truth
from app.synthetic.truth import to_1000
from app.synthetic.volumes import (
    STUDY_WINDOWS,
    lesion_visibility,
    section_size_mm,
    study_window,
)
from inference.evaluation.harness import ImageExample
from inference.imaging import to_rgb


def is_study_folder(folder: Path | str) -> bool:
    """True when ``folder`` is a sample study: DICOM files with a ``ground_truth.json`` (inside or beside)."""
    folder = Path(folder)
    return folder.is_dir() and ground_truth_path(folder) is not None and not (folder / "annotations.jsonl").is_file()


def parse_slices(text: str | None, n: int) -> list[int]:
    """``--slices "3,7,20-25"`` (image numbers from 1, inclusive ranges) → sorted 0-based indices; None/"" /
    "all": every slice (the commands' one rule, :func:`app.dicom.slice_request.slice_numbers`)."""
    return slice_numbers(text, n, "--slices")


def parse_windows(text: str | None) -> list[str]:
    """``"soft_tissue,lung"`` or ``"all"`` → window names (checked); None: the header's default."""
    if not text:
        return ["default"]
    names = list(STUDY_WINDOWS) if text.strip().lower() == "all" else [w.strip() for w in text.split(",") if w.strip()]
    for name in names:
        try:
            study_window(name)
        except ValueError as exc:
            raise XMedError(f"--window: {exc}") from None
    return list(dict.fromkeys(names))


@dataclass
class StudyExamples:
    examples: list[ImageExample]
    folder: Path
    slices: list[int]  # 0-based
    windows: list[str]
    hidden: dict[str, int] = field(default_factory=dict)  # window → lesion sections crossed but not shown
    lesions_on_slices: int = 0  # lesion sections on the chosen slices (per window, before visibility)


def study_examples(folder: Path | str, windows: list[str] | None = None, slices: str | None = None) -> StudyExamples:
    """Every chosen slice of the study in ``folder`` in every window in ``windows`` (see the module docstring)."""
    folder = Path(folder)
    gt = load_ground_truth(folder)
    gt_file = ground_truth_path(folder)
    dicom = (gt_file.parent / gt.get("dicom_folder", ".")).resolve() if gt_file else folder
    if not dicom.is_dir():
        dicom = folder
    found = scan(dicom)
    series = [s for s in found.all_series() if s.series_instance_uid == gt.get("series_instance_uid")] or \
        found.all_series()
    if not series:
        raise XMedError(f"No DICOM series found in {dicom}.")
    series = series[0]
    plan = frame_plan(series)
    by_uid = {sl["sop_instance_uid"]: sl for sl in gt.get("slices", [])}
    lesions = {les["id"]: les for les in gt.get("lesions", [])}
    chosen = parse_slices(slices, len(plan))
    names = parse_windows(",".join(windows) if windows else None)
    volume = load_series(series, only=chosen)
    spacing = float(volume.geometry.spacing[1]) if volume.geometry is not None else float(gt["pixel_spacing_mm"][0])
    out = StudyExamples([], folder, chosen, names, {n: 0 for n in names})
    body_part = series.body_part or ""
    for k in chosen:
        truth = by_uid.get(plan[k].inst.sop_instance_uid)
        if truth is None:
            raise XMedError(f"Slice {k + 1} of {dicom} is not in its ground truth.")
        for name in names:
            frame = render(volume, k, study_window(name))
            h, w = frame.shape[:2]
            shown = []
            for b in truth.get("boxes", []):
                box = (int(b["x0"]), int(b["y0"]), int(b["x1"]), int(b["y1"]))
                out.lesions_on_slices += 1
                visible, contrast = lesion_visibility(frame, box, spacing)
                if not visible:
                    out.hidden[name] += 1
                    continue
                les = lesions.get(b["lesion_id"], {})
                shown.append({"id": b["lesion_id"], "kind": les.get("kind", ""), "location": les.get("location", ""),
                              "box": list(box), "box_1000": list(to_1000(box, w, h)),
                              "size_mm": section_size_mm(box, spacing),
                              "lesion_size_mm": b.get("size_mm", les.get("size_mm")),
                              "contrast": round(contrast, 1)})
            out.examples.append(ImageExample(id=f"slice {k + 1:04d} {name}", image=to_rgb(frame), lesions=shown,
                                             group=name, modality="CT", body_part=body_part))
    return out
