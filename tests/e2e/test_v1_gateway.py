"""A gateway with BK_DIALECT=v1: trainers see the same routes, events and files as with v3."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.aggregator import Running, start
from tests.support.gateways import GatewayFactory, gateway_settings, run_gateway, v1_credentials
from tests.support.http import curl
from tests.support.sse import CurlSubscriber, aggregation_ids
from tests.support.waiting import wait_until
from tests.support.weights import read_v1, sdk_weights

LAYERS = [
    np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    np.array([1.5, -2.0, 3.25], dtype=np.float64),
]


def _basic(leaf: dict[str, str]) -> dict[str, str]:
    pair = f"{leaf['id']}:{leaf['session_token']}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def _aggregator_v1_blob(agg: Running, client: httpx.Client, aggregation_id: str) -> bytes:
    """The aggregation as a v1 client downloads it from the aggregator (download URL, then blob)."""
    answer = client.get(
        f"{agg.url}/v1/file/download/{aggregation_id}", headers=_basic(agg.leaves[0])
    )
    assert answer.status_code == 200, answer.text
    blob = client.get(answer.json()["data"]["download_url"])
    assert blob.status_code == 200
    return blob.content


def test_curl_upload_event_downloads_and_metrics_over_v1(
    rabbit_aggregator: Running, gateways: GatewayFactory, tmp_path: Path
) -> None:
    """curl -F an NPZ -> the aggregator receives our v1 object .npy; the aggregation id reaches
    `curl -N /events` over AMQP; downloads come as the upstream's v1 .npy (sample count kept) and
    as NPZ; a performance report is stored; /session shows the ids authenticate returned."""
    agg = rabbit_aggregator
    gateway = gateways(0)
    leaf = agg.leaves[0]
    with httpx.Client(timeout=30) as client:
        session = client.get(f"{gateway.url}/session").json()
        assert session["dialect"] == "v1"
        assert (session["tree_id"], session["branch_id"]) == (leaf["tree_id"], leaf["branch_id"])
        assert client.get(f"{gateway.url}/readyz").json()["channel"] == "connected"

        subscriber = CurlSubscriber(f"{gateway.url}/events")
        subscriber.start()
        try:
            weights = sdk_weights(tmp_path / "w.npz", 6.0, LAYERS)
            sent = curl("-F", f"file=@{weights}", f"{gateway.url}/upload")
            assert sent.status == 201, sent.body
            result = sent.json()
            events = subscriber.wait_for(
                lambda evs: bool(aggregation_ids(evs)), 20, "the aggregation event over AMQP"
            )
        finally:
            subscriber.stop()
        aggregation_id = aggregation_ids(events)[0]

        uploads = client.get(f"{agg.url}/admin/uploads", headers=agg.admin).json()["data"]
        (upload,) = [u for u in uploads if u["file_id"] == result["file_id"]]
        # What went upstream is the v1 file the response describes (its digest and size) ...
        assert upload["digest"] == base64.b64encode(bytes.fromhex(result["sha256"])).decode()
        assert upload["size"] == result["size"]
        assert result["weighting"] == 6.0
        records = client.get(f"{agg.url}/admin/aggregations", headers=agg.admin).json()["data"]
        assert aggregation_id in [r["aggregation_id"] for r in records]

        # `?format=npy` first (the cache is still empty): the v1 file with the upstream's sample
        # count, byte for byte what the aggregator serves its v1 leaves, readable without pickle.
        npy = curl(f"{gateway.url}/aggregations/{aggregation_id}?format=npy")
        assert npy.status == 200
        assert npy.body == _aggregator_v1_blob(agg, client, aggregation_id)
        assert npy.headers["etag"] == f'"{hashlib.sha256(npy.body).hexdigest()}"'
        saved = tmp_path / "agg.npy"
        saved.write_bytes(npy.body)
        num_samples, layers = read_v1(saved)
        assert num_samples == 6
        for got, want in zip(layers, LAYERS, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6)

        npz = curl(f"{gateway.url}/aggregations/{aggregation_id}")
        assert npz.status == 200
        with np.load(io.BytesIO(npz.body), allow_pickle=False) as archive:
            assert sorted(archive.files) == ["layer_0", "layer_1"]
            for i, layer in enumerate(LAYERS):  # one leaf in the round: the average is its layers
                np.testing.assert_allclose(archive[f"layer_{i}"], layer, rtol=1e-6)
                assert archive[f"layer_{i}"].dtype == layer.dtype

        report = client.post(
            f"{gateway.url}/performance",
            json={"aggregation_id": aggregation_id, "mode": "test", "data": {"accuracy": 0.75}},
        )
        assert report.status_code == 201, report.text
        metrics: list[dict[str, Any]] = client.get(
            f"{agg.url}/admin/metrics", headers=agg.admin
        ).json()["data"]
        assert [m["aggregation_id"] for m in metrics] == [aggregation_id]


def test_fractional_weighting_is_refused_before_anything_is_sent(
    rabbit_aggregator: Running, gateways: GatewayFactory, tmp_path: Path
) -> None:
    """v1 carries a whole sample count: weighting 2.5 is a 422 naming the rule; nothing reaches
    BranchKey; a per-layer upload with a whole weighting goes through."""
    agg = rabbit_aggregator
    gateway = gateways(0)
    weights = sdk_weights(tmp_path / "w.npz", 2.5, LAYERS)
    refused = curl("-F", f"file=@{weights}", f"{gateway.url}/upload")
    assert refused.status == 422
    problem = refused.json()
    assert problem["type"].endswith("/weighting-not-integer")
    assert "whole" in problem["detail"]
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{agg.url}/admin/uploads", headers=agg.admin).json()["data"] == []
    layer = tmp_path / "layer_0.npy"
    np.save(layer, LAYERS[0])
    accepted = curl("-F", f"layer_0=@{layer}", "-F", "weighting=3", f"{gateway.url}/upload")
    assert accepted.status == 201, accepted.body
    assert accepted.json()["weighting"] == 3.0


def test_without_a_broker_the_channel_is_down_and_says_why(tmp_path: Path) -> None:
    """An aggregator without --amqp-url provisions nothing: the gateway's uploads still work, while
    /readyz is 503 naming the broker's refusal, and the channel keeps retrying instead of exiting."""
    with start(tmp_path / "agg", min_leaves=1) as agg:
        leaf = agg.leaves[0]
        path = tmp_path / "leaf.json"
        path.write_text(json.dumps(v1_credentials(leaf)), encoding="utf-8")
        settings = gateway_settings(
            tmp_path / "gw",
            bk_host=agg.url,
            bk_dialect="v1",
            bk_credentials_file=path,
            bk_ws_backoff_max_s=0.5,
        )
        with run_gateway(settings, wait_heard=False) as gateway, httpx.Client(timeout=30) as client:
            wait_until(lambda: gateway.channel.reconnects >= 2, 20, "repeated reconnect attempts")
            ready = client.get(f"{gateway.url}/readyz")
            assert ready.status_code == 503
            detail = ready.json()["detail"]
            assert "notification channel is down" in detail
            assert f"refused leaf {leaf['id']}" in detail, detail
            assert "session token" in detail
            assert leaf["session_token"] not in detail
            weights = sdk_weights(tmp_path / "w.npz", 1.0, LAYERS)
            with weights.open("rb") as stream:
                sent = client.post(f"{gateway.url}/upload", files={"file": stream})
            assert sent.status_code == 201, sent.text


