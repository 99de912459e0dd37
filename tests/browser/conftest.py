"""A federation for the browser tests: an aggregator with one leaf (every upload closes a round) and
its gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateways import Federation, one_leaf_federation


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    """A gateway without a token (loopback pages may call it)."""
    with one_leaf_federation(tmp_path) as running:
        yield running


@pytest.fixture
def guarded_federation(tmp_path: Path) -> Iterator[Federation]:
    """A gateway with GATEWAY_TOKEN set."""
    with one_leaf_federation(tmp_path, token="browser-test-gateway-token") as running:
        yield running
