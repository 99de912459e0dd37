"""Live gateways for tests: their settings, credentials files, and `create_app` served in a thread."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from gateway.app import create_app
from gateway.events import EventHub, EventLog
from gateway.http_limits import bounded_http_options
from gateway.settings import Settings
from gateway.state import running_state
from gateway.upstream.channel import ChannelStatus
from tests.support.aggregator import Running, start
from tests.support.servers import serve
from tests.support.waiting import wait_until

FAST_POLL_S = 0.2
"""BK_RUN_CHECK_INTERVAL_S for tests: `?wait=true` notices a started run within this."""


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

    @property
    def hub(self) -> EventHub:
        """The fan-out hub of live subscribers."""
        hub: EventHub = running_state(self.app).events.hub
        return hub

    @property
    def log(self) -> EventLog:
        """The persisted event log."""
        log: EventLog = running_state(self.app).events.log
        return log

    @property
    def channel(self) -> ChannelStatus:
        """The notification channel's status."""
        status: ChannelStatus = running_state(self.app).consumer.status
        return status

    def subscribers(self) -> int:
        """Streams the hub currently feeds."""
        return len(self.hub.subscribers)

    def event_of(self, aggregation_id: str) -> int:
        """The gateway's event id for an upstream aggregation, once it has been logged."""
        found: list[int] = []

        def logged() -> bool:
            found.extend(
                e.id
                for e in self.log.after(0, ("aggregation",))
                if e.data["aggregation_id"] == aggregation_id
            )
            return bool(found)

        wait_until(logged, 10, f"aggregation {aggregation_id} reached the gateway's log")
        return found[0]

    def heard_upstream(self) -> bool:
        """The channel is connected and has had a message since it last connected."""
        status = self.channel
        last = status.last_message_at
        return status.state == "connected" and last is not None and last >= status.since


@dataclass
class Federation:
    """An aggregator and the gateway of one of its leaves."""

    aggregator: Running
    gateway: Gateway
    token: str | None = None
    """The gateway's GATEWAY_TOKEN, if it has one."""


GatewayFactory = Callable[..., Gateway]
"""`factory(leaf=0, **settings)`: a live gateway for the aggregator's leaf `leaf`, stopped after the test."""


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


def v1_credentials(leaf: dict[str, str]) -> dict[str, str]:
    """The leaf's credentials in the v1 client's shape (no tree or branch id)."""
    return {
        "leaf_name": leaf["name"],
        "leaf_id": leaf["id"],
        "leaf_session_token": leaf["session_token"],
        "response_host": "127.0.0.1",
    }


@contextlib.contextmanager
def run_gateway(
    settings: Settings, port: int = 0, *, wait_heard: bool = False, **options: Any
) -> Iterator[Gateway]:
    """Serve `create_app(settings)` on `port` (0: a free one); `options` go to `serve`.

    With `wait_heard` it returns once the notification channel has heard from the upstream (a v1
    broker sends nothing on connect, so v1 tests wait for the channel instead).
    """
    app = create_app(settings)
    bounds = int(settings.gateway_max_header_bytes), settings.gateway_header_timeout_s
    options = {**bounded_http_options(*bounds), **options}
    with serve(app, port, **options) as url:
        gateway = Gateway(url=url, settings=settings, app=app)
        if wait_heard:
            wait_until(gateway.heard_upstream, 20, "the gateway's notification channel connected")
        yield gateway


@contextlib.contextmanager
def leaf_gateway(
    folder: Path, bk_host: str, leaf: dict[str, str], **overrides: Any
) -> Iterator[Gateway]:
    """A gateway for `leaf` whose BranchKey is `bk_host` (its credentials in `folder/leaf.json`, its
    data in `folder/gw`); `overrides` are settings."""
    credentials = write_credentials(folder / "leaf.json", leaf)
    settings = gateway_settings(
        folder / "gw", bk_host=bk_host, bk_credentials_file=credentials, **overrides
    )
    with run_gateway(settings) as gateway:
        yield gateway


@contextlib.contextmanager
def one_leaf_federation(
    folder: Path, token: str | None = None, **settings: Any
) -> Iterator[Federation]:
    """An aggregator with one development leaf (every upload closes a round) and that leaf's
    gateway (with GATEWAY_TOKEN `token`), its channel connected."""
    with start(folder / "agg", dev_leaves=1) as aggregator:
        credentials = write_credentials(folder / "leaf.json", aggregator.leaves[0])
        if token is not None:
            settings["gateway_token"] = token
        values = gateway_settings(
            folder / "gw", bk_host=aggregator.url, bk_credentials_file=credentials, **settings
        )
        with run_gateway(values, wait_heard=True) as gateway:
            yield Federation(aggregator, gateway, token)
