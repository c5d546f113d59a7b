"""Scan folders, files, DICOMDIRs and zips (headers only) into a study tree.

``scan(paths)`` never raises for bad input: unreadable files become
:class:`FileProblem` with a reason, and what can be opened is grouped
Patient → Study → Series → Instance. Inside a series the images are sorted by
position along the slice normal; localizers, other planes and other image
sizes go to their own stack (a separate :class:`Series` entry with the same
DICOM series UID), and spacing/duplicate findings land in ``Series.warnings``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from app.dicom import geometry as geo
from app.dicom.header import DicomInstance, read_header
from app.dicom.model import FileProblem, Patient, ScanResult, Series, StudyEntry
from app.dicom.sources import expand

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def scan(paths: os.PathLike | str | Iterable[os.PathLike | str], progress: Progress | None = None) -> ScanResult:
    """Read every header under ``paths`` and build the study tree.

    ``progress(done, total)`` is called after each file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    cands = expand(paths)
    result = ScanResult(problems=list(cands.problems))
    instances: list[DicomInstance] = []
    total = len(cands.files)
    for i, path in enumerate(cands.files):
        try:
            item = read_header(path)
        except Exception as exc:  # noqa: BLE001 - one file never takes the study down (issue #19)
            log.warning("header of %s: unexpected %r", path, exc)
            item = FileProblem(path, "file could not be read (unexpected error, see the log)")
        if isinstance(item, FileProblem):
            result.problems.append(item)
        else:
            instances.append(item)
        if progress is not None:
            progress(i + 1, total)
    if total and not instances and not result.problems:
        result.problems.append(FileProblem(Path(str(next(iter(cands.files)))), "no DICOM images found"))
    result.patients = group(instances)
    log.info("scan: %d files, %d images, %d problems", total, len(instances), len(result.problems))
    return result


def group(instances: list[DicomInstance]) -> list[Patient]:
    """Patient → Study → Series tree of ``instances`` (series sorted and checked)."""
    patients: dict[tuple[str, str], Patient] = {}
    studies: dict[str, StudyEntry] = {}
    series_members: dict[tuple[str, str], list[DicomInstance]] = {}
    seen_sop: dict[str, DicomInstance] = {}
    dropped: dict[tuple[str, str], int] = {}

    for inst in instances:
        pkey = (inst.patient_id, inst.patient_name)
        patient = patients.get(pkey)
        if patient is None:
            patient = patients[pkey] = Patient(
                id=inst.patient_id, name=inst.patient_name, birth_date=inst.birth_date, sex=inst.sex
            )
        study_uid = inst.study_uid or f"unknown-study:{inst.patient_id}:{inst.study_date}"
        study = studies.get(study_uid)
        if study is None:
            study = studies[study_uid] = StudyEntry(
                uid=study_uid,
                date=inst.study_date,
                time=inst.study_time,
                description=inst.study_description,
                accession=inst.accession,
            )
            patient.studies.append(study)
        series_uid = inst.series_uid or f"unknown-series:{inst.path.parent}"
        skey = (study_uid, series_uid)
        if inst.sop_instance_uid in seen_sop:
            dropped[skey] = dropped.get(skey, 0) + 1
            continue
        seen_sop[inst.sop_instance_uid] = inst
        series_members.setdefault(skey, []).append(inst)

    study_series: dict[str, list[Series]] = {}
    for (study_uid, series_uid), members in series_members.items():
        stacks = build_series(series_uid, members)
        if dropped.get((study_uid, series_uid)):
            n = dropped[(study_uid, series_uid)]
            stacks[0].warnings.append(f"{n} duplicate cop{'ies' if n > 1 else 'y'} of the same image ignored")
        study_series.setdefault(study_uid, []).extend(stacks)

    for study_uid, entry in studies.items():
        entry.series = sorted(
            study_series.get(study_uid, []),
            key=lambda s: (s.number is None, s.number or 0, getattr(s, "part", 0), s.description),
        )
    out = list(patients.values())
    for p in out:
        p.studies.sort(key=lambda st: (st.date, st.time, st.uid))
    out.sort(key=lambda p: (p.name, p.id))
    return out


