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


# ---- Studies and PACS ---------------------------------------------------------------------------------

@pytest.fixture
def nodes(tmp_path):
    from app.studies.nodes import LocalAE, Node, NodeStore

    store = NodeStore.load(tmp_path / "pacs" / "nodes.json")
    store.set_local(LocalAE("XMEDWS", "127.0.0.1", 11112))
    store.add(Node("archive", "ARCHIVE", "10.0.0.5", 104, retrieve="move"))
    store.add(Node("web", "WEBPACS", "10.0.0.6", 4242, dicomweb="http://10.0.0.6:8042/dicom-web"))
    return store


def pacs_dialog(qtbot, settings, registry, nodes) -> SettingsDialog:
    d = SettingsDialog(settings, registry, nodes=nodes)
    qtbot.addWidget(d)
    d.show()
    d.tabs.setCurrentIndex(1)
    return d


def test_pacs_values_are_saved_and_read_back(qtbot, settings, registry, nodes, tmp_path, output_dir):
    settings.report_send_node, settings.preread_quiet_seconds = "archive", 20.0
    d = pacs_dialog(qtbot, settings, registry, nodes)
    assert d.tabs.tabText(1) == "Studies and PACS"
    combo = d.send_node
    assert [combo.itemData(i) for i in range(combo.count())] == ["", "archive", "web"]
    assert combo.itemText(0).startswith("None") and "WEBPACS at 10.0.0.6:4242, DICOMweb" in combo.itemText(2)
    assert combo.currentData() == "archive" and d.send_via.currentData() == "dimse"
    assert not d.pacs_listen.isChecked() and "XMEDWS on 127.0.0.1:11112" in d.pacs_listen.text()
    assert not d.preread_on_arrival.isChecked() and not d.preread_quiet.isEnabled()
    assert d.preread_quiet.value() == 20
    combo.setCurrentIndex(combo.findData("web"))
    d.send_via.setCurrentIndex(d.send_via.findData("dicomweb"))
    d.pacs_listen.setChecked(True)
    d.preread_on_arrival.setChecked(True)
    assert d.preread_quiet.isEnabled()
    d.preread_quiet.setValue(45)
    workspace = tmp_path / "reading" / "workspace"
    d.workspace_dir.setText(str(workspace))
    d.resize(640, 520)
    qtbot.wait(50)
    assert d.grab().save(str(output_dir / "settings_pacs.png"))
    d.accept()
    assert d.result() == SettingsDialog.DialogCode.Accepted, d.error.text()
    again = Settings.load(settings.path)
    assert (again.report_send_node, again.report_send_via) == ("web", "dicomweb")
    assert again.pacs_listen is True and again.preread_on_arrival is True and again.preread_quiet_seconds == 45.0
    assert again.workspace_dir == str(workspace) and workspace.is_dir()  # made on OK
    assert not again.problems
    # "none": reports stay here
    d2 = pacs_dialog(qtbot, again, registry, nodes)
    assert d2.send_node.currentData() == "web" and d2.send_via.currentData() == "dicomweb"
    d2.send_node.setCurrentIndex(0)
    d2.accept()
    assert Settings.load(settings.path).report_send_node == ""


def test_unusable_pacs_values_are_refused_with_a_reason(qtbot, settings, registry, nodes, tmp_path):
    settings.report_send_node = "gone"  # a node removed with `xmedgpt pacs nodes remove` since
    d = pacs_dialog(qtbot, settings, registry, nodes)
    assert d.send_node.currentData() == "gone" and d.send_node.currentText() == "gone (not configured)"
    d.accept()
    assert d.result() != SettingsDialog.DialogCode.Accepted and d.error.isVisible()
    assert d.error.text().startswith("'gone' is not a configured PACS node") and "\n" not in d.error.text()
    assert not settings.path.exists() and settings.report_send_node == "gone"
    # STOW-RS to a node without a DICOMweb URL
    d.send_node.setCurrentIndex(d.send_node.findData("archive"))
    d.send_via.setCurrentIndex(d.send_via.findData("dicomweb"))
    d.tabs.setCurrentIndex(0)
    d.accept()
    assert "'archive' has no DICOMweb URL" in d.error.text() and d.tabs.currentIndex() == 1
    assert not settings.path.exists()
    # a workspace "folder" that is a file
    d.send_via.setCurrentIndex(d.send_via.findData("dimse"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    d.workspace_dir.setText(str(a_file))
    d.accept()
    assert d.error.text() == f"The workspace folder {a_file} is a file, not a folder."
    assert not settings.path.exists()
    d.workspace_dir.setText("")
    d.accept()
    assert d.result() == SettingsDialog.DialogCode.Accepted
    assert Settings.load(settings.path).report_send_node == "archive"


def test_a_new_workspace_folder_takes_effect_without_a_restart(qtbot, settings, registry, tmp_path, monkeypatch):
    """Measurements (the viewer's keeper) and the report's drafts go to the folder chosen in Settings at once."""
    from app.viewer.measure_store import MeasurementStore
    from tests.app.report.test_session import SAMPLE
    from ui.shell.main_window import MainWindow

    old, new = tmp_path / "ws-old", tmp_path / "ws-new"
    settings.workspace_dir, settings.audit_log = str(old), str(tmp_path / "audit.jsonl")
    win = MainWindow()
    qtbot.addWidget(win)
    win.grid.keeper.set_root(old)
    win.attach_report(settings)
    win.open_paths([SAMPLE])
    qtbot.waitUntil(lambda: not win.is_busy() and win.grid.active.volume is not None
                    and win.grid.active.volume.loaded == win.grid.active.volume.frames.shape[0], timeout=30_000)
    qtbot.wait(50)
    vp = win.grid.active
    vp.add_measurement("length", (10.0, 10.0), (60.0, 40.0))
    (first,) = old.glob("*.measurements.json")
    study_uid = first.name.removesuffix(".measurements.json")

    def fill_and_ok(self):
        self.workspace_dir.setText(str(new))
        self.accept()
        return self.result()

    monkeypatch.setattr(SettingsDialog, "exec", fill_and_ok)
    controller = AssistantController(ModelChoice("none", reason="No model configured"), settings)
    monkeypatch.setattr(controller, "load_model", lambda *a, **k: None)
    assert open_settings(win, controller, registry)
    assert win.grid.keeper.store.root == new and win.report.session.workspace.root == new
    assert f"Draft reports are kept in {new}" in win.statusBar().currentMessage()
    vp.add_measurement("angle", (20.0, 20.0), (40.0, 40.0), (60.0, 20.0))
    assert "angle" in {m.kind for m in MeasurementStore(new).load(study_uid).measurements}
    assert {m.kind for m in MeasurementStore(old).load(study_uid).measurements} == {"length"}
    # a draft started now is kept in the new folder
    win.report.start_report()
    win.report.session.tick()
    assert win.report.session.report is not None
    win.report.close()
    from app.report.workspace import Workspace

    assert Workspace(new).snapshot_path(study_uid).exists() and not Workspace(old).snapshot_path(study_uid).exists()
    win.close()
