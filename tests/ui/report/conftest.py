"""Report UI tests sign with one click: the sign-off confirmation is answered "Sign" unless a test
asks for the real dialog (``ReportPanel.auto_answer = None``)."""

from __future__ import annotations

import pytest

from ui.report.panel import ReportPanel


@pytest.fixture(autouse=True)
def confirm_signing(monkeypatch):
    monkeypatch.setattr(ReportPanel, "auto_answer", True)
