"""Several trainers downloading at once: every answer is 200 with the right bytes, whatever the timing or cache size."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.aggregator import Running
from tests.support.gateways import Gateway, GatewayFactory
from tests.support.http import load_npz
from tests.support.weights import read_v1, sdk_weights

ROUNDS = 6


def _model(seed: int) -> list[np.ndarray[Any, Any]]:
    """Two 2 MiB float32 layers, distinct per seed."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((512, 1024)).astype(np.float32) for _ in range(2)]


def _rounds(aggregator: Running, gateway: Gateway, tmp_path: Path) -> list[tuple[str, Any]]:
    """ROUNDS single-upload rounds closed by the admin: (aggregation id, its layers) each."""
    done = []
    with httpx.Client(timeout=60) as client:
        for seed in range(ROUNDS):
            layers = _model(seed)
            weights = sdk_weights(tmp_path / f"w{seed}.npz", 2.0, layers).read_bytes()
            uploaded = client.post(f"{gateway.url}/upload", files={"file": ("w.npz", weights)})
            assert uploaded.status_code == 201, uploaded.text
            closed = client.post(
                f"{aggregator.url}/admin/aggregate?wait=true", headers=aggregator.admin
            )
            assert closed.status_code == 200, closed.text
            assert closed.json()["data"]["status"] == "done"
            done.append((closed.json()["data"]["aggregation_id"], layers))
    return done


def _get(url: str) -> httpx.Response:
    with httpx.Client(timeout=60) as client:
        return client.get(url)


def _layers_of(answer: httpx.Response, fmt: str, tmp_path: Path) -> list[np.ndarray[Any, Any]]:
    """The layers of a downloaded aggregate, after checking status and ETag."""
    assert answer.status_code == 200, (
        f"{answer.request.url}: {answer.status_code} {answer.text[:300]}"
    )
    if "etag" in answer.headers:  # absent on an answer passed on while it arrived
        assert answer.headers["etag"] == f'"{hashlib.sha256(answer.content).hexdigest()}"'
    if fmt == "npz":
        arrays = load_npz(answer.content)
        return [arrays[f"layer_{i}"] for i in range(len(arrays))]
    path = tmp_path / f"{hashlib.sha256(answer.content).hexdigest()}.npy"
    path.write_bytes(answer.content)
    return read_v1(path)[1]


def test_both_formats_fetched_at_once(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """The first GETs of an aggregation as NPZ and as `?format=npy` at the same moment both succeed."""
    gateway = gateway_for(0)
    rounds = _rounds(aggregator, gateway, tmp_path)
    jobs = [(aid, layers, fmt) for aid, layers in rounds for fmt in ("npz", "npy")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(
            pool.map(lambda job: _get(f"{gateway.url}/aggregations/{job[0]}?format={job[2]}"), jobs)
        )
    failures = []
    for (aid, layers, fmt), answer in zip(jobs, answers, strict=True):
        try:
            got = _layers_of(answer, fmt, tmp_path)
            assert len(got) == len(layers)
            for mine, theirs in zip(got, layers, strict=True):
                np.testing.assert_allclose(mine, theirs, rtol=1e-6)
        except AssertionError as exc:
            failures.append(f"{aid} {fmt}: {str(exc)[:300]}")
    assert failures == [], "\n".join(failures)


def test_small_cache_under_concurrent_downloads(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """With GATEWAY_CACHE_KEEP=2, six different aggregations downloaded at once all arrive whole."""
    gateway = gateway_for(0, gateway_cache_keep=2)
    rounds = _rounds(aggregator, gateway, tmp_path)
    with ThreadPoolExecutor(max_workers=ROUNDS) as pool:
        answers = list(pool.map(lambda r: _get(f"{gateway.url}/aggregations/{r[0]}"), rounds))
    failures = []
    for (aid, layers), answer in zip(rounds, answers, strict=True):
        try:
            got = _layers_of(answer, "npz", tmp_path)
            for mine, theirs in zip(got, layers, strict=True):
                np.testing.assert_allclose(mine, theirs, rtol=1e-6)
        except AssertionError as exc:
            failures.append(f"{aid}: {str(exc)[:300]}")
    assert failures == [], "\n".join(failures)
    cached = {p.name.split(".")[0] for p in (gateway.data_dir / "cache").iterdir()}
    assert len(cached) <= 2
