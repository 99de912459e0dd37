"""The README's code blocks and the examples/ projects, so that tests run them as printed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_GATEWAY = "http://localhost:8000"
"""The gateway URL the README's snippets use; tests put their own gateway's in its place."""


def code_blocks(language: str) -> list[str]:
    """Every fenced block of `language` in the README, in order."""
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def js_listener(gateway_url: str) -> str:
    """The README's first JavaScript block (EventSource + fetch + readNpz), for `gateway_url`."""
    snippet = code_blocks("js")[0]
    assert README_GATEWAY in snippet, snippet
    assert "EventSource" in snippet, snippet
    return snippet.replace(README_GATEWAY, gateway_url)


def npm_project(npm: str, source: Path, names: tuple[str, ...], folder: Path) -> Path:
    """`folder` holding a copy of `names` from the example `source` after `npm ci`."""
    for name in names:
        shutil.copy(source / name, folder / name)
    installed = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert installed.returncode == 0, f"npm ci failed:\n{installed.stdout}\n{installed.stderr}"
    return folder
