"""The README's code blocks, so that tests run them as printed."""

from __future__ import annotations

import re
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
