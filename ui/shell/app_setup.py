"""Shared start-up for the GUI commands: the QApplication, style, the main window."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from PySide6.QtWidgets import QApplication

from inference.resources import SAMPLE_STUDY, STYLE_SHEET
from ui.workers import MainThreadCollector

log = logging.getLogger(__name__)

STYLE = STYLE_SHEET
SAMPLE = SAMPLE_STUDY
_collector: MainThreadCollector | None = None  # garbage collection on the GUI thread (see ui.workers)


def application(offscreen: bool = False) -> QApplication:
    """The one QApplication, created with the offscreen platform when asked or when there is no display;
    from then on Python collects garbage on the GUI thread only (listener and worker threads never
    finalize Qt objects)."""
    app = QApplication.instance()
    if app is None:
        no_display = sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        )
        if (offscreen or no_display) and "QT_QPA_PLATFORM" not in os.environ:
            os.environ["QT_QPA_PLATFORM"] = "offscreen"
        app = QApplication(sys.argv[:1])
        app.setApplicationName("XMedGPT Workstation")
        app.setOrganizationName("XMedGPT")
        if STYLE.exists():
            app.setStyleSheet(STYLE.read_text(encoding="utf-8"))
    assert isinstance(app, QApplication)
    collect_on_gui_thread(app)
    return app


def collect_on_gui_thread(app: QApplication) -> MainThreadCollector:
    """From now on the cyclic garbage collector runs on the GUI thread only (:class:`MainThreadCollector`);
    once per process."""
    global _collector
    if _collector is None:
        _collector = MainThreadCollector(parent=app).start()
    return _collector


def has_display() -> bool:
    """False on a Linux box without X11/Wayland, unless a Qt platform was chosen explicitly."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def default_study(path: Path | None, *, start_screen: bool = False) -> Path | None:
    """The study to open: ``path``, else the bundled sample when present -- except, with ``start_screen``
    (the viewer), once the study list has studies: a shift starts from the list, not from the phantom."""
    if path is not None:
        return path
    if not SAMPLE.exists():
        return None
    if start_screen:
        from app.studies.locations import StudyPaths

        if StudyPaths.detect().has_studies():
            return None
    return SAMPLE
