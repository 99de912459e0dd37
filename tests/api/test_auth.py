"""Who may use the gateway: GATEWAY_TOKEN on every route but /healthz, and the leaf session's lifecycle."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running
from tests.support.gateways import Gateway, GatewayFactory
from tests.support.http import admin_get, check_problem
from tests.support.weights import sdk_weights

TOKEN = "gateway-secret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def weights(tmp_path: Path) -> bytes:
    """A small SDK-layout NPZ."""
    path = sdk_weights(tmp_path / "w.npz", 5.0, [np.zeros(3, dtype=np.float32)])
    return path.read_bytes()


@pytest.fixture
def guarded(gateway_for: GatewayFactory) -> Gateway:
    """A gateway started with GATEWAY_TOKEN set."""
    return gateway_for(0, gateway_token=TOKEN)


def test_token_is_required_except_for_healthz(guarded: Gateway, weights: bytes) -> None:
    """Without the token, or with a wrong one, every route answers a 401 problem; /healthz stays open."""
    url = guarded.url
    with httpx.Client() as client:
        assert client.get(f"{url}/healthz").status_code == 200
        refused = [
            client.get(f"{url}/run"),
            client.get(f"{url}/readyz"),
            client.get(f"{url}/session"),
            client.delete(f"{url}/session"),
            client.get(f"{url}/aggregations/anything"),
            client.head(f"{url}/aggregations/anything"),
            client.post(f"{url}/upload", files={"file": ("w.npz", weights)}),
            client.get(f"{url}/run", headers={"Authorization": "Bearer wrong"}),
            client.get(f"{url}/run", headers={"Authorization": f"Basic {TOKEN}"}),
            client.get(f"{url}/run", headers={"Authorization": TOKEN}),
        ]
        for answer in refused:
            assert answer.status_code == 401, answer.request
            assert answer.headers["www-authenticate"] == "Bearer"
            if answer.request.method != "HEAD":
                check_problem(answer, 401, "unauthorized")
        assert client.get(f"{url}/session", headers=BEARER).json()["state"] == "authenticated"
        assert client.get(f"{url}/run", headers=BEARER).status_code == 200
        assert client.get(f"{url}/readyz", headers=BEARER).status_code == 200
        uploaded = client.post(f"{url}/upload", files={"file": ("w.npz", weights)}, headers=BEARER)
        assert uploaded.status_code == 201, uploaded.text


def test_logout_then_login_again(
    aggregator: Running, gateway_for: GatewayFactory, weights: bytes
) -> None:
    """After DELETE /session uploads get a 401 no-session problem; POST /session with credentials restores them."""
    gateway = gateway_for(1)
    url = gateway.url
    leaf = aggregator.leaves[1]
    with httpx.Client() as client:
        out = client.delete(f"{url}/session")
        assert out.status_code == 200
        assert out.json()["state"] == "logged-out"
        assert client.get(f"{url}/session").json()["state"] == "logged-out"
        refused = client.post(f"{url}/upload", files={"file": ("w.npz", weights)})
        check_problem(refused, 401, "no-session")
        check_problem(client.get(f"{url}/run"), 401, "no-session")
        check_problem(client.get(f"{url}/readyz"), 503, "not-ready")
        assert admin_get(aggregator.url, ADMIN, "uploads", client) == []

        wrong = client.post(f"{url}/session", json={**leaf, "session_token": "not-it"})
        check_problem(wrong, 401, "upstream-rejected")
        assert client.get(f"{url}/session").json()["state"] == "logged-out"
        malformed = client.post(f"{url}/session", json={"id": leaf["id"]})
        check_problem(malformed, 400, "bad-request")

        back = client.post(f"{url}/session", json=leaf)
        assert back.status_code == 200, back.text
        info = back.json()
        assert info["state"] == "authenticated"
        assert info["leaf_id"] == leaf["id"]
        assert info["branch_id"] == leaf["branch_id"]
        assert info["upstream_host"] == aggregator.url
        assert info["offline"] is False
        assert info["run_status"] == "start"
        uploaded = client.post(f"{url}/upload", files={"file": ("w.npz", weights)})
        assert uploaded.status_code == 201, uploaded.text
        stored = admin_get(aggregator.url, ADMIN, "uploads", client)
        assert [(u["file_id"], u["leaf_id"]) for u in stored] == [
            (uploaded.json()["file_id"], leaf["id"])
        ]
        ready = client.get(f"{url}/readyz").json()
        assert (ready["status"], ready["run_status"]) == ("ready", "start")


def test_performance_report_reaches_branchkey(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """POST /performance answers 201 and BranchKey stores the report for the leaf; an unknown aggregation is 404."""
    gateway = gateway_for(2)
    with httpx.Client() as client:
        aggregator.upload(client, sdk_weights(tmp_path / "w.npz", 1, [np.ones(2)]), 2)
        aggregation_id = client.post(
            f"{aggregator.url}/admin/aggregate?wait=true", headers=aggregator.admin
        ).json()["data"]["aggregation_id"]
        report = {"aggregation_id": aggregation_id, "mode": "test", "data": {"accuracy": 0.93}}
        unknown = client.post(f"{gateway.url}/performance", json={**report, "aggregation_id": "x"})
        assert unknown.status_code == 404, unknown.text
        answer = client.post(f"{gateway.url}/performance", json=report)
        assert answer.status_code == 201, answer.text
        bad = client.post(f"{gateway.url}/performance", json={**report, "mode": "eval"})
        check_problem(bad, 400, "bad-request")
        stored = admin_get(aggregator.url, ADMIN, "metrics", client)
    assert len(stored) == 1
    assert stored[0]["leaf_id"] == aggregator.leaves[2]["id"]
    assert stored[0]["aggregation_id"] == aggregation_id
    assert stored[0]["mode"] == "test"


def test_without_a_token_only_loopback_is_served(gateway_for: GatewayFactory) -> None:
    """With no GATEWAY_TOKEN, a foreign Host (DNS rebinding) or a web page's Origin is refused; loopback works."""
    gateway = gateway_for(0)
    with httpx.Client() as client:
        assert client.get(f"{gateway.url}/run").status_code == 200
        assert (
            client.get(
                f"{gateway.url}/run", headers={"Origin": "http://localhost:3000"}
            ).status_code
            == 200
        )
        rebinding = client.get(f"{gateway.url}/run", headers={"Host": "evil.example:8000"})
        assert rebinding.status_code == 401
        assert "loopback" in rebinding.json()["detail"]
        page = client.post(
            f"{gateway.url}/upload",
            headers={"Origin": "https://evil.example"},
            files={"file": ("w.npz", b"x")},
        )
        assert page.status_code == 401
        assert (
            client.get(f"{gateway.url}/healthz", headers={"Host": "evil.example"}).status_code
            == 200
        )
