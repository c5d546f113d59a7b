"""Runs the series pre-read off the UI thread, on the assistant's engine.

:class:`PrereadController` moves :func:`app.assistant.preread.preread` (sweep → link → reasoning) onto a
:class:`PrereadWorker` thread and back; it decides nothing itself. The engine comes from
``engine_source()`` — the shell hands it the assistant's loaded model (``ui.shell.preread_setup``), so
this package never imports the assistant's. The engine's own lock keeps a question asked meanwhile
from running on the model at the same time.

Signals:

- ``started(object)``: the :class:`~app.dicom.model.Volume` being pre-read;
- ``stage_changed(str)``: "sweep", "link", "reasoning";
- ``progress(int, int)``: done, total of the current stage (sweep: readings, one per slice and window;
  reasoning: lesions);
- ``finished(object)``: a :class:`PrereadRun` — a completed pre-read (kept per series in ``results``);
- ``cancelled(str)``: the run was stopped; nothing of it is kept or listed (a partial sweep would
  look like a series with fewer lesions than it has);
- ``failed(str)``: a message a reader understands;
- ``busy_changed(bool)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PySide6.QtCore import QEvent, QObject, QThread, Signal

from app.assistant.preread import Candidate, Preread, PrereadOptions, preread
from app.core.errors import XMedError
from app.core.settings import Settings
from app.dicom.model import Volume
from inference.types import Engine
from ui.workers import WorkerSet

log = logging.getLogger(__name__)

#: completed pre-reads kept (each holds its volume in memory), most recent last
MAX_RESULTS = 4


class Waiting(str):
    """Why a pre-read cannot start yet, for a reason that passes by itself (the model or the series is
    still loading): the panel keeps the reader's request and starts it then."""


#: The engine to pre-read with, or one sentence saying why there is none now (a :class:`Waiting` when
#: there will be one soon).
EngineSource = Callable[[], "Engine | str"]


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, XMedError) else f"Unexpected error: {exc}"


def batching_engine(engine: Engine) -> Engine:
    """The engine itself, or the model inside a wrapper that cannot batch (the spoken-query engine wraps
    the local one and answers text through it): the sweep sends several slices per forward pass."""
    if callable(getattr(engine, "generate_batch", None)):
        return engine
    inner = getattr(engine, "engine", None)
    return inner if inner is not None and callable(getattr(inner, "generate_batch", None)) else engine


@dataclass
class PrereadRun:
    """One completed pre-read of one series, with the volume it read (for the key slices and the report)."""

    volume: Volume
    result: Preread
    study_description: str = ""
    finished_at: float = field(default_factory=time.time)
    #: where a pre-read not run in this window comes from, as the panel says it ("on arrival, 19:09"); "" for
    #: one run here
    origin: str = ""
    #: the reader asked to see the candidates under the model's operating point too ("Show weaker candidates")
    show_weaker: bool = False

    @property
    def series_uid(self) -> str:
        return self.volume.series.uid

    @property
    def lesions(self) -> list[Candidate]:
        """The lesions the list shows: the pre-read's, then its weaker candidates when the reader asked for them."""
        return self.result.lesions + (self.result.weaker if self.show_weaker else [])

    def is_weaker(self, lesion: Candidate) -> bool:
        return any(c is lesion for c in self.result.weaker)

    def lesion(self, lesion_id: str) -> Candidate | None:
        return next((c for c in self.lesions if c.id == lesion_id), None)


