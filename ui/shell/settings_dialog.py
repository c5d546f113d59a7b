"""Settings: who signs, which model runs where, reliability, dictation key and microphone.

The model section holds the model folder (checked as ``xmedgpt models add``
checks one, without hashing) and the registered models of
:mod:`app.models.registry` with Add / Remove / Make default, the same operations
and messages as ``xmedgpt models``; adding hashes the weights in a background
thread. OK writes the values into :class:`app.core.settings.Settings` and saves it;
a folder that cannot be used keeps the dialog open with the reason.

The "Studies and PACS" tab holds the workspace folder (draft reports, measurements, key images and
exports; a file or a folder that cannot be made is refused) and the hospital connection: the node
signed reports are sent to (the nodes of ``xmedgpt pacs nodes``, or none), by DIMSE C-STORE or DICOMweb
STOW-RS (only for a node with a DICOMweb URL), whether this workstation's Storage SCP listens while the
viewer is open, and whether arriving studies are pre-read once complete (after how many quiet seconds).
A destination that is not a configured node is kept in the list, marked, and refused on OK.

The microphone choice lists the input devices the capture layer sees
(:func:`inference.speech.capture.list_input_devices`), "System default" first, and
keeps a chosen device that is not connected now (marked so) rather than dropping it;
with no device at all it offers "System default" alone and says none was found.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PySide6.QtCore import Qt, QThread, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QKeySequenceEdit,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.assistant.session import (
    QUANTIZATION_CHOICES,
    quantization_for,
    set_quantization,
)
from app.core.errors import XMedError
from app.core.settings import CHOICES, RANGES, Settings
from app.models.folders import (
    check_model_folder,
    convert_and_register,
    converted_folder,
)
from app.models.registry import ModelInfo, ModelRegistry, describe_size
from app.studies.locations import StudyPaths
from app.studies.nodes import NodeStore
from inference.resources import DEMO_MODEL_DIR
from inference.speech.capture import list_input_devices

log = logging.getLogger(__name__)

#: report_send_via → what the list says
SEND_VIA = {"dimse": "DIMSE (C-STORE)", "dicomweb": "DICOMweb (STOW-RS)"}
NO_NODE = "None (signed reports stay on this workstation)"


class _AddWorker(QThread):
    progress = Signal(str)
    added = Signal(object)  # ModelInfo
    failed = Signal(str)

    def __init__(self, registry: ModelRegistry, folder: Path, name: str | None) -> None:
        super().__init__()
        self.registry, self.folder, self.name = registry, folder, name

    def run(self) -> None:
        try:
            info = self.registry.add(self.folder, self.name, progress=self.progress.emit)
        except XMedError as exc:
            self.failed.emit(str(exc))
            return
        except OSError as exc:
            self.failed.emit(f"The model list could not be written: {exc}")
            return
        self.added.emit(info)


class _ConvertWorker(QThread):
    """``xmedgpt convert-checkpoint`` then ``models add`` for the converted folder, off the UI thread."""

    progress = Signal(str)
    added = Signal(object)  # ModelInfo of the converted model
    failed = Signal(str)

    def __init__(self, registry: ModelRegistry, info: ModelInfo) -> None:
        super().__init__()
        self.registry, self.info = registry, info
        self.dst = converted_folder(info)

    def run(self) -> None:
        try:
            info = convert_and_register(self.registry, self.info, progress=self.progress.emit)
        except XMedError as exc:
            self.failed.emit(str(exc))
            return
        except OSError as exc:
            self.failed.emit(f"The converted model could not be written: {exc}")
            return
        self.added.emit(info)


class SettingsDialog(QDialog):
    """Edits ``settings`` (and ``registry``); ``accept()`` saves to ``settings.path``."""

    def __init__(self, settings: Settings, registry: ModelRegistry, parent: QWidget | None = None,
                 nodes: NodeStore | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        self.registry = registry
        self.nodes = nodes if nodes is not None else _load_nodes()
        self._adder: _AddWorker | None = None
        self._converter: _ConvertWorker | None = None

        self.reader_name = QLineEdit(settings.reader_name)
        self.reader_name.setPlaceholderText("as on the signed report, e.g. Dr Jane Smith")
        who = QGroupBox("Reader")
        QFormLayout(who).addRow("Name", self.reader_name)

        self.model_dir = QLineEdit(settings.model_dir)
        self.model_dir.setPlaceholderText("empty: the registered default, else the embedded demo model")
        self.model_dir.textChanged.connect(self._check_folder)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.model_dir, stretch=1)
        folder_row.addWidget(browse)
        self.folder_check = QLabel()
        self.folder_check.setObjectName("folderCheck")
        self.folder_check.setWordWrap(True)
        self.models = QListWidget()
        self.models.setMinimumHeight(90)
        self.models.setAlternatingRowColors(True)
        self.add_button = QPushButton("Add…")
        self.add_button.clicked.connect(self._add_dialog)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        self.default_button = QPushButton("Make default")
        self.default_button.clicked.connect(self.default_selected)
        self.convert_button = QPushButton("Convert…")
        self.convert_button.setToolTip("Convert an original InternVL2/XMedGPT checkpoint to the native format "
                                       "(a new folder beside it) and register the result")
        self.convert_button.clicked.connect(self.convert_selected)
        self.models.currentRowChanged.connect(lambda _r: self._sync_convert())
        buttons = QHBoxLayout()
        for b in (self.add_button, self.remove_button, self.default_button, self.convert_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        self.registry_message = QLabel()
        self.registry_message.setObjectName("registryMessage")
        self.registry_message.setWordWrap(True)
        self.device = QComboBox()
        self.device.addItem("Automatic (the GPU when there is one)", True)
        self.device.addItem("CPU only", False)
        self.device.setCurrentIndex(0 if settings.use_gpu else 1)
        self.quantization = QComboBox()
        for key, label in QUANTIZATION_CHOICES.items():
            self.quantization.addItem(label, key)
        self.quantization.setCurrentIndex(list(QUANTIZATION_CHOICES).index(quantization_for(settings)))
        self.remote_url = QLineEdit(settings.remote_url)
        self.remote_url.setPlaceholderText("empty: run on this workstation; e.g. http://gpu-server:8000/v1")
        self.remote_model = QLineEdit(settings.remote_model)
        model = QGroupBox("Model")
        form = QFormLayout(model)
        form.addRow("Model folder", folder_row)
        form.addRow("", self.folder_check)
        form.addRow("Registered models", self.models)
        form.addRow("", buttons)
        form.addRow("", self.registry_message)
        form.addRow("Device", self.device)
        form.addRow("Quantization", self.quantization)
        form.addRow("Remote server", self.remote_url)
        form.addRow("Remote model name", self.remote_model)

        self.samples = QSpinBox()
        self.samples.setRange(1, 50)
        self.samples.setValue(settings.reliability_samples)
        self.questions = QSpinBox()
        self.questions.setRange(1, 10)
        self.questions.setValue(settings.reliability_questions)
        rel = QGroupBox("Reliability check")
        rform = QFormLayout(rel)
        rform.addRow("Answers sampled per question (N)", self.samples)
        rform.addRow("Questions per answer", self.questions)

        self.dictation_key = QKeySequenceEdit(QKeySequence(settings.dictation_key))
        self.auto_ask = QCheckBox("Ask the assistant as soon as a dictated question lands in the query box")
        self.auto_ask.setChecked(settings.dictation_auto_ask)
        self.spoken_audio = QCheckBox("Send spoken questions as audio to a model that can hear (else Whisper)")
        self.spoken_audio.setChecked(settings.spoken_query_audio)
        self.microphone = QComboBox()
        self.microphone.setObjectName("microphone")
        self.microphone_note = QLabel()
        self.microphone_note.setObjectName("microphoneNote")
        self.microphone_note.setWordWrap(True)
        rescan = QPushButton("Rescan")
        rescan.setToolTip("Look for microphones again (after plugging one in)")
        rescan.clicked.connect(lambda: self.refresh_microphones(rescan=True))
        mic_row = QHBoxLayout()
        mic_row.addWidget(self.microphone, stretch=1)
        mic_row.addWidget(rescan)
        self.refresh_microphones(selected=settings.dictation_device)
        dict_box = QGroupBox("Dictation")
        dform = QFormLayout(dict_box)
        dform.addRow("Microphone", mic_row)
        dform.addRow("", self.microphone_note)
        dform.addRow("Push-to-talk key", self.dictation_key)
        dform.addRow("", self.auto_ask)
        dform.addRow("", self.spoken_audio)

        self.error = QLabel()
        self.error.setObjectName("settingsError")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #f85149; font-weight: bold;")
        self.error.hide()
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        box.accepted.connect(self.accept)
        box.rejected.connect(self.reject)
        reading = QWidget()
        rlayout = QVBoxLayout(reading)
        rlayout.setContentsMargins(0, 0, 0, 0)
        for w in (who, model, rel, dict_box):
            rlayout.addWidget(w)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("settingsTabs")
        self.tabs.addTab(reading, "Reading")
        self.tabs.addTab(self._studies_tab(settings), "Studies and PACS")
        layout = QVBoxLayout(self)
        for w in (self.tabs, self.error, box):
            layout.addWidget(w)
        for problem in registry.problems:
            self._registry_says(problem, error=True)
        self.refresh_models()
        self._check_folder(self.model_dir.text())

    # ------------------------------------------------------------------ studies and PACS
    def _studies_tab(self, s: Settings) -> QWidget:
        self.workspace_dir = QLineEdit(s.workspace_dir)
        self.workspace_dir.setObjectName("workspaceDir")
        self.workspace_dir.setPlaceholderText(f"empty: the default ({_default_workspace()})")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_workspace)
        ws_row = QHBoxLayout()
        ws_row.addWidget(self.workspace_dir, stretch=1)
        ws_row.addWidget(browse)
        files = QGroupBox("Files")
        fform = QFormLayout(files)
        fform.addRow("Workspace folder", ws_row)
        note = QLabel("Draft reports, measurements, key images and exports are kept here.")
        note.setWordWrap(True)
        note.setStyleSheet("color: #8b949e;")
        fform.addRow("", note)

        self.send_node = QComboBox()
        self.send_node.setObjectName("reportSendNode")
        self.send_node.addItem(NO_NODE, "")
        for name in sorted(self.nodes.nodes):
            n = self.nodes.nodes[name]
            web = ", DICOMweb" if n.dicomweb else ""
            self.send_node.addItem(f"{name} — {n.ae_title} at {n.host}:{n.port}{web}", name)
        if s.report_send_node and self.send_node.findData(s.report_send_node) < 0:
            self.send_node.addItem(f"{s.report_send_node} (not configured)", s.report_send_node)
        self.send_node.setCurrentIndex(max(0, self.send_node.findData(s.report_send_node)))
        self.send_via = QComboBox()
        self.send_via.setObjectName("reportSendVia")
        for key, label in SEND_VIA.items():
            self.send_via.addItem(label, key)
        self.send_via.setCurrentIndex(max(0, self.send_via.findData(s.report_send_via)))
        local = self.nodes.local
        self.pacs_listen = QCheckBox(f"Receive studies while the viewer is open (Storage SCP {local.ae_title} on "
                                     f"{local.host}:{local.port})")
        self.pacs_listen.setObjectName("pacsListen")
        self.pacs_listen.setChecked(s.pacs_listen)
        self.preread_on_arrival = QCheckBox("Pre-read each arriving study in the background once it is complete")
        self.preread_on_arrival.setObjectName("prereadOnArrival")
        self.preread_on_arrival.setChecked(s.preread_on_arrival)
        lo, hi = RANGES["preread_quiet_seconds"]
        self.preread_quiet = QDoubleSpinBox()
        self.preread_quiet.setObjectName("prereadQuietSeconds")
        self.preread_quiet.setRange(lo, hi)
        self.preread_quiet.setDecimals(0)
        self.preread_quiet.setSuffix(" s")
        self.preread_quiet.setValue(s.preread_quiet_seconds)
        self.preread_quiet.setToolTip("A received study counts as complete when its association is released, or "
                                      "after this long without a new image")
        self.preread_quiet.setEnabled(s.preread_on_arrival)
        self.preread_on_arrival.toggled.connect(self.preread_quiet.setEnabled)
        self.pacs_note = QLabel()
        self.pacs_note.setObjectName("pacsNote")
        self.pacs_note.setWordWrap(True)
        self.pacs_note.setStyleSheet("color: #8b949e;")
        self.pacs_note.setText("\n".join(self.nodes.problems) if self.nodes.problems else
                               "" if self.nodes.nodes else
                               "No PACS node is configured: add one with 'xmedgpt pacs nodes add NAME --ae AE "
                               "--host HOST --port PORT'.")
        self.pacs_note.setVisible(bool(self.pacs_note.text()))
        pacs = QGroupBox("PACS")
        pform = QFormLayout(pacs)
        pform.addRow("Send signed reports to", self.send_node)
        pform.addRow("Send by", self.send_via)
        pform.addRow("", self.pacs_note)
        pform.addRow("", self.pacs_listen)
        pform.addRow("", self.preread_on_arrival)
        pform.addRow("Complete after a quiet time of", self.preread_quiet)
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(files)
        layout.addWidget(pacs)
        layout.addStretch(1)
        return tab

    def _browse_workspace(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose the workspace folder", self.workspace_dir.text())
        if folder:
            self.workspace_dir.setText(folder)

    def check_studies(self) -> str:
        """Why the Studies and PACS values cannot be used (one sentence), or "" when they can. A workspace
        folder that does not exist yet is made (last, so a refused dialog leaves nothing behind)."""
        node = str(self.send_node.currentData() or "")
        via = str(self.send_via.currentData() or "")
        if via not in CHOICES["report_send_via"]:
            return f"Reports can be sent by DIMSE or DICOMweb, not {via!r}."
        if node and node not in self.nodes.nodes:
            return (f"'{node}' is not a configured PACS node; choose another or none (add it with 'xmedgpt pacs "
                    "nodes add').")
        if node and via == "dicomweb" and not self.nodes.nodes[node].dicomweb:
            return (f"'{node}' has no DICOMweb URL, so reports cannot be sent to it by STOW-RS; choose DIMSE or "
                    "give the node a URL ('xmedgpt pacs nodes add … --dicomweb URL').")
        lo, hi = RANGES["preread_quiet_seconds"]
        if not lo <= self.preread_quiet.value() <= hi:
            return f"The quiet time must be between {lo:g} and {hi:g} seconds."
        text = self.workspace_dir.text().strip()
        if not text:
            return ""
        if "\x00" in text:
            return "The workspace folder is not a usable path."
        folder = Path(text).expanduser()
        try:
            if folder.exists() and not folder.is_dir():
                return f"The workspace folder {folder} is a file, not a folder."
            folder.mkdir(parents=True, exist_ok=True)
        except (OSError, RuntimeError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            return f"The workspace folder {folder} cannot be created: {why}."
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"The workspace folder {folder} cannot be written to."
        return ""

    # ------------------------------------------------------------------ model folder
    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder", self.model_dir.text())
        if folder:
            self.model_dir.setText(folder)

    def _check_folder(self, text: str) -> bool:
        if not text.strip():
            demo = "the embedded demo model" if (DEMO_MODEL_DIR / "config.json").is_file() else "no model (none installed)"
            default = self.registry.default_model()
            self.folder_check.setText(f"Uses {'registered default ' + repr(default.name) if default else demo}.")
            self.folder_check.setStyleSheet("color: #8b949e;")
            return True
        try:
            self.folder_check.setText("✓ " + check_model_folder(Path(text.strip())))
            self.folder_check.setStyleSheet("color: #2ea043;")
            return True
        except XMedError as exc:
            self.folder_check.setText(str(exc))
            self.folder_check.setStyleSheet("color: #f85149;")
            return False

    # ------------------------------------------------------------------ microphone
    def refresh_microphones(self, selected: str | None = None, rescan: bool = False) -> None:
        """Fill the microphone list: "System default" (empty setting) first, then each input device by
        name; the current choice stays selected (kept, marked, when it is not connected now)."""
        chosen = self.microphone.currentData() if selected is None else selected
        devices = list_input_devices(refresh=rescan)
        self.microphone.clear()
        default = next((d for d in devices if d.is_default), None)
        self.microphone.addItem(f"System default ({default.name})" if default else "System default", "")
        for d in devices:
            self.microphone.addItem(str(d), d.name)
        if chosen and self.microphone.findData(chosen) < 0:
            self.microphone.addItem(f"{chosen} (not connected)", chosen)
        self.microphone.setCurrentIndex(max(0, self.microphone.findData(chosen or "")))
        if not devices:
            self.microphone_note.setText("No microphone was found; connect one and press Rescan.")
        else:
            n = len(devices)
            self.microphone_note.setText(f"{n} microphone{'s' if n != 1 else ''} found.")

    # ------------------------------------------------------------------ registry
    def refresh_models(self) -> None:
        self.models.clear()
        for info in self.registry.models.values():
            mark = "★ " if info.name == self.registry.default else ""
            note = " (needs conversion)" if info.needs_conversion else ""
            item = QListWidgetItem(f"{mark}{info.name} — {describe_size(info)} — "
                                   f"SHA-256 {info.weights_sha256[:12]}…{note}\n{info.path}")
            item.setData(Qt.ItemDataRole.UserRole, info.name)
            item.setToolTip(f"weights SHA-256 {info.weights_sha256}")
            self.models.addItem(item)
        has = self.models.count() > 0
        self.remove_button.setEnabled(has)
        self.default_button.setEnabled(has)
        self._sync_convert()

    def _sync_convert(self) -> None:
        name = self.selected_name()
        busy = self._converter is not None and self._converter.isRunning()
        self.convert_button.setEnabled(bool(name) and self.registry.models[name].needs_conversion and not busy)

    def convert_selected(self) -> _ConvertWorker | None:
        """Convert the selected original checkpoint beside itself and register the converted folder."""
        name = self.selected_name()
        if name is None or not self.registry.models[name].needs_conversion:
            return None
        w = _ConvertWorker(self.registry, self.registry.models[name])
        self._registry_says(f"Converting '{name}' into {w.dst}…")
        w.progress.connect(lambda text: self._registry_says(f"Converting '{name}': {text}"))
        w.added.connect(self._added)
        w.failed.connect(lambda msg: self._registry_says(msg, error=True))
        w.finished.connect(self._sync_convert)
        self._converter = w
        w.start()
        self._sync_convert()
        return w

    def selected_name(self) -> str | None:
        item = self.models.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def _registry_says(self, text: str, error: bool = False) -> None:
        self.registry_message.setText(text)
        self.registry_message.setStyleSheet("color: #f85149;" if error else "color: #2ea043;")

    def _add_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a model folder")
        if not folder:
            return
        name, ok = QInputDialog.getText(self, "Model name", "Register it as:", text=Path(folder).name)
        if ok:
            self.add_model(Path(folder), name.strip() or None)

    def add_model(self, folder: Path, name: str | None = None) -> _AddWorker:
        """Check and register ``folder`` in the background (hashing the weights)."""
        self.add_button.setEnabled(False)
        self._registry_says(f"Checking {folder}…")
        w = _AddWorker(self.registry, folder, name)
        w.progress.connect(lambda text: self._registry_says(f"Checking {folder.name}: {text}…"))
        w.added.connect(self._added)
        w.failed.connect(lambda msg: self._registry_says(msg, error=True))
        w.finished.connect(lambda: self.add_button.setEnabled(True))
        self._adder = w
        w.start()
        return w

    def _added(self, info: ModelInfo) -> None:
        self.refresh_models()
        if info.needs_conversion:
            self._registry_says(f"Added '{info.name}'. It is an original InternVL2/XMedGPT checkpoint: convert it "
                                f"with xmedgpt convert-checkpoint {info.path} {info.path}-native, then add that.",
                                error=True)
        else:
            default = " It is the default model." if self.registry.default == info.name else ""
            self._registry_says(f"Added '{info.name}' ({describe_size(info)}, weights SHA-256 "
                                f"{info.weights_sha256[:16]}…).{default}")

    def remove_selected(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        try:
            info = self.registry.remove(name)
        except (XMedError, OSError) as exc:
            self._registry_says(str(exc), error=True)
            return
        self.refresh_models()
        self._registry_says(f"Removed '{info.name}' from the list; {info.path} was not touched.")

    def default_selected(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        try:
            info = self.registry.set_default(name)
        except (XMedError, OSError) as exc:
            self._registry_says(str(exc), error=True)
            return
        self.refresh_models()
        self._registry_says(f"'{info.name}' is now the default model.")
        self._check_folder(self.model_dir.text())

    # ------------------------------------------------------------------ OK
    def accept(self) -> None:
        if not self._check_folder(self.model_dir.text()):
            self.tabs.setCurrentIndex(0)
            self._fail("The model folder cannot be used: " + self.folder_check.text())
            return
        why = self.check_studies()
        if why:
            self.tabs.setCurrentIndex(1)
            self._fail(why)
            return
        s = self.settings
        s.reader_name = self.reader_name.text().strip()
        s.model_dir = self.model_dir.text().strip()
        s.use_gpu = bool(self.device.currentData())
        set_quantization(s, self.quantization.currentData())
        s.remote_url = self.remote_url.text().strip()
        s.remote_model = self.remote_model.text().strip()
        s.reliability_samples = self.samples.value()
        s.reliability_questions = self.questions.value()
        key = self.dictation_key.keySequence().toString()
        if key:
            s.dictation_key = key
        s.dictation_device = str(self.microphone.currentData() or "")
        s.dictation_auto_ask = self.auto_ask.isChecked()
        s.spoken_query_audio = self.spoken_audio.isChecked()
        s.workspace_dir = self.workspace_dir.text().strip()
        s.report_send_node = str(self.send_node.currentData() or "")
        s.report_send_via = str(self.send_via.currentData())
        s.pacs_listen = self.pacs_listen.isChecked()
        s.preread_on_arrival = self.preread_on_arrival.isChecked()
        s.preread_quiet_seconds = float(self.preread_quiet.value())
        try:
            s.save()
        except OSError as exc:
            self._fail(f"The settings could not be saved: {exc}")
            return
        super().accept()

    def _fail(self, text: str) -> None:
        self.error.setText(text)
        self.error.show()

    def done(self, result: int) -> None:
        for w in (self._adder, self._converter):
            if w is not None:
                w.wait()
        super().done(result)


def _load_nodes() -> NodeStore:
    """The PACS nodes of ``xmedgpt pacs nodes`` (none when the list cannot be read)."""
    try:
        return NodeStore.load(StudyPaths.detect().nodes_file)
    except OSError as exc:
        store = NodeStore(StudyPaths.detect().nodes_file)
        store.problems.append(f"The PACS node list could not be read: {exc}")
        return store


def _default_workspace() -> Path:
    return Settings().workspace_path()
