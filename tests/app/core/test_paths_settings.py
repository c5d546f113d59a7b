"""Platform folders, crash-safe writes, and settings that survive bad files."""

from __future__ import annotations

import json
from pathlib import Path

from app.core.paths import AppPaths, set_aside, write_atomic
from app.core.settings import Settings


def test_linux_uses_xdg_folders():
    p = AppPaths.detect({"HOME": "/home/r", "XDG_CONFIG_HOME": "/cfg", "XDG_DATA_HOME": "/dat"}, "linux")
    assert p.config == Path("/cfg/xmedgpt")
    assert p.settings_file == Path("/cfg/xmedgpt/settings.json")
    assert p.workspace == Path("/dat/xmedgpt/workspace")
    assert p.audit_log == Path("/dat/xmedgpt/audit/audit.jsonl")


def test_linux_defaults_and_relative_xdg_ignored():
    p = AppPaths.detect({"HOME": "/home/r", "XDG_CONFIG_HOME": "relative/cfg"}, "linux")
    assert p.config == Path("/home/r/.config/xmedgpt")
    assert p.data == Path("/home/r/.local/share/xmedgpt")
    assert p.models == Path("/home/r/.local/share/xmedgpt/models")


def test_windows_config_roaming_data_local():
    env = {"APPDATA": r"C:\Users\r\AppData\Roaming", "LOCALAPPDATA": r"C:\Users\r\AppData\Local"}
    p = AppPaths.detect(env, "win32")
    assert str(p.config).endswith("XMedGPT") and "Roaming" in str(p.config)
    assert "Local" in str(p.data)


def test_home_override_wins(tmp_path):
    p = AppPaths.detect({"XMEDGPT_HOME": str(tmp_path), "XDG_CONFIG_HOME": "/cfg"}, "linux").ensure()
    assert p.config == tmp_path / "config"
    assert p.workspace.is_dir() and p.audit_log.parent.is_dir() and p.models.is_dir()


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.json"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_text() == "two"
    assert [x.name for x in target.parent.iterdir()] == ["f.json"]


def test_set_aside_never_overwrites(tmp_path):
    f = tmp_path / "a.json"
    f.write_text("x")
    first = set_aside(f, "test")
    f.write_text("y")
    second = set_aside(f, "test")
    assert first.read_text() == "x" and second.read_text() == "y" and first != second


def test_missing_file_gives_defaults(tmp_path):
    s = Settings.load(tmp_path / "settings.json")
    assert s == Settings() and s.problems == []


def test_round_trip_keeps_unknown_keys(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"reader_name": "Smith^Jane", "future_option": {"a": 1}, "reliability_samples": 8}))
    s = Settings.load(path)
    assert s.reader_name == "Smith^Jane" and s.reliability_samples == 8
    assert s.extra == {"future_option": {"a": 1}}
    s.dictation_key = "F9"
    s.save()
    data = json.loads(path.read_text())
    assert data["future_option"] == {"a": 1} and data["dictation_key"] == "F9"
    assert Settings.load(path).dictation_key == "F9"


def test_corrupt_file_is_reported_set_aside_and_defaults_used(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text('{"reader_name": "Smith^Ja')
    s = Settings.load(path)
    assert s.reader_name == ""
    assert len(s.problems) == 1 and "damaged" in s.problems[0]
    kept = tmp_path / "settings.json.corrupt-1"
    assert kept.read_text() == '{"reader_name": "Smith^Ja'
    s.save()
    assert kept.exists() and json.loads(path.read_text())["reader_name"] == ""


def test_wrong_types_fall_back_per_key(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"reliability_samples": "many", "use_gpu": 1, "reader_name": "A", "autosave_seconds": -1}))
    s = Settings.load(path)
    assert s.reliability_samples == 5 and s.use_gpu is True and s.autosave_seconds == 2.0
    assert s.reader_name == "A"
    assert len(s.problems) == 3


def test_resolved_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("XMEDGPT_HOME", str(tmp_path))
    s = Settings()
    assert s.workspace_path() == tmp_path / "data" / "workspace"
    s.workspace_dir = str(tmp_path / "ws")
    assert s.workspace_path() == tmp_path / "ws"
    assert s.audit_log_path() == tmp_path / "data" / "audit" / "audit.jsonl"
    assert s.model_path() is None
