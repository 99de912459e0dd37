"""The gateway's value and architecture checks on uploads, and what an upload weighing 0 is told."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gateway.settings import WeightsSettings
from tests.support.aggregator import ADMIN, Running, start
from tests.support.gateways import (
    GatewayFactory,
    gateway_settings,
    run_gateway,
    write_credentials,
)
from tests.support.http import (
    admin_get,
    check_problem,
    load_npz,
    wait_for_aggregation,
    wait_ready,
)
from tests.support.weights import layers_of, sdk_weights

Layers = list[np.ndarray[Any, Any]]


def _post(client: httpx.Client, url: str, path: Path, *, raw: bool = False) -> httpx.Response:
    if raw:
        headers = {"Content-Type": "application/octet-stream"}
        return client.post(f"{url}/upload", content=path.read_bytes(), headers=headers)
    return client.post(f"{url}/upload", files={"file": (path.name, path.read_bytes())})


def _uploads(aggregator: Running, client: httpx.Client) -> int:
    return len(admin_get(aggregator.url, ADMIN, "uploads", client))


def test_nan_and_inf_are_refused_in_forms_and_raw_bodies(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """A stored NPZ as a form and a compressed one as a raw body: 422 not-finite naming the layer; nothing sent."""
    gateway = gateway_for(0)
    layers = layers_of(0)
    layers[1][3] = np.inf
    stored = sdk_weights(tmp_path / "stored.npz", 1.0, layers)
    packed = tmp_path / "packed.npz"
    np.savez_compressed(packed, weighting=1.0, layer_0=layers[0], layer_1=layers[1])
    with httpx.Client(timeout=30) as client:
        for path, raw in ((stored, False), (packed, True)):
            problem = check_problem(
                _post(client, gateway.url, path, raw=raw), 422, "weights/not-finite"
            )
            assert problem["detail"].startswith("layer_1 holds inf at index (3,)")
        assert _uploads(aggregator, client) == 0
    assert list(gateway.tmp_dir.iterdir()) == []


def test_allow_nonfinite_sends_them_on(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """GATEWAY_ALLOW_NONFINITE=true: the same NaN model is forwarded."""
    gateway = gateway_for(0, weights=WeightsSettings(_env_file=None, allow_nonfinite=True))
    layers = layers_of(0)
    layers[0][0, 0] = np.nan
    with httpx.Client(timeout=30) as client:
        answer = _post(client, gateway.url, sdk_weights(tmp_path / "w.npz", 1.0, layers))
        assert answer.status_code == 201, answer.text
        assert _uploads(aggregator, client) == 1


def _reshaped(seed: int) -> Layers:
    """The two layers of `layers_of`, the second one a different length."""
    first, _ = layers_of(seed)
    return [first, np.zeros(6)]


def test_a_model_unlike_the_latest_aggregation_is_refused_until_the_check_is_off(
    tmp_path: Path,
) -> None:
    """After an /exchange round, shape, dtype and layer count differences are 422
    architecture-mismatch naming the layer and the aggregation; byte order is no difference; the
    switch lets a new architecture through."""
    with start(tmp_path / "agg1", min_leaves=1) as agg:
        creds = write_credentials(tmp_path / "leaf.json", agg.leaves[0])
        settings = gateway_settings(tmp_path / "gw", bk_host=agg.url, bk_credentials_file=creds)
        with run_gateway(settings) as gateway, httpx.Client(timeout=30) as client:
            wait_ready(gateway.url)
            good = sdk_weights(tmp_path / "good.npz", 1.0, layers_of(0))
            round_one = client.post(
                f"{gateway.url}/exchange", files={"file": ("good.npz", good.read_bytes())}
            )
            assert round_one.status_code == 200, round_one.text
            aggregation_id = round_one.headers["x-aggregation-id"]
            wrong = {
                "shape": (_reshaped(1), "layer_1 is <f8 of shape (6,) here but <f8 of shape (5,)"),
                "dtype": (
                    [layers_of(1)[0].astype(np.float64), layers_of(1)[1]],
                    "layer_0 is <f8 of shape (8, 4) here but <f4 of shape (8, 4)",
                ),
                "count": ([*layers_of(1), np.ones(3)], "the model has 3 layers and the latest"),
            }
            for name, (layers, words) in wrong.items():
                path = sdk_weights(tmp_path / f"{name}.npz", 1, layers)
                problem = check_problem(
                    _post(client, gateway.url, path), 422, "weights/architecture-mismatch"
                )
                assert words in problem["detail"]
                assert f"the latest aggregation ({aggregation_id})" in problem["detail"]
                assert "GATEWAY_CHECK_ARCHITECTURE=false" in problem["detail"]
            swapped = [a.astype(a.dtype.newbyteorder(">")) for a in layers_of(2)]
            answer = _post(client, gateway.url, sdk_weights(tmp_path / "be.npz", 1.0, swapped))
            assert answer.status_code == 201, answer.text
            assert _uploads(agg, client) == 2
        changed = gateway_settings(
            tmp_path / "gw",
            bk_host=agg.url,
            bk_credentials_file=creds,
            gateway_check_architecture=False,
        )
        with run_gateway(changed) as gateway, httpx.Client(timeout=30) as client:
            reshaped = sdk_weights(tmp_path / "new.npz", 1.0, _reshaped(3))
            assert _post(client, gateway.url, reshaped).status_code == 201


def test_the_latest_aggregation_fetched_is_the_reference(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """A gateway that never uploaded learns the layout from the aggregation it serves, and it survives a restart."""
    gateway = gateway_for(0)
    wait_ready(gateway.url)
    with httpx.Client(timeout=30) as client:
        for leaf in range(3):  # the leaves upload straight to BranchKey, not through the gateway
            weights = sdk_weights(tmp_path / f"w{leaf}.npz", 1.0, layers_of(leaf))
            assert aggregator.upload(client, weights, leaf).status_code == 201
        aggregation_id = wait_for_aggregation(aggregator.url, ADMIN, client)["aggregation_id"]
        gateway.event_of(aggregation_id)
        fetched = client.get(f"{gateway.url}/aggregations/{aggregation_id}")
        assert fetched.status_code == 200
        assert (gateway.data_dir / "layouts.json").exists()
        again = gateway_for(0, gateway_data_dir=gateway.data_dir)
        for url in (gateway.url, again.url):
            answer = _post(client, url, sdk_weights(tmp_path / "odd.npz", 1.0, _reshaped(5)))
            problem = check_problem(answer, 422, "weights/architecture-mismatch")
            assert f"the latest aggregation ({aggregation_id})" in problem["detail"]


def test_a_weighting_of_zero_is_accepted_and_told_it_does_not_move_the_mean(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """Weighting 0 is a 201 with a note; the round's mean is that of the other two uploads."""
    weights = [0.0, 1.0, 3.0]
    gateways = [gateway_for(leaf) for leaf in range(3)]
    with httpx.Client(timeout=30) as client:
        for leaf, gateway in enumerate(gateways):
            path = sdk_weights(tmp_path / f"w{leaf}.npz", weights[leaf], layers_of(leaf))
            answer = _post(client, gateway.url, path)
            assert answer.status_code == 201, answer.text
            note = answer.json()["note"]
            if leaf == 0:
                assert "will not move the aggregated mean" in note
            else:
                assert note is None
        aggregation_id = wait_for_aggregation(aggregator.url, ADMIN, client)["aggregation_id"]
        got = client.get(f"{gateways[0].url}/aggregations/{aggregation_id}")
        assert got.status_code == 200, got.text
    mean = load_npz(got.content)
    for i in range(2):
        expected = (1 * layers_of(1)[i].astype(np.float64) + 3 * layers_of(2)[i]) / 4
        np.testing.assert_allclose(mean[f"layer_{i}"], expected, rtol=1e-6)