def _plane_name(orientation: tuple[float, ...] | None) -> str:
    if orientation is None:
        return "unknown plane"
    n = np.abs(geo.normal(orientation))
    axis = int(np.argmax(n))
    if n[axis] < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def build_series(series_uid: str, members: list[DicomInstance]) -> list[Series]:
    """Split one DICOM series into displayable stacks, each sorted and checked."""
    stacks: list[list[DicomInstance]] = []
    for inst in members:
        for stack in stacks:
            ref = stack[0]
            if (
                ref.rows == inst.rows
                and ref.columns == inst.columns
                and (ref.samples_per_pixel == 3) == (inst.samples_per_pixel == 3)
                and ref.is_localizer == inst.is_localizer
                and geo.same_orientation(ref.image_orientation, inst.image_orientation)
            ):
                stack.append(inst)
                break
        else:
            stacks.append([inst])
    stacks.sort(key=lambda s: (s[0].is_localizer, -sum(i.number_of_frames for i in s)))

    first = members[0]
    out: list[Series] = []
    for part, stack in enumerate(stacks):
        description = first.series_description
        if part:
            ref = stack[0]
            main = stacks[0][0]
            if ref.is_localizer and not main.is_localizer:
                label = "localizer"
            elif not geo.same_orientation(ref.image_orientation, main.image_orientation):
                label = _plane_name(ref.image_orientation)
            else:
                label = f"{ref.columns}×{ref.rows}"
            description = f"{description} ({label})".strip()
        series = Series(
            uid=series_uid if part == 0 else f"{series_uid}#{part + 1}",
            number=first.series_number,
            description=description,
            modality=first.modality,
            body_part=first.body_part,
            series_instance_uid=series_uid,
            part=part,
        )
        series.instances, series.warnings = sort_stack(stack)
        out.append(series)

    if len(stacks) > 1:
        main = out[0]
        others = stacks[1:]
        n_loc = sum(len(s) for s in others if s[0].is_localizer)
        n_plane = sum(
            len(s) for s in others
            if not s[0].is_localizer and not geo.same_orientation(s[0].image_orientation, stacks[0][0].image_orientation)
        )
        n_size = sum(len(s) for s in others) - n_loc - n_plane
        if n_loc:
            main.warnings.append(f"{n_loc} localizer image{'s' if n_loc > 1 else ''} shown as a separate stack")
        if n_plane:
            main.warnings.append(
                f"mixed orientations: {n_plane} image{'s' if n_plane > 1 else ''} in another plane "
                "shown as separate stacks"
            )
        if n_size:
            main.warnings.append(
                f"{n_size} image{'s' if n_size > 1 else ''} of a different size shown as separate stacks"
            )
    return out


def sort_stack(stack: list[DicomInstance]) -> tuple[list[DicomInstance], list[str]]:
    """Order a stack along its slice normal (falling back to instance number) and check spacing."""
    warnings: list[str] = []
    orientation = stack[0].image_orientation
    has_geometry = orientation is not None and all(i.image_position is not None for i in stack)
    if has_geometry:
        try:
            geo.normal(orientation)
        except ValueError:
            has_geometry = False
            warnings.append("damaged image orientation in the header: slices ordered by instance number")

    for inst in stack:
        if inst.frame_positions and inst.image_orientation is not None:
            try:
                d = geo.distances_along(np.asarray(inst.frame_positions), inst.image_orientation)
                inst.frame_order = tuple(int(i) for i in np.argsort(d, kind="stable"))
            except ValueError:
                inst.frame_order = None

    def by_number(i: DicomInstance) -> tuple:
        return (i.instance_number is None, i.instance_number or 0, i.acquisition_number or 0, i.sop_instance_uid)

    if has_geometry:
        along = geo.distances_along(np.array([i.image_position for i in stack], dtype=float), orientation)
        dist = {id(i): float(d) for i, d in zip(stack, along)}
        ordered = sorted(stack, key=lambda i: (dist[id(i)], by_number(i)))
        numbers = [i.instance_number for i in ordered]
        if len(ordered) > 2 and all(n is not None for n in numbers):
            corr = np.corrcoef(np.arange(len(numbers)), np.asarray(numbers, dtype=float))[0, 1]
            if np.isfinite(corr) and corr < -0.8:
                # Keep the scanner's reading direction (instance 1 first) while ordering by position.
                ordered.reverse()
        distances = np.array([dist[id(i)] for i in ordered])
    else:
        ordered = sorted(stack, key=by_number)
        distances = None
        if len(ordered) > 1:
            warnings.append("no slice positions in the headers: images ordered by instance number")

    # Spacing checks over all frames of the stack.
    if distances is not None and len(ordered) > 1:
        _, found = geo.spacing_warnings(distances)
        warnings.extend(found)
    elif len(ordered) == 1 and ordered[0].frame_positions and ordered[0].image_orientation is not None:
        d = geo.distances_along(np.asarray(ordered[0].frame_positions), ordered[0].image_orientation)
        if len(set(np.round(d, 3))) > 1:
            _, found = geo.spacing_warnings(d)
            warnings.extend(found)

    # One image on its own (a scout, a radiograph, a key image) is not a problem: nothing to warn about.
    if any(i.assumed_syntax for i in ordered):
        warnings.append("file meta information lacks a transfer syntax; encoding was inferred")
    return ordered, warnings
