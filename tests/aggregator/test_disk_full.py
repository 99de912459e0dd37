"""The aggregator on a full disk (ENOSPC, injected): 507 with nothing kept; a failed aggregation says why."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.aggregator import rounds, store
from gateway.multipart import sinks
from tests.support.aggregator import Running
from tests.support.weights import sdk_weights


def _full(*_args: Any, **_kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A 1.5 MiB NPZ."""
    layer = np.random.default_rng(3).random((384, 1024), dtype=np.float32)
    return sdk_weights(tmp_path / "w.npz", 2.0, [layer])


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.parametrize("where", ["receiving", "storing"])
def test_upload_on_a_full_disk(
    aggregator: Running, weights: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """507 `{"error": ...}` saying the disk is full, no temp file, nothing stored."""
    if where == "receiving":
        monkeypatch.setattr(sinks.FileSink, "write", _full)
    else:
        monkeypatch.setattr(store.Store, "add_upload", _full)
    with httpx.Client(timeout=30) as client:
        answer = aggregator.upload(client, weights)
        assert answer.status_code == 507
        assert answer.json()["error"].startswith("The aggregator's disk is full")
        uploads = client.get(f"{aggregator.url}/admin/uploads", headers=aggregator.admin)
        assert uploads.json()["data"] == []
    assert _files(aggregator.data_dir / "tmp") == []
    assert _files(aggregator.data_dir / "uploads") == []


def test_other_os_errors_stay_500(
    aggregator: Running, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a full disk is a 507: another OSError is still an internal error."""

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store.Store, "add_upload", broken)
    with httpx.Client(timeout=30) as client:
        assert aggregator.upload(client, weights).status_code == 500


def test_aggregation_on_a_full_disk(
    aggregator: Running, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An aggregation that cannot be written is recorded as failed with the reason, and leaves no file."""
    monkeypatch.setattr(rounds, "fedavg", _full)
    with httpx.Client(timeout=30) as client:
        assert aggregator.upload(client, weights).status_code == 201
        forced = client.post(
            f"{aggregator.url}/admin/aggregate", params={"wait": "true"}, headers=aggregator.admin
        )
        record = forced.json()["data"]
    assert record["status"] == "failed", record
    assert "disk is full" in record["error"]
    assert _files(aggregator.data_dir / "aggregations") == []
