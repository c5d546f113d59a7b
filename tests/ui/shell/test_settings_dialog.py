"""The Settings dialog: values round-trip through the settings file, model folders are
checked before they are accepted, and registered models are managed as `xmedgpt models` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtGui import QKeySequence

from app.assistant.session import ModelChoice, quantization_for
from app.core.settings import Settings
from app.models.registry import ModelRegistry
from ui.assistant.controller import AssistantController
from ui.shell.assistant_setup import open_settings
from ui.shell.settings_dialog import SettingsDialog


def model_folder(root: Path, name: str, model_type: str = "internvl",
                 arch: str = "InternVLForConditionalGeneration", weights: bytes = b"\x00" * 4096) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": model_type}))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(reader_name="Dr A", reliability_samples=5)
    s.path = tmp_path / "config" / "settings.json"
    return s


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "data" / "registry.json")


@pytest.fixture
def dialog(qtbot, settings, registry) -> SettingsDialog:
    d = SettingsDialog(settings, registry)
    qtbot.addWidget(d)
    d.show()
    return d


def test_values_are_saved_and_read_back(qtbot, dialog, settings, tmp_path):
    folder = model_folder(tmp_path, "xmedgpt-8b")
    assert dialog.reader_name.text() == "Dr A" and dialog.samples.value() == 5
    dialog.reader_name.setText("Dr Jane Smith")
    dialog.model_dir.setText(str(folder))
    assert dialog.folder_check.text().startswith("✓ InternVL model")
    dialog.device.setCurrentIndex(1)  # CPU only
    dialog.quantization.setCurrentIndex(dialog.quantization.findData("nf4"))
    dialog.samples.setValue(8)
    dialog.questions.setValue(3)
    dialog.dictation_key.setKeySequence(QKeySequence("F6"))
    dialog.auto_ask.setChecked(True)
    dialog.spoken_audio.setChecked(False)
    dialog.remote_url.setText("")
    dialog.accept()
    assert dialog.result() == SettingsDialog.DialogCode.Accepted
    again = Settings.load(settings.path)
    assert again.reader_name == "Dr Jane Smith" and again.model_dir == str(folder)
    assert again.use_gpu is False and quantization_for(again) == "nf4"
    assert (again.reliability_samples, again.reliability_questions, again.dictation_key) == (8, 3, "F6")
    assert again.dictation_auto_ask is True and again.spoken_query_audio is False


def test_a_folder_that_is_not_a_model_keeps_the_dialog_open_with_the_reason(qtbot, dialog, settings, tmp_path):
    empty = tmp_path / "photos"
    empty.mkdir()
    dialog.model_dir.setText(str(empty))
    assert "has no config.json" in dialog.folder_check.text()
    dialog.accept()
    assert dialog.isVisible() and dialog.result() != SettingsDialog.DialogCode.Accepted
    assert "has no config.json" in dialog.error.text() and dialog.error.isVisible()
    assert not settings.path.exists()


def test_an_original_internvl2_checkpoint_is_offered_the_converter(qtbot, dialog, tmp_path):
    old = model_folder(tmp_path, "xmedgpt-orig", model_type="internvl_chat", arch="InternVLChatModel")
    dialog.model_dir.setText(str(old))
    assert "xmedgpt convert-checkpoint" in dialog.folder_check.text()


def test_registered_models_add_default_remove(qtbot, dialog, registry, tmp_path, output_dir):
    a = model_folder(tmp_path, "model-a")
    b = model_folder(tmp_path, "model-b", weights=b"\x01" * 8192)
    for folder, name in ((a, "alpha"), (b, "beta")):
        worker = dialog.add_model(folder, name)
        qtbot.waitUntil(lambda w=worker: w.isFinished(), timeout=10_000)
        qtbot.waitUntil(lambda n=name: f"Added '{n}'" in dialog.registry_message.text(), timeout=3000)
    on_disk = ModelRegistry(registry.path)
    assert set(on_disk.models) == {"alpha", "beta"} and on_disk.default == "alpha"
    rows = [dialog.models.item(i).text() for i in range(dialog.models.count())]
    assert rows[0].startswith("★ alpha") and on_disk.models["alpha"].weights_sha256[:12] in rows[0]
    dialog.models.setCurrentRow(1)
    dialog.default_selected()
    assert ModelRegistry(registry.path).default == "beta" and "now the default" in dialog.registry_message.text()
    assert "registered default 'beta'" in dialog.folder_check.text()  # empty folder field: the default is used
    dialog.resize(640, 760)
    qtbot.wait(50)
    assert dialog.grab().save(str(output_dir / "settings_dialog.png"))
    dialog.models.setCurrentRow(0)
    dialog.remove_selected()
    assert set(ModelRegistry(registry.path).models) == {"beta"} and a.exists()
    assert "was not touched" in dialog.registry_message.text()


def test_adding_a_folder_that_is_not_a_model_says_why(qtbot, dialog, registry, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    worker = dialog.add_model(notes)
    qtbot.waitUntil(worker.isFinished, timeout=10_000)
    qtbot.waitUntil(lambda: "'BertModel' model" in dialog.registry_message.text(), timeout=3000)
    assert registry.models == {} and dialog.models.count() == 0


def test_a_checkpoint_to_convert_cannot_be_the_default(qtbot, dialog, tmp_path):
    old = model_folder(tmp_path, "orig", model_type="internvl_chat", arch="InternVLChatModel")
    worker = dialog.add_model(old, "orig")
    qtbot.waitUntil(worker.isFinished, timeout=10_000)
    qtbot.waitUntil(lambda: "convert-checkpoint" in dialog.registry_message.text(), timeout=3000)
    dialog.models.setCurrentRow(0)
    dialog.default_selected()
    assert "convert it first" in dialog.registry_message.text()


def test_choosing_a_model_in_settings_loads_it_into_the_assistant(qtbot, settings, registry, tmp_path, monkeypatch):
    from training.model_factory import build_tiny_model

    folder = build_tiny_model(tmp_path / "tiny")
    settings.use_gpu = False

    def fill_and_ok(self):
        self.model_dir.setText(str(folder))
        self.accept()
        return self.result()

    monkeypatch.setattr(SettingsDialog, "exec", fill_and_ok)
    controller = AssistantController(ModelChoice("none", reason="No model configured"), settings)
    controller.load_model()
    assert controller.state == "none"
    assert open_settings(None, controller, registry)
    assert controller.choice.folder == folder and controller.choice.source == "Settings"
    try:
        qtbot.waitUntil(lambda: controller.state != "loading", timeout=60_000)
        assert (controller.state, controller.indicator) == ("ready", "tiny InternVL (random) · CPU")
        assert Settings.load(settings.path).model_dir == str(folder)
    finally:
        controller.shutdown()


def test_an_original_checkpoint_is_converted_and_registered_from_the_dialog(qtbot, dialog, registry, tmp_path):
    from tests.inference.test_convert import write_original

    src = tmp_path / "XMedGPT-orig"
    write_original(src, "qwen2", "layer_norm", False, 1)
    adding = dialog.add_model(src, "xmedgpt")
    qtbot.waitUntil(adding.isFinished, timeout=10_000)
    dialog.models.setCurrentRow(0)
    assert dialog.convert_button.isEnabled()
    converting = dialog.convert_selected()
    qtbot.waitUntil(converting.isFinished, timeout=120_000)
    qtbot.waitUntil(lambda: "Added 'xmedgpt-native'" in dialog.registry_message.text(), timeout=3000)
    native = ModelRegistry(registry.path).models["xmedgpt-native"]
    assert native.format == "native" and Path(native.path) == tmp_path / "XMedGPT-orig-native"
    assert ModelRegistry(registry.path).default == "xmedgpt-native"  # the first usable model
    rows = [dialog.models.item(i).text() for i in range(dialog.models.count())]
    dialog.models.setCurrentRow(next(i for i, t in enumerate(rows) if "xmedgpt-native" in t))
    assert not dialog.convert_button.isEnabled()  # a native model needs no conversion


def test_microphone_choice_lists_input_devices_system_default_first(qtbot, settings, registry, monkeypatch,
                                                                     output_dir):
    """Issue #20.5: Settings offers the microphones the capture layer sees; the choice is saved as
    ``dictation_device`` and used by dictation; a chosen device that is gone stays, marked."""
    from inference.speech.capture import AudioDevice
    from ui.shell import settings_dialog

    devices = [AudioDevice(0, "Built-in Microphone", "ALSA", 2, 48000.0, is_default=True),
               AudioDevice(3, "Philips SpeechMike III", "ALSA", 1, 16000.0)]
    monkeypatch.setattr(settings_dialog, "list_input_devices", lambda refresh=False: devices)
    d = SettingsDialog(settings, registry)
    qtbot.addWidget(d)
    d.show()
    mic = d.microphone
    assert [mic.itemText(i) for i in range(mic.count())] == [
        "System default (Built-in Microphone)", "Built-in Microphone (ALSA)", "Philips SpeechMike III (ALSA)"]
    assert mic.currentIndex() == 0 and mic.currentData() == "" and "2 microphones found" in d.microphone_note.text()
    d.grab().save(str(output_dir / "settings_microphone.png"))
    mic.setCurrentIndex(2)
    d.accept()
    assert settings.dictation_device == "Philips SpeechMike III"
    assert Settings.load(settings.path).dictation_device == "Philips SpeechMike III"

    # the SpeechMike unplugged: still the choice, marked, until the reader picks another
    monkeypatch.setattr(settings_dialog, "list_input_devices", lambda refresh=False: devices[:1])
    again = SettingsDialog(settings, registry)
    qtbot.addWidget(again)
    assert again.microphone.currentText() == "Philips SpeechMike III (not connected)"
    again.microphone.setCurrentIndex(0)
    again.accept()
    assert settings.dictation_device == ""  # the system default


def test_microphone_choice_works_without_any_device(qtbot, settings, registry, monkeypatch):
    from ui.shell import settings_dialog

    monkeypatch.setattr(settings_dialog, "list_input_devices", lambda refresh=False: [])
    d = SettingsDialog(settings, registry)
    qtbot.addWidget(d)
    assert d.microphone.count() == 1 and d.microphone.currentText() == "System default"
    assert "No microphone was found" in d.microphone_note.text()
    d.accept()
    assert settings.dictation_device == ""
