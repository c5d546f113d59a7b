"""`xmedgpt doctor` reports the environment and a verdict with a reason for each feature."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _doctor(home, *extra):
    env = dict(os.environ, XMEDGPT_HOME=str(home))
    proc = subprocess.run([sys.executable, "-m", "app.cli", "doctor", *extra],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_doctor_json_names_every_feature_with_a_reason(tmp_path):
    report = json.loads(_doctor(tmp_path, "--json"))
    env = report["environment"]
    for key in ("os", "cpu", "ram", "torch", "gpu", "bitsandbytes", "DICOM decoders", "embedded demo model"):
        assert env.get(key), key
    features = {f["name"]: f for f in report["features"]}
    assert {"4-bit GPU inference", "dictation", "DICOM codecs", "assistant model"} <= set(features)
    for f in features.values():
        assert len(f["detail"]) > 10, f
    # this project installs pylibjpeg and gdcm: every compressed syntax must decode
    assert features["DICOM codecs"]["ok"], features["DICOM codecs"]


def test_doctor_sees_a_registered_default_model(tmp_path):
    from tests.app.models.test_registry import _write_model

    model = _write_model(tmp_path / "m", ["InternVLForConditionalGeneration"], "internvl")
    env = dict(os.environ, XMEDGPT_HOME=str(tmp_path / "home"))
    subprocess.run([sys.executable, "-m", "app.cli", "models", "add", str(model), "--name", "site-model"],
                   check=True, capture_output=True, env=env, timeout=60)
    text = _doctor(tmp_path / "home")
    assert "[ok] assistant model: default 'site-model'" in text
