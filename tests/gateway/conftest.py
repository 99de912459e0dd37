"""Live servers for gateway tests: an aggregator with three dev leaves and gateways for its leaves."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import Settings
from tests.aggregator.conftest import Running, start
from tests.servers import serve

FAST_POLL_S = 0.2
"""BK_RUN_CHECK_INTERVAL_S for tests: `?wait=true` notices a started run within this."""


def pytest_configure(config: pytest.Config) -> None:
    """Register this folder's marker (the suite runs with --strict-markers)."""
    config.addinivalue_line(
        "markers", "memory: measures the resident memory of the process hosting the servers"
    )


@dataclass
class Gateway:
    """A live gateway: its URL, its settings and the app object (for lifespan state)."""

    url: str
    settings: Settings
    app: FastAPI

    @property
    def data_dir(self) -> Path:
        """GATEWAY_DATA_DIR."""
        return self.settings.gateway_data_dir

    @property
    def tmp_dir(self) -> Path:
        """Where uploads are spooled while they are handled."""
        return self.data_dir / "tmp"


GatewayFactory = Callable[..., Gateway]
"""`factory(leaf=0, **settings)`: a gateway for the aggregator's leaf `leaf`, stopped after the test."""


def gateway_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Test settings: no .env file, a fast run poll, no retries unless asked."""
    values: dict[str, Any] = {
        "gateway_data_dir": data_dir,
        "bk_run_check_interval_s": FAST_POLL_S,
        "bk_max_retries": 0,
        **overrides,
    }
    return Settings(_env_file=None, **values)


def write_credentials(path: Path, leaf: dict[str, str]) -> Path:
    """A BK_CREDENTIALS_FILE holding one leaf's credentials."""
    path.write_text(json.dumps(leaf), encoding="utf-8")
    return path


@contextlib.contextmanager
def run_gateway(settings: Settings) -> Iterator[Gateway]:
    """Serve `create_app(settings)` under uvicorn on a free port."""
    app = create_app(settings)
    with serve(app) as url:
        yield Gateway(url=url, settings=settings, app=app)


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Running]:
    """A local aggregator with three development leaves, its run started."""
    with start(tmp_path / "agg") as running:
        yield running


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