def test_logout_and_login_with_v1_credentials(
    rabbit_aggregator: Running, gateways: GatewayFactory, tmp_path: Path
) -> None:
    """DELETE /session drops the leaf; POST /session with another leaf's v1 credentials
    authenticates it (its tree and branch from /v1/leaf/authenticate), the consumer moves to that
    leaf's queue, and its next aggregation arrives; credentials v1 cannot carry are a 400."""
    agg = rabbit_aggregator
    gateway = gateways(0)
    other = agg.leaves[1]
    with httpx.Client(timeout=30) as client:
        assert client.delete(f"{gateway.url}/session").json()["state"] == "logged-out"
        refused = client.post(
            f"{gateway.url}/session", json={**v1_credentials(other), "leaf_id": "a:b"}
        )
        assert refused.status_code == 400
        assert "leaf_id contains ':'" in refused.json()["detail"]
        session = client.post(f"{gateway.url}/session", json=v1_credentials(other)).json()
        assert (session["leaf_id"], session["tree_id"]) == (other["id"], other["tree_id"])
        wait_until(lambda: gateway.channel.state == "connected", 20, "the channel of the new leaf")
        weights = sdk_weights(tmp_path / "w.npz", 2.0, LAYERS)
        with weights.open("rb") as stream:
            sent = client.post(f"{gateway.url}/upload", files={"file": stream})
        assert sent.status_code == 201, sent.text
        uploads = client.get(f"{agg.url}/admin/uploads", headers=agg.admin).json()["data"]
        assert [u["leaf_id"] for u in uploads] == [other["id"]]
        answer = client.get(f"{gateway.url}/aggregations", params={"after": 0, "wait": 20})
        assert answer.status_code == 200
        assert len(answer.json()) == 1
