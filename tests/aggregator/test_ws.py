"""The aggregator's notification WebSocket, end to end: tickets, run status, aggregation fan-out."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.aggregator import Running, start
from tests.support.weights import sdk_weights


def ticket(agg: Running, client: httpx.Client, leaf: int = 0) -> dict[str, str]:
    """A fresh ticket for `leaf`."""
    response = client.post(f"{agg.url}/api/v1/ws/ticket", headers=agg.auth(leaf))
    assert response.status_code == 200
    data: dict[str, str] = response.json()["data"]
    return data


def ws_url(agg: Running, issued: dict[str, str], prefix: str = "") -> str:
    """The URL the official client builds (values not percent-encoded)."""
    base = agg.url.replace("http://", "ws://")
    return (
        f"{base}{prefix}/api/v1/ws?ticket={issued['ticket_id']}&request_id={issued['request_id']}"
    )


def receive(ws: ClientConnection, timeout: float = 10) -> Any:
    """The next JSON message."""
    return json.loads(ws.recv(timeout=timeout))


def handshake_status(url: str) -> int:
    """The HTTP status of a refused handshake (0 if it was accepted)."""
    try:
        with connect(url, open_timeout=5):
            return 0
    except InvalidStatus as refused:
        return refused.response.status_code


def test_every_leaf_gets_run_status_then_the_aggregation(
    aggregator: Running, tmp_path: Path
) -> None:
    """Each connected leaf first gets the run status, then the id of the aggregation its round produced."""
    with httpx.Client() as client, contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(
                connect(ws_url(aggregator, ticket(aggregator, client, leaf)), open_timeout=5)
            )
            for leaf in range(3)
        ]
        for ws in sockets:
            assert receive(ws) == {"message_type": "run_status", "body": {"run_status": "start"}}
        for leaf in range(3):
            path = sdk_weights(tmp_path / f"{leaf}.npz", leaf + 1, [np.ones(4) * leaf])
            assert aggregator.upload(client, path, leaf).status_code == 201
        ids = set()
        for ws in sockets:
            message = receive(ws, timeout=20)
            assert message["message_type"] == "aggregation_status"
            ids.add(message["body"]["aggregation_id"])
        assert len(ids) == 1
        aggregator.set_run(client, "stop")
        for ws in sockets:
            assert receive(ws) == {"message_type": "run_status", "body": {"run_status": "stop"}}


def test_tickets_are_single_use_and_checked(aggregator: Running) -> None:
    """A used ticket, a wrong request id or an unknown ticket fails the handshake with 403."""
    with httpx.Client() as client:
        issued = ticket(aggregator, client)
        with connect(ws_url(aggregator, issued), open_timeout=5) as ws:
            receive(ws)
        assert handshake_status(ws_url(aggregator, issued)) == 403
        wrong = {**ticket(aggregator, client), "request_id": "not-the-one"}
        assert handshake_status(ws_url(aggregator, wrong)) == 403
        assert (
            handshake_status(ws_url(aggregator, {"ticket_id": "nope", "request_id": "nope"})) == 403
        )


def test_tickets_expire(tmp_path: Path) -> None:
    """A ticket older than its lifetime is refused."""
    with start(tmp_path / "agg", ticket_ttl_s=0.3) as agg, httpx.Client() as client:
        issued = ticket(agg, client)
        time.sleep(0.6)
        assert handshake_status(ws_url(agg, issued)) == 403


def test_doubled_slash_websocket(aggregator: Running) -> None:
    """A host configured with a trailing slash reaches the WebSocket through '//api/v1/ws'."""
    with (
        httpx.Client() as client,
        connect(ws_url(aggregator, ticket(aggregator, client), prefix="/"), open_timeout=5) as ws,
    ):
        assert receive(ws)["message_type"] == "run_status"


@pytest.mark.parametrize("status", ["pause", "stop"])
def test_connect_while_run_is_not_started(aggregator: Running, status: str) -> None:
    """The first message tells a newly connected leaf the current status, whatever it is."""
    with httpx.Client() as client:
        aggregator.set_run(client, status)
        with connect(ws_url(aggregator, ticket(aggregator, client)), open_timeout=5) as ws:
            assert receive(ws)["body"]["run_status"] == status
