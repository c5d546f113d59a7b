"""Keeps the viewports' measurements in the study's workspace and brings them back.

Every change a reader makes to a measurement (drawn, moved, deleted, undone, redone, all
deleted) is written at once to the study's measurement file
(:class:`app.viewer.measure_store.MeasurementStore`); when a series is shown again, in this
window or in a new one after a restart, its saved measurements are put back on their slices
with the same numbers. Showing another series is not a deletion: what a viewport showed stays
saved. A damaged file is set aside by the store and the reader is told once (``message``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from app.core.errors import XMedError
from app.viewer.measure_store import (
    MeasurementStore,
    SavedMeasurement,
    frame_table,
    slice_of,
)
from app.viewer.sync import series_identity
from ui.viewer.measurements import Measurement
from ui.viewer.viewport import Viewport

log = logging.getLogger(__name__)


def default_root() -> Path:
    """The workspace folder of the reader's settings (where draft reports are kept)."""
    from app.core.settings import Settings

    return Settings.load().workspace_path()


class MeasurementKeeper(QObject):
    """Saves and restores the measurements of a set of viewports, study by study."""

    message = Signal(str)  # a sentence for the status bar (a damaged file set aside, a failed save)

    def __init__(self, root: Path | Callable[[], Path] | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._root = root
        self._store: MeasurementStore | None = None
        #: study uid → measurement uid → saved measurement (every series of the study)
        self._saved: dict[str, dict[str, SavedMeasurement]] = {}
        #: id(viewport) → the measurement uids it shows (its own, or restored into it)
        self._owned: dict[int, set[str]] = {}
        self._restored_for: dict[int, int] = {}  # id(viewport) → id(volume) restored into it
        self._viewports: list[Viewport] = []
        self.enabled = True

    @property
    def store(self) -> MeasurementStore:
        if self._store is None:
            root = self._root() if callable(self._root) else self._root
            self._store = MeasurementStore(root if root is not None else default_root())
        return self._store

    def set_root(self, root: Path) -> None:
        """Keep the measurements in another workspace folder (the reader changed it in Settings; tests)."""
        self._root, self._store = root, None
        self._saved.clear()

    def attach(self, vp: Viewport) -> None:
        self._viewports.append(vp)
        vp.shown.connect(lambda vp=vp: self.restore(vp))
        vp.measurements_changed.connect(lambda vp=vp: self.save(vp))

    # -- reading ---------------------------------------------------------------------------------
    def _study(self, study_uid: str) -> dict[str, SavedMeasurement]:
        if study_uid not in self._saved:
            loaded = self.store.load(study_uid)
            for problem in loaded.problems:
                # after the load's own "Loaded N images", so the reader sees it
                QTimer.singleShot(0, lambda problem=problem: self.message.emit(problem))
            self._saved[study_uid] = {m.uid or f"restored-{i}": m for i, m in enumerate(loaded.measurements)}
        return self._saved[study_uid]

    def restore(self, vp: Viewport) -> int:
        """Put the saved measurements of the series ``vp`` shows back on it; returns how many."""
        volume = vp.volume
        if not self.enabled or volume is None or self._restored_for.get(id(vp)) == id(volume):
            return 0
        self._restored_for[id(vp)] = id(volume)
        self._owned[id(vp)] = set()
        ident = series_identity(volume)
        if not ident.study_uid:
            return 0
        saved = self._study(ident.study_uid)
        elsewhere = set().union(*(self._owned.get(id(o), set()) for o in self._viewports if o is not vp))
        table = frame_table(volume.series.instances)
        n = 0
        for uid, rec in saved.items():
            if rec.series_uid != ident.series_uid or uid in elsewhere:
                continue
            k = slice_of(rec, table, len(volume))
            if k is None:
                continue
            m = vp.measurements.place(rec.kind, k, rec.points, uid=uid)
            if m is not None:
                self._owned[id(vp)].add(m.uid)
                n += 1
        if n:
            vp.measurements.show_frame(vp.slice_index)
            vp.measurements_changed.emit()
            log.info("restored %d measurement(s) of series %s", n, ident.series_uid)
        return n

    # -- writing ---------------------------------------------------------------------------------
    def save(self, vp: Viewport) -> None:
        """Write the study's file with what ``vp`` shows now (added, moved and deleted measurements)."""
        volume = vp.volume
        if not self.enabled or volume is None or self._restored_for.get(id(vp)) != id(volume):
            return  # not restored yet: saving now would forget what is saved
        ident = series_identity(volume)
        if not ident.study_uid:
            return
        saved = self._study(ident.study_uid)
        table = frame_table(volume.series.instances)
        current = {m.uid: m for m in vp.measurements.finished()}
        owned = self._owned.setdefault(id(vp), set())
        for uid in owned - set(current):
            saved.pop(uid, None)  # deleted (or undone) in this viewport
        for uid, m in current.items():
            saved[uid] = self._record(m, ident.series_uid, table)
        self._owned[id(vp)] = set(current)
        try:
            self.store.save(ident.study_uid, saved.values())
        except XMedError as exc:
            self.message.emit(str(exc))

    @staticmethod
    def _record(m: Measurement, series_uid: str, table) -> SavedMeasurement:
        sop, frame_number = table[m.frame] if 0 <= m.frame < len(table) else ("", 1)
        ev = m.evaluation
        return SavedMeasurement(
            kind=m.kind, series_uid=series_uid, frame=m.frame, points=tuple(m.points()),
            values=dict(ev.values) if ev is not None else {}, unit=ev.unit if ev is not None else "mm",
            value_unit=ev.value_unit if ev is not None else "", sop_instance_uid=sop,
            frame_number=frame_number, uid=m.uid,
        )

    def saved(self, study_uid: str) -> list[SavedMeasurement]:
        """What is saved for a study now (tests, the report export)."""
        return list(self._study(study_uid).values())
