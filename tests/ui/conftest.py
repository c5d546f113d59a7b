"""Qt tests run as the application does: garbage is collected on the GUI thread only."""

from __future__ import annotations

import pytest

from ui.shell.app_setup import collect_on_gui_thread


@pytest.fixture(scope="session", autouse=True)
def gui_thread_collector(qapp):
    collector = collect_on_gui_thread(qapp)
    yield collector
    collector.stop()
