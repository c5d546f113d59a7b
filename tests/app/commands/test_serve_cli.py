"""``xmedgpt serve`` as a real process: listens on loopback, answers, refuses an open bind without a key."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from inference.engine.remote import RemoteEngine
from inference.types import ChatRequest


def test_serve_command_answers_over_loopback(tiny_model_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--model", str(tiny_model_dir), "--port", "0", "--device", "cpu"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            match = re.search(r"at (http://127\.0\.0\.1:\d+/v1)", line)
            url = match.group(1) if match else None
        assert url, "server did not start"
        remote = RemoteEngine(url)
        assert remote.model_id == "tiny InternVL (random)"
        assert remote.generate(ChatRequest("Hello", None, max_new_tokens=3)).token_logprobs
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_network_bind_without_key(tiny_model_dir, monkeypatch, capsys):
    from app.cli import main

    monkeypatch.delenv("XMEDGPT_API_KEY", raising=False)
    assert main(["serve", "--model", str(tiny_model_dir), "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "API key" in err and "Traceback" not in err
