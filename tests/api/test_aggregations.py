"""A full round through three gateways, then `GET /aggregations/{id}` with curl: FedAvg, formats, Range, ETag."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running
from tests.support.gateways import Gateway, GatewayFactory
from tests.support.http import curl, load_npz, wait_for_aggregation
from tests.support.weights import read_v1, sdk_weights

WEIGHTINGS = [1.0, 3.0, 6.0]


def _leaf_layers(leaf: int) -> list[np.ndarray[Any, Any]]:
    """Distinct float32 and float64 layers for each leaf."""
    rng = np.random.default_rng(leaf)
    return [
        rng.standard_normal((4, 3)).astype(np.float32),
        rng.standard_normal(7),
    ]


def _fedavg(layers: list[list[np.ndarray[Any, Any]]], weights: list[float]) -> list[Any]:
    """The weighted mean, layer by layer, in float64."""
    total = sum(weights)
    return [
        sum(w * leaf[i].astype(np.float64) for w, leaf in zip(weights, layers, strict=True)) / total
        for i in range(len(layers[0]))
    ]


@pytest.fixture
def round_done(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> tuple[list[Gateway], str, list[Any]]:
    """Three gateways each uploaded their leaf's weights and BranchKey aggregated the round."""
    gateways = [gateway_for(leaf) for leaf in range(3)]
    inputs = [_leaf_layers(leaf) for leaf in range(3)]
    for leaf, gateway in enumerate(gateways):
        sdk_weights(tmp_path / f"w{leaf}.npz", WEIGHTINGS[leaf], inputs[leaf])
        answer = curl("-F", f"file=@w{leaf}.npz", f"{gateway.url}/upload", cwd=tmp_path)
        assert answer.status == 201, answer.body
    with httpx.Client() as client:
        record = wait_for_aggregation(aggregator.url, ADMIN, client)
    assert sorted(json.loads(record["contributors"])) == sorted(
        leaf["id"] for leaf in aggregator.leaves
    )
    return gateways, record["aggregation_id"], _fedavg(inputs, WEIGHTINGS)


