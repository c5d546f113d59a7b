"""Background work for the viewer: scanning a study, loading a series, thumbnails.

Each worker is a QThread running an app/ function; results come back through
queued signals, so the UI thread never waits on disk or decoding. Errors the
reader can meet arrive as one-line messages, never as tracebacks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QThread, Signal

from app.core.errors import XMedError
from app.dicom.loader import load_series
from app.dicom.model import ScanResult, Series
from app.dicom.scan import scan
from app.viewer.viewport import thumbnail

log = logging.getLogger(__name__)

#: Progress signals are sent at most this often (seconds) so the UI queue stays short.
PROGRESS_INTERVAL = 0.05


def _unexpected(what: str, exc: BaseException) -> str:
    log.exception("%s failed", what)
    return f"{what} failed unexpectedly ({type(exc).__name__}); see the log for details"


class ScanWorker(QThread):
    """Reads the headers under some paths into a :class:`ScanResult`."""

    progress = Signal(int, int)  # files done, total
    scanned = Signal(object)  # ScanResult
    failed = Signal(str)

    def __init__(self, paths: Sequence[Path], parent=None) -> None:
        super().__init__(parent)
        self.paths = [Path(p) for p in paths]
        self._last = 0.0

    def _progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self.progress.emit(done, total)

    def run(self) -> None:
        try:
            result: ScanResult = scan(self.paths, progress=self._progress)
        except XMedError as exc:
            self.failed.emit(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - shown as a message, logged with traceback
            self.failed.emit(_unexpected("Reading the study", exc))
            return
        self.scanned.emit(result)


LoadFn = Callable[..., object]


class SeriesLoadWorker(QThread):
    """Decodes one series; the volume is handed over as soon as frame 0 is in.

    ``first_frame(volume)`` comes once, then ``frame_loaded(k, n)`` as later frames
    land (the volume object fills in place), then ``loaded(volume)`` or
    ``failed(message)`` or ``cancelled()``.
    """

    first_frame = Signal(object)
    frame_loaded = Signal(int, int)
    loaded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, series: Series, parent=None, load_fn: LoadFn = load_series) -> None:
        super().__init__(parent)
        self.series = series
        self._load = load_fn
        self._stop = threading.Event()
        self._started_volume = False
        self._last = 0.0

    def cancel(self) -> None:
        self._stop.set()

    @property
    def is_cancelled(self) -> bool:
        return self._stop.is_set()

    def _on_frame(self, k: int, volume) -> None:
        if not self._started_volume:
            self._started_volume = True
            self.first_frame.emit(volume)
        n = len(volume)
        now = time.monotonic()
        if k + 1 == n or now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self.frame_loaded.emit(k, n)

    def run(self) -> None:
        try:
            volume = self._load(self.series, on_frame=self._on_frame, cancel=self._stop.is_set)
        except XMedError as exc:
            if self._stop.is_set():
                self.cancelled.emit()
            else:
                self.failed.emit(str(exc))
            return
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(_unexpected("Loading the series", exc))
            return
        if self._stop.is_set():
            self.cancelled.emit()
            return
        if not self._started_volume:
            self._started_volume = True
            self.first_frame.emit(volume)
        self.loaded.emit(volume)


class ThumbnailWorker(QThread):
    """Renders the middle image of each series, one after another."""

    thumbnail = Signal(int, object)  # series index, uint8 array
    failed = Signal(int, str)

    def __init__(self, series: Sequence[Series], size: int = 64, parent=None) -> None:
        super().__init__(parent)
        self.series = list(series)
        self.size = size
        self._stop = threading.Event()

    def cancel(self) -> None:
        self._stop.set()

    def run(self) -> None:
        for i, s in enumerate(self.series):
            if self._stop.is_set():
                return
            try:
                self.thumbnail.emit(i, thumbnail(s, self.size))
            except XMedError as exc:
                self.failed.emit(i, str(exc))
            except Exception as exc:  # noqa: BLE001
                self.failed.emit(i, _unexpected("Thumbnail", exc))
