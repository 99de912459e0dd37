"""One test's live servers: an aggregator (restartable on its port), gateways for its leaf 0, SSE subscribers."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gateway.settings import Settings
from tests.support.aggregator import Running, start
from tests.support.gateways import Gateway, run_gateway
from tests.support.sse import CurlSubscriber, Received, SseSubscriber, Stream
from tests.support.weights import sdk_weights


def weights_file(folder: Path) -> Path:
    """A small SDK-layout NPZ, as BranchKey's `save_weights` writes it."""
    return sdk_weights(folder / "weights.npz", 4.0, [np.ones((2, 2), dtype=np.float32)])


def aggregate(agg: Running, client: httpx.Client, weights: Path) -> str:
    """Upload leaf 0's weights and force the round closed; the aggregation id, once it is announced."""
    upload = agg.upload(client, weights)
    assert upload.status_code == 201, upload.text
    forced = client.post(f"{agg.url}/admin/aggregate", params={"wait": "true"}, headers=agg.admin)
    assert forced.status_code == 200, forced.text
    record: dict[str, Any] = forced.json()["data"]
    assert record["status"] == "done", record
    return str(record["aggregation_id"])


class Live:
    """One test's servers and subscribers; `close` stops gateways, then subscribers, then the aggregator."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.client = httpx.Client(timeout=30)
        self.weights = weights_file(folder)
        self._sent = 0
        self._aggregator: contextlib.ExitStack | None = None
        self._upstream: Running | None = None
        self._gateways: list[tuple[Gateway, contextlib.ExitStack]] = []
        self._streams: list[Stream] = []

    @property
    def upstream(self) -> Running:
        """The running aggregator."""
        assert self._upstream is not None, "no aggregator is running"
        return self._upstream

    def start_aggregator(self, port: int = 0, **overrides: Any) -> Running:
        """Start the aggregator (data in `<tmp>/agg`, kept across restarts) on `port`."""
        assert self._aggregator is None, "the aggregator is already running"
        stack = contextlib.ExitStack()
        self._upstream = stack.enter_context(start(self.folder / "agg", port, **overrides))
        self._aggregator = stack
        return self._upstream

    def stop_aggregator(self) -> None:
        """Stop the aggregator (its data directory stays)."""
        if self._aggregator is not None:
            stack, self._aggregator = self._aggregator, None
            stack.close()

    def settings(self, data_dir: str = "gw", **overrides: Any) -> Settings:
        """Gateway settings for leaf 0 of the aggregator: fast reconnects, no upstream retries."""
        credentials = self.folder / "leaf0.json"
        credentials.write_text(json.dumps(self.upstream.leaves[0]), encoding="utf-8")
        values: dict[str, Any] = {
            "bk_host": self.upstream.url,
            "bk_credentials_file": credentials,
            "gateway_data_dir": self.folder / data_dir,
            "bk_ws_backoff_max_s": 1,
            "bk_max_retries": 0,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    def start_gateway(
        self, data_dir: str = "gw", send_buffer: int | None = None, **overrides: Any
    ) -> Gateway:
        """Start a gateway for leaf 0 with data in `<tmp>/<data_dir>`; it has heard from the upstream."""
        stack = contextlib.ExitStack()
        settings = self.settings(data_dir, **overrides)
        gateway = stack.enter_context(
            run_gateway(settings, wait_heard=True, send_buffer=send_buffer)
        )
        self._gateways.append((gateway, stack))
        return gateway

    def stop_gateway(self, gateway: Gateway) -> float:
        """Stop one gateway (as `serve` does: end streams, then exit); the seconds it took."""
        began = time.monotonic()
        for entry in list(self._gateways):
            if entry[0] is gateway:
                self._gateways.remove(entry)
                entry[1].close()
        return time.monotonic() - began

    def fresh_weights(self) -> Path:
        """Another SDK-layout NPZ each call (the same layers, another weighting): the aggregator
        counts a re-sent identical file of a run only once."""
        self._sent += 1
        return sdk_weights(
            self.folder / f"weights-{self._sent}.npz",
            4.0 + self._sent,
            [np.ones((2, 2), dtype=np.float32)],
        )

    def aggregate(self) -> str:
        """One aggregation of the branch, announced upstream; its id."""
        return aggregate(self.upstream, self.client, self.fresh_weights())

    def subscribe(
        self,
        gateway: Gateway,
        query: str = "",
        headers: dict[str, str] | None = None,
        stop_when: Callable[[list[Received]], bool] | None = None,
    ) -> SseSubscriber:
        """An httpx-sse subscriber of `GET /events<query>`, started and subscribed."""
        stream = SseSubscriber(f"{gateway.url}/events{query}", headers, stop_when)
        self._streams.append(stream)
        stream.start()
        return stream

    def curl(self, gateway: Gateway, query: str = "") -> CurlSubscriber:
        """A `curl -N` subscriber of `GET /events<query>`, started and subscribed."""
        stream = CurlSubscriber(f"{gateway.url}/events{query}")
        self._streams.append(stream)
        stream.start()
        return stream

    def close(self) -> None:
        """Stop everything: gateways first, so that every stream ends."""
        try:
            for gateway, _ in list(self._gateways):
                self.stop_gateway(gateway)
            stuck = []
            for stream in self._streams:
                if not stream.ended.wait(5):
                    stuck.append(stream)
                    if isinstance(stream, CurlSubscriber):
                        stream.stop()
                stream.ended.wait(5)
            assert not stuck, f"{len(stuck)} event stream(s) outlived their gateway"
        finally:
            self.stop_aggregator()
            self.client.close()
