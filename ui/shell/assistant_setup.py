"""Wiring the assistant into the main window: the controller, its panel, and Settings.

The shell owns this: it creates the assistant's controller and panel, docks them, and
answers the panel's request for the Settings dialog, which also reaches the report and
dictation (the reader's name, the push-to-talk key) — things the assistant panel itself
does not know about.
"""

from __future__ import annotations

from pathlib import Path

from app.assistant.session import AskContext, choose_model, device_for, quantization_for
from app.core.settings import Settings
from app.models.registry import ModelRegistry
from inference.types import Engine
from ui.assistant.controller import AssistantController
from ui.assistant.panel import AssistantPanel
from ui.shell.settings_dialog import SettingsDialog
from ui.viewer.viewport import Viewport


def install_assistant(window, explicit_model: Path | None = None, settings: Settings | None = None,
                      registry: ModelRegistry | None = None, engine: Engine | None = None) -> AssistantController:
    """Create the controller and panel, dock them in ``window`` (a MainWindow) and start
    loading the model (``engine``: use this one instead, e.g. a test double)."""
    settings = settings if settings is not None else Settings.load()
    registry = registry if registry is not None else ModelRegistry()
    choice = choose_model(explicit_model, settings, registry)
    controller = AssistantController(choice, settings, parent=window, engine=engine)

    def target(question: str) -> tuple[Viewport, AskContext] | None:
        found = window.assistant_target()
        if found is None:
            return None
        vp, study_description = found
        return vp, AskContext(vp.volume, vp.slice_index, vp.window, question, vp.inverted, study_description)

    panel = AssistantPanel(controller, target)
    panel.settings_requested.connect(lambda: open_settings(window, controller, registry))
    window.attach_assistant(controller, panel)
    if engine is None:
        controller.load_model()
    return controller


def open_settings(window, controller: AssistantController, registry: ModelRegistry) -> bool:
    """Show the Settings dialog; after OK, reload the model when its choice changed.
    A model chosen in Settings replaces ``--model`` for the rest of the session."""
    s = controller.settings
    before = (controller.choice, device_for(s), quantization_for(s))
    dialog = SettingsDialog(s, registry, window)
    if dialog.exec() != SettingsDialog.DialogCode.Accepted:
        return False
    report = getattr(window, "report", None)
    if report is not None:
        report.set_reader_name(s.reader_name)  # signs from now on; the user in the audit trail
    dictation = getattr(window, "dictation", None)
    if dictation is not None:
        dictation.apply_settings(s)  # push-to-talk key, microphone, auto-Ask take effect now
    explicit = controller.choice.folder if controller.choice.source == "--model" and not s.model_dir else None
    choice = choose_model(explicit, s, registry)
    if (choice, device_for(s), quantization_for(s)) != before or not controller.ready:
        controller.load_model(choice)
    return True
