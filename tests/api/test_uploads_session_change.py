"""An upload whose leaf session is logged out or switched while it arrives is not forwarded: 409 session-changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running
from tests.support.gateways import GatewayFactory
from tests.support.http import admin_get, check_problem
from tests.support.weights import sdk_weights


def _body_then(data: bytes, during: httpx.Request) -> Iterator[bytes]:
    """Half of `data`, then `during` is sent on its own connection, then the rest."""
    half = len(data) // 2
    yield data[:half]
    with httpx.Client(timeout=10) as other:
        answer = other.send(during)
        assert answer.status_code in (200, 204), answer.text
    yield data[half:]


@pytest.mark.parametrize("change", ["logout", "other leaf"])
def test_session_change_during_upload(
    gateway_for: GatewayFactory, aggregator: Running, tmp_path: Path, change: str
) -> None:
    """DELETE /session (or POST /session as leaf 1) mid-upload: 409 telling the trainer to upload
    again; BranchKey receives nothing from either leaf."""
    gateway = gateway_for(0)
    layer = np.random.default_rng(1).random(300_000, dtype=np.float32)
    data = sdk_weights(tmp_path / "w.npz", 2.0, [layer]).read_bytes()
    if change == "logout":
        during = httpx.Request("DELETE", f"{gateway.url}/session")
    else:
        during = httpx.Request("POST", f"{gateway.url}/session", json=aggregator.leaves[1])
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{gateway.url}/upload",
            content=_body_then(data, during),
            headers={"Content-Type": "application/octet-stream"},
        )
        body = check_problem(answer, 409, "session-changed")
        assert "nothing was sent to BranchKey" in body["detail"]
        assert "upload again" in body["detail"].lower()
        assert admin_get(aggregator.url, ADMIN, "uploads", client) == []
        if change == "other leaf":
            assert body["leaf_name"] == aggregator.leaves[1]["name"]
            again = client.post(
                f"{gateway.url}/upload",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            assert again.status_code == 201, again.text
            uploads = admin_get(aggregator.url, ADMIN, "uploads", client)
            assert [u["leaf_id"] for u in uploads] == [aggregator.leaves[1]["id"]]
