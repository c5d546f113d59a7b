"""The central area: 1×1, 1×2 or 2×2 viewports, or the MPR views (1×3, 2×2), one of them active."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QGridLayout, QWidget

from ui.viewer.mpr import MPR_LAYOUTS, MprPanel
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
        self.mpr: MprPanel | None = None  # built the first time an MPR layout is chosen
        self.maximized: Viewport | None = None
        self._active = self.viewports[0]
        self.set_layout("1x1")
        self.set_active(self.viewports[0])

    @property
    def active(self) -> Viewport:
        return self._active

    def visible(self) -> list[Viewport]:
        if self.layout_name in MPR_LAYOUTS and self.mpr is not None:
            return list(self.mpr.visible())
        rows, cols = LAYOUTS[self.layout_name]
        return self.viewports[: rows * cols]

    @property
    def is_mpr(self) -> bool:
        return self.layout_name in MPR_LAYOUTS

    def mpr_panel(self) -> MprPanel:
        """The MPR views (created on first use, wired like the other viewports)."""
        if self.mpr is None:
            self.mpr = MprPanel(self)
            for vp in self.mpr.views:
                vp.activated.connect(self.set_active)
                vp.double_clicked.connect(self.toggle_maximized)
            self.mpr.hide()
        return self.mpr

    def set_layout(self, name: str) -> None:
        if name in MPR_LAYOUTS:
            self._set_mpr_layout(name)
            return
        if name not in LAYOUTS:
            raise ValueError(f"unknown layout {name!r}")
        if self.mpr is not None:
            self._grid.removeWidget(self.mpr)
            self.mpr.hide()
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

    def _set_mpr_layout(self, name: str) -> None:
        panel = self.mpr_panel()
        self.maximized = None
        for vp in self.viewports:
            self._grid.removeWidget(vp)
            vp.hide()
        panel.set_layout(name)
        self._grid.addWidget(panel, 0, 0, 2, 2)
        for r in range(2):
            self._grid.setRowStretch(r, 1)
            self._grid.setColumnStretch(r, 1)
        panel.show()
        self.layout_name = name
        self._grid.activate()  # sizes now, so the views fit their new panes
        panel.layout().activate()
        panel.fit_all()
        if self._active not in self.visible():
            self.set_active(panel.visible()[0])

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
        for other in self.viewports + (self.mpr.views if self.mpr is not None else []):
            other.set_active(other is vp)
        if changed:
            self.active_changed.emit(vp)

    def next_viewport(self) -> None:
        vis = self.visible()
        i = vis.index(self._active) if self._active in vis else -1
        nxt = vis[(i + 1) % len(vis)]
        self.set_active(nxt)
        nxt.setFocus()
