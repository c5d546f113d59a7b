"""Named actions: keys, menus and voice commands run what panels register by name, and say why
when an action cannot run, instead of reaching into another panel's widgets."""

from __future__ import annotations

import pytest

from tests.app.assistant.test_ask import ScriptedEngine
from tests.app.report.test_session import ANSWER
from tests.ui.report.test_flow import open_sample, settings_in
from ui.actions import Actions, append_text


def test_a_registered_action_runs_and_says_why_not():
    calls = []
    actions = Actions()
    actions.register("go", lambda: calls.append(1), owner="a")
    actions.register("blocked", lambda: "Select a finding first.", owner="a")
    assert actions.run("go") and calls == [1]
    out = actions.run("blocked")
    assert not out and out.message == "Select a finding first."
    unknown = actions.run("sign_report")
    assert not unknown and "sign report" in unknown.message


def test_a_name_has_one_owner():
    actions = Actions()
    actions.register("ask_assistant", lambda: None, owner="assistant")
    actions.register("ask_assistant", lambda: None, owner="assistant")  # the same panel again: fine
    with pytest.raises(ValueError, match="already registered by assistant"):
        actions.register("ask_assistant", lambda: None, owner="report")


def test_text_targets_are_what_panels_offer(qapp):
    from PySide6.QtWidgets import QLineEdit

    actions = Actions()
    assert actions.target_widgets("query") == []
    box = QLineEdit()
    actions.register_target("query", lambda: [box])
    append_text(box, "  locate ")
    append_text(box, "the nodule ")
    assert actions.target_widgets("query") == [box] and box.text() == "locate the nodule"


def test_the_window_registers_every_panels_actions(qtbot, tmp_path):
    s = settings_in(tmp_path)
    win = open_sample(qtbot, s, ScriptedEngine(ANSWER), tmp_path)
    names = set(win.actions.names())
    assert {"next_slice", "preset_2", "open_folder", "quit"} <= names  # the shortcut table
    assert "ask_assistant" in names  # the assistant panel
    assert {"accept_finding", "reject_finding", "sign_report", "start_report"} <= names  # the report
    assert win.actions.target_widgets("query") == [win.assistant_panel.query]


def test_report_actions_without_a_draft_say_so(qtbot, tmp_path):
    s = settings_in(tmp_path)
    win = open_sample(qtbot, s, ScriptedEngine(ANSWER), tmp_path)
    out = win.actions.run("sign_report")
    assert not out and "no draft report yet" in out.message
    out = win.actions.run("accept_finding")
    assert not out and "no draft report yet" in out.message
    assert win.actions.run("start_report")
    assert win.report.panel is not None
    out = win.actions.run("accept_finding")
    assert not out and out.message.startswith("Select a finding first")
