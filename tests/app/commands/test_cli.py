"""The command line answers --help and reports unknown input without a traceback."""

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
