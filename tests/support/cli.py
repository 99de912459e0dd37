"""Running the command line as a user does: `python -m gateway <args>` against a gateway URL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CLI_TIMEOUT_S = 60.0


def cli_env(url: str, token: str | None = None) -> dict[str, str]:
    """The environment of a CLI run: GATEWAY_URL set, GATEWAY_TOKEN only when given, wide help."""
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_TOKEN", "GATEWAY_URL")}
    env.update(GATEWAY_URL=url, COLUMNS="160", NO_COLOR="1")
    if token is not None:
        env["GATEWAY_TOKEN"] = token
    return env


def cli(
    *args: str | Path, url: str, cwd: Path, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway <args>` as a user does, with GATEWAY_URL=`url`."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(url, token),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
