"""Protocol v1 end to end: the local aggregator publishing over RabbitMQ, gateways speaking v1 to it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.settings import Settings
from tests.aggregator.conftest import Running
from tests.amqp import AMQP_URL, delete_from_broker, rabbitmqctl
from tests.events.live import Gateway, run_aggregator, run_gateway, wait_until
from tests.gateway.conftest import gateway_settings

GatewayFactory = Callable[..., Gateway]
"""`factory(leaf, dialect="v1", **settings)`: a live gateway for the aggregator's leaf `leaf`."""


@pytest.fixture
def round_size() -> int:
    """Distinct leaves that close a round (tests parametrize it to change it)."""
    return 1


@pytest.fixture
def rabbit_aggregator(tmp_path: Path, round_size: int) -> Iterator[Running]:
    """An aggregator with three dev leaves publishing notifications on the local RabbitMQ; its
    vhost and users are removed afterwards."""
    leaves: list[dict[str, str]] = []
    try:
        with run_aggregator(tmp_path / "agg", amqp_url=AMQP_URL, min_leaves=round_size) as running:
            leaves = running.leaves
            yield running
    finally:  # after the aggregator has closed its own broker connections
        delete_from_broker({leaf["tree_id"] for leaf in leaves}, [leaf["id"] for leaf in leaves])


def v1_credentials(leaf: dict[str, str]) -> dict[str, str]:
    """The leaf's credentials in the v1 client's shape (no tree or branch id)."""
    return {
        "leaf_name": leaf["name"],
        "leaf_id": leaf["id"],
        "leaf_session_token": leaf["session_token"],
        "response_host": "127.0.0.1",
    }


@pytest.fixture
def gateways(rabbit_aggregator: Running, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Gateways for the aggregator's leaves (v1 by default); all stop at the end of the test."""
    with contextlib.ExitStack() as stack:

        def factory(leaf: int = 0, dialect: str = "v1", **overrides: Any) -> Gateway:
            creds = rabbit_aggregator.leaves[leaf]
            shaped = v1_credentials(creds) if dialect == "v1" else creds
            path = tmp_path / f"leaf{leaf}-{dialect}.json"
            path.write_text(json.dumps(shaped), encoding="utf-8")
            settings: Settings = gateway_settings(
                tmp_path / f"gw{leaf}-{dialect}",
                bk_host=rabbit_aggregator.url,
                bk_dialect=dialect,
                bk_credentials_file=path,
                **overrides,
            )
            gateway = stack.enter_context(run_gateway(settings, wait_heard=dialect != "v1"))
            wait_until(
                lambda: gateway.channel.state == "connected", 20, "the notification channel is up"
            )
            return gateway

        yield factory


def _json_rows(*args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(rabbitmqctl(*args, "--formatter", "json") or "[]")
    return rows


def connections(user: str) -> list[str]:
    """RabbitMQ's process ids of the open connections of `user`."""
    # The tab-separated listing, not JSON: only it prints pids in the form close_connection takes.
    lines = rabbitmqctl("list_connections", "user", "pid", "--no-table-headers").splitlines()
    rows = [line.split("\t") for line in lines if "\t" in line]
    return [pid.strip() for name, pid in rows if name == user]


def close_connections(user: str) -> int:
    """Close every broker connection of `user`, as an operator or a broker failover would."""
    pids = connections(user)
    for pid in pids:
        rabbitmqctl("close_connection", pid, "closed by the test")
    return len(pids)


def queue_counts(vhost: str, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of a queue."""
    for row in _json_rows(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged"
    ):
        if row["name"] == queue:
            return int(row["messages_ready"]), int(row["messages_unacknowledged"])
    raise AssertionError(f"no queue {queue!r} in vhost {vhost!r}")


def upload_v3(agg: Running, client: httpx.Client, weights: Path, leaf: int) -> None:
    """Leaf `leaf` uploads straight to the aggregator (v3), closing a one-upload round."""
    response = agg.upload(client, weights, leaf)
    assert response.status_code == 201, response.text
