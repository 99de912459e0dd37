"""A real full disk: the gateway and its embedded aggregator on a 4 MiB tmpfs answer 507 and keep nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.gateways import gateway_settings, run_gateway
from tests.support.http import check_problem
from tests.support.weights import sdk_weights

SIZE_MIB = 4


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for this test (needs root: skipped, saying so, where mounting is not allowed)."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or mount is None or umount is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); the ENOSPC unit tests still run")
    folder = tmp_path / "tiny"
    folder.mkdir()
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={SIZE_MIB}m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip()}); the ENOSPC unit tests still run"
        )
    try:
        yield folder
    finally:
        subprocess.run([umount, str(folder)], check=True)


def _weights(folder: Path, name: str, mib: float) -> Path:
    values = int(mib * (1 << 20)) // 4
    layer = np.random.default_rng(len(name)).random(values, dtype=np.float32)
    return sdk_weights(folder / name, 1.0, [layer])


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_full_disk_gets_507_and_leaves_nothing(tiny_disk: Path, tmp_path: Path) -> None:
    """Too big for the gateway, then too big for the aggregator after the gateway kept it: 507 each time,
    with no retry and no temp file left; a small upload afterwards goes through."""
    data = tiny_disk / "data"
    settings = gateway_settings(data, bk_host=None, bk_max_retries=3)
    with run_gateway(settings) as gateway, httpx.Client(timeout=60) as client:
        before = _files(data)

        too_big = _weights(tmp_path, "big.npz", SIZE_MIB + 1)
        answer = client.post(
            f"{gateway.url}/upload", files={"file": ("w.npz", too_big.read_bytes())}
        )
        body = check_problem(answer, 507, "insufficient-storage")
        assert "GATEWAY_DATA_DIR" in body["detail"]
        assert _files(data) == before

        half = _weights(tmp_path, "half.npz", SIZE_MIB * 0.6)
        answer = client.post(
            f"{gateway.url}/upload",
            content=half.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        body = check_problem(answer, 507, "insufficient-storage")
        assert body["detail"].startswith("BranchKey has no storage for the upload (HTTP 507)")
        assert _files(data) == before

        small = _weights(tmp_path, "small.npz", 0.1)
        answer = client.post(f"{gateway.url}/upload", files={"file": ("w.npz", small.read_bytes())})
        assert answer.status_code == 201, answer.text
