"""Screenshots of the real main window with the sample study, saved to
test-output/ for a person to look at, and checked for not being blank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtGui import QImage

from app.synthetic.sample import ground_truth_path, load_ground_truth
from inference.types import Box
from ui.shell.app_setup import SAMPLE
from ui.shell.cli import main as cli_main
from ui.shell.main_window import MainWindow
from ui.shell.screenshot import wait_until_idle
from ui.viewer.overlays import SOURCE_COLORS


@pytest.fixture(scope="module")
def sample() -> Path:
    """The bundled sample study that `make run` opens, with its ground truth beside it."""
    assert ground_truth_path(SAMPLE) is not None, "the bundled sample must ship its lesion ground truth"
    return SAMPLE


def qimage_to_array(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h = img.width(), img.height()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=img.bytesPerLine() * h).reshape(h, img.bytesPerLine())
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def viewport_pixels(win: MainWindow, vp) -> np.ndarray:
    """The viewport's area cut from a grab of the whole window."""
    full = qimage_to_array(win.grab().toImage())
    top_left = vp.mapTo(win, vp.rect().topLeft())
    ratio = full.shape[1] / win.width()
    x0, y0 = int(top_left.x() * ratio), int(top_left.y() * ratio)
    return full[y0 : y0 + int(vp.height() * ratio), x0 : x0 + int(vp.width() * ratio)]


def grey_levels(area: np.ndarray) -> int:
    grey = area[(area[..., 0] == area[..., 1]) & (area[..., 1] == area[..., 2])][:, 0]
    return len(np.unique(grey))


def has_colour(area: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return bool((np.abs(area.astype(int) - np.array(rgb)).max(axis=-1) < tol).sum() > 30)


def lesion_slice(sample: Path, win: MainWindow):
    """(frame index, Box, label) of the largest ground-truth lesion box in the sample."""
    gt = load_ground_truth(sample)
    uid_to_k = {inst.sop_instance_uid: k for k, inst in enumerate(win.grid.active.volume.series.instances)}
    best = max(
        ((s, b) for s in gt["slices"] for b in s["boxes"]),
        key=lambda sb: (sb[1]["x1"] - sb[1]["x0"]) * (sb[1]["y1"] - sb[1]["y0"]),
    )
    s, b = best
    lesion = {les["id"]: les for les in gt["lesions"]}[b["lesion_id"]]
    return uid_to_k[s["sop_instance_uid"]], Box(b["x0"], b["y0"], b["x1"], b["y1"]), f"{lesion['kind']} ({lesion['location']})"


@pytest.fixture
def win(qtbot, sample):
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1600, 1000)
    w.show()
    qtbot.waitExposed(w)
    w.open_paths([sample])
    qtbot.waitUntil(lambda: w.grid.active.volume is not None, timeout=30_000)
    assert wait_until_idle(w, 60)
    yield w
    w.shutdown()


def test_screenshot_1x1_with_measurement_and_ai_box(qtbot, win, sample, output_dir):
    vp = win.grid.active
    k, box, label = lesion_slice(sample, win)
    vp.set_slice(k)
    vp.apply_preset(2)  # lung window: the lesions are in the lungs
    vp.overlays.add_box(k, box, label, source="ai")
    cx = (box.x0 + box.x1) / 2
    vp.add_measurement("length", (box.x0, box.y1 + 25), (box.x1, box.y1 + 25))
    vp.add_measurement("ellipse", (cx + 120, box.y0), (cx + 180, box.y0 + 50))
    qtbot.waitUntil(lambda: win.tags.source.text().startswith(vp.volume.series.instances[k].path.name), timeout=3000)
    path = output_dir / "viewer_1x1.png"
    assert win.grab().save(str(path))
    area = viewport_pixels(win, vp)
    assert grey_levels(area) > 100, "the image must show many grey levels, not a blank viewport"
    assert has_colour(area, SOURCE_COLORS["ai"]), "the AI box must be drawn"
    assert vp.corner_text()["bottom_left"][0] == f"Im {k + 1}/{len(vp.volume)}"
    assert vp.markers() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert path.stat().st_size > 50_000


def test_screenshot_2x2_windows_and_rotation(qtbot, win, output_dir):
    win.set_layout("2x2")
    assert wait_until_idle(win, 60)
    vps = win.grid.visible()
    assert all(v.volume is not None for v in vps)
    mid = len(vps[0].volume) // 2
    for v, preset in zip(vps, (1, 2, 4, 3)):
        v.set_slice(mid)
        v.apply_preset(preset)
    vps[3].trigger("rotate_cw")
    vps[1].add_measurement("rect", (300, 200), (360, 250))
    win.grid.set_active(vps[1])
    qtbot.waitUntil(lambda: win.tags.source.text() == vps[1].volume.series.instances[mid].path.name, timeout=3000)
    path = output_dir / "viewer_2x2.png"
    assert win.grab().save(str(path))
    for v in vps:
        assert grey_levels(viewport_pixels(win, v)) > 40
    assert vps[3].markers()["top"] == "R"
    assert "Mean" in vps[1].measurements.items[0].text


def test_xmedgpt_screenshot_command(qtbot, sample, output_dir):
    out = output_dir / "xmedgpt_screenshot.png"
    out.unlink(missing_ok=True)
    assert cli_main(["screenshot", str(sample), "--out", str(out), "--size", "1280x800"]) == 0
    img = QImage(str(out))
    assert (img.width(), img.height()) == (1280, 800)
    arr = qimage_to_array(img)
    assert grey_levels(arr) > 100


def test_screenshot_command_reports_missing_study(tmp_path, capsys):
    assert cli_main(["screenshot", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 1
    assert "does not exist" in capsys.readouterr().err
