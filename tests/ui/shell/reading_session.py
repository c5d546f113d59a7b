"""A radiologist's reading, scripted in a real window: run under Xvfb by test_real_window_reading.py.

``python -m tests.ui.shell.reading_session OUT_DIR``: opens the workstation as ``xmedgpt view``
does (the bundled sample study, the embedded demo model), then a driver thread acts only as a
reader would — real X mouse moves, clicks, drags and key presses sent with ``xdotool`` — and
saves a screenshot of the whole screen after each step (``import -window root``). Widget
positions and the state checked after each step are read on the Qt thread (a small queue the
event loop drains, so the driver also works while a modal dialog runs its own loop). The
result (what each step saw) is written to ``OUT_DIR/result.json`` for the test to check.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

STEP_TIMEOUT_S = 120.0


class OnQtThread:
    """Run callables on the Qt thread from the driver thread and wait for their result."""

    def __init__(self) -> None:
        from PySide6.QtCore import QTimer

        self._queue: queue.Queue = queue.Queue()
        self._timer = QTimer()
        self._timer.timeout.connect(self._drain)
        self._timer.start(10)

    def _drain(self) -> None:
        while True:
            try:
                fn, future = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the driver thread
                future.set_exception(exc)

    def __call__(self, fn: Callable):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((fn, future))
        return future.result(timeout=30)


class Reader:
    """The driver: real X input, screenshots, and checks read on the Qt thread."""

    def __init__(self, window, qt: OnQtThread, out: Path) -> None:
        self.win, self.qt, self.out = window, qt, out
        self.shots: list[str] = []
        self.seen: dict[str, object] = {}

    # ---- input as a user sends it ----------------------------------------------------------------
    def xdo(self, *args: str) -> None:
        subprocess.run(["xdotool", *args], check=True, timeout=20, capture_output=True)

    def centre_of(self, widget_fn: Callable, fx: float = 0.5, fy: float = 0.5) -> tuple[int, int]:
        def pos():
            from PySide6.QtCore import QPoint

            w = widget_fn()
            p = w.mapToGlobal(QPoint(int(w.width() * fx), int(w.height() * fy)))
            return p.x(), p.y()

        return self.qt(pos)

    def wheel_into_view(self, scroll_fn: Callable, span_fn: Callable) -> None:
        """Turn the mouse wheel over a scroll area (as a reader does on a small screen) until ``span_fn()``, a
        (top, bottom) in global pixels, lies inside its viewport; at most 40 notches."""
        def where():
            from PySide6.QtCore import QPoint

            view = scroll_fn().viewport()
            top = view.mapToGlobal(QPoint(0, 0)).y()
            centre = view.mapToGlobal(QPoint(view.width() // 2, view.height() // 2))
            return top, top + view.height(), centre.x(), centre.y(), *span_fn()

        for _ in range(40):
            top, bottom, x, y, a, b = self.qt(where)
            if a >= top and b <= bottom:
                return
            self.xdo("mousemove", "--sync", str(x), str(y))
            self.xdo("click", "5" if b > bottom else "4")  # wheel down / up
            time.sleep(0.05)
        raise TimeoutError("the wheel did not bring the target into view")

    def click(self, widget_fn: Callable, fx: float = 0.5, fy: float = 0.5) -> None:
        x, y = self.centre_of(widget_fn, fx, fy)
        self.xdo("mousemove", "--sync", str(x), str(y))
        self.xdo("click", "1")
        time.sleep(0.15)

    def drag(self, widget_fn: Callable, start: tuple[float, float], end: tuple[float, float]) -> None:
        x0, y0 = self.centre_of(widget_fn, *start)
        x1, y1 = self.centre_of(widget_fn, *end)
        self.xdo("mousemove", "--sync", str(x0), str(y0))
        self.xdo("mousedown", "1")
        for i in range(1, 9):
            self.xdo("mousemove", "--sync", str(x0 + (x1 - x0) * i // 8), str(y0 + (y1 - y0) * i // 8))
            time.sleep(0.03)
        self.xdo("mouseup", "1")
        time.sleep(0.15)

    def drag_pixels(self, viewport_fn: Callable, start: tuple[float, float], end: tuple[float, float]) -> None:
        """Drag between two image pixel points (x = column, y = row) of a viewport, as the mouse would."""
        def fractions():
            from ui.testing import image_to_widget

            vp = viewport_fn()
            w = vp.view.viewport()
            out = []
            for x, y in (start, end):
                p = w.mapTo(vp, image_to_widget(vp, x, y).toPoint())
                out.append((p.x() / vp.width(), p.y() / vp.height()))
            return out

        a, b = self.qt(fractions)
        self.drag(viewport_fn, a, b)

    def key(self, *keys: str) -> None:
        for k in keys:
            self.xdo("key", "--delay", "30", k)
            time.sleep(0.05)

    def type(self, text: str) -> None:
        self.xdo("type", "--delay", "15", text)
        time.sleep(0.1)

    # ---- waiting and looking ---------------------------------------------------------------------
    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = STEP_TIMEOUT_S) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.qt(predicate):
                return
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout:.0f} s for: {what}")

    def shot(self, name: str) -> None:
        time.sleep(0.3)  # let the last repaint reach the X server
        path = self.out / f"{len(self.shots) + 1:02d}-{name}.png"
        subprocess.run(["import", "-window", "root", str(path)], check=True, timeout=30)
        self.shots.append(path.name)


def read_the_study(r: Reader) -> None:
    win = r.win
    vp = lambda: win.grid.active  # noqa: E731
    r.wait("the sample study is loaded", lambda: vp().volume is not None and vp().volume.loaded == len(vp().volume) and not win.is_busy())
    n = r.qt(lambda: len(vp().volume))
    r.seen["frames"] = n
    r.shot("opened")

    # scroll with the arrow keys to image 17 (the lung mass), the cursor resting on the image
    r.click(lambda: vp(), 0.45, 0.5)
    r.key(*["Down"] * 16)
    r.wait("image 17", lambda: vp().slice_index == 16)
    r.xdo("mousemove_relative", "--sync", "3", "0")
    time.sleep(0.3)
    r.seen["slice_after_scroll"] = r.qt(lambda: vp().slice_index)
    r.seen["readout_after_scroll"] = r.qt(lambda: vp().cursor_readout())
    r.shot("image-17")

    # lung window from the keyboard
    r.key("2")
    r.wait("the lung window", lambda: "lung" in vp().window.name.lower())
    r.seen["window"] = r.qt(lambda: vp().window.name)
    r.shot("lung-window")

    # a length measurement across the mass (left to right through its centre, where the study's ground
    # truth puts its box on this image), then undo and redo it
    from app.synthetic.sample import load_ground_truth
    from ui.shell.app_setup import SAMPLE  # what the window opened (no path given)

    truth = load_ground_truth(SAMPLE)
    box = next(b for row in truth["slices"] if row["index"] == 16 for b in row["boxes"])
    mid = (box["y0"] + box["y1"]) / 2
    r.seen["mass_width_mm"] = (box["x1"] - box["x0"]) * truth["pixel_spacing_mm"][1]
    before = r.qt(lambda: len(vp().measurements.items))
    r.key("l")
    r.drag_pixels(lambda: vp(), (box["x0"], mid), (box["x1"], mid))
    r.wait("a measurement", lambda: len(vp().measurements.items) == before + 1)
    r.seen["measurement_label"] = r.qt(lambda: vp().measurements.items[-1].label.toPlainText())
    r.shot("length")
    r.key("ctrl+z")
    r.wait("the measurement undone", lambda: len(vp().measurements.items) == before)
    r.key("ctrl+y")
    r.wait("the measurement redone", lambda: len(vp().measurements.items) == before + 1)
    r.key("Escape")

    # two viewports side by side, then back
    r.key("ctrl+2")
    r.wait("layout 1x2", lambda: win.grid.layout_name == "1x2")
    r.wait("the second viewport's series", lambda: all(v.volume is not None for v in win.grid.visible())
           and not win.is_busy())
    r.shot("layout-1x2")
    r.seen["place_in_1x2"] = r.qt(lambda: [(v.slice_index, v.window.name) for v in win.grid.visible()])
    r.key("ctrl+1")
    r.wait("layout 1x1", lambda: win.grid.layout_name == "1x1")
    r.seen["slice_after_layouts"] = r.qt(lambda: vp().slice_index)

    # soft-tissue window, then ask the assistant by typing into its query box
    r.key("1")
    r.wait("the assistant's model is loaded", lambda: win.assistant.ready, timeout=300)  # as a reader waits for it
    r.click(lambda: win.assistant_panel.query)
    r.type("Locate the mass.")
    r.key("Return")
    r.wait("the answer and its reliability", lambda: win.assistant_panel.parsed is not None
           and not win.assistant.busy and _reliability_done(win), timeout=240)
    r.seen["answer"] = r.qt(lambda: win.assistant_panel.parsed.text if win.assistant_panel.parsed else "")
    r.seen["tier"] = r.qt(lambda: win.assistant_panel.reliability.light.tier.value)
    r.seen["reliability_text"] = r.qt(lambda: win.assistant_panel.reliability.score.text())
    r.shot("answer")
    r.seen["image_width_answer"] = r.qt(lambda: win.grid.width())  # the docks leave the image its room
    r.seen["window_height_answer"] = r.qt(lambda: (win.frameGeometry().height(),
                                                   win.screen().availableGeometry().height()))

    # the report: decide on every AI finding, add a sentence to the impression, sign
    r.qt(lambda: (win.report.dock.show(), win.report.dock.raise_()))
    if r.qt(lambda: win.report.panel is None):
        r.click(lambda: _named_button(win.report.dock, "start_report"))
    r.wait("a draft report", lambda: win.report.panel is not None)
    panel = lambda: win.report.panel  # noqa: E731
    count = r.qt(lambda: panel().findings.count())
    r.seen["ai_findings"] = count
    for row in range(count):
        r.wheel_into_view(lambda: panel().scroll, lambda row=row: _item_span(panel().findings, row))
        x, y = r.qt(lambda row=row: _item_centre(panel().findings, row))
        r.xdo("mousemove", "--sync", str(x), str(y))
        r.xdo("click", "1")
        r.wait(f"finding {row + 1} selected", lambda row=row: panel().findings.currentRow() == row)
        if r.qt(lambda: panel().reject_button.isEnabled()):
            r.wheel_into_view(lambda: panel().scroll, lambda: _widget_span(panel().reject_button))
            r.click(lambda: panel().reject_button)
    # Issue #13.7: the AI's impression sentences are proposals; those the rejected findings did not take
    # with them are rejected one click each
    r.seen["ai_sentences"] = r.qt(lambda: [(x.text, x.status.value) for x in panel().report.ai_sentences])
    for row in range(r.qt(lambda: panel().ai_sentences.count())):
        r.wheel_into_view(lambda: panel().scroll, lambda row=row: _item_span(panel().ai_sentences, row))
        x, y = r.qt(lambda row=row: _item_centre(panel().ai_sentences, row))
        r.xdo("mousemove", "--sync", str(x), str(y))
        r.xdo("click", "1")
        r.wait(f"AI sentence {row + 1} selected", lambda row=row: panel().ai_sentences.currentRow() == row)
        if r.qt(lambda: panel().current_sentence().status.value == "proposed"):
            r.wheel_into_view(lambda: panel().scroll, lambda: _widget_span(panel().reject_sentence_button))
            r.click(lambda: panel().reject_sentence_button)
    r.wheel_into_view(lambda: panel().scroll, lambda: _widget_span(panel().impression))
    r.click(lambda: panel().impression, 0.5, 0.5)
    r.key("ctrl+End")
    r.type(" No acute abnormality reported by the reader.")
    r.shot("report-edited")
    r.seen["image_width_report"] = r.qt(lambda: win.grid.width())
    r.seen["window_height_report"] = r.qt(lambda: (win.frameGeometry().height(),
                                                   win.screen().availableGeometry().height()))
    r.wait("Sign enabled", lambda: panel().sign_button.isEnabled(), timeout=30)
    r.click(lambda: panel().sign_button)
    # the confirmation: the reader presses the Sign button of the dialog (Tab to it, Enter would cancel)
    r.wait("the sign confirmation", lambda: _dialog(win) is not None, timeout=20)
    r.shot("sign-confirmation")
    r.click(lambda: _dialog_button(win, "Sign"))
    r.wait("the signed report", lambda: win.report.session.report is not None and win.report.session.report.signed)
    r.wait("the exports", lambda: win.report.last_export is not None, timeout=60)
    paths = r.qt(lambda: [str(p) for p in win.report.last_export.paths])
    r.seen["exports"] = [{"path": p, "mode": oct(os.stat(p).st_mode & 0o777)} for p in paths]
    r.shot("signed")


def _item_span(list_widget, row: int) -> tuple[int, int]:
    rect = list_widget.visualItemRect(list_widget.item(row))
    return (list_widget.viewport().mapToGlobal(rect.topLeft()).y(),
            list_widget.viewport().mapToGlobal(rect.bottomLeft()).y())


def _widget_span(widget) -> tuple[int, int]:
    from PySide6.QtCore import QPoint

    return widget.mapToGlobal(QPoint(0, 0)).y(), widget.mapToGlobal(QPoint(0, widget.height())).y()


def _item_centre(list_widget, row: int) -> tuple[int, int]:
    rect = list_widget.visualItemRect(list_widget.item(row))
    p = list_widget.viewport().mapToGlobal(rect.center())
    return p.x(), p.y()


def _reliability_done(win) -> bool:
    from inference.reliability.scoring import State

    rel = win.assistant_panel.reliability.reliability
    return rel is not None and rel.state not in (State.RUNNING, State.PENDING)


def _named_button(parent, name: str):
    from PySide6.QtWidgets import QPushButton

    button = parent.findChild(QPushButton, name)
    if button is None:
        raise LookupError(f"no button '{name}'")
    return button


def _dialog(win):
    from PySide6.QtWidgets import QApplication, QMessageBox

    for w in QApplication.topLevelWidgets():
        if isinstance(w, QMessageBox) and w.isVisible():
            return w
    return None


def _dialog_button(win, text: str):
    box = _dialog(win)
    for b in box.buttons():
        if b.text().replace("&", "").startswith(text):
            return b
    raise LookupError(f"no '{text}' button in the dialog")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from ui.shell.app_setup import application
    from ui.shell.launcher import open_window

    app = application()
    window = open_window(argparse.Namespace(path=None, model=None))
    window.move(0, 0)
    screen = app.primaryScreen().availableGeometry()  # a 1600x1000 window, or the whole of a smaller screen
    window.resize(min(1600, screen.width()), min(1000, screen.height()))
    qt = OnQtThread()
    reader = Reader(window, qt, args.out)
    result: dict[str, object] = {"ok": False}

    def drive() -> None:
        try:
            read_the_study(reader)
            result["ok"] = True
        except BaseException as exc:  # noqa: BLE001 - reported in result.json
            result["error"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc()
            try:
                reader.shot("failed")
            except Exception:  # noqa: BLE001
                pass
        finally:
            result["seen"] = reader.seen
            result["screenshots"] = reader.shots
            (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
            qt(lambda: window.close())
            qt(app.quit)

    threading.Thread(target=drive, daemon=True).start()
    app.exec()
    window.shutdown()
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
