"""The README's two commands: `make run` installs the runtime dependencies only, `make test` the test extras."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(target: str, venv: Path) -> str:
    """The commands `make <target>` would run for a fresh virtualenv at `venv` (nothing is run)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        [make, "-n", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def test_make_run_installs_the_runtime_only(tmp_path: Path) -> None:
    """A fresh `make run` installs the package without extras (no pytest, mypy, scikit-learn ...)."""
    commands = _dry_run("run", tmp_path / "venv")
    installs = [line for line in commands.splitlines() if "pip install" in line]
    assert installs, commands
    assert all(line.rstrip().endswith("-e .") for line in installs), installs
    assert "[test]" not in commands
    assert "branchkey-gateway serve" in commands


@pytest.mark.parametrize("target", ["test", "pytest", "lint", "typecheck"])
def test_make_test_adds_the_test_extras(tmp_path: Path, target: str) -> None:
    """Every test target installs `.[test]` first."""
    commands = _dry_run(target, tmp_path / "venv")
    assert "-e '.[test]'" in commands, commands


def test_runtime_dependencies_hold_no_test_tools() -> None:
    """The tools only tests need stay in the `test` extra, out of what `make run` installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for tool in ("pytest", "mypy", "ruff", "hypothesis", "scikit-learn", "matplotlib"):
        assert tool not in runtime
