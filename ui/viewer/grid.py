"""The central area: 1×1, 1×2 or 2×2 viewports, one of them active."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QGridLayout, QWidget

from ui.viewer.viewport import Viewport

LAYOUTS: dict[str, tuple[int, int]] = {"1x1": (1, 1), "1x2": (1, 2), "2x2": (2, 2)}


class ViewportGrid(QWidget):
    active_changed = Signal(object)  # Viewport

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(2)
        self.viewports = [Viewport(self) for _ in range(4)]
        for vp in self.viewports:
            vp.activated.connect(self.set_active)
            vp.double_clicked.connect(self.toggle_maximized)
        self.layout_name = ""
        self.maximized: Viewport | None = None
        self._active = self.viewports[0]
        self.set_layout("1x1")
        self.set_active(self.viewports[0])

    @property
    def active(self) -> Viewport:
        return self._active

    def visible(self) -> list[Viewport]:
        rows, cols = LAYOUTS[self.layout_name]
        return self.viewports[: rows * cols]

    def set_layout(self, name: str) -> None:
        if name not in LAYOUTS:
            raise ValueError(f"unknown layout {name!r}")
        rows, cols = LAYOUTS[name]
        self.maximized = None
        for vp in self.viewports:
            self._grid.removeWidget(vp)
            vp.hide()
        for i, vp in enumerate(self.viewports[: rows * cols]):
            self._grid.addWidget(vp, i // cols, i % cols)
            vp.show()
        for r in range(2):
            self._grid.setRowStretch(r, 1 if r < rows else 0)
        for c in range(2):
            self._grid.setColumnStretch(c, 1 if c < cols else 0)
        self.layout_name = name
        if self._active not in self.visible():
            self.set_active(self.viewports[0])

    def toggle_maximized(self, vp: Viewport) -> None:
        """Double-click: one viewport fills the grid, again: back to the layout (1×1: fit)."""
        if self.maximized is not None:
            self.maximized = None
            for other in self.visible():
                other.show()
        elif len(self.visible()) > 1:
            self.maximized = vp
            for other in self.visible():
                other.setVisible(other is vp)
        else:
            vp.fit()
        self.set_active(vp)

    def set_active(self, vp: Viewport) -> None:
        changed = vp is not self._active
        self._active = vp
        for other in self.viewports:
            other.set_active(other is vp)
        if changed:
            self.active_changed.emit(vp)

    def next_viewport(self) -> None:
        vis = self.visible()
        i = vis.index(self._active) if self._active in vis else -1
        nxt = vis[(i + 1) % len(vis)]
        self.set_active(nxt)
        nxt.setFocus()
