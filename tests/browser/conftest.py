"""A federation for the browser tests: an aggregator with one leaf (every upload closes a round) and
its gateway, and a second loopback server for pages of another origin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.aggregator import start
from tests.support.browser import require_chromium
from tests.support.gateways import Federation, gateway_settings, run_gateway, write_credentials

GATEWAY_TOKEN = "browser-test-gateway-token"


@pytest.fixture(autouse=True)
def _chromium() -> None:
    """Skip every browser test, with one line saying how to install it, where Chromium is missing."""
    require_chromium()


def _federation(tmp_path: Path, **gateway: object) -> Iterator[Federation]:
    with start(tmp_path / "agg", dev_leaves=1) as aggregator:
        credentials = write_credentials(tmp_path / "leaf.json", aggregator.leaves[0])
        settings = gateway_settings(
            tmp_path / "gw", bk_host=aggregator.url, bk_credentials_file=credentials, **gateway
        )
        with run_gateway(settings, wait_heard=True) as running:
            token = GATEWAY_TOKEN if "gateway_token" in gateway else None
            yield Federation(aggregator, running, token)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    """A gateway without a token (loopback pages may call it)."""
    yield from _federation(tmp_path)


@pytest.fixture
def guarded_federation(tmp_path: Path) -> Iterator[Federation]:
    """A gateway with GATEWAY_TOKEN set."""
    yield from _federation(tmp_path, gateway_token=GATEWAY_TOKEN)
