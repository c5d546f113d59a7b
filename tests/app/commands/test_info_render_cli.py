"""``xmedgpt info`` and ``xmedgpt render`` as a person on a server would run them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from app.cli import main
from app.dicom.png import read_png
from tests.app.dicom.test_scan import write_series


@pytest.fixture()
def study(tmp_path):
    folder = tmp_path / "study"
    px = np.full((16, 16), 1024 + 40, dtype=np.uint16)  # 40 HU everywhere
    px[:, 8:] = 1024 - 600  # −600 HU on the right half
    write_series(folder, [0, 5, 10, 20], pixels=px)
    (folder / "broken.dcm").write_bytes(b"DICM" * 10)
    return folder


def test_info_json_lists_tree_warnings_and_problems(study, capsys):
    assert main(["info", str(study), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (patient,) = out["patients"]
    (st,) = patient["studies"]
    (series,) = st["series"]
    assert patient["name"] == "Test^Phantom" and series["frames"] == 4 and series["modality"] == "CT"
    assert any("missing" in w for w in series["warnings"])  # the 10 → 20 mm gap
    assert out["problems"] == [{"path": str(study / "broken.dcm"), "reason": "not a DICOM file"}]


def test_info_text_via_console_entry(study):
    proc = subprocess.run([sys.executable, "-m", "app.cli", "info", str(study)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Series 3 CT 'Chest': 4 instances" in proc.stdout
    assert "broken.dcm: not a DICOM file" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_render_with_named_and_numeric_windows(study, tmp_path, capsys):
    out = tmp_path / "lung.png"
    assert main(["render", str(study), "--out", str(out), "--window", "lung", "--slice", "2"]) == 0
    img = read_png(out)
    assert img.shape == (16, 16)
    assert abs(int(img[0, 12]) - 128) <= 1  # −600 HU at the lung window centre: mid-grey
    assert img[0, 2] > 200  # soft tissue is bright in a lung window
    assert main(["render", str(study), "--out", str(out), "--window", "400/40", "--invert"]) == 0
    img = read_png(out)
    assert abs(int(img[0, 2]) - 127) <= 1 and img[0, 12] == 255  # inverted: air white
    assert "slice 3/4" in capsys.readouterr().out  # default: the middle slice


def test_render_colour_file(tmp_path):
    out = tmp_path / "rgb.png"
    assert main(["render", get_testdata_file("SC_rgb.dcm"), "--out", str(out)]) == 0
    img = read_png(out)
    assert img.ndim == 3 and img.shape[2] == 3 and len(np.unique(img.reshape(-1, 3), axis=0)) > 3


def test_render_errors_are_one_line_not_tracebacks(study, tmp_path):
    for args, message in (
        (["--series", "7"], "There is no series 7"),
        (["--slice", "99"], "this series has images 1 to 4"),
        (["--slice", "0"], "this series has images 1 to 4"),
        (["--window", "sunset"], "unknown window"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "app.cli", "render", str(study), "--out", str(tmp_path / "x.png"), *args],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 1
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
