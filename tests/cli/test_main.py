"""`branchkey-gateway` itself: --version, -h, a bare command, and help that reads whole in 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import LISTED


def cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway <args>` in an 80-column terminal without colour."""
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    """--version (and -V) print the program's name and version, exit 0."""
    result = cli(flag)
    assert (result.returncode, result.stdout) == (0, f"branchkey-gateway {__version__}\n")


def test_h_is_help() -> None:
    """-h is --help, for the program and for each command."""
    assert cli("-h").stdout == cli("--help").stdout
    assert cli("serve", "-h").stdout == cli("serve", "--help").stdout
    assert "Usage: branchkey-gateway serve" in cli("serve", "-h").stdout


def test_a_bare_command_prints_help_and_exits_2() -> None:
    """No command: the help (not an error box), exit 2 as for any missing argument."""
    result = cli()
    assert result.returncode == 2
    assert "Commands:" in result.stdout + result.stderr
    assert "Missing command" not in result.stdout + result.stderr


def test_commands_are_listed_serve_first() -> None:
    """The commands are listed in LISTED's order, serve first, each with its whole line."""
    lines = cli("--help").stdout.split("Commands:\n", 1)[1].splitlines()
    listed = [(line.split()[0], line.split(None, 1)[1]) for line in lines if line.strip()]
    assert [name for name, _ in listed] == list(LISTED)
    assert listed[0][0] == "serve"
    for name, text in listed:
        assert text == LISTED[name]


@pytest.mark.parametrize("command", ["", *LISTED])
def test_help_reads_whole_in_80_columns(command: str) -> None:
    """No line is cut ('...', '…') or wider than the terminal, and no flag shows a '<bool>' value."""
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert len(line) <= 80, line
        if not line.startswith("Usage:"):  # where 'ARGS...' means several
            assert not line.rstrip().endswith("..."), line
        assert "…" not in line
    assert "<bool>" not in result.stdout


def test_flags_show_no_value() -> None:
    """Boolean options read as flags: `--json`, `--wait / --no-wait`."""
    text = cli("upload", "--help").stdout
    assert any(line.split()[:2] == ["--json", "Print"] for line in text.splitlines())
    assert "--wait / --no-wait" in text
