"""Protocol v1 end to end: the local aggregator publishing over RabbitMQ, gateways speaking v1 to it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.aggregator import Running, start
from tests.support.amqp import AMQP_URL
from tests.support.gateways import (
    Gateway,
    GatewayFactory,
    gateway_settings,
    run_gateway,
    v1_credentials,
)
from tests.support.waiting import wait_until


@pytest.fixture
def round_size() -> int:
    """Distinct leaves that close a round (tests parametrize it to change it)."""
    return 1


@pytest.fixture
def rabbit_aggregator(tmp_path: Path, round_size: int) -> Iterator[Running]:
    """An aggregator with three dev leaves publishing notifications on the local RabbitMQ; its
    vhost and users are removed afterwards."""
    with start(tmp_path / "agg", amqp_url=AMQP_URL, min_leaves=round_size) as running:
        yield running


@pytest.fixture
def gateways(rabbit_aggregator: Running, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Gateways for the aggregator's leaves (v1 by default); all stop at the end of the test."""
    with contextlib.ExitStack() as stack:

        def factory(leaf: int = 0, dialect: str = "v1", **overrides: Any) -> Gateway:
            creds = rabbit_aggregator.leaves[leaf]
            shaped = v1_credentials(creds) if dialect == "v1" else creds
            path = tmp_path / f"leaf{leaf}-{dialect}.json"
            path.write_text(json.dumps(shaped), encoding="utf-8")
            settings = gateway_settings(
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
