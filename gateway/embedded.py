"""The embedded local aggregator: the gateway's upstream when no BranchKey host is configured."""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path

import uvicorn
from pydantic import SecretStr

from gateway.aggregator.app import create_aggregator_app
from gateway.aggregator.settings import AggregatorSettings
from gateway.aggregator.websocket import uvicorn_ws_options
from gateway.http_limits import bounded_http_options
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
            self.app,
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
            target=self._server.run, name="embedded-aggregator", daemon=True
        )
        self.url = ""

    @property
    def admin_token(self) -> str:
        """The admin token of the embedded aggregator."""
        token = self.settings.admin_token
        return token.get_secret_value() if token else ""

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving; blocks until the port is bound."""
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

    def credentials(self) -> Credentials:
        """The dev leaf's credentials."""
        leaves = json.loads(
            Path(self.settings.data_dir / "leaves.json").read_text(encoding="utf-8")
        )
        return from_mapping(leaves[0], "The embedded aggregator's leaves.json")
