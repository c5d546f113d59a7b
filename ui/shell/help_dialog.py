"""Help dialog: keyboard shortcuts and mouse gestures, generated from ui.shortcuts, and the voice
commands, generated from the dictation command table (resources/dictation/commands.yaml)."""

from __future__ import annotations

from html import escape

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

from app.dictation.text import Dictation, DictationConfigError
from ui.shortcuts import MOUSE, groups, pretty_keys


def shortcuts_html() -> str:
    rows = []
    for group, items in groups():
        rows.append(f"<tr><th colspan=2 align=left><br>{escape(group)}</th></tr>")
        rows += [
            f"<tr><td><b>{escape(pretty_keys(sc))}</b>&nbsp;&nbsp;</td><td>{escape(sc.description)}</td></tr>"
            for sc in items
        ]
    rows.append("<tr><th colspan=2 align=left><br>Mouse</th></tr>")
    rows += [f"<tr><td><b>{escape(g)}</b>&nbsp;&nbsp;</td><td>{escape(w)}</td></tr>" for g, w in MOUSE]
    return "<h3>Keyboard and mouse</h3><table cellspacing=2>" + "".join(rows) + "</table>"


def voice_commands_html(key: str = "F4", rows: list[tuple[str, str]] | None = None) -> str:
    """The voice commands (from :meth:`app.dictation.text.Dictation.help_rows`) and how to dictate."""
    try:
        rows = Dictation().help_rows() if rows is None else rows
    except DictationConfigError as exc:
        return f"<h3>Voice commands</h3><p>{escape(str(exc))}</p>"
    intro = (f"Hold <b>{escape(key)}</b> (or the Dictate button), speak, release. Text goes where the cursor is: "
             "the assistant's query box or the report. Say “period”, “comma”, “new line”, “new paragraph” for "
             "punctuation. An utterance that is exactly one of these phrases runs the command instead:")
    body = "".join(f"<tr><td><b>{escape(p)}</b>&nbsp;&nbsp;</td><td>{escape(d)}</td></tr>" for p, d in rows)
    return f"<h3>Voice commands</h3><p>{intro}</p><table cellspacing=2>{body}</table>"


class HelpDialog(QDialog):
    def __init__(self, parent=None, dictation_key: str | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("XMedGPT Workstation — shortcuts")
        self.resize(560, 700)
        self.browser = QTextBrowser()
        if dictation_key is None:
            dictation_key = getattr(getattr(parent, "dictation", None), "key", None) or "F4"
        self.browser.setHtml(shortcuts_html() + voice_commands_html(dictation_key))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
