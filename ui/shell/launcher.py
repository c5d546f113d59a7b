"""``xmedgpt view [PATH] [--model DIR]``: open the workstation window."""

from __future__ import annotations

import argparse
import logging

from app.core.errors import XMedError
from ui.shell.app_setup import application, default_study, has_display

log = logging.getLogger(__name__)


def open_window(args: argparse.Namespace):
    """Check the arguments, create the main window and start opening the study."""
    path = default_study(getattr(args, "path", None), start_screen=True)
    if path is not None and not path.exists():
        raise XMedError(f"{path} does not exist")
    model = getattr(args, "model", None)
    if model is not None and not model.exists():
        raise XMedError(f"model folder {model} does not exist")
    if not has_display():
        raise XMedError(
            "no display found: run the viewer in a desktop session (or under xvfb-run), "
            "or use `xmedgpt screenshot` for a PNG"
        )
    application()
    from ui.shell.assistant_setup import install_assistant
    from ui.shell.main_window import MainWindow
    from ui.shell.preread_setup import install_preread

    window = MainWindow(model_path=model)
    install_assistant(window, model)  # --model, else Settings, else the registered default or demo model
    window.attach_report()  # after the assistant: the report follows its answers
    install_preread(window)  # on the assistant's model; accepted lesions go into the report
    window.attach_dictation()  # after both: dictated text goes into the query box or the report
    window.attach_studies()  # after the report: a signed report goes to the PACS outbox
    window.show()
    if path is not None:
        window.open_paths([path])
    return window


def launch(args: argparse.Namespace) -> int:
    window = open_window(args)
    code = int(application().exec())
    window.shutdown()
    return code
