"""A 300 MiB safetensors model goes up and comes back as safetensors with bounded memory and the same bytes."""

from __future__ import annotations

import functools
import gc
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.weights.safetensors import OutTensor, write_safetensors
from tests.support.aggregator import Running, start
from tests.support.gateways import GatewayFactory
from tests.support.http import file_chunks, sha256_of
from tests.support.memory import PeakRss

MiB = 1 << 20
SHAPES = {"encoder.weight": (75 * MiB // 4, 4), "encoder.bias": (1024,)}
RSS_BUDGET = 200 * MiB


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Running]:
    """A local aggregator whose rounds close with one leaf: the upload yields an aggregation."""
    with start(tmp_path / "agg", min_leaves=1) as running:
        yield running


def _write_model(path: Path) -> str:
    """A 300 MiB float32 safetensors file written chunk by chunk; its sha256."""
    base = np.arange(MiB, dtype=np.float32)

    def chunks(count: int) -> Iterator[bytes]:
        for first in range(0, count, MiB):
            yield (base[: min(MiB, count - first)] + first).tobytes()

    tensors = [
        OutTensor(name, "F32", shape, functools.partial(chunks, math.prod(shape)))
        for name, shape in SHAPES.items()
    ]
    with path.open("wb") as out:
        write_safetensors(out, tensors)
    return sha256_of(path)


@pytest.mark.memory
def test_300_mib_safetensors_round_trip_with_bounded_memory(
    gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """Memory: a 300 MiB safetensors upload, its FedAvg and its ?format=safetensors download grow the
    process hosting gateway and aggregator by < 200 MiB; one leaf's aggregate is its upload, byte for byte."""
    gateway = gateway_for(0)
    model = tmp_path / "big.safetensors"
    sha256 = _write_model(model)
    size = model.stat().st_size
    after = gateway.log.bounds()[1]

    gc.collect()
    with PeakRss() as rss, httpx.Client(timeout=120) as client:
        answer = client.post(
            f"{gateway.url}/upload",
            content=file_chunks(model),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        assert answer.status_code == 201, answer.text
        assert [layer["name"] for layer in answer.json()["layers"]] == list(SHAPES)
        events = client.get(f"{gateway.url}/aggregations", params={"after": after, "wait": 60})
        assert events.json(), "no aggregation within 60 s"
        aggregation_id = events.json()[0]["aggregation_id"]
        digest, received = hashlib.sha256(), 0
        with client.stream(
            "GET", f"{gateway.url}/aggregations/{aggregation_id}", params={"format": "safetensors"}
        ) as download:
            assert download.status_code == 200
            for block in download.iter_bytes():
                digest.update(block)
                received += len(block)
    growth = rss.peak - rss.baseline
    assert growth < RSS_BUDGET, f"RSS grew {growth / MiB:.0f} MiB"
    assert received == size
    assert digest.hexdigest() == sha256
    assert download.headers["etag"] == f'"{sha256}"'