class PrereadWorker(QThread):
    stage = Signal(str)
    progress = Signal(int, int)
    done = Signal(object)  # Preread
    failed = Signal(str)

    def __init__(self, engine: Engine, volume: Volume, options: PrereadOptions, study_description: str = "",
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine, self.volume, self.options = engine, volume, options
        self.study_description = study_description
        self._stop = threading.Event()

    def cancel(self) -> None:
        self._stop.set()

    def cancelled(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        try:
            out = preread(self.engine, self.volume, self.options, study_description=self.study_description,
                          cancel=self.cancelled, progress=lambda d, t: self.progress.emit(int(d), int(t)),
                          stage=self.stage.emit)
        except Exception as exc:
            log.exception("pre-read failed")
            self.failed.emit(_message(exc))
            return
        if self.cancelled():
            out.cancelled = True
        self.done.emit(out)


class PrereadController(QObject):
    started = Signal(object)
    stage_changed = Signal(str)
    progress = Signal(int, int)
    finished = Signal(object)
    restored = Signal(object)  # PrereadRun of a pre-read saved earlier (on arrival), shown without running
    cancelled = Signal(str)
    failed = Signal(str)
    busy_changed = Signal(bool)

    def __init__(self, engine_source: EngineSource, settings: Settings | None = None,
                 options: PrereadOptions | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.engine_source = engine_source
        self.settings = settings or Settings()
        self._options = options
        self.results: dict[str, PrereadRun] = {}  # series UID → its latest completed pre-read
        self.stage = ""
        self.done_total = (0, 0)
        self._worker: PrereadWorker | None = None
        self._workers = WorkerSet()

    # ------------------------------------------------------------------ state
    @property
    def running(self) -> bool:
        return self._worker is not None and self._worker.isRunning() and not self._worker.cancelled()

    @property
    def volume(self) -> Volume | None:
        """The volume being pre-read now."""
        return self._worker.volume if self.running else None

    def options(self) -> PrereadOptions:
        if self._options is not None:
            return self._options
        return PrereadOptions(n_samples=self.settings.reliability_samples,
                              n_questions=self.settings.reliability_questions)

    def result_for(self, volume: Volume | None) -> PrereadRun | None:
        return self.results.get(volume.series.uid) if volume is not None else None

    def restore(self, volume: Volume, result: Preread, origin: str, study_description: str = "") -> bool:
        """Show a pre-read made elsewhere (the pre-read on arrival) for ``volume`` as if it had run here; not when
        this window has a result for that series already or is pre-reading it. True when it was taken."""
        if volume.series.uid in self.results or (self.running and self.volume is volume):
            return False
        run = PrereadRun(volume, result, study_description, origin=origin)
        self.results[run.series_uid] = run
        while len(self.results) > MAX_RESULTS:
            self.results.pop(next(iter(self.results)))
        self.restored.emit(run)
        return True

    # ------------------------------------------------------------------ running
    def start(self, volume: Volume | None, study_description: str = "") -> str | None:
        """Pre-read ``volume`` in the background; None when started, else why it cannot start now (a
        :class:`Waiting` when that passes by itself)."""
        if volume is None:
            return "Open a series first, then pre-read it."
        if self.running:
            return "A pre-read is already running; cancel it first."
        if volume.loaded and volume.loaded < len(volume):
            return Waiting("The series is still loading")
        if volume.geometry is None:
            return ("This series has no slice geometry (positions and orientation), so lesions cannot be "
                    "followed from slice to slice.")
        engine = self.engine_source()
        if isinstance(engine, str) or engine is None:
            return engine or "No model is loaded for the pre-read."
        w = PrereadWorker(batching_engine(engine), volume, self.options(), study_description, self)
        w.stage.connect(self._stage)
        w.progress.connect(self._progress)
        w.done.connect(self._done)
        w.failed.connect(self._failed)
        self._worker = w
        self.stage, self.done_total = "sweep", (0, 0)
        self._workers.start(w, self._retire)
        self.started.emit(volume)
        self.busy_changed.emit(True)
        return None

    def cancel(self) -> str | None:
        """Stop the running pre-read (between batches); None when one was stopped."""
        if not self.running:
            return "No pre-read is running."
        assert self._worker is not None
        self._worker.cancel()
        self.busy_changed.emit(False)
        return None

    def _current(self) -> bool:
        """Whether the signal comes from the run in progress (not one cancelled and still winding down)."""
        return self.sender() is self._worker

    def _stage(self, name: str) -> None:
        if self._current():
            self.stage = name
            self.stage_changed.emit(name)

    def _progress(self, done: int, total: int) -> None:
        if self._current():
            self.done_total = (done, total)
            self.progress.emit(done, total)

    def _done(self, out: Preread) -> None:
        worker = self.sender()
        if not isinstance(worker, PrereadWorker) or worker is not self._worker:
            return
        if out.cancelled or worker.cancelled():
            sw = out.sweep
            where = (f"after {len(sw.answers)} of {sw.requests} readings of the sweep" if sw.cancelled
                     else "during the reasoning, after the sweep")
            self.cancelled.emit(f"Pre-read cancelled {where}: nothing was listed.")
            return
        run = PrereadRun(worker.volume, out, worker.study_description)
        self.results.pop(run.series_uid, None)
        self.results[run.series_uid] = run
        while len(self.results) > MAX_RESULTS:
            self.results.pop(next(iter(self.results)))
        self.finished.emit(run)

    def _failed(self, message: str) -> None:
        if self._current():
            self.failed.emit(f"The pre-read failed: {message}")

    # ------------------------------------------------------------------ threads
    def _retire(self) -> None:
        w = self.sender()
        if self._worker is w:
            self._worker = None
        self._workers.retire(w)
        self.busy_changed.emit(self.running)

    def is_idle(self) -> bool:
        return self._workers.is_idle()

    def shutdown(self, timeout_ms: int = 10_000) -> None:
        """Cancel and wait for the worker (on close and in tests)."""
        self._workers.shutdown(timeout_ms)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        """Installed on the main window: stop the worker thread before the window goes."""
        if event.type() == QEvent.Type.Close:
            self.shutdown()
        return False
