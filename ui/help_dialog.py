"""Help dialog: keyboard shortcuts and mouse gestures, generated from ui.shortcuts."""

from __future__ import annotations

from html import escape

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

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


class HelpDialog(QDialog):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("XMedGPT Workstation — shortcuts")
        self.resize(560, 700)
        self.browser = QTextBrowser()
        self.browser.setHtml(shortcuts_html())
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
