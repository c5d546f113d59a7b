"""Measurements that last: saved with the study's workspace, restored when the study is opened again.

One private JSON file per study beside the study's draft report in the workspace folder
(``<study uid>.measurements.json``, the same name rules as :class:`app.report.workspace.Workspace`),
written atomically and owner-only (:func:`app.core.paths.write_private`). It holds every
measurement of every series of the study::

    {"format": "xmedgpt-measurements", "version": 1, "study_uid": "1.2.3",
     "measurements": [{"uid": "2.25.…", "kind": "angle", "series_uid": "1.2.3.4", "frame": 12,
                       "sop_instance_uid": "1.2.3.4.5", "frame_number": 1,
                       "points": [[10.5, 20.0], [30.0, 40.0], [50.0, 20.0]],
                       "values": {"angle": 53.1}, "unit": "deg", "value_unit": ""}]}

``points`` are image pixel coordinates (:mod:`app.viewer.measure`); ``values`` the numbers the
reader saw (lengths in mm, angles in degrees, ROI mean/SD/min/max/area), kept so the report's SR
export needs no pixels. The file is read strictly (:mod:`app.core.strict_json`): a file that is
damaged, of another study or has a field of the wrong type is never deleted; it is set aside as
``*.corrupt-N`` beside it, one warning is logged, and :attr:`Loaded.problems` says so in a sentence
for the reader; the study then opens without the saved measurements.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.core import strict_json
from app.core.errors import XMedError
from app.core.paths import set_aside, write_private
from app.viewer.measure import POINTS

log = logging.getLogger(__name__)

FORMAT = "xmedgpt-measurements"
VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_MEASUREMENTS = 100_000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DAMAGE = (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError)
_VALUE_NAMES = ("length", "angle", "mean", "sd", "min", "max", "area", "pixels")
_UNITS = ("mm", "px", "deg", "mm²", "px²")


class MeasurementStoreError(XMedError):
    """The study's measurements cannot be saved (permissions, disk full)."""


def new_uid() -> str:
    """A fresh UID (PS3.5 B.2 form) that names one measurement for good (its SR tracking UID)."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True)
class SavedMeasurement:
    """One measurement as saved: where it is (series, slice, image), its points and its numbers."""

    kind: str  # app.viewer.measure.POINTS
    series_uid: str
    frame: int  # slice index in the series as the viewer loads it
    points: tuple[tuple[float, float], ...]
    values: dict[str, float] = field(default_factory=dict)
    unit: str = "mm"
    value_unit: str = ""
    sop_instance_uid: str = ""
    frame_number: int = 1  # 1-based frame of a multi-frame instance
    uid: str = ""

    def to_dict(self) -> dict:
        return {
            "uid": self.uid, "kind": self.kind, "series_uid": self.series_uid, "frame": self.frame,
            "sop_instance_uid": self.sop_instance_uid, "frame_number": self.frame_number,
            "points": [[float(x), float(y)] for x, y in self.points],
            "values": {k: float(v) for k, v in self.values.items() if math.isfinite(v)},
            "unit": self.unit, "value_unit": self.value_unit,
        }

    @classmethod
    def from_dict(cls, d, where: str) -> SavedMeasurement:
        d = strict_json.expect_object(d, where)
        strict_json.only_keys(d, ("uid", "kind", "series_uid", "frame", "sop_instance_uid", "frame_number",
                                  "points", "values", "unit", "value_unit"), where)
        kind = strict_json.expect_str(d, "kind", where=where, choices=tuple(POINTS))
        raw = strict_json.expect_list(d.get("points"), f"'{where}.points'", max_items=POINTS[kind])
        if len(raw) != POINTS[kind]:
            raise strict_json.InvalidJson(f"'{where}.points' must hold {POINTS[kind]} points for a {kind}")
        points = []
        for i, p in enumerate(raw):
            p = strict_json.expect_list(p, f"'{where}.points[{i}]'", max_items=2)
            if len(p) != 2:
                raise strict_json.InvalidJson(f"'{where}.points[{i}]' must be [x, y]")
            xy = {"x": p[0], "y": p[1]}
            points.append((strict_json.expect_number(xy, "x", where=f"{where}.points[{i}]", lo=-1e6, hi=1e6),
                           strict_json.expect_number(xy, "y", where=f"{where}.points[{i}]", lo=-1e6, hi=1e6)))
        values = strict_json.expect_object(d.get("values", {}), f"'{where}.values'")
        strict_json.only_keys(values, _VALUE_NAMES, f"{where}.values")
        nums = {k: strict_json.expect_number(values, k, where=f"{where}.values") for k in values}
        uid = strict_json.expect_str(d, "uid", "", where=where, max_len=64)
        if uid and not _UID.match(uid):
            raise strict_json.InvalidJson(f"'{where}.uid' is not a UID")
        return cls(
            kind=kind,
            series_uid=strict_json.expect_str(d, "series_uid", where=where, max_len=64, non_empty=True),
            frame=strict_json.expect_int(d, "frame", where=where, lo=0, hi=10**7),
            points=tuple(points),
            values=nums,
            unit=strict_json.expect_str(d, "unit", "mm", where=where, choices=_UNITS),
            value_unit=strict_json.expect_str(d, "value_unit", "", where=where, max_len=16),
            sop_instance_uid=strict_json.expect_str(d, "sop_instance_uid", "", where=where, max_len=64),
            frame_number=strict_json.expect_int(d, "frame_number", 1, where=where, lo=1, hi=10**7),
            uid=uid,
        )


@dataclass
class Loaded:
    measurements: list[SavedMeasurement] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def file_stem(study_uid: str) -> str:
    """The study's file name stem: the UID itself, or a stable hash for a UID that is not one."""
    if _UID.match(study_uid) and len(study_uid) <= 64:
        return study_uid
    return "x-" + hashlib.sha256(study_uid.encode("utf-8")).hexdigest()[:32]


