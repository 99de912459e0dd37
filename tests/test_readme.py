"""The README's quick start and command-line examples run as printed, against a live offline gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.docs import README
from tests.support.gateways import gateway_settings, run_gateway

ROOT = README.parent


def _block(after: str, fence: str = "```sh\n") -> str:
    """The first code block after the heading `after`."""
    text = README.read_text(encoding="utf-8")
    return text[text.index(after) :].split(fence, 1)[1].split("```", 1)[0]


def _run(script: str, cwd: Path, port: int) -> subprocess.CompletedProcess[str]:
    """`script` under `bash -e` in `cwd`, with the gateway at localhost:`port` instead of 8000."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),  # this tree's gateway, whichever virtualenv holds the tools
        "GATEWAY_URL": f"http://127.0.0.1:{port}",
    }
    return subprocess.run(
        ["bash", "-e", "-c", script.replace("localhost:8000", f"localhost:{port}")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def repo_like(tmp_path: Path) -> Path:
    """A folder laid out as the repository root after `make run`: `.venv` (this virtualenv)."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return tmp_path


def test_quick_start_runs_as_printed(repo_like: Path) -> None:
    """Every command of 'Using the gateway from any language' succeeds, with no problem answer."""
    settings = gateway_settings(repo_like / "gateway-data", bk_host=None)
    with run_gateway(settings) as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        result = _run(_block("## Using the gateway from any language"), repo_like, port)
    assert result.returncode == 0, result.stderr
    assert "/problems/" not in result.stdout, result.stdout
    assert '"weighting_source":"request"' in result.stdout
    assert "HTTP/1.1 304 Not Modified" in result.stdout
    # downloads written with -o hold files, not problem documents
    assert (repo_like / "agg.npy").read_bytes().startswith(b"\x93NUMPY")
    assert (repo_like / "agg.npz").read_bytes().startswith(b"PK")
    assert not (repo_like / "agg.safetensors").read_bytes().startswith(b"{")


def test_command_line_examples_run_as_printed(repo_like: Path) -> None:
    """The 'Command line' examples run after the quick start's sample files exist (watch stopped after 2 s)."""
    settings = gateway_settings(repo_like / "gateway-data", bk_host=None)
    samples = _block("## Using the gateway from any language").split("\n# upload weights", 1)[0]
    examples = _block("### Command line").replace(
        "branchkey-gateway watch ", "timeout -s INT 2 branchkey-gateway watch || test $? = 124 "
    )
    with run_gateway(settings) as gateway:
        port = int(gateway.url.rsplit(":", 1)[1])
        result = _run(samples + examples, repo_like, port)
    assert result.returncode == 0, result.stderr
    for written in ("v1.npy", "v3.npz", "packed.npz", "agg.npz", "plain.npz"):
        assert (repo_like / written).stat().st_size > 0
    assert "authenticated as leaf" in result.stdout


def test_python_example_names_its_interpreter() -> None:
    """The Python example says which interpreter has its imports (the gateway's .venv)."""
    text = README.read_text(encoding="utf-8")
    intro = text[: text.index("```python\n")].strip().rsplit("\n\n", 1)[1]
    assert ".venv/bin/python" in intro
