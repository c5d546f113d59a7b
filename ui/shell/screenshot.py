"""``xmedgpt screenshot [PATH] --out PNG``: the real main window, offscreen, grabbed to PNG."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from app.core.errors import XMedError
from ui.shell.app_setup import application, default_study

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 120.0


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise XMedError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 1600x1000") from None
    if not (200 <= w <= 8000 and 200 <= h <= 8000):
        raise XMedError("size must be between 200 and 8000 pixels a side")
    return w, h


def wait_until_idle(window, timeout_s: float = LOAD_TIMEOUT_S) -> bool:
    """Run the event loop until the window's background work is done."""
    app = application()
    deadline = time.monotonic() + timeout_s
    app.processEvents()
    while time.monotonic() < deadline:
        app.processEvents()
        if not window.is_busy():
            app.processEvents()
            if not window.is_busy():
                return True
        time.sleep(0.01)
    return False


def grab(window, out: Path) -> Path:
    window.tags.flush()
    for vp in window.grid.viewports:
        vp.settle()  # the smooth frame a reader sees once scrolling stops, not the fast scroll frame
    application().processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(out)):
        raise XMedError(f"could not write {out}")
    return out


def screenshot_command(args: argparse.Namespace) -> int:
    path = default_study(getattr(args, "path", None))
    if path is None:
        raise XMedError("no study given and the bundled sample (resources/sample/ct-demo) is missing")
    if not path.exists():
        raise XMedError(f"{path} does not exist")
    w, h = parse_size(getattr(args, "size", "1600x1000"))
    application(offscreen=True)
    from ui.shell.main_window import MainWindow

    window = MainWindow()
    window.resize(w, h)
    window.show()
    layout = getattr(args, "layout", None) or "1x1"
    window.set_layout(layout)
    window.open_paths([path])
    if not wait_until_idle(window):
        window.shutdown()
        raise XMedError("the study did not finish loading in time")
    out = grab(window, Path(args.out))
    window.shutdown()
    window.close()
    print(out)
    return 0
