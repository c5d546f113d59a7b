"""A reading in a real window under Xvfb, driven by real X input (xdotool), as a reader reads.

The script (tests/ui/shell/reading_session.py) opens the bundled sample study with the embedded
demo model the way ``xmedgpt view`` does, scrolls with the arrow keys, changes the window from the
keyboard, measures with a mouse drag (and undoes/redoes it), switches layouts, asks the assistant
by typing, decides on the AI findings, edits the impression, signs through the confirmation
dialog and exports, on a 1600x1000 screen and on a 1366x768 laptop screen. Screenshots of each step land
in test-output/reading/ (and reading-1366x768/) for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.core.settings import Settings

REPO = Path(__file__).resolve().parents[3]

pytestmark = [
    pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs Xvfb (make system-deps)"),
    pytest.mark.skipif(shutil.which("xdotool") is None, reason="needs xdotool (make system-deps)"),
    pytest.mark.skipif(shutil.which("import") is None, reason="needs ImageMagick's import (make system-deps)"),
    pytest.mark.skipif(not (REPO / "resources" / "models" / "demo" / "config.json").is_file(),
                       reason="the embedded demo model is not installed"),
]


@pytest.fixture(params=["1600x1000", "1366x768"])
def xvfb(request):
    """A private X server on a display number it picks itself; stopped after the test. Two screens: a reading-room
    monitor's window and a laptop's whole screen (the window takes what the screen has)."""
    read, write = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", f"{request.param}x24", "-nolisten",
                             "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    try:
        with os.fdopen(read) as f:
            display = f.readline().strip()
        assert display.isdigit(), "Xvfb did not report its display"
        yield f":{display}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_scripted_reading_in_a_real_window(xvfb, tmp_path, output_dir, request):
    home = tmp_path / "home"
    Settings(reader_name="Smith^Jane", institution_name="General Hospital", reliability_samples=3,
             reliability_questions=2).save(home / "config" / "settings.json")
    out = output_dir / ("reading" if "1600x1000" in request.node.name else "reading-1366x768")
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "DISPLAY": xvfb, "QT_QPA_PLATFORM": "xcb", "XMEDGPT_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-m", "tests.ui.shell.reading_session", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    result_file = out / "result.json"
    assert result_file.is_file(), proc.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["ok"], f"{result.get('error')}\n{result.get('traceback', '')}\n{proc.stderr[-2000:]}"
    seen = result["seen"]
    assert seen["frames"] == 32
    assert seen["slice_after_scroll"] == 16  # 16 presses of Down from image 1
    assert seen["readout_after_scroll"], "the cursor readout follows the slice under the resting pointer"
    assert "lung" in seen["window"].lower()
    # dragged across the mass's section on image 17, where the ground truth boxes it: the section's width
    assert seen["measurement_label"].endswith("mm")
    assert float(seen["measurement_label"].split()[0]) == pytest.approx(seen["mass_width_mm"], abs=2.0)
    # Ctrl+2 and back keep the reader's place (the new viewport's series arrived at image 1 and moved the
    # reader's viewport there, so the question below was asked about image 1)
    assert seen["place_in_1x2"][0][0] == 16 and "lung" in seen["place_in_1x2"][0][1].lower(), seen["place_in_1x2"]
    assert seen["slice_after_layouts"] == 16
    assert seen["answer"], "the assistant answered"
    exports = seen["exports"]
    assert {Path(e["path"]).suffix for e in exports} >= {".pdf", ".dcm", ".txt"}
    assert all(e["mode"] == "0o600" for e in exports), exports  # patient data is private to the reader
    # on a laptop's 1366-px screen the image keeps at least 580 px beside the study list and the assistant or report
    # (an unwrapped reliability line once widened the right dock to 712 px and left the image 270; the preset buttons
    # in one row held the assistant's dock at 455 px: 529)
    least = 580 if "1366x768" in request.node.name else 780
    assert seen["image_width_answer"] >= least and seen["image_width_report"] >= least, seen
    # and the window stays on the screen once an answer and a draft report fill the docks (the report, unscrolled,
    # once made it 836 px high on the laptop's 768: the status bar and the image's bottom corners off the screen)
    for key in ("window_height_answer", "window_height_report"):
        height, screen = seen[key]
        assert height <= screen, (key, seen[key])
    assert len(result["screenshots"]) >= 8
    for name in result["screenshots"]:
        assert (out / name).stat().st_size > 10_000  # a real picture of the screen, not an empty file
