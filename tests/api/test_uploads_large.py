"""A 300 MiB model streams through the gateway to BranchKey with bounded memory and intact bytes."""

from __future__ import annotations

import base64
import gc
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.weights.writer import NpzWriter
from tests.support.aggregator import ADMIN, Running
from tests.support.gateways import GatewayFactory
from tests.support.http import admin_get, file_chunks, sha256_of
from tests.support.memory import PeakRss

MiB = 1 << 20
LAYER_BYTES = 300 * MiB
CHUNK_VALUES = MiB  # 4 MiB of float32 per chunk
RSS_BUDGET = 200 * MiB


def _write_model(path: Path) -> str:
    """A stored (uncompressed) NPZ with one 300 MiB float32 layer, written chunk by chunk; its SHA-256."""
    count = LAYER_BYTES // 4
    base = np.arange(CHUNK_VALUES, dtype=np.float32)

    def chunks() -> Iterator[bytes]:
        for start in range(0, count, CHUNK_VALUES):
            yield (base[: min(CHUNK_VALUES, count - start)] + start).tobytes()

    with NpzWriter(path, compress=False) as writer:
        writer.write_weighting(3.0)
        writer.write_stream("layer_0", np.dtype("<f4"), (count,), False, chunks())
    return sha256_of(path)


@pytest.mark.memory
def test_300_mib_upload_streams_with_bounded_memory(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """Memory: a 300 MiB raw upload grows the process hosting gateway and aggregator by < 200 MiB, bytes intact."""
    gateway = gateway_for(0)
    model = tmp_path / "big.npz"
    sha256 = _write_model(model)
    size = model.stat().st_size
    assert size > LAYER_BYTES

    gc.collect()
    began = time.monotonic()
    with PeakRss() as rss, httpx.Client(timeout=120) as client:
        answer = client.post(
            f"{gateway.url}/upload",
            content=file_chunks(model),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
    elapsed = time.monotonic() - began
    assert answer.status_code == 201, answer.text
    result = answer.json()
    assert result["sha256"] == sha256
    assert result["size"] == size
    assert result["layers"] == [
        {"key": "layer_0", "dtype": "<f4", "shape": [LAYER_BYTES // 4], "name": None}
    ]
    growth = rss.peak - rss.baseline
    assert growth < RSS_BUDGET, f"RSS grew {growth / MiB:.0f} MiB during the upload"
    assert elapsed < 30
    with httpx.Client() as client:
        (stored,) = admin_get(aggregator.url, ADMIN, "uploads", client)
    assert stored["file_id"] == result["file_id"]
    assert stored["size"] == size
    assert base64.b64decode(stored["digest"]).hex() == sha256
    assert list(gateway.tmp_dir.iterdir()) == []
