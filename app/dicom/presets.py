"""Window presets per modality (width/centre in modality units: HU for CT).

The order is the order of the number keys in the viewer (1 = first).
"""

from __future__ import annotations

from app.dicom.model import Window

CT_PRESETS: tuple[Window, ...] = (
    Window(400, 40, "soft tissue"),
    Window(1500, -600, "lung"),
    Window(150, 90, "liver"),
    Window(2500, 480, "bone"),
    Window(80, 40, "brain"),
    Window(350, 50, "mediastinum"),
    Window(600, 200, "angio"),
    Window(2800, 600, "temporal bone"),
)

PRESETS: dict[str, tuple[Window, ...]] = {"CT": CT_PRESETS}


def presets_for(modality: str) -> tuple[Window, ...]:
    """Fixed presets for ``modality`` (empty where values are not absolute, as in MR)."""
    return PRESETS.get((modality or "").upper(), ())


def find_preset(name: str, modality: str = "CT") -> Window | None:
    """A preset by name (case and spaces/underscores ignored), searched in ``modality`` then CT."""
    key = name.strip().lower().replace("_", " ").replace("-", " ")
    for window in (*presets_for(modality), *CT_PRESETS):
        if window.name == key or window.name.replace(" ", "") == key.replace(" ", ""):
            return window
    return None


def parse_window(text: str, modality: str = "CT") -> Window:
    """A window from ``NAME`` (a preset) or ``W/L`` such as ``400/40`` or ``1500/-600``."""
    if "/" in text:
        w, _, c = text.partition("/")
        try:
            width, center = float(w), float(c)
        except ValueError:
            raise ValueError(f"window {text!r} is not WIDTH/LEVEL, e.g. 400/40") from None
        if width <= 0:
            raise ValueError("window width must be positive")
        return Window(width, center, f"{width:g}/{center:g}")
    found = find_preset(text, modality)
    if found is None:
        names = ", ".join(w.name for w in CT_PRESETS)
        raise ValueError(f"unknown window {text!r}; use WIDTH/LEVEL or one of: {names}, default, auto")
    return found
