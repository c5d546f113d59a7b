"""The worker threads a controller has started, in one place: kept referenced until they finish, then
deleted; cancelled and joined when the window closes (and in tests). Used by the assistant's and the
pre-read's controllers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from PySide6.QtCore import QThread


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
