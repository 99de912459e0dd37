"""The `branchkey-gateway` helper commands for weights files."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from tests.weights.util import sdk_weights


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as users do (python -m gateway)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_inspect_describes_a_payload(tmp_path: Path) -> None:
    """`inspect` prints the payload description as JSON and exits 0."""
    path = sdk_weights(tmp_path / "w.npz", 5, [np.ones((2, 3), dtype=np.float32)])
    result = run("inspect", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["weighting"] == 5.0
    assert described["arrays"][0]["shape"] == [2, 3]


def test_inspect_reports_the_error_code(tmp_path: Path) -> None:
    """`inspect` exits 1 with the machine code and sentence on stderr for a refused file."""
    path = tmp_path / "w.npz"
    np.savez(path, layer_0=np.ones(2))
    result = run("inspect", path, cwd=tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stderr)["error"] == "missing-weighting"


def test_convert_and_pack(tmp_path: Path) -> None:
    """`convert --to npy` writes a v1 file, `convert` brings it back, `pack` builds from parts."""
    layer = np.arange(6, dtype=np.float32).reshape(2, 3)
    sdk_weights(tmp_path / "w.npz", 9, [layer])
    assert run("convert", "w.npz", "w1.npy", "--to", "npy", cwd=tmp_path).returncode == 0
    assert run("convert", "w1.npy", "back.npz", cwd=tmp_path).returncode == 0
    with np.load(tmp_path / "back.npz", allow_pickle=False) as data:
        assert data["weighting"][0] == 9.0
        assert np.array_equal(data["layer_0"], layer)
    np.save(tmp_path / "part.npy", layer)
    result = run("pack", "packed.npz", "part.npy", "--weighting", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "packed.npz", allow_pickle=False) as data:
        assert data.files == ["weighting", "layer_0"]


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_aggregator_command_serves_dev_leaves(tmp_path: Path) -> None:
    """`aggregator` creates dev leaves, serves the v3 API on the given port and stops on SIGINT."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "aggregator",
            "--port",
            str(port),
            "--data-dir",
            "data",
            "--dev-leaves",
            "2",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        leaves_file = tmp_path / "data" / "leaves.json"
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.1)
            if not leaves_file.exists():
                continue
            leaf = json.loads(leaves_file.read_text())[0]
            try:
                status = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/run/{leaf['branch_id']}",
                    headers={"Authorization": f"Bearer {leaf['id']}:{leaf['session_token']}"},
                ).status_code
            except httpx.TransportError:
                continue
        assert status == 200
        assert len(json.loads(leaves_file.read_text())) == 2
        assert (tmp_path / "data" / "admin-token").stat().st_mode & 0o077 == 0
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "leaf credentials" in out
    assert leaf["session_token"] not in out + err


def test_aggregator_command_explains_a_bad_leaves_file(tmp_path: Path) -> None:
    """A malformed leaves file stops the command with exit code 2 and a sentence naming the problem."""
    (tmp_path / "leaves.json").write_text('[{"id": "a"}]')
    result = run("aggregator", "--leaves-file", "leaves.json", "--data-dir", "data", cwd=tmp_path)
    assert result.returncode == 2
    assert "needs the string fields" in result.stderr
