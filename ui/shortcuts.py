"""The one table of keyboard shortcuts and mouse gestures.

The viewport and the main window bind their keys from :data:`SHORTCUTS`, and
the Help dialog lists the same table, so what the reader reads is what the
keys do. ``keys`` are ``QKeySequence`` portable strings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shortcut:
    action: str  # name of the viewport / main-window action it triggers
    keys: tuple[str, ...]
    description: str
    group: str
    scope: str = "viewport"  # "viewport": the active viewport; "window": the main window


SHORTCUTS: tuple[Shortcut, ...] = (
    # Navigation
    Shortcut("previous_slice", ("Up", "Left"), "Previous slice", "Navigation"),
    Shortcut("next_slice", ("Down", "Right"), "Next slice", "Navigation"),
    Shortcut("first_slice", ("Home",), "First slice", "Navigation"),
    Shortcut("last_slice", ("End",), "Last slice", "Navigation"),
    Shortcut("previous_series", ("PgUp",), "Previous series", "Navigation"),
    Shortcut("next_series", ("PgDown",), "Next series", "Navigation"),
    Shortcut("toggle_cine", ("Space",), "Cine play / pause", "Navigation"),
    Shortcut("cine_faster", ("]",), "Cine faster", "Navigation"),
    Shortcut("cine_slower", ("[",), "Cine slower", "Navigation"),
    # Window / level
    Shortcut("preset_1", ("1",), "Soft tissue window (W 400 / L 40)", "Window"),
    Shortcut("preset_2", ("2",), "Lung window (W 1500 / L −600)", "Window"),
    Shortcut("preset_3", ("3",), "Liver window (W 150 / L 90)", "Window"),
    Shortcut("preset_4", ("4",), "Bone window (W 2500 / L 480)", "Window"),
    Shortcut("preset_5", ("5",), "Brain window (W 80 / L 40)", "Window"),
    Shortcut("preset_0", ("0",), "Window from the image header", "Window"),
    Shortcut("toggle_invert", ("I",), "Invert grey scale", "Window"),
    # View
    Shortcut("zoom_in", ("+", "="), "Zoom in", "View"),
    Shortcut("zoom_out", ("-",), "Zoom out", "View"),
    Shortcut("fit", ("F",), "Fit image to viewport", "View"),
    Shortcut("rotate_cw", (".",), "Rotate 90° clockwise", "View"),
    Shortcut("rotate_ccw", (",",), "Rotate 90° counter-clockwise", "View"),
    Shortcut("flip_h", ("H",), "Flip horizontally", "View"),
    Shortcut("flip_v", ("V",), "Flip vertically", "View"),
    Shortcut("reset", ("R",), "Reset window, zoom, rotation, flips", "View"),
    # Tools
    Shortcut("tool_pan", ("Esc",), "Pan tool (left drag moves the image)", "Tools"),
    Shortcut("tool_length", ("L",), "Length measurement (mm)", "Tools"),
    Shortcut("tool_rect", ("B",), "Rectangle ROI (HU mean/SD/min/max, area)", "Tools"),
    Shortcut("tool_ellipse", ("O",), "Ellipse ROI (HU mean/SD/min/max, area)", "Tools"),
    Shortcut("tool_angle", ("A",), "Angle (drag one arm to the vertex, then click the end of the other)", "Tools"),
    Shortcut("tool_cobb", ("C",), "Cobb angle (drag one line, then the other: the angle between them)", "Tools"),
    # Edit (measurements: the viewport keeps their history)
    Shortcut("undo_measurement", ("Ctrl+Z",), "Undo the last measurement change (add, delete, delete all)", "Edit"),
    Shortcut("redo_measurement", ("Ctrl+Y", "Ctrl+Shift+Z"), "Redo the measurement change undone last", "Edit"),
    Shortcut("delete_measurement", ("Del", "Backspace"), "Delete the last measurement on this slice", "Edit"),
    Shortcut("clear_measurements", ("Shift+Del",), "Delete all measurements of the series (asks first)", "Edit"),
    Shortcut("toggle_key_image", ("K",), "Key image: mark the image on screen (again: unmark); the signed report "
             "carries the key images (Key Object Selection and PDF)", "Edit"),
    # Application
    Shortcut("open_folder", ("Ctrl+O",), "Open a study folder", "Application", "window"),
    Shortcut("open_files", ("Ctrl+Shift+O",), "Open DICOM files or a zip", "Application", "window"),
    Shortcut("layout_1x1", ("Ctrl+1",), "Layout 1×1", "Application", "window"),
    Shortcut("layout_1x2", ("Ctrl+2",), "Layout 1×2", "Application", "window"),
    Shortcut("layout_2x2", ("Ctrl+4",), "Layout 2×2", "Application", "window"),
    Shortcut("layout_mpr", ("Ctrl+3",), "MPR: axial, coronal, sagittal with crosshair (left click / drag sets it); "
             "the axial beside the other two stacked where three columns would be narrow", "Application", "window"),
    Shortcut("layout_mpr_2x2", ("Ctrl+5",), "MPR 2×2: the three planes plus a whole-volume axial MIP",
             "Application", "window"),
    Shortcut("slab_thicker", ("S",), "MPR: thicker slab (0, 2, 5, 10, 20, 40 mm)", "Application", "window"),
    Shortcut("slab_thinner", ("Shift+S",), "MPR: thinner slab", "Application", "window"),
    Shortcut("slab_mode", ("M",), "MPR: slab mode MIP → MinIP → mean", "Application", "window"),
    Shortcut("mpr_rotate", ("Alt+R",), "MPR: turn the crosshair 15° in the axial view (oblique coronal and sagittal)",
             "Application", "window"),
    Shortcut("mpr_rotate_back", ("Alt+Shift+R",), "MPR: turn the crosshair back 15° (0° gives true planes again)",
             "Application", "window"),
    Shortcut("next_study", ("Ctrl+PgDown",), "Next study to read: the next one of the study list (as searched, "
             "filtered and sorted) whose report is not signed", "Application", "window"),
    Shortcut("previous_study", ("Ctrl+PgUp",), "Previous study to read in the study list", "Application", "window"),
    Shortcut("open_with_prior", ("Ctrl+Shift+C",), "Compare: the study on screen (or selected) beside the patient's "
             "most recent earlier study, 1×2", "Application", "window"),
    Shortcut("next_viewport", ("Tab",), "Next viewport", "Application", "window"),
    Shortcut("link_viewports", ("Ctrl+L",), "Link viewports: a prior study scrolls, zooms and pans with this one from "
             "where both are now (again: unlink; series of one frame of reference always move together)", "Application", "window"),
    Shortcut("reading_mode", ("F11", "Ctrl+Shift+R"), "Reading mode: hide the side panels and toolbar (again: restore)",
             "Application", "window"),
    Shortcut("run_preread", ("Ctrl+Shift+P",), "Pre-read the series on screen: the AI lists its lesions (again while "
             "it runs: nothing; Cancel is in the Pre-read panel)", "Application", "window"),
    Shortcut("take_preread_lesion", ("Ctrl+Shift+A",), "Pre-read: accept the lesion on screen (the one N / Shift+N "
             "went to) into the report", "Application", "window"),
    Shortcut("next_preread_lesion", ("N",), "Pre-read: next lesion of the list (jumps to its key slice and window)",
             "Application", "window"),
    Shortcut("previous_preread_lesion", ("Shift+N",), "Pre-read: previous lesion of the list", "Application",
             "window"),
    Shortcut("cancel_load", ("Ctrl+.",), "Cancel loading", "Application", "window"),
    Shortcut("show_problems", ("Ctrl+P",), "Show files that could not be read", "Application", "window"),
    Shortcut("show_help", ("F1",), "This help", "Application", "window"),
    Shortcut("quit", ("Ctrl+Q",), "Quit", "Application", "window"),
)

#: Mouse gestures in the viewport (bound in ui/viewer/viewport.py, listed in Help).
MOUSE: tuple[tuple[str, str], ...] = (
    ("Wheel", "Scroll slices"),
    ("Ctrl + wheel", "Zoom about the pointer"),
    ("Right drag", "Window / level: left–right changes the width, up–down the level"),
    ("Left drag", "Current tool: pan, length, rectangle or ellipse ROI, angle, Cobb angle"),
    ("Middle drag", "Pan"),
    ("Double-click the image", "Maximise / restore the viewport (in 1×1: fit)"),
    ("Double-click a series", "Open it in the active viewport (or drag it onto a viewport)"),
)


def key_map(scope: str) -> dict[str, str]:
    """Portable key string → action for one scope. Raises if a key is bound twice."""
    out: dict[str, str] = {}
    for sc in SHORTCUTS:
        if sc.scope != scope:
            continue
        for key in sc.keys:
            if key in out:
                raise ValueError(f"key {key!r} bound to both {out[key]} and {sc.action}")
            out[key] = sc.action
    return out


def by_action(action: str) -> Shortcut:
    for sc in SHORTCUTS:
        if sc.action == action:
            return sc
    raise KeyError(action)


def pretty_keys(sc: Shortcut) -> str:
    """Keys as a reader reads them: "Up / Left", "Ctrl+O"."""
    names = {"PgUp": "Page Up", "PgDown": "Page Down", "Del": "Delete", "Esc": "Esc"}
    return " / ".join(names.get(k, k) for k in sc.keys)


def groups() -> list[tuple[str, list[Shortcut]]]:
    """Shortcuts by group, in table order."""
    out: dict[str, list[Shortcut]] = {}
    for sc in SHORTCUTS:
        out.setdefault(sc.group, []).append(sc)
    return list(out.items())


def shortcuts_markdown() -> str:
    """The table for the README, generated from the same data as the bindings."""
    lines = ["| Keys | Action |", "|---|---|"]
    for group, items in groups():
        lines.append(f"| **{group}** | |")
        lines += [f"| {pretty_keys(sc)} | {sc.description} |" for sc in items]
    lines.append("| **Mouse** | |")
    lines += [f"| {gesture} | {what} |" for gesture, what in MOUSE]
    return "\n".join(lines)
