"""Files nobody here wrote (pydicom's test data and the pydicom-data wheel) open
in the viewer: grey and colour, multi-frame, MONOCHROME1, no geometry, a
truncated file among good ones. No exception reaches the reader."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from app.dicom.loader import load_series
from app.dicom.scan import scan
from ui.shell.main_window import MainWindow
from ui.viewer.viewport import Viewport

FILES = {
    "CT_small.dcm": "CT",
    "MR_small.dcm": "MR",
    "SC_rgb.dcm": "colour",
    "emri_small.dcm": "multi-frame MR",
    "RG1_UNCR.dcm": "MONOCHROME1 radiograph",
    "US1_J2KR.dcm": "JPEG 2000 colour ultrasound",
    "JPEG2000.dcm": "JPEG 2000 grey",
}


def _path(name: str) -> Path | None:
    try:
        return Path(get_testdata_file(name))
    except Exception:  # noqa: BLE001 - a file missing from this pydicom-data version is skipped
        return None


@pytest.mark.parametrize("name", sorted(FILES))
def test_file_shows_in_a_viewport(qtbot, name):
    path = _path(name)
    if path is None:
        pytest.skip(f"{name} not available offline")
    result = scan(path)
    series = result.all_series()
    assert series, result.problems
    volume = load_series(series[0])
    vp = Viewport()
    qtbot.addWidget(vp)
    vp.resize(400, 400)
    vp.show()
    vp.set_volume(volume)
    assert vp.image.image is not None and np.ptp(vp.image.image) > 0, "image must not be flat"
    assert vp.corner_text()["bottom_left"][0] == f"Im 1/{len(volume)}"
    vp.trigger("last_slice")
    assert vp.slice_index == len(volume) - 1
    for action in ("toggle_invert", "rotate_cw", "flip_h", "zoom_in", "preset_0", "reset"):
        vp.trigger(action)
    rows, cols = volume.frames.shape[1:3]
    m = vp.add_measurement("rect", (cols * 0.25, rows * 0.25), (cols * 0.75, rows * 0.75))
    assert m.text.startswith("Mean")
    if volume.geometry is None:
        assert vp.markers() == {"left": "", "right": "", "top": "", "bottom": ""}
        assert "px" in m.text  # no PixelSpacing: areas in pixels, said so


def test_monochrome1_shows_bone_white(qtbot):
    path = _path("RG1_UNCR.dcm")
    if path is None:
        pytest.skip("RG1_UNCR.dcm not available offline")
    volume = load_series(scan(path).all_series()[0])
    assert volume.photometric == "MONOCHROME1"
    vp = Viewport()
    qtbot.addWidget(vp)
    vp.set_volume(volume)
    img = vp.image.image
    values = volume.values(0)
    # MONOCHROME1: the highest stored values are shown darkest
    assert img[values >= np.percentile(values, 99)].mean() < img[values <= np.percentile(values, 1)].mean()


def test_folder_with_a_truncated_file_opens_the_rest(qtbot, tmp_path):
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_truncated.dcm"):
        src = _path(name)
        if src is None:
            pytest.skip(f"{name} not available offline")
        shutil.copy(src, tmp_path / name)
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    win.open_paths([tmp_path])
    qtbot.waitUntil(lambda: win.grid.active.volume is not None and not win.is_busy(), timeout=20_000)
    assert win.browser.series_count() >= 2
    rows = win.problem_rows()
    assert any("MR_truncated" in what for what, _ in rows), rows
    assert all("Traceback" not in why and "\n" not in why for _, why in rows)
    win.shutdown()
