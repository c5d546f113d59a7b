"""Damaged and hostile state files (issue #19, "damaged state files").

Each test replays one finding of an attacker or a careless user: draft snapshots and journal
lines that are valid JSON of the wrong shape, settings with NaN or a folder where a file belongs,
a model list that is not a list, model folders whose files are devices, links out of the folder or
configs of the wrong types, checkpoints with code in them, orphaned temp files. Nothing may raise
or hang: a damaged file is set aside (``*.corrupt-N``, never deleted), one line is logged, and the
program goes on with the last good state or the defaults. Commands run as the reader runs them,
in a subprocess with XMEDGPT_HOME in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from app.core.paths import AppPaths, write_atomic
from app.core.settings import Settings
from app.models import folders
from app.models.registry import (
    ModelFolderError,
    ModelRegistry,
    check_model_folder,
    file_sha256,
    require_native_model_folder,
    weights_digest,
)
from app.report.draft import DraftReport, Origin, Provenance, StudyContext
from app.report.workspace import Autosave, Workspace, restore_or_new
from inference.resources import DEMO_MODEL_DIR, SAMPLE_STUDY

REPO = Path(__file__).resolve().parents[2]
UID = "1.2.826.0.1.3680043.8.498.19"
DEEP = "[" * 100_000 + "]" * 100_000  # far past the JSON parser's recursion limit
NESTED = '{"a":' * 200 + "1" + "}" * 200  # parses, but nested absurdly deep for a state file


# --------------------------------------------------------------------- helpers (also used by test_audit_trail)
def cli(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """``xmedgpt ARGS`` as the reader runs it, with every data location under ``home``."""
    env = {"XMEDGPT_HOME": str(home), "HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "QT_QPA_PLATFORM": "offscreen", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "ui.shell.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


def one_line_error(proc: subprocess.CompletedProcess, progress_prefix: str = "[") -> str:
    """The command failed with exactly one line on stderr (no traceback; progress lines aside); that line."""
    no_traceback(proc)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith(progress_prefix)]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def home_paths(home: Path) -> AppPaths:
    return AppPaths(config=home / "config", data=home / "data")


def write_model(folder: Path, config: dict | str | None = None, weights: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is None:
        config = {"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl"}
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8)}, str(folder / "model.safetensors"))
    return folder


# --------------------------------------------------------------------- draft snapshots
def new_report() -> DraftReport:
    return DraftReport(study=StudyContext(study_uid=UID, modality="CT"), provenance=Provenance("demo"))


def saved_twice(root: Path) -> tuple[Workspace, DraftReport]:
    """A draft with two snapshots (so there is a previous good one) and a journaled edit after them."""
    ws = Workspace(root)
    r = new_report()
    auto = Autosave(ws, r, snapshot_seconds=1e9)
    f = r.add_finding("Nodule.", origin=Origin.AI)
    auto.flush()
    r.accept(f.id)
    auto.flush()
    r.set_impression("after the last snapshot")
    return ws, r


SNAPSHOTS = {
    "list": "[]",
    "null": "null",
    "findings-text": None,  # filled from a real snapshot below
    "findings-null-item": None,
    "revision-1e400": None,
    "revision-text": None,
    "study-not-object": None,
    "box-of-text": None,
    "nan": None,
    "deep-nesting": DEEP,
    "nested-200": NESTED,
    "not-utf8": b"\xff\xfe{",
}


def damaged_snapshot(kind: str, good: dict) -> bytes:
    d = json.loads(json.dumps(good))
    if kind == "findings-text":
        d["findings"] = "abc"
    elif kind == "findings-null-item":
        d["findings"] = [None]
    elif kind == "revision-1e400":
        return json.dumps(d).replace(f'"revision": {d["revision"]}', '"revision": 1e400').encode()
    elif kind == "revision-text":
        d["revision"] = "7"
    elif kind == "study-not-object":
        d["study"] = UID
    elif kind == "box-of-text":
        d["findings"][0]["boxes"] = [{"box": ["a", "b", "c", "d"], "slice_index": 0, "sop_instance_uid": "",
                                      "series_uid": "", "tracking_uid": ""}]
    elif kind == "nan":
        return json.dumps(d).replace(f'"revision": {d["revision"]}', '"revision": NaN').encode()
    else:
        value = SNAPSHOTS[kind]
        return value if isinstance(value, bytes) else value.encode()
    return json.dumps(d).encode()


@pytest.mark.parametrize("kind", sorted(SNAPSHOTS))
def test_damaged_snapshot_is_set_aside_and_the_study_opens_with_the_last_good_state(tmp_path, kind, caplog):
    ws, r = saved_twice(tmp_path)
    snap = ws.snapshot_path(UID)
    good = json.loads(snap.read_text())
    bad = damaged_snapshot(kind, good)
    snap.write_bytes(bad)
    caplog.set_level(logging.WARNING)
    restored = ws.load(UID)  # must not raise
    kept = tmp_path / f"{UID}.json.corrupt-1"
    assert kept.read_bytes() == bad, "the damaged file is kept byte for byte"
    assert not snap.exists()
    # the previous snapshot plus the journal: the finding, its decision and the later impression
    assert restored.report is not None and restored.report.report_id == r.report_id
    assert [f.text for f in restored.report.findings] == ["Nodule."]
    assert restored.report.impression == "after the last snapshot"
    assert any("could not be read" in p for p in restored.problems)
    assert any("previous saved draft was restored" in p for p in restored.problems)
    set_aside_lines = [rec for rec in caplog.records if "set aside" in rec.getMessage()]
    assert len(set_aside_lines) == 1, [rec.getMessage() for rec in caplog.records]
    # and the reader can go on: reopen, edit, save
    report, _ = restore_or_new(ws, UID, new_report)
    auto = Autosave(ws, report)
    report.set_impression("continued")
    auto.close()
    assert ws.load(UID).report.impression == "continued"


@pytest.mark.parametrize("kind", ["list", "findings-null-item", "deep-nesting"])
def test_damaged_snapshot_without_a_previous_one_opens_a_new_draft(tmp_path, kind):
    ws = Workspace(tmp_path)
    Autosave(ws, new_report()).close()
    ws.previous_snapshot_path(UID).unlink()
    good = json.loads(ws.snapshot_path(UID).read_text())
    ws.snapshot_path(UID).write_bytes(damaged_snapshot(kind, good))
    report, problems = restore_or_new(ws, UID, new_report)
    assert report.findings == [] and problems
    assert (tmp_path / f"{UID}.json.corrupt-1").exists()
    assert ws.studies() == []  # the listing does not trip over it either


def test_snapshot_that_is_a_fifo_or_a_link_to_a_device_does_not_hang(tmp_path):
    ws = Workspace(tmp_path)
    os.mkfifo(ws.snapshot_path(UID))
    t0 = time.monotonic()
    restored = ws.load(UID)
    assert restored.report is None and restored.problems and time.monotonic() - t0 < 5
    other = "1.2.3.4"
    ws.snapshot_path(other).symlink_to("/dev/zero")
    assert ws.load(other).problems and time.monotonic() - t0 < 5


# --------------------------------------------------------------------- journal lines
def journal_line(edit: object) -> bytes:
    body = json.dumps(edit, ensure_ascii=False, sort_keys=True)
    digest = hashlib.sha256(body.encode()).hexdigest()
    return (json.dumps({"sha256": digest, "edit": edit}, ensure_ascii=False) + "\n").encode()


BAD_EDITS = {
    "after-text": {"action": "add", "finding_id": "x", "after": "abc", "revision": 99},
    "after-number": {"action": "add", "finding_id": "x", "after": 5, "revision": 99},
    "after-list": {"action": "add", "finding_id": "x", "after": [1, 2], "revision": 99},
    "after-missing-fields": {"action": "add", "finding_id": "x", "after": {"id": 1}, "revision": 99},
    "impression-number": {"action": "impression", "impression_after": 12, "revision": 99},
    "revision-text": {"action": "impression", "impression_after": "x", "revision": "99"},
    "signature-text": {"action": "sign", "signature": "Dr X", "revision": 99},
    "edit-is-a-list": [1, 2, 3],
    "edit-nested": json.loads(NESTED),
}


@pytest.mark.parametrize("kind", sorted(BAD_EDITS))
def test_journal_line_with_a_valid_checksum_but_a_bad_edit_is_set_aside(tmp_path, kind, caplog):
    ws, r = saved_twice(tmp_path)
    journal = ws.journal_path(UID)
    good_lines = journal.read_bytes()
    journal.write_bytes(good_lines + journal_line(BAD_EDITS[kind]))
    caplog.set_level(logging.WARNING)
    restored = ws.load(UID)
    assert restored.report.impression == "after the last snapshot", "the readable edits are restored"
    assert any("damaged" in p for p in restored.problems)
    assert (tmp_path / f"{UID}.journal.corrupt-1").read_bytes().endswith(journal_line(BAD_EDITS[kind]))
    assert journal.read_bytes() == good_lines, "the journal in place keeps only the readable edits"
    assert len([x for x in caplog.records if x.levelno >= logging.WARNING]) == 1


def test_journal_that_is_a_fifo_does_not_hang(tmp_path):
    ws, _ = saved_twice(tmp_path)
    journal = ws.journal_path(UID)
    journal.unlink()
    os.mkfifo(journal)
    restored = ws.load(UID)
    assert restored.report is not None and any("journal" in p for p in restored.problems)


# --------------------------------------------------------------------- settings.json
@pytest.mark.parametrize("text", [
    '{"reliability_samples": NaN}',
    '{"autosave_seconds": NaN}',
    '{"autosave_seconds": Infinity}',
    '{"reliability_questions": -Infinity}',
    '{"autosave_seconds": 1e400}',
    '{"extra": ' + DEEP + "}",
    '{"extra": ' + NESTED + "}",
    "[]",
    "null",
])
def test_settings_file_that_is_not_a_settings_object_is_set_aside(tmp_path, text, caplog):
    path = tmp_path / "settings.json"
    path.write_text(text)
    caplog.set_level(logging.WARNING)
    s = Settings.load(path)
    assert s == Settings() and len(s.problems) == 1 and "damaged" in s.problems[0]
    assert (tmp_path / "settings.json.corrupt-1").read_text() == text
    assert [x for x in caplog.records if "set aside" in x.getMessage()]


@pytest.mark.parametrize("field, value", [
    ("reliability_samples", 1e308),
    ("reliability_samples", 10**400),
    ("reliability_samples", 0),
    ("reliability_questions", 1000),
    ("autosave_seconds", 0.0),
    ("autosave_seconds", 1e9),
    ("autosave_seconds", "2"),
    ("quantization", "int3"),
    ("use_gpu", "yes"),
    ("reader_name", ["Dr", "X"]),
    ("reader_name", "x" * 100_000),
    ("workspace_dir", "a\x00b"),
    ("dictation_key", {"key": "F4"}),
])
def test_each_bad_setting_falls_back_to_its_default_with_a_warning(tmp_path, field, value, caplog):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({field: value, "reader_name" if field != "reader_name" else "institution_name": "kept"}))
    caplog.set_level(logging.WARNING)
    s = Settings.load(path)
    assert getattr(s, field) == getattr(Settings(), field)
    assert (s.reader_name if field != "reader_name" else s.institution_name) == "kept"
    assert len(s.problems) == 1 and field in s.problems[0]
    assert any(field in x.getMessage() for x in caplog.records)


def test_audit_log_setting_that_names_a_folder_falls_back(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"audit_log": str(tmp_path), "workspace_dir": str(path)}))
    s = Settings.load(path)
    assert s.audit_log == "" and s.workspace_dir == "" and len(s.problems) == 2


def test_audit_verify_survives_every_kind_of_bad_settings_file(tmp_path):
    home = tmp_path / "home"
    settings = home / "config" / "settings.json"
    settings.parent.mkdir(parents=True)
    for text in ('{"reliability_samples": NaN}', '{"x": ' + DEEP + "}",
                 json.dumps({"audit_log": str(tmp_path), "autosave_seconds": 1e308})):
        settings.write_text(text)
        proc = cli(home, "audit", "verify")
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
        assert str(home / "data" / "audit" / "audit.jsonl") in proc.stdout  # the default location is used
        assert "WARNING" in proc.stderr  # the reader is told, in one line per problem
    assert sorted(p.name for p in settings.parent.iterdir()) == [
        "settings.json", "settings.json.corrupt-1", "settings.json.corrupt-2"]


# --------------------------------------------------------------------- registry.json
GOOD_ENTRY = {"name": "good", "path": "/models/good", "format": "native", "architecture": "A", "model_type": "internvl",
              "size_bytes": 10, "weights_sha256": "ab" * 32, "files": {"model.safetensors": "ab" * 32},
              "added": ""}


@pytest.mark.parametrize("content, kept", [
    ("[]", 0),
    ("null", 0),
    ('{"models": "all"}', 0),
    ('{"models": [' + NESTED + "]}", 0),
    ('{"models": []}' + " " * 10, 0),  # a readable empty list: nothing set aside
    (json.dumps({"models": [{**GOOD_ENTRY, "name": "big", "size_bytes": "big"}, GOOD_ENTRY]}), 1),
    (json.dumps({"default": ["demo"], "models": [GOOD_ENTRY]}), 1),
    (json.dumps({"default": "gone", "models": [GOOD_ENTRY, GOOD_ENTRY]}), 1),
    (json.dumps({"models": [{**GOOD_ENTRY, "weights_sha256": 5}, None, 7, GOOD_ENTRY]}), 1),
])
def test_damaged_registry_is_set_aside_and_models_commands_still_work(tmp_path, content, kept):
    home = tmp_path / "home"
    reg = home_paths(home).models / "registry.json"
    reg.parent.mkdir(parents=True)
    reg.write_text(content)
    proc = cli(home, "models", "list", "--json")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout[proc.stdout.index("{"):])["models"]
    assert len(listed) == kept
    damaged = content != '{"models": []}' + " " * 10
    assert (reg.parent / "registry.json.corrupt-1").exists() == damaged
    if damaged:
        assert (reg.parent / "registry.json.corrupt-1").read_text() == content
        assert "warning:" in proc.stdout
    assert ModelRegistry(reg).problems == [], "the cleaned list is written back once"


def test_models_add_and_default_work_after_a_damaged_registry(tmp_path):
    home = tmp_path / "home"
    reg = home_paths(home).models / "registry.json"
    reg.parent.mkdir(parents=True)
    reg.write_text(json.dumps({"default": ["demo"], "models": [{**GOOD_ENTRY, "size_bytes": "big"}]}))
    folder = write_model(tmp_path / "tiny")
    proc = cli(home, "models", "add", str(folder))
    no_traceback(proc)
    assert proc.returncode == 0 and "Added 'tiny'" in proc.stdout, proc.stderr
    proc = cli(home, "models", "default", "tiny")
    assert proc.returncode == 0 and ModelRegistry(reg).default == "tiny", proc.stderr


def test_analyze_runs_with_damaged_settings_and_registry(tmp_path):
    """The real command with the demo model: NaN settings and a registry that is a list are set aside."""
    home = tmp_path / "home"
    paths = home_paths(home)
    paths.config.mkdir(parents=True)
    paths.models.mkdir(parents=True)
    paths.settings_file.write_text(json.dumps({"audit_log": str(tmp_path), "reliability_samples": 1e308}))
    (paths.models / "registry.json").write_text("[]")
    out = tmp_path / "answer.json"
    proc = cli(home, "analyze", str(SAMPLE_STUDY), "--slice", "18", "--device", "cpu", "--quantization", "none",
               "--max-new-tokens", "32", "--json", str(out))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["source"]["model_folder"] == str(DEMO_MODEL_DIR)
    assert "audit_log" in proc.stderr and "reliability_samples" in proc.stderr  # warned, defaults used
    assert (paths.models / "registry.json.corrupt-1").exists()
    assert paths.audit_log.exists(), "the audit record went to the default location"


# --------------------------------------------------------------------- model folders: one check for all
BAD_CONFIGS = {
    "architectures-object": ({"architectures": {"a": 1}}, "'architectures' must be a list"),
    "architectures-text": ({"architectures": "InternVLForConditionalGeneration"}, "'architectures' must be a list"),
    "architectures-items": ({"architectures": [1, 2]}, "'architectures[0]' must be text"),
    "model-type-number": ({"model_type": 5}, "'model_type' must be text"),
    "text-config-text": ({"model_type": "internvl", "text_config": "x"}, "'text_config' must be a JSON object"),
    "hidden-size-text": ({"model_type": "internvl", "text_config": {"hidden_size": "big"}},
                         "'text_config.hidden_size' must be a whole number"),
    "heads-zero": ({"model_type": "internvl", "text_config": {"num_attention_heads": 0}},
                   "'text_config.num_attention_heads' must be from 1"),
    "patch-size": ({"model_type": "internvl", "vision_config": {"patch_size": [0, 14]}}, "vision_config.patch_size"),
    "ratio-zero": ({"model_type": "internvl", "downsample_ratio": 0}, "'downsample_ratio' must be from"),
    "quantization-text": ({"model_type": "internvl", "quantization_config": "nf4"}, "'quantization_config'"),
    "llm-config-list": ({"model_type": "internvl_chat", "llm_config": []}, "'llm_config' must be a JSON object"),
    "nan": ('{"model_type": "internvl", "downsample_ratio": NaN}', "cannot be read"),
    "deep": ('{"model_type": "internvl", "x": ' + DEEP + "}", "cannot be read"),
    "list": ("[]", "cannot be read"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_malformed_config_is_refused_by_the_one_shared_check(tmp_path, kind):
    config, reason = BAD_CONFIGS[kind]
    folder = write_model(tmp_path / "m", config)
    messages = set()
    for check in (check_model_folder, require_native_model_folder, folders.check_model_folder):
        with pytest.raises(ModelFolderError, match=re.escape(reason)) as err:
            check(folder)
        messages.add(str(err.value))
    assert len(messages) == 1, "models add, --model and the Settings dialog give the same reason"
    assert not ModelRegistry(tmp_path / "reg.json").models


@pytest.mark.parametrize("kind", ["architectures-object", "hidden-size-text", "nan"])
def test_models_add_and_analyze_model_refuse_malformed_configs_in_one_line(tmp_path, kind):
    config, reason = BAD_CONFIGS[kind]
    folder = write_model(tmp_path / "m", config)
    home = tmp_path / "home"
    line = one_line_error(cli(home, "models", "add", str(folder)))
    assert reason in line
    line = one_line_error(cli(home, "analyze", str(SAMPLE_STUDY), "--model", str(folder), "--json",
                              str(tmp_path / "o.json")))
    assert "config.json" in line
    assert not (home_paths(home).models / "registry.json").exists()


def test_weights_linked_to_a_device_are_refused_at_once(tmp_path):
    folder = write_model(tmp_path / "m", weights=False)
    (folder / "model.safetensors").symlink_to("/dev/zero")
    with pytest.raises(ModelFolderError, match="not a regular file"):
        folders.check_model_folder(folder)
    home = tmp_path / "home"
    t0 = time.monotonic()
    assert "not a regular file" in one_line_error(cli(home, "models", "add", str(folder)))
    assert "not a regular file" in one_line_error(
        cli(home, "analyze", str(SAMPLE_STUDY), "--model", str(folder), "--json", str(tmp_path / "o.json")))
    assert time.monotonic() - t0 < 25, "no hang"


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_fifo_or_device_in_place_of_any_loaded_file_is_refused(tmp_path, name):
    folder = write_model(tmp_path / "m")
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    with pytest.raises(ModelFolderError, match="not a regular file"):
        check_model_folder(folder)
    (folder / name).unlink()
    (folder / name).symlink_to("/dev/null")
    with pytest.raises(ModelFolderError, match="outside the model folder|not a regular file"):
        check_model_folder(folder)


def test_weights_linked_outside_the_folder_are_refused_not_hashed(tmp_path, monkeypatch):
    folder = write_model(tmp_path / "m", weights=False)
    (folder / "model.safetensors").symlink_to("/etc/passwd")
    hashed = []
    monkeypatch.setattr("app.models.registry.file_sha256", lambda p: hashed.append(p) or "0" * 64)
    with pytest.raises(ModelFolderError, match="outside the model folder"):
        ModelRegistry(tmp_path / "reg.json").add(folder)
    assert hashed == [] and not (tmp_path / "reg.json").exists()
    home = tmp_path / "home"
    line = one_line_error(cli(home, "models", "add", str(folder)))
    assert "/etc/passwd" in line and "outside the model folder" in line
    assert not (home_paths(home).models / "registry.json").exists()


def test_a_link_that_stays_inside_the_folder_is_fine(tmp_path):
    folder = write_model(tmp_path / "m", weights=False)
    (folder / "blobs").mkdir()
    save_file({"w": np.ones((4, 4), np.float32)}, str(folder / "blobs" / "abc123"))
    (folder / "model.safetensors").symlink_to(folder / "blobs" / "abc123")
    info = ModelRegistry(tmp_path / "reg.json").add(folder)
    assert info.files == {"model.safetensors": file_sha256(folder / "blobs" / "abc123")}


@pytest.mark.parametrize("weights, reason", [
    ({"model.pt": b"PK\x03\x04 not loadable"}, "format the workstation does not load"),
    ({"model.pt": b"x", "pytorch_model.bin": b"x"}, "format the workstation does not load"),
    ({"model.safetensors": b""}, "is empty"),
    ({}, "no weight files"),
])
def test_weights_that_cannot_load_are_refused(tmp_path, weights, reason):
    folder = write_model(tmp_path / "m", weights=False)
    for name, data in weights.items():
        (folder / name).write_bytes(data)
    with pytest.raises(ModelFolderError, match=reason):
        folders.check_model_folder(folder)
    with pytest.raises(ModelFolderError, match=reason):
        ModelRegistry(tmp_path / "reg.json").add(folder)


def test_sharded_index_naming_a_missing_or_outside_file_is_refused(tmp_path):
    folder = write_model(tmp_path / "m")
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelFolderError, match="not there"):
        check_model_folder(folder)
    index.write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    with pytest.raises(ModelFolderError, match="not there"):
        check_model_folder(folder)
    index.write_text(json.dumps({"weight_map": ["x"]}))
    with pytest.raises(ModelFolderError, match="cannot be read"):
        check_model_folder(folder)


def test_the_demo_model_passes_the_check():
    checked = require_native_model_folder(DEMO_MODEL_DIR)
    assert [p.name for p in checked.weights] == ["model.safetensors"]


# --------------------------------------------------------------------- convert-checkpoint
def test_convert_checkpoint_names_the_missing_field_in_one_line(tmp_path):
    src = write_model(tmp_path / "orig", {"model_type": "internvl_chat", "architectures": ["InternVLChatModel"]})
    line = one_line_error(cli(tmp_path / "home", "convert-checkpoint", str(src), str(tmp_path / "out")))
    assert "llm_config.vocab_size" in line and "KeyError" not in line
    assert not (tmp_path / "out").exists(), "nothing is written for a config that cannot convert"


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_convert_checkpoint_refuses_a_pickle_with_code_and_never_suggests_weights_only_false(tmp_path):
    import pickle

    from tests.inference.test_convert import write_original

    src = tmp_path / "orig"
    write_original(src, "qwen2", "layer_norm", False, 1)
    (src / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    # what `torch.save` of an object with __reduce__ writes (legacy format): loading it runs os.system
    (src / "pytorch_model.bin").write_bytes(pickle.dumps({"vision_model.embeddings.class_embedding": _RunsCode(marker)}))
    proc = cli(tmp_path / "home", "convert-checkpoint", str(src), str(tmp_path / "out"), timeout=60)
    line = one_line_error(proc)
    assert "contains code or objects we refuse to load" in line
    assert "weights_only" not in proc.stderr + proc.stdout
    assert not marker.exists(), "the pickle's code never ran"


# --------------------------------------------------------------------- orphaned temp files
def _temp(folder: Path, target: str, age_s: float, tag: str) -> Path:
    p = folder / f".{target}.{tag}.tmp"
    p.write_text("half")
    t = time.time() - age_s
    os.utime(p, (t, t))
    return p


def test_atomic_writes_clean_their_stale_temp_files(tmp_path):
    target = tmp_path / "settings.json"
    old = _temp(tmp_path, "settings.json", 7200, "a1b2c3d4")
    fresh = _temp(tmp_path, "settings.json", 10, "e5f6g7h8")  # may belong to a writer at work
    other = _temp(tmp_path, "registry.json", 7200, "i9j0k1l2")  # another target: its own writes clean it
    write_atomic(target, "{}")
    assert not old.exists() and fresh.exists() and other.exists()
    Settings().save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["settings.json", fresh.name, other.name])


def test_workspace_cleans_stale_snapshot_temps_at_start_up(tmp_path):
    old = _temp(tmp_path, f"{UID}.json", 7200, "abcdefgh")
    fresh = _temp(tmp_path, f"{UID}.json", 1, "ijklmnop")
    keep = tmp_path / ".notes.tmp"  # not a name write_atomic makes
    keep.write_text("x")
    os.utime(keep, (0, 0))
    Workspace(tmp_path)
    assert not old.exists() and fresh.exists() and keep.exists()


def test_weights_digest_of_the_demo_matches_models_add(tmp_path):
    """What analyze records for a folder is what `models add` would register for it."""
    info = ModelRegistry(tmp_path / "reg.json").add(DEMO_MODEL_DIR)
    assert info.weights_sha256 == weights_digest({"model.safetensors": file_sha256(DEMO_MODEL_DIR / "model.safetensors")})
