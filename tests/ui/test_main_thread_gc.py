"""Garbage is collected on the GUI thread only (ui.workers.MainThreadCollector): a collection on a
listener or worker thread can finalize Qt objects there and hang the application."""

from __future__ import annotations

import gc
import threading
import weakref

from ui.shell.app_setup import collect_on_gui_thread
from ui.workers import MainThreadCollector


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _collecting_threads() -> tuple[list[str], callable]:
    seen: list[str] = []

    def note(phase, info):
        if phase == "start":
            seen.append(threading.current_thread().name)
    gc.callbacks.append(note)
    return seen, note


def _make_garbage_on_a_thread(n: int, keep: list) -> None:
    def work():
        for i in range(n):
            c = _Cycle()
            if i % 1000 == 0:
                keep.append(weakref.ref(c))
    t = threading.Thread(target=work, name="association-thread")
    t.start()
    t.join()


def test_cycles_made_on_another_thread_are_collected_on_the_gui_thread(qtbot, qapp):
    collector = collect_on_gui_thread(qapp)
    assert collector.active and not gc.isenabled()
    seen, note = _collecting_threads()
    refs: list = []
    try:
        _make_garbage_on_a_thread(50_000, refs)  # ~70 collections' worth at CPython's threshold of 700
        assert refs and any(r() is not None for r in refs)  # nothing collected them on that thread
        qtbot.waitUntil(lambda: all(r() is None for r in refs), timeout=10_000)
    finally:
        gc.callbacks.remove(note)
    assert seen and set(seen) == {threading.main_thread().name}


def test_without_it_python_collects_on_the_thread_that_allocates(qapp):
    """The hazard itself (and that the test above can fail): with automatic collection on, the
    association thread runs the collections."""
    collector = collect_on_gui_thread(qapp)
    collector.stop()
    seen, note = _collecting_threads()
    try:
        assert gc.isenabled()
        _make_garbage_on_a_thread(50_000, [])
    finally:
        gc.callbacks.remove(note)
        collector.start()
    assert "association-thread" in seen and not gc.isenabled()


def test_it_follows_cpython_thresholds_and_limits_full_collections(qapp, monkeypatch):
    own = MainThreadCollector(interval_ms=10_000, full_every_s=3600)
    own.start()
    try:
        counts = iter([(10, 0, 0), (800, 0, 0), (800, 11, 0), (800, 11, 11), (800, 11, 11)])
        monkeypatch.setattr(gc, "get_count", lambda: next(counts))
        monkeypatch.setattr(gc, "get_threshold", lambda: (700, 10, 10))
        own._threshold = (700, 10, 10)
        ran: list[int] = []
        monkeypatch.setattr(gc, "collect", lambda generation=2: ran.append(generation) or 0)
        for _ in range(4):
            own.check()
        assert ran == [0, 1, 1]  # below threshold: nothing; full collections wait for full_every_s
        own._last_full -= 3600
        own.check()
        assert ran == [0, 1, 1, 2] and own.collections == [1, 2, 1]
        gc.enable()  # something switched automatic collection back on: the next check turns it off
        monkeypatch.setattr(gc, "get_count", lambda: (0, 0, 0))
        own.check()
        assert not gc.isenabled()
    finally:
        own.stop()
    assert not gc.isenabled()  # the application's collector is still in charge
