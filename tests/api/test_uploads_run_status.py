"""Uploads and the run: refused with a clear problem while stopped, or held with `?wait=true` until it starts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running
from tests.support.gateways import FAST_POLL_S, Gateway, GatewayFactory
from tests.support.http import admin_get, check_problem
from tests.support.weights import sdk_weights


@pytest.fixture
def weights(tmp_path: Path) -> bytes:
    """A small SDK-layout NPZ."""
    path = sdk_weights(tmp_path / "w.npz", 4.0, [np.ones((2, 2), dtype=np.float32)])
    return path.read_bytes()


@pytest.fixture
def stopped(aggregator: Running, gateway_for: GatewayFactory) -> Gateway:
    """A gateway whose branch's run has been stopped by the admin."""
    with httpx.Client() as client:
        aggregator.set_run(client, "stop")
    return gateway_for(0)


def _upload(url: str, weights: bytes, timeout: float = 30) -> httpx.Response:
    with httpx.Client(timeout=timeout) as client:
        return client.post(url, files={"file": ("w.npz", weights)})


def test_stopped_run_refuses_with_run_status(
    stopped: Gateway, aggregator: Running, weights: bytes
) -> None:
    """With the run stopped, an upload gets a 409 run-not-started problem naming the run status."""
    answer = _upload(f"{stopped.url}/upload", weights)
    problem = check_problem(answer, 409, "run-not-started")
    assert problem["run_status"] == "stop"
    assert problem["run_number"] == 1
    assert "wait=true" in problem["detail"]
    with httpx.Client() as client:
        run = client.get(f"{stopped.url}/run")
        assert run.status_code == 200
        assert run.json() == {"run_status": "stop", "run_number": 1}
        assert admin_get(aggregator.url, ADMIN, "uploads", client) == []


def test_wait_true_completes_once_the_run_starts(
    stopped: Gateway, aggregator: Running, weights: bytes
) -> None:
    """`?wait=true` holds the upload while the run is stopped and sends it once the admin starts it."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        began = time.monotonic()
        pending = pool.submit(_upload, f"{stopped.url}/upload?wait=true", weights)
        time.sleep(0.5)
        assert not pending.done()
        with httpx.Client() as client:
            started = aggregator.set_run(client, "start")
        answer = pending.result(timeout=30)
        elapsed = time.monotonic() - began
    assert answer.status_code == 201, answer.text
    assert 0.5 <= elapsed < 0.5 + 10 * FAST_POLL_S
    with httpx.Client() as client:
        uploads = admin_get(aggregator.url, ADMIN, "uploads", client)
        run = client.get(f"{stopped.url}/run").json()
    assert [u["file_id"] for u in uploads] == [answer.json()["file_id"]]
    assert uploads[0]["run_number"] == started["run_number"] == 2
    assert run == {"run_status": "start", "run_number": 2}


def test_wait_timeout_gives_up_with_409(
    stopped: Gateway, aggregator: Running, weights: bytes
) -> None:
    """`?wait=true&wait_timeout=1` answers a 409 run-not-started problem after about one second."""
    began = time.monotonic()
    answer = _upload(f"{stopped.url}/upload?wait=true&wait_timeout=1", weights)
    elapsed = time.monotonic() - began
    problem = check_problem(answer, 409, "run-not-started")
    assert problem["run_status"] == "stop"
    assert 0.9 <= elapsed < 3.0
    with httpx.Client() as client:
        assert admin_get(aggregator.url, ADMIN, "uploads", client) == []
    assert list(stopped.tmp_dir.iterdir()) == []


def test_settings_wait_timeout_applies_without_query(
    aggregator: Running, gateway_for: GatewayFactory, weights: bytes
) -> None:
    """GATEWAY_WAIT_TIMEOUT_S bounds a `?wait=true` upload that names no wait_timeout."""
    with httpx.Client() as client:
        aggregator.set_run(client, "pause")
    gateway = gateway_for(0, gateway_wait_timeout_s=0.6)
    began = time.monotonic()
    answer = _upload(f"{gateway.url}/upload?wait=true", weights)
    elapsed = time.monotonic() - began
    assert check_problem(answer, 409, "run-not-started")["run_status"] == "pause"
    assert 0.5 <= elapsed < 2.5
