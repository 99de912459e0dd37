"""A full disk (ENOSPC, injected): 507 /problems/insufficient-storage, nothing forwarded or retried, no temp file left."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway import _io
from gateway.aggregator import store
from gateway.multipart import sinks
from tests.support.aggregator import Running
from tests.support.gateways import GatewayFactory
from tests.support.http import admin_get, check_problem
from tests.support.live import aggregate
from tests.support.weights import sdk_weights


def _full(*_args: Any, **_kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A 2.5 MiB NPZ: several write batches."""
    layer = np.random.default_rng(7).random((640, 1024), dtype=np.float32)
    return sdk_weights(tmp_path / "w.npz", 3.0, [layer])


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("form", ["multipart", "raw"])
def test_upload_on_a_full_disk(
    gateway_for: GatewayFactory,
    aggregator: Running,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    form: str,
) -> None:
    """Receiving to a full disk: 507 with a detail saying what to do, the upstream never called."""
    gateway = gateway_for(0, bk_max_retries=3)
    if form == "multipart":
        monkeypatch.setattr(sinks.FileSink, "write", _full)
    else:
        monkeypatch.setattr(_io, "write_chunks", _full)  # the raw body's spool
    with httpx.Client(timeout=30) as client:
        if form == "multipart":
            answer = client.post(
                f"{gateway.url}/upload", files={"file": ("w.npz", weights.read_bytes())}
            )
        else:
            answer = client.post(
                f"{gateway.url}/upload",
                content=weights.read_bytes(),
                headers={"Content-Type": "application/octet-stream"},
            )
        body = check_problem(answer, 507, "insufficient-storage")
        assert "disk (GATEWAY_DATA_DIR) is full" in body["detail"]
        assert "nothing was sent to BranchKey" in body["detail"]
        assert admin_get(aggregator.url, "admin-secret-token", "uploads", client) == []
    assert _leftovers(gateway.tmp_dir) == []


def test_upstream_out_of_storage_is_not_retried(
    gateway_for: GatewayFactory,
    aggregator: Running,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BranchKey's 507 becomes the gateway's 507 after one attempt, even with retries configured."""
    gateway = gateway_for(0, bk_max_retries=3)
    attempts: list[int] = []

    def full_store(*_args: Any, **_kwargs: Any) -> None:
        attempts.append(1)
        _full()

    monkeypatch.setattr(store.Store, "add_upload", full_store)
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{gateway.url}/upload", files={"file": ("w.npz", weights.read_bytes())}
        )
    body = check_problem(answer, 507, "insufficient-storage")
    assert body["upstream_status"] == 507
    assert body["detail"].startswith("BranchKey has no storage for the upload")
    assert attempts == [1]
    assert _leftovers(gateway.tmp_dir) == []
    assert _leftovers(aggregator.data_dir / "tmp") == []


def test_download_cache_on_a_full_disk(
    gateway_for: GatewayFactory,
    aggregator: Running,
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An aggregation that cannot be cached: 507, no partial file in the cache or the scratch folder;
    once there is room the same request succeeds."""
    gateway = gateway_for(0)
    with httpx.Client(timeout=30) as client:
        aggregation_id = aggregate(aggregator, client, weights)
        with monkeypatch.context() as patched:
            patched.setattr(_io, "write_chunks", _full)  # the download's spool
            answer = client.get(f"{gateway.url}/aggregations/{aggregation_id}")
        check_problem(answer, 507, "insufficient-storage")
        assert _leftovers(gateway.data_dir / "cache") == []
        assert _leftovers(gateway.tmp_dir) == []
        again = client.get(f"{gateway.url}/aggregations/{aggregation_id}")
        assert again.status_code == 200
