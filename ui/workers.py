"""Threads beside the GUI, in one place.

- :class:`WorkerSet`: the worker threads a controller has started, kept referenced until they finish,
  then deleted; cancelled and joined when the window closes (and in tests). Used by the assistant's
  and the pre-read's controllers.
- :class:`MainThreadCollector`: Python's cyclic garbage collector runs on the GUI thread only.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator

from PySide6.QtCore import QObject, QThread, QTimer

log = logging.getLogger(__name__)


class WorkerSet:
    """QThreads with a ``cancel()`` method, started through :meth:`start` and retired in their
    ``finished`` handler through :meth:`retire`."""

    def __init__(self) -> None:
        self._threads: list[QThread] = []

    def start(self, worker: QThread, on_finished: Callable[[], None]) -> None:
        self._threads.append(worker)
        worker.finished.connect(on_finished)
        worker.start()

    def retire(self, worker: QThread | None) -> None:
        """``worker`` has finished: forget it and let Qt delete it."""
        if worker in self._threads:
            self._threads.remove(worker)
        if worker is not None:
            worker.deleteLater()

    def is_idle(self) -> bool:
        return not any(w.isRunning() for w in self._threads)

    def shutdown(self, timeout_ms: int = 10_000) -> None:
        """Cancel every worker, then wait for each (up to ``timeout_ms``)."""
        for w in list(self._threads):
            w.cancel()
        for w in list(self._threads):
            w.wait(timeout_ms)

    def __iter__(self) -> Iterator[QThread]:
        return iter(list(self._threads))


class MainThreadCollector(QObject):
    """Automatic garbage collection off; collections run from a timer on the GUI thread instead.

    CPython collects cycles in whichever thread allocates when a generation's threshold is crossed:
    a DICOM listener's association thread, a retrieve or a model worker. When such a collection frees
    a Qt object (a PySide wrapper in a reference cycle), its C++ destructor runs on that thread with
    the GIL held, and a Qt destructor that waits for another thread (or for a lock that thread holds
    while it waits for the GIL) hangs the whole application. The suite hung that way twice, each time
    with a collection in progress while a pynetdicom thread held the GIL and every other thread waited
    for it. This is the remedy Qt applications in Python use (pyqtgraph's ``GarbageCollector``): the
    thresholds stay CPython's own, checked every ``interval_ms`` on the GUI thread; a full collection
    (generation 2) at most every ``full_every_s`` so that a large heap (a loaded model) never stalls
    the window often. :meth:`stop` gives collection back to Python.
    """

    def __init__(self, interval_ms: int = 250, full_every_s: float = 30.0, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.full_every_s = full_every_s
        self.collections = [0, 0, 0]  # collections this object ran, per generation
        self._threshold = gc.get_threshold()
        self._was_enabled = False
        self._last_full = time.monotonic()
        self._timer = QTimer(self, interval=interval_ms)
        self._timer.timeout.connect(self.check)

    @property
    def active(self) -> bool:
        return self._timer.isActive()

    def start(self) -> MainThreadCollector:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("MainThreadCollector must be started on the GUI thread")
        if not self.active:
            self._threshold = gc.get_threshold()
            self._was_enabled = gc.isenabled()
            gc.disable()
            self._timer.start()
        return self

    def stop(self) -> None:
        if self.active:
            self._timer.stop()
            if self._was_enabled:
                gc.enable()

    def check(self) -> None:
        """Collect what CPython would have collected by now (generation 0, then 1 and 2 as they fill)."""
        if gc.isenabled():  # something switched automatic collection back on: off again
            log.warning("automatic garbage collection was re-enabled; the GUI thread collects again")
            gc.disable()
        t0, t1, t2 = self._threshold
        if t0 <= 0:
            return
        c0, c1, c2 = gc.get_count()
        if c0 <= t0:
            return
        generation = 0
        if c1 > t1:
            generation = 1
            if c2 > t2 and time.monotonic() - self._last_full >= self.full_every_s:
                generation = 2
        started = time.perf_counter()
        gc.collect(generation)
        self.collections[generation] += 1
        if generation == 2:
            self._last_full = time.monotonic()
            log.debug("full garbage collection on the GUI thread: %.0f ms", (time.perf_counter() - started) * 1e3)
