"""The main toolbar: every command a reader clicks, fitting a 1366-px-wide screen.

One button per frequent command (open, layouts, measuring tools, link, invert, cine, help); the window
presets, the slab controls and the orientation commands are one button each with a menu (presets also
by keys 1–5, as the menu says), as RadiAnt's window-preset drop-down. The pre-read joins next to Open
(:func:`ui.shell.preread_setup.install_preread`). When the window is narrower still, the toolbar's »
button (drawn here: the dark theme left Qt's arrow invisible) lists what does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QAction, QActionGroup, QColor, QFont, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import QMainWindow, QMenu, QToolBar, QToolButton

from app.viewer.viewport import KEYED_PRESETS

LABELS = {
    "open_folder": "Open", "layout_1x1": "1×1", "layout_1x2": "1×2", "layout_2x2": "2×2", "layout_mpr": "MPR",
    "tool_pan": "Pan", "tool_length": "Length", "tool_rect": "Rect ROI", "tool_ellipse": "Ellipse ROI",
    "tool_angle": "Angle", "tool_cobb": "Cobb", "link_viewports": "Link", "toggle_invert": "Invert",
    "toggle_cine": "Cine", "show_help": "Help",
}

#: Buttons with a menu: (object name, label, tooltip, the click's own action or None, the menu's actions).
#: None in a menu list is a separator.
MENUS = (
    ("toolbar_slab", "Slab", "MPR slab: thicker, thinner, MIP → MinIP → mean", None,
     ("slab_thicker", "slab_thinner", "slab_mode")),
    ("toolbar_window", "Window", "Window presets (keys 1–5; 0: the image's own window)", None,
     (*[f"preset_{i}" for i in range(1, len(KEYED_PRESETS) + 1)], "preset_0")),
    ("toolbar_orient", "Rotate", "Click: rotate 90° clockwise; the arrow: rotate back, flip, reset", "rotate_cw",
     ("rotate_cw", "rotate_ccw", None, "flip_h", "flip_v", None, "reset")),
)

ORDER = ("open_folder", None, "layout_1x1", "layout_1x2", "layout_2x2", "layout_mpr", "toolbar_slab", None,
         "tool_pan", "tool_length", "tool_rect", "tool_ellipse", "tool_angle", "tool_cobb", "link_viewports", None,
         "toolbar_window", "toggle_invert", "toolbar_orient", "toggle_cine", None, "show_help")


def build_toolbar(window: QMainWindow, actions: Mapping[str, QAction]) -> tuple[QToolBar, dict[str, QAction]]:
    """The toolbar added to ``window``, and its checkable measuring-tool buttons by action name."""
    tb = QToolBar("Main", window)
    tb.setObjectName("main_toolbar")
    tb.setMovable(False)
    tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    window.addToolBar(tb)
    menus = {name: (label, tip, click, items) for name, label, tip, click, items in MENUS}
    tool_buttons: dict[str, QAction] = {}
    tools = QActionGroup(window)
    tools.setExclusive(True)
    for name in ORDER:
        if name is None:
            tb.addSeparator()
        elif name in menus:
            tb.addWidget(_menu_button(tb, name, *menus[name], actions))
        else:
            src = actions[name]
            btn = QAction(LABELS[name], window)
            btn.setObjectName(f"toolbar_{name}")
            btn.setToolTip(src.toolTip())
            btn.triggered.connect(src.trigger)
            if name.startswith("tool_"):
                btn.setCheckable(True)
                btn.setChecked(name == "tool_pan")
                tools.addAction(btn)
                tool_buttons[name] = btn
            tb.addAction(btn)
    _visible_extension(tb)
    return tb, tool_buttons


def _menu_button(tb: QToolBar, name: str, label: str, tip: str, click: str | None, items, actions) -> QToolButton:
    button = QToolButton(tb)
    button.setObjectName(name)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    button.setToolTip(tip)
    menu = QMenu(button)
    for item in items:
        if item is None:
            menu.addSeparator()
        else:
            menu.addAction(actions[item])  # the window's own action: its text, shortcut and checked state
    button.setMenu(menu)
    if click is None:
        button.setText(f"{label} ▾")  # a visible ▾ in the text, in place of Qt's small grey indicator
        button.setStyleSheet("QToolButton::menu-indicator { image: none; width: 0px; }")
        button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
    else:
        own = QAction(label, button)
        own.setToolTip(tip)
        own.triggered.connect(actions[click].trigger)
        button.setDefaultAction(own)
        button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
    return button


def _visible_extension(tb: QToolBar) -> None:
    """Qt's "more" arrow of an overflowing toolbar is drawn dark on the dark theme: give it a light »."""
    ext = tb.findChild(QToolButton, "qt_toolbar_ext_button")
    if ext is None:
        return
    pix = QPixmap(16, 16)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setPen(QColor("#d8d8d8"))
    font = QFont()
    font.setPixelSize(15)
    font.setBold(True)
    p.setFont(font)
    p.drawText(QRectF(0, -1, 16, 16), Qt.AlignmentFlag.AlignCenter, "»")
    p.end()
    ext.setIcon(QIcon(pix))
    ext.setToolTip("More commands (the window is too narrow to show them all)")
