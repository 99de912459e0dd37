"""schemathesis against a live server's OpenAPI document, bounded in examples and time, as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FUZZ_TIMEOUT_S = 110
"""The longest a run may take before the test fails (the runs themselves ask for well under 60 s)."""


@dataclass(frozen=True)
class FuzzRun:
    """What a schemathesis run printed, and how it ended."""

    returncode: int
    output: str

    @property
    def summary(self) -> str:
        """The last lines: the phases, failures and the count of test cases."""
        return "\n".join(self.output.splitlines()[-30:])


def run_schemathesis(
    document: Path, url: str, *options: str, hooks: str | None = None, report_dir: Path
) -> FuzzRun:
    """`schemathesis run document -u url options...`, with `hooks` (a module under the repository
    root) loaded; its JUnit report and printed output (output.txt) are kept in `report_dir`."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
        "NO_COLOR": "1",
        "COLUMNS": "120",
    }
    if hooks is not None:
        env["SCHEMATHESIS_HOOKS"] = hooks
    report_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(document),
        "--url",
        url,
        "--report",
        "junit",
        "--report-dir",
        str(report_dir),
        *options,
    ]
    done = subprocess.run(
        command,
        cwd=report_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=FUZZ_TIMEOUT_S,
        check=False,
    )
    run = FuzzRun(done.returncode, done.stdout + done.stderr)
    (report_dir / "output.txt").write_text(run.output, encoding="utf-8")
    return run
