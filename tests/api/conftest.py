"""Live servers for the route tests: gateways for the aggregator's leaves, and the `live` harness (aggregator, gateways, subscribers)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.aggregator import Running
from tests.support.gateways import (
    Gateway,
    GatewayFactory,
    gateway_settings,
    run_gateway,
    write_credentials,
)
from tests.support.live import Live


def pytest_configure(config: pytest.Config) -> None:
    """Register this folder's marker (the suite runs with --strict-markers)."""
    config.addinivalue_line(
        "markers", "memory: measures the resident memory of the process hosting the servers"
    )


@pytest.fixture
def gateway_for(aggregator: Running, tmp_path: Path) -> Iterator[GatewayFactory]:
    """Start gateways for the aggregator's leaves; all of them stop at the end of the test."""
    with contextlib.ExitStack() as stack:

        def factory(leaf: int = 0, **overrides: Any) -> Gateway:
            credentials = write_credentials(tmp_path / f"leaf{leaf}.json", aggregator.leaves[leaf])
            values: dict[str, Any] = {
                "bk_host": aggregator.url,
                "bk_credentials_file": credentials,
                **overrides,
            }
            folder = tmp_path / f"gw{leaf}"
            copies = 1
            while folder.exists():  # a second gateway for the same leaf gets its own folder
                copies += 1
                folder = tmp_path / f"gw{leaf}-{copies}"
            settings = gateway_settings(folder, **values)
            return stack.enter_context(run_gateway(settings))

        yield factory


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A harness for live servers (an aggregator, gateways and subscribers), closed in a safe order after the test."""
    harness = Live(tmp_path)
    try:
        yield harness
    finally:
        harness.close()