class MeasurementStore:
    """The saved measurements of each study, in the workspace folder ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, study_uid: str) -> Path:
        return self.root / f"{file_stem(study_uid)}.measurements.json"

    def load(self, study_uid: str) -> Loaded:
        """The study's saved measurements; never raises for a damaged file (set aside, reported)."""
        items, problems = read_study_file(self.path(study_uid), study_uid, FORMAT, VERSION, "measurements",
                                          SavedMeasurement.from_dict, MAX_FILE_BYTES, MAX_MEASUREMENTS,
                                          "The saved measurements of this study")
        return Loaded(items, problems)

    def save(self, study_uid: str, measurements: Iterable[SavedMeasurement]) -> Path:
        """Write the study's measurements (all series) atomically, owner-only."""
        try:
            return write_study_file(self.path(study_uid), study_uid, FORMAT, VERSION, "measurements",
                                    [m.to_dict() for m in measurements])
        except OSError as exc:
            raise MeasurementStoreError(f"Could not save the measurements: {exc.strerror or exc}.") from exc


def read_study_file(path: Path, study_uid: str, fmt: str, version: int, key: str, parse, max_bytes: int,
                    max_items: int, what: str) -> tuple[list, list[str]]:
    """(items, problems) of a per-study JSON file in the workspace (``{"format", "version", "study_uid",
    key: [...]}``); a missing file is empty, a damaged one is set aside (never deleted) and reported as
    "<what> could not be read; …" — the study opens without them."""
    if not os.path.lexists(path):
        return [], []
    try:
        data = strict_json.expect_object(strict_json.read_file(path, max_bytes=max_bytes), "the file")
        strict_json.only_keys(data, ("format", "version", "study_uid", key), "")
        strict_json.expect_str(data, "format", choices=(fmt,))
        strict_json.expect_int(data, "version", lo=1, hi=version)
        if strict_json.expect_str(data, "study_uid") != study_uid:
            raise ValueError("it belongs to another study")
        items = strict_json.expect_list(data.get(key), f"'{key}'", max_items=max_items)
        return strict_json.expect_each(items, key, parse), []
    except _DAMAGE as exc:
        moved = set_aside(path, f"{exc.__class__.__name__}: {exc}"[:300])
        return [], [f"{what} could not be read; the file was kept as {moved.name} and the study opens without them."]


def write_study_file(path: Path, study_uid: str, fmt: str, version: int, key: str, items: list[dict]) -> Path:
    """Write a per-study JSON file atomically, owner-only (raises OSError)."""
    doc = {"format": fmt, "version": version, "study_uid": study_uid, key: items}
    return write_private(path, json.dumps(doc, ensure_ascii=False, indent=1))


def frame_table(instances: Sequence) -> list[tuple[str, int]]:
    """Slice index → (SOP Instance UID, 1-based frame number), as the report's image references count them."""
    table: list[tuple[str, int]] = []
    for inst in instances:
        table += [(inst.sop_instance_uid, f + 1) for f in range(max(inst.number_of_frames or 1, 1))]
    return table


def slice_of(saved: SavedMeasurement, table: Sequence[tuple[str, int]], count: int) -> int | None:
    """The slice a saved measurement belongs on in the series as loaded now: by its image (the
    order of slices may have changed), else by its slice index; None when it is not there."""
    if saved.sop_instance_uid:
        for k, ref in enumerate(table):
            if ref == (saved.sop_instance_uid, saved.frame_number):
                return k if k < count else None
        if table:
            return None  # its image is not part of this series as loaded
    return saved.frame if 0 <= saved.frame < count else None
