"""The Linux bundle installs into an empty folder and works with no Python environment on PATH.

Slow (it builds the PyInstaller bundle unless one exists): run with `make installer-test`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.installer


def _tarball() -> Path:
    found = sorted((REPO / "build" / "installer").glob("xmedgpt-*-linux-*.tar.gz"))
    if not found or os.environ.get("XMEDGPT_REBUILD_INSTALLER"):
        subprocess.run(["bash", "installer/build_linux.sh"], cwd=REPO, check=True, timeout=3000)
        found = sorted((REPO / "build" / "installer").glob("xmedgpt-*-linux-*.tar.gz"))
    assert found, "make installer produced no tarball"
    return found[-1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    with tarfile.open(_tarball()) as tar:
        tar.extractall(root / "unpacked", filter="tar")
    (stage,) = list((root / "unpacked").iterdir())
    home = root / "home"
    home.mkdir()
    # A clean environment: no virtualenv, no project on PYTHONPATH, only system folders on PATH.
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run(["bash", str(stage / "install.sh"), "--prefix", str(root / "opt")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No NVIDIA driver found" in proc.stdout or "Found NVIDIA GPU" in proc.stdout
    exe = home / ".local" / "bin" / "xmedgpt"
    assert exe.exists()
    return exe, env, root, stage, proc.stdout


def _run(installed, *args, timeout=300):
    exe, env, root, _, _ = installed
    proc = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=root)
    assert proc.returncode == 0, f"xmedgpt {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_bundled_doctor_runs(installed):
    out = _run(installed, "doctor")
    assert "[ok] DICOM codecs" in out, out
    assert "torch:" in out


def test_bundled_info_on_bundled_sample(installed):
    exe = installed[0]
    sample = exe.resolve().parent / "_internal" / "resources" / "sample" / "ct-demo"
    assert sample.is_dir(), "the sample study must ship inside the bundle"
    out = _run(installed, "info", str(sample))
    assert "CT" in out


def test_bundled_screenshot_offscreen(installed):
    out_png = installed[2] / "shot.png"
    _run(installed, "screenshot", "--out", str(out_png))
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_uninstall_keeps_workspace_unless_purged(installed):
    exe, env, root, stage, _ = installed
    data = Path(env["HOME"]) / ".local" / "share" / "xmedgpt" / "audit"
    data.mkdir(parents=True, exist_ok=True)
    (data / "audit.jsonl").write_text("{}\n")
    subprocess.run(["bash", str(stage / "install.sh"), "--uninstall", "--prefix", str(root / "opt")],
                   env=env, check=True, capture_output=True, timeout=120)
    assert not exe.exists() and (data / "audit.jsonl").exists()
