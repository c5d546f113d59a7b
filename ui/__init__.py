"""PySide6 + pyqtgraph widgets of XMedGPT Workstation.

Windows, viewport, overlays and panels; adapts app/ objects to Qt signals and
holds no domain logic.
"""
