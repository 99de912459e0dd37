"""One round, three dialects: the official 2.6.2 client, a gateway speaking v1, a gateway speaking v3."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.weights import ValidationPolicy, npz_to_object_npy
from tests.support.aggregator import Running
from tests.support.gateways import GatewayFactory, v1_credentials
from tests.support.peers import ensure_peer
from tests.support.sse import SseSubscriber, aggregation_ids
from tests.support.weights import read_v1, sdk_weights

pytestmark = pytest.mark.peers

# Runs inside the branchkey==2.6.2 virtualenv: construct the client (authenticate, AMQP, run), upload
# the v1 file, wait for the aggregation id on client.queue, download it. Prints one JSON object.
_PEER_ROUND = """
import contextlib, json, os, sys
from branchkey.client import Client
p = json.load(sys.stdin)
os.chdir(p["cwd"])
with contextlib.redirect_stdout(sys.stderr):  # the client prints progress lines
    client = Client(p["credentials"], host=p["host"], ssl=False)
    file_id = client.file_upload(p["weights"])
    aggregation_id = client.queue.get(timeout=p["timeout"])
    client.file_download(aggregation_id)
print(json.dumps({"file_id": file_id, "aggregation_id": aggregation_id,
                  "run_status": client.run_status, "tree_id": client.tree_id}))
"""

WEIGHTINGS = (4, 6, 10)


def _layers(leaf: int) -> list[np.ndarray[Any, Any]]:
    rng = np.random.default_rng(leaf)
    return [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=5).astype(np.float32)]


@pytest.mark.parametrize("round_size", [3])
def test_client_v1_gateway_and_v3_gateway_share_one_aggregation(
    rabbit_aggregator: Running, gateways: GatewayFactory, tmp_path: Path
) -> None:
    """Leaf 0 is the unmodified 2.6.2 client, leaf 1 a v1 gateway, leaf 2 a v3 gateway: the round
    closes once, all three receive the same id (client.queue, SSE over AMQP, SSE over WebSocket),
    and every download equals the weighted average."""
    agg = rabbit_aggregator
    peer = ensure_peer("2.6.2")
    v1_gateway, v3_gateway = gateways(1, "v1"), gateways(2, "v3")
    subscribers = [SseSubscriber(f"{g.url}/events") for g in (v1_gateway, v3_gateway)]
    for subscriber in subscribers:
        subscriber.start()

    npz = sdk_weights(tmp_path / "leaf0.npz", WEIGHTINGS[0], _layers(0))
    v1_file = tmp_path / "leaf0.npy"
    npz_to_object_npy(npz, v1_file, ValidationPolicy())
    (tmp_path / "peer").mkdir()
    outcome: dict[str, Any] = {}

    def run_peer() -> None:
        try:
            outcome["result"] = peer.run_json(
                _PEER_ROUND,
                {
                    "cwd": str(tmp_path / "peer"),
                    "credentials": v1_credentials(agg.leaves[0]),
                    "host": agg.url,
                    "weights": str(v1_file),
                    "timeout": 60,
                },
                timeout=90,
            )
        except BaseException as exc:  # reported by the test below
            outcome["error"] = exc

    thread = threading.Thread(target=run_peer, daemon=True)
    thread.start()
    with httpx.Client(timeout=30) as client:
        for leaf, gateway in ((1, v1_gateway), (2, v3_gateway)):
            weights = sdk_weights(tmp_path / f"leaf{leaf}.npz", WEIGHTINGS[leaf], _layers(leaf))
            with weights.open("rb") as stream:
                answer = client.post(f"{gateway.url}/upload", files={"file": stream})
            assert answer.status_code == 201, answer.text
        thread.join(100)
        assert not thread.is_alive(), "the 2.6.2 client did not finish"
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        aggregation_id = result["aggregation_id"]
        assert result["tree_id"] == agg.leaves[0]["tree_id"]
        for subscriber in subscribers:
            events = subscriber.wait_for(
                lambda evs: bool(aggregation_ids(evs)), 20, "the aggregation event"
            )
            assert aggregation_ids(events) == [aggregation_id]
        records = client.get(f"{agg.url}/admin/aggregations", headers=agg.admin).json()["data"]
        assert [r["aggregation_id"] for r in records] == [aggregation_id]

        total = sum(WEIGHTINGS)
        expected = [
            sum(w * _layers(leaf)[i].astype(np.float64) for leaf, w in enumerate(WEIGHTINGS))
            / total
            for i in range(2)
        ]
        _, from_client = read_v1(tmp_path / "peer" / "aggregated_output" / f"{aggregation_id}.npy")
        from_gateways = []
        for gateway in (v1_gateway, v3_gateway):
            answer = client.get(f"{gateway.url}/aggregations/{aggregation_id}")
            assert answer.status_code == 200
            with np.load(io.BytesIO(answer.content), allow_pickle=False) as archive:
                from_gateways.append([archive[f"layer_{i}"] for i in range(2)])
        for layers in (from_client, *from_gateways):
            for got, want in zip(layers, expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
