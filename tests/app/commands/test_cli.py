"""The command line answers --help and reports unknown input without a traceback."""

import re
import subprocess
import sys

from app.cli import build_parser


def test_help_lists_commands(capsys):
    parser = build_parser()
    try:
        parser.parse_args(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "xmedgpt" in out


def test_console_script_help_runs_without_qt_display():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from ui.shell.cli import main; sys.exit(main(['--help']))"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "screenshot" in proc.stdout and "view" in proc.stdout


def test_an_unreachable_pacs_node_is_one_line_and_verbose_shows_the_network_log(tmp_path):
    """An administrator's `xmedgpt pacs echo` to a node that does not answer: our one-line message only,
    not pynetdicom's ERROR line before it; -v adds pynetdicom's own log."""
    import os
    import socket

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XMEDGPT_HOME": str(tmp_path)}

    def cli(*args: str) -> subprocess.CompletedProcess:
        code = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                              env=env)

    added = cli("pacs", "nodes", "add", "down", "--ae", "DOWN", "--host", "127.0.0.1", "--port", str(port))
    assert added.returncode == 0, added.stderr
    quiet = cli("pacs", "echo", "--node", "down")
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == [
        f"xmedgpt: Cannot reach 'down' (DOWN at 127.0.0.1:{port}): no answer (connection refused or timed out)."]
    loud = cli("-v", "pacs", "echo", "--node", "down")
    assert "pynetdicom" in loud.stderr and loud.stderr.strip().endswith("(connection refused or timed out).")


def test_a_headless_answer_prints_its_summary_not_the_loaders_progress_bars(tmp_path):
    from pathlib import Path

    sample = Path(__file__).resolve().parents[3] / "resources" / "sample" / "ct-demo"
    code = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "analyze", str(sample), "--slice", "17", "--json",
                           str(tmp_path / "a.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Loading weights" not in proc.stderr and "%|" not in proc.stderr, proc.stderr[-2000:]
    # the summary line, whatever the demo model answered (how many of the five steps it wrote is the model's)
    assert re.match(rf"wrote {re.escape(str(tmp_path / 'a.json'))}: \d steps, \d+ findings from .+ image 17/32\)$",
                    proc.stdout.strip()), proc.stdout
