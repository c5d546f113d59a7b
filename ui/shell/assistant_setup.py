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
from app.studies.nodes import NodeStore
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


def apply_workspace(window, workspace: Path, before: Path) -> bool:
    """A new workspace folder takes effect without a restart: the measurements (the viewer's keeper) and the
    report's drafts and exports go there from now on. False when it did not change."""
    if Path(workspace) == Path(before):
        return False
    grid = getattr(window, "grid", None)
    if grid is not None and hasattr(grid, "set_workspace"):
        grid.set_workspace(workspace)
    report = getattr(window, "report", None)
    if report is not None and hasattr(report, "set_workspace"):
        report.set_workspace(workspace)
    return True


def open_settings(window, controller: AssistantController, registry: ModelRegistry) -> bool:
    """Show the Settings dialog; after OK, apply what changed: the reader's name, dictation, the workspace
    folder (measurements and drafts, :func:`apply_workspace`), the PACS settings of the study list, and the
    model (reloaded when its choice changed). A model chosen in Settings replaces ``--model`` for the rest of
    the session."""
    s = controller.settings
    before = (controller.choice, device_for(s), quantization_for(s))
    workspace_before = s.workspace_path()
    studies = getattr(window, "studies", None)
    nodes = None
    if studies is not None:  # the node list the study list uses (a fresh read: `xmedgpt pacs nodes add` since)
        try:
            nodes = NodeStore.load(studies.paths.nodes_file)
        except OSError:
            nodes = None
    dialog = SettingsDialog(s, registry, window, nodes=nodes)
    if dialog.exec() != SettingsDialog.DialogCode.Accepted:
        return False
    apply_workspace(window, s.workspace_path(), workspace_before)
    if studies is not None:
        studies.apply_settings(s)  # the report's destination, listening, pre-read on arrival take effect now
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
