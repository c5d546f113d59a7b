"""Scrolling in the MPR 1×3 layout, offscreen: the time from one scroll step to the three views painted.

A 300 × 512 × 512 int16 CT phantom (the one of benchmarks/mpr.py) in ``ui.viewer.mpr.MprPanel`` (axial,
coronal, sagittal with crosshair and reference lines), 1500 × 600 px. Each frame: the axial view steps one
slice (the crosshair moves, so the coronal and sagittal reference lines and text follow), then the panel is
rendered into an image (``QWidget.grab``: every view painted, as a screen refresh would). Baseline in the
same run: one 2-D viewport (``ui.viewer.viewport.Viewport``) of the same size scrolling the same volume.

Each frame is timed twice: wall clock (what the goal is about; run it on an idle machine) and the CPU time
of the main thread (Qt paints offscreen on it), which a busy machine distorts far less.

Goal (issue #17): p95 frame ≤ 16 ms (wall). Usage: QT_QPA_PLATFORM=offscreen python benchmarks/mpr_scroll.py
[--slices 300] [--size 512] [--frames 60]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _frames(step, grab, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: wall-clock ms and the main thread's CPU ms (``time.thread_time``: what the frame
    itself cost, undistorted by other processes on a busy machine; Qt paints offscreen on this thread)."""
    step()
    grab()  # warm-up: first paint, caches
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        step()
        grab()
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - t0) * 1000)
    return np.array(wall), np.array(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args()

    from PySide6.QtWidgets import QApplication

    from app.dicom.model import Geometry, Series, Volume, Window
    sys.path.insert(0, str(REPO / "benchmarks"))
    from mpr import phantom
    from ui.viewer.mpr import MprPanel
    from ui.viewer.viewport import Viewport

    app = QApplication.instance() or QApplication([])
    n, size = args.slices, args.size
    sp = 0.7
    geometry = Geometry(origins=np.array([[-size * sp / 2, -size * sp / 2, -1.0 * k] for k in range(n)]),
                        row_direction=np.array([1.0, 0, 0]), col_direction=np.array([0, 1.0, 0]), spacing=(sp, sp))
    volume = Volume(Series("1", 1, "bench", "CT"), phantom(n, size), np.ones(n), np.full(n, -1024.0), geometry,
                    Window(400, 40), loaded=n)

    panel = MprPanel()
    panel.resize(1500, 600)
    panel.show()
    panel.set_volume(volume)
    for _ in range(5):
        app.processEvents()
    axial = panel.by_plane("axial")
    axial.set_slice(n // 4)

    def mpr_step() -> None:
        axial.step(1)
        app.processEvents()

    mpr, mpr_cpu = _frames(mpr_step, panel.grab, args.frames)

    vp = Viewport()
    vp.resize(500, 600)
    vp.show()
    vp.set_volume(volume)
    for _ in range(5):
        app.processEvents()

    def vp_step() -> None:
        vp.set_slice(min(len(volume) - 1, vp.slice_index + 1))
        app.processEvents()

    vp.set_slice(n // 4)
    one, one_cpu = _frames(vp_step, vp.grab, args.frames)

    print(f"\nMPR scrolling, {n}×{size}×{size} int16, {args.frames} frames, offscreen\n")
    print("| view | frames | mean ms | p95 ms | CPU mean ms | CPU p95 ms | goal p95 |")
    print("|---|---:|---:|---:|---:|---:|---|")
    ok = "✓" if np.percentile(mpr, 95) <= 16.0 else "✗"
    rows = (("MPR 1×3 (1500 × 600 px), axial step + all three painted", mpr, mpr_cpu, f"≤ 16 ms {ok}"),
            ("one 2-D viewport (500 × 600 px), baseline", one, one_cpu, ""))
    for name, wall, cpu, goal in rows:
        print(f"| {name} | {len(wall)} | {wall.mean():.2f} | {np.percentile(wall, 95):.2f} | "
              f"{cpu.mean():.2f} | {np.percentile(cpu, 95):.2f} | {goal} |")
    print("\nwall = perf_counter (needs an idle machine); CPU = this thread's CPU time per frame")
    panel.close()
    vp.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
