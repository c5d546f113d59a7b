"""`xmedgpt models add/list/remove/default` on real (tiny) model folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from app.cli import main
from app.models.registry import ModelFolderError, ModelRegistry, file_sha256


def _write_model(folder: Path, architectures: list[str], model_type: str, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": architectures, "model_type": model_type}))
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((8, 8)).astype(np.float32)}, str(folder / "model.safetensors"))
    return folder


def write_model_folder(folder: Path) -> Path:
    """The smallest folder that passes the model-folder check (for commands whose engine a test replaces)."""
    return _write_model(folder, ["InternVLForConditionalGeneration"], "internvl")


@pytest.fixture
def native(tmp_path):
    return _write_model(tmp_path / "tiny-native", ["InternVLForConditionalGeneration"], "internvl")


@pytest.fixture
def original(tmp_path):
    return _write_model(tmp_path / "xmedgpt-orig", ["InternVLChatModel"], "internvl_chat", seed=1)


def test_add_records_hash_and_becomes_default(tmp_path, native):
    reg = ModelRegistry(tmp_path / "reg.json")
    info = reg.add(native)
    assert info.format == "native"
    assert info.files["model.safetensors"] == file_sha256(native / "model.safetensors")
    assert reg.default == "tiny-native"
    # persisted and reloaded
    again = ModelRegistry(tmp_path / "reg.json")
    assert again.default_model().weights_sha256 == info.weights_sha256


def test_hash_changes_when_weights_change(tmp_path, native):
    reg = ModelRegistry(tmp_path / "reg.json")
    before = reg.add(native).weights_sha256
    save_file({"w": np.zeros((8, 8), np.float32)}, str(native / "model.safetensors"))
    assert reg.add(native).weights_sha256 != before


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d, "does not exist"),
        (lambda d: (d.mkdir(), d)[-1], "no config.json"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text("{broken"), d)[-1], "cannot be read"),
        (lambda d: _write_model(d, ["BertForMaskedLM"], "bert"), "InternVL models"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text('{"model_type": "internvl"}'), d)[-1],
         "no weight files"),
    ],
)
def test_refuses_folders_that_are_not_models_with_a_reason(tmp_path, make, reason):
    folder = make(tmp_path / "candidate")
    with pytest.raises(ModelFolderError, match=reason):
        ModelRegistry(tmp_path / "reg.json").add(folder)
    assert not (tmp_path / "reg.json").exists()


def test_original_checkpoint_is_offered_the_converter_and_cannot_be_default(tmp_path, original):
    reg = ModelRegistry(tmp_path / "reg.json")
    info = reg.add(original)
    assert info.needs_conversion and reg.default is None
    with pytest.raises(ModelFolderError, match="convert-checkpoint"):
        reg.set_default(info.name)


def test_cli_add_list_default_remove(tmp_path, native, original, capsys):
    reg = str(tmp_path / "reg.json")
    assert main(["models", "--registry", reg, "add", str(native), "--name", "demo-a"]) == 0
    assert main(["models", "--registry", reg, "add", str(original)]) == 0
    out = capsys.readouterr().out
    assert "convert-checkpoint" in out
    assert main(["models", "--registry", reg, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["models"]
    assert {m["name"]: m["default"] for m in listed} == {"demo-a": True, "xmedgpt-orig": False}
    assert main(["models", "--registry", reg, "remove", "demo-a"]) == 0
    assert native.exists(), "removing a model must not delete its folder"
    assert main(["models", "--registry", reg, "default", "demo-a"]) == 1
    assert "No model named 'demo-a'" in capsys.readouterr().err


def test_damaged_registry_is_set_aside_not_lost(tmp_path):
    path = tmp_path / "reg.json"
    path.write_text("not json")
    reg = ModelRegistry(path)
    assert reg.models == {} and reg.problems
    assert (tmp_path / "reg.json.corrupt-1").read_text() == "not json"
