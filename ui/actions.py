"""Named actions: what a key, a menu entry or a voice command can ask a panel to do.

Each panel says which actions it answers (``named_actions()``) and the main window
registers them here next to the shortcut table's actions. Keyboard shortcuts, menus
and voice commands then run an action by its name (the ``id`` of
``resources/dictation/commands.yaml``, the ``action`` of :mod:`ui.shortcuts`), never
by reaching into another panel's widgets. Panels do the same for the places dictated
text can go (``text_targets()``): the assistant's query box, the report's editors.

A handler returns ``None`` when it ran, or one sentence saying why it cannot run now
("Select a finding first …"); the caller shows that sentence to the reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: Runs the action; ``None`` when done, else why it could not run now.
Handler = Callable[[], "str | None"]
#: The editable widgets of one text target, first the preferred one (may be empty).
TargetWidgets = Callable[[], list]


@dataclass(frozen=True)
class Outcome:
    """What running an action did: ``ran``, or ``message`` says why not."""

    ran: bool
    message: str = ""

    def __bool__(self) -> bool:
        return self.ran


class Actions:
    """The window's registry of named actions and dictation text targets."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._owners: dict[str, str] = {}
        self._targets: dict[str, TargetWidgets] = {}

    # ---- actions -------------------------------------------------------------------------------
    def register(self, name: str, handler: Handler, owner: str = "") -> None:
        """Register ``handler`` under ``name``; a name has one owner (a second one is a wiring bug)."""
        if name in self._handlers and self._owners.get(name) != owner:
            raise ValueError(f"action {name!r} is already registered by {self._owners[name] or 'another panel'}")
        self._handlers[name] = handler
        self._owners[name] = owner

    def register_all(self, handlers: dict[str, Handler], owner: str) -> None:
        for name, handler in handlers.items():
            self.register(name, handler, owner)

    def __contains__(self, name: str) -> bool:
        return name in self._handlers

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def run(self, name: str) -> Outcome:
        """Run the action ``name``; an unknown name is an :class:`Outcome` that says so, not an error."""
        handler = self._handlers.get(name)
        if handler is None:
            return Outcome(False, f"'{name.replace('_', ' ')}' does nothing in this window.")
        message = handler()
        if message:
            log.info("action %s did not run: %s", name, message)
            return Outcome(False, str(message))
        return Outcome(True)

    # ---- text targets --------------------------------------------------------------------------
    def register_target(self, name: str, widgets: TargetWidgets) -> None:
        self._targets[name] = widgets

    def target_widgets(self, name: str) -> list:
        """The widgets of text target ``name`` (``[]`` when no panel offers it)."""
        widgets = self._targets.get(name)
        return list(widgets()) if widgets is not None else []


def append_text(line_edit, text: str) -> None:
    """Dictated or inserted words at the end of a one-line text target (the query box), one space apart."""
    current = line_edit.text().rstrip()
    line_edit.setText(f"{current} {text.strip()}".strip())
    line_edit.setFocus()