def test_every_gateway_serves_the_weighted_average(
    round_done: tuple[list[Gateway], str, list[Any]], tmp_path: Path
) -> None:
    """`curl <gw>/aggregations/<id>` on each leaf's gateway gives the NPZ of the FedAvg of all uploads:
    first passed on while it arrives (no ETag yet), then from the cache with its sha256 as ETag."""
    gateways, aggregation_id, expected = round_done
    for gateway in gateways:
        answer = curl(f"{gateway.url}/aggregations/{aggregation_id}", cwd=tmp_path)
        assert answer.status == 200, answer.body
        assert answer.headers["content-type"] == "application/octet-stream"
        assert "etag" not in answer.headers  # cut through: the digest is known only at the end
        assert int(answer.headers["content-length"]) == len(answer.body)
        again = curl(f"{gateway.url}/aggregations/{aggregation_id}", cwd=tmp_path)
        assert again.body == answer.body
        assert again.headers["etag"] == f'"{hashlib.sha256(answer.body).hexdigest()}"'
        arrays = load_npz(answer.body)
        assert list(arrays) == ["layer_0", "layer_1"]
        assert arrays["layer_0"].dtype == np.float32
        assert arrays["layer_1"].dtype == np.float64
        np.testing.assert_allclose(arrays["layer_0"], expected[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(arrays["layer_1"], expected[1], rtol=1e-12, atol=1e-12)


def test_npy_format_is_the_v1_object_layout(
    round_done: tuple[list[Gateway], str, list[Any]], tmp_path: Path
) -> None:
    """`?format=npy` gives the v1 object array (num_samples, [layers]) holding the same layers as the NPZ."""
    gateways, aggregation_id, _ = round_done
    url = f"{gateways[1].url}/aggregations/{aggregation_id}"
    plain = load_npz(curl(url).body)
    answer = curl(f"{url}?format=npy")
    assert answer.status == 200, answer.body
    assert answer.headers["etag"] == f'"{hashlib.sha256(answer.body).hexdigest()}"'
    path = tmp_path / "aggregated.npy"
    path.write_bytes(answer.body)
    num_samples, layers = read_v1(path)
    assert num_samples == 0  # an aggregate carries no sample count
    assert len(layers) == 2
    for index, layer in enumerate(layers):
        assert layer.dtype == plain[f"layer_{index}"].dtype
        np.testing.assert_array_equal(layer, plain[f"layer_{index}"])


def test_range_head_and_etag(round_done: tuple[list[Gateway], str, list[Any]]) -> None:
    """Range gives 206 with exactly the asked bytes, HEAD gives the headers, If-Range honours the ETag."""
    gateways, aggregation_id, _ = round_done
    url = f"{gateways[2].url}/aggregations/{aggregation_id}"
    curl(url)  # the first answer is passed on while it arrives: no ETag yet
    full = curl(url)
    size = len(full.body)
    etag = full.headers["etag"]
    assert etag == f'"{hashlib.sha256(full.body).hexdigest()}"'

    first = curl("-r", "0-99", url)
    assert first.status == 206
    assert first.body == full.body[:100]
    assert first.headers["content-range"] == f"bytes 0-99/{size}"
    assert first.headers["etag"] == etag

    middle = curl("-r", f"100-{size - 2}", url)
    assert middle.status == 206
    assert middle.body == full.body[100 : size - 1]

    tail = curl("-r", "-50", url)
    assert tail.status == 206
    assert tail.body == full.body[-50:]
    assert tail.headers["content-range"] == f"bytes {size - 50}-{size - 1}/{size}"

    head = curl("-I", url)
    assert head.status == 200
    assert head.headers["etag"] == etag
    assert int(head.headers["content-length"]) == size
    assert head.headers["accept-ranges"] == "bytes"
    with httpx.Client() as client:
        assert client.head(url).content == b""

    resumed = curl("-r", "10-19", "-H", f"If-Range: {etag}", url)
    assert resumed.status == 206
    assert resumed.body == full.body[10:20]
    changed = curl("-r", "10-19", "-H", 'If-Range: "something-else"', url)
    assert changed.status == 200
    assert changed.body == full.body

    # Starlette's FileResponse does not answer If-None-Match with 304; a revalidation must at
    # least never yield a different body.
    revalidated = curl("-H", f"If-None-Match: {etag}", url)
    assert revalidated.status in (200, 304)
    if revalidated.status == 200:
        assert revalidated.body == full.body


def test_unknown_aggregation_is_a_404_problem(
    round_done: tuple[list[Gateway], str, list[Any]],
) -> None:
    """An id BranchKey does not know answers a 404 problem, and a path-like id a 400 problem."""
    gateways, _, _ = round_done
    with httpx.Client() as client:
        missing = client.get(f"{gateways[0].url}/aggregations/no-such-id")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["type"] == "/problems/not-found"
        dotted = client.get(f"{gateways[0].url}/aggregations/..%5Cetc")
        assert dotted.status_code == 400
        assert dotted.json()["type"] == "/problems/bad-request"


def test_if_none_match_answers_304(round_done: tuple[list[Gateway], str, list[Any]]) -> None:
    """If-None-Match with the current ETag (alone, weak, in a list, or `*`) gives 304 with no body; another tag gives 200."""
    gateways, aggregation_id, _ = round_done
    url = f"{gateways[0].url}/aggregations/{aggregation_id}"
    curl(url)  # the first answer is passed on while it arrives: no ETag yet
    full = curl(url)
    etag = full.headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        for method in ((), ("-I",)):
            answer = curl(*method, "-H", f"If-None-Match: {header}", url)
            assert answer.status == 304, (header, method)
            if not method:  # curl -I prints the headers as its output
                assert answer.body == b""
            assert answer.headers["etag"] == etag
    other = curl("-H", 'If-None-Match: "0000"', url)
    assert other.status == 200
    assert other.body == full.body
    assert other.headers["etag"] == etag
