"""The central area: 1×1, 1×2 or 2×2 viewports, or the MPR views (1×3, 2×2), one of them active.

The grid also owns what ties its viewports together: :class:`ui.viewer.sync.ViewportSync`
(scroll, window/level, zoom and a linked cursor between series of one frame of reference, or
linked by hand with :meth:`ViewportGrid.toggle_link`), :class:`ui.viewer.measure_persist.
MeasurementKeeper` (measurements saved with the study's workspace and restored when a series is
shown again), :class:`ui.viewer.key_images.KeyImageKeeper` (key images the reader marks, kept the same
way), one measuring tool for every viewport and MPR view, and the lesions the MPR views
draw on every plane (the boxes of the viewports showing the MPR's series), redrawn as soon as those
boxes change (a pre-read finishing, an assistant answer, a report edit), not on the next crosshair move.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QGridLayout, QWidget

from app.viewer.mpr import Extent, extents_from_boxes
from ui.viewer.key_images import KeyImageKeeper
from ui.viewer.measure_persist import MeasurementKeeper
from ui.viewer.mpr import MPR_LAYOUTS, MprPanel
from ui.viewer.sync import ViewportSync
from ui.viewer.viewport import Viewport

LAYOUTS: dict[str, tuple[int, int]] = {"1x1": (1, 1), "1x2": (1, 2), "2x2": (2, 2)}


class ViewportGrid(QWidget):
    active_changed = Signal(object)  # Viewport
    message = Signal(str)  # a sentence for the status bar (link made, measurements file set aside)

    def __init__(self, parent=None, workspace=None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(2)
        self.viewports = [Viewport(self) for _ in range(4)]
        for vp in self.viewports:
            vp.activated.connect(self.set_active)
            vp.double_clicked.connect(self.toggle_maximized)
            vp.tool_changed.connect(self._tool_everywhere)
        #: measurements saved with the study's workspace (``workspace``: the folder; default: the settings')
        self.keeper = MeasurementKeeper(workspace, self)
        self.keeper.message.connect(self.message)
        for vp in self.viewports:
            self.keeper.attach(vp)
        #: key images the reader marks (K), kept with the study's workspace like the measurements
        self.key_images = KeyImageKeeper(workspace, self)
        self.key_images.message.connect(self.message)
        for vp in self.viewports:
            self.key_images.attach(vp)
        self.sync = ViewportSync(self.viewports, self.visible, self)
        #: boxes added or removed on a viewport (an assistant answer, a finished pre-read, a report edit):
        #: the MPR views redraw the lesions' extents at once, not on the next crosshair move; one redraw
        #: per burst (a pre-read adds a box per slice per lesion)
        self._extents_timer = QTimer(self, singleShot=True, interval=0)
        self._extents_timer.timeout.connect(self._redraw_extents)
        for vp in self.viewports:
            vp.overlays.changed.connect(self._extents_timer.start)
        self.sync.message.connect(self.message)
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
                vp.tool_changed.connect(self._tool_everywhere)
                vp.key_image_requested.connect(lambda: self.message.emit(
                    "Key images are the acquired slices: mark one in a 1×1, 1×2 or 2×2 layout (an MPR plane is "
                    "not an image of the study)."))
            self.mpr.extents_provider = self.mpr_extents
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
        self.layout_name = name
        self._stretch_to(None)
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
            self._stretch_to(None)
        elif len(self.visible()) > 1:
            self.maximized = vp
            for other in self.visible():
                other.setVisible(other is vp)
            self._stretch_to(vp)
        else:
            vp.fit()
        self.set_active(vp)

    def _stretch_to(self, vp: Viewport | None) -> None:
        """Give every row and column of the layout its share again (``None``), or all of it to ``vp``'s row
        and column: an empty cell of a grid layout keeps its stretch, so hiding the others alone would
        leave the maximised viewport in its quarter."""
        rows, cols = LAYOUTS.get(self.layout_name, (2, 2))
        row = col = None
        if vp is not None:
            row, col, _rs, _cs = self._grid.getItemPosition(self._grid.indexOf(vp))
        for r in range(2):
            self._grid.setRowStretch(r, (1 if r < rows else 0) if row is None else int(r == row))
        for c in range(2):
            self._grid.setColumnStretch(c, (1 if c < cols else 0) if col is None else int(c == col))

    def set_active(self, vp: Viewport) -> None:
        changed = vp is not self._active
        self._active = vp
        for other in self.viewports + (self.mpr.views if self.mpr is not None else []):
            other.set_active(other is vp)
        if changed:
            self.active_changed.emit(vp)

    def _tool_everywhere(self, tool: str) -> None:
        """One measuring tool for every viewport and MPR view (as in RadiAnt and OHIF)."""
        for vp in self.viewports + (self.mpr.views if self.mpr is not None else []):
            if vp.tool != tool:
                vp.set_tool(tool)

    def toggle_link(self) -> str:
        """Link viewports (a prior study beside the current one) as they are now; again: unlink."""
        text = self.sync.toggle_link()
        self.message.emit(text)
        return text

    def set_workspace(self, root) -> None:
        """The workspace folder changed (Settings): measurements and key images are saved there from now on."""
        self.keeper.set_root(root)
        self.key_images.set_root(root)

    def _redraw_extents(self) -> None:
        if self.mpr is not None and self.mpr.state is not None:
            self.mpr.draw_extents()

    def mpr_extents(self) -> list[Extent]:
        """The boxes on the viewports that show the MPR's series (assistant, report, pre-read), as lesions."""
        panel = self.mpr
        if panel is None or panel.source is None:
            return []
        series = panel.source.series
        rows = []
        for vp in self.viewports:
            v = vp.volume
            if v is None or not (v is panel.source or v.series is series or v.series.uid == series.uid):
                continue
            ov = vp.overlays
            for box_id in ov.ids():
                b = ov.box(box_id)
                entry = getattr(ov, "_entries", {}).get(box_id)
                source = getattr(entry, "source", "ai")
                rows.append((box_id, ov.frame_of(box_id), (b.x0, b.y0, b.x1, b.y1), ov.label_of(box_id), source))
            break  # one viewport's boxes are the series' boxes
        return extents_from_boxes(rows)

    def next_viewport(self) -> None:
        vis = self.visible()
        i = vis.index(self._active) if self._active in vis else -1
        nxt = vis[(i + 1) % len(vis)]
        self.set_active(nxt)
        nxt.setFocus()
