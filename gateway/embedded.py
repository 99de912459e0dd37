"""The embedded local aggregator: the gateway's upstream when no BranchKey host is configured."""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import ClassVar

import uvicorn
from pydantic import SecretStr

from gateway.aggregator.app import create_aggregator_app
from gateway.aggregator.settings import AggregatorSettings
from gateway.aggregator.websocket import uvicorn_ws_options
from gateway.http_limits import bounded_http_options
from gateway.logs import OneLineStartupFailure
from gateway.settings import Settings
from gateway.upstream.credentials import Credentials, from_mapping


class EmbeddedAggregator:
    """A local aggregator with one dev leaf and its run started, on a free loopback port, in its own thread."""

    def __init__(self, settings: Settings) -> None:
        data_dir = settings.gateway_data_dir / "aggregator"
        self.settings = AggregatorSettings(
            _env_file=None,
            host="127.0.0.1",
            port=0,
            data_dir=data_dir,
            dev_leaves=1,
            initial_run_status="start",
            admin_token=SecretStr(secrets.token_urlsafe(32)),
            max_upload_bytes=settings.gateway_max_upload_bytes,
            weights=settings.weights,
        )
        self.app = create_aggregator_app(self.settings, embedded=True)
        config = uvicorn.Config(
            OneLineStartupFailure(self.app, "the embedded aggregator cannot start"),
            host="127.0.0.1",
            port=0,
            log_config=None,  # leave the gateway's own logging configuration alone
            timeout_graceful_shutdown=5,
            **uvicorn_ws_options(),
            **bounded_http_options(
                int(self.settings.max_header_bytes), self.settings.header_timeout_s
            ),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, name=f"embedded-aggregator-{id(self):x}", daemon=True
        )
        self._log_names = EmbeddedLogNames(self._thread.name)
        self.url = ""

    @property
    def admin_token(self) -> str:
        """The admin token of the embedded aggregator."""
        token = self.settings.admin_token
        return token.get_secret_value() if token else ""

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving; blocks until the port is bound."""
        for name in EmbeddedLogNames.RENAMED:
            logging.getLogger(name).addFilter(self._log_names)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("The embedded aggregator did not start.")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Stop serving; blocks until the thread ends."""
        self._server.should_exit = True
        self._thread.join(timeout=30)
        for name in EmbeddedLogNames.RENAMED:
            logging.getLogger(name).removeFilter(self._log_names)

    def credentials(self) -> Credentials:
        """The dev leaf's credentials."""
        leaves = json.loads(
            Path(self.settings.data_dir / "leaves.json").read_text(encoding="utf-8")
        )
        return from_mapping(leaves[0], "The embedded aggregator's leaves.json")


class EmbeddedLogNames(logging.Filter):
    """The embedded aggregator's uvicorn lines under its own names, without a second banner.

    Its server runs in its own thread with uvicorn's loggers, whose lines would read as the
    gateway's: from that thread, `uvicorn.error` becomes `gateway.aggregator.server` and
    `uvicorn.access` `gateway.aggregator.access`, and uvicorn's start and stop lines go to DEBUG
    (the gateway logs one line naming the aggregator's URL instead).
    """

    RENAMED: ClassVar[dict[str, str]] = {
        "uvicorn.error": "gateway.aggregator.server",
        "uvicorn.access": "gateway.aggregator.access",
    }
    BANNER = (
        "Started server process",
        "Waiting for application",
        "Application startup complete",
        "Application shutdown complete",
        "Uvicorn running on",
        "Shutting down",
        "Finished server process",
    )

    def __init__(self, thread_name: str) -> None:
        super().__init__()
        self.thread_name = thread_name

    def filter(self, record: logging.LogRecord) -> bool:
        """Rename (and demote the banner of) the lines logged from the embedded server's thread."""
        if record.threadName != self.thread_name or record.name not in self.RENAMED:
            return True
        record.name = self.RENAMED[record.name]
        if record.levelno == logging.INFO and str(record.msg).startswith(self.BANNER):
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True
