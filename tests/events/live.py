"""Live pieces for the event tests: uvicorn on a chosen port, aggregations on demand, SSE subscribers."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from httpx_sse import connect_sse

from gateway.aggregator.app import create_aggregator_app
from gateway.aggregator.websocket import uvicorn_ws_options
from gateway.app import create_app
from gateway.events import EventHub, EventLog
from gateway.settings import Settings
from gateway.state import running_state, stop_streams
from gateway.upstream.channel import ChannelStatus
from tests.aggregator.conftest import Running, settings_for
from tests.weights.util import sdk_weights

JOIN_TIMEOUT_S = 10.0
"""How long a subscriber thread may take to finish once its stream has been ended."""


def free_port() -> int:
    """A loopback port nobody was listening on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` every 20 ms; return the seconds it took, or fail naming `what` after `timeout`."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - began


@contextlib.contextmanager
def serve_on(
    app: Any, port: int = 0, send_buffer: int | None = None, **options: Any
) -> Iterator[str]:
    """`tests.servers.serve` on a chosen port (0: a free one), so that a restarted server keeps its URL.

    `send_buffer` fixes SO_SNDBUF of the accepted sockets (they inherit it from the listening one).
    """
    options.setdefault("timeout_graceful_shutdown", 5)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        bound: int = listener.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", **options)
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name=f"uvicorn-{bound}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not start on port {bound}")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{bound}"
        finally:
            if isinstance(app, FastAPI):
                stop_streams(app)  # as the gateway's own server does on exit
            server.should_exit = True
            thread.join(timeout=30)
    finally:
        listener.close()  # uvicorn's server has closed it already, unless it never started


@contextlib.contextmanager
def run_aggregator(data_dir: Path, port: int = 0, **overrides: Any) -> Iterator[Running]:
    """The local aggregator for `data_dir` (three dev leaves, the test admin token) on `port`."""
    settings = settings_for(data_dir, **overrides)
    app = create_aggregator_app(settings)
    with serve_on(app, port, **uvicorn_ws_options(ping_interval_s=5, ping_timeout_s=5)) as url:
        leaves = json.loads((data_dir / "leaves.json").read_text(encoding="utf-8"))
        yield Running(url=url, data_dir=data_dir, leaves=leaves)


@dataclass
class Gateway:
    """A live gateway and its app object (for the hub, the log and the channel status)."""

    url: str
    app: FastAPI

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


@contextlib.contextmanager
def run_gateway(
    settings: Settings, *, wait_heard: bool = True, **options: Any
) -> Iterator[Gateway]:
    """Serve `create_app(settings)` on a free port; return once it has heard from the upstream
    (`wait_heard`; a v1 broker sends nothing on connect, so v1 tests wait for the channel instead)."""
    app = create_app(settings)
    with serve_on(app, **options) as url:
        gateway = Gateway(url=url, app=app)
        if wait_heard:
            wait_until(gateway.heard_upstream, 20, "the gateway's notification channel connected")
        yield gateway


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


@dataclass(frozen=True)
class Received:
    """One event as a subscriber parsed it; `id` is None when the event carried no `id:` line."""

    id: int | None
    event: str
    data: dict[str, Any]
    at: float
    """`time.monotonic()` when it arrived."""
    wall: float
    """`time.time()` when it arrived (to compare with the log's `created`)."""


class Stream:
    """A subscriber reading `GET /events` in a thread until the stream ends (or `stop_when` holds)."""

    def __init__(self, stop_when: Callable[[list[Received]], bool] | None = None) -> None:
        self.events: list[Received] = []
        self.comments: list[tuple[str, float]] = []
        self.retry: int | None = None
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self._stop_when = stop_when
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._guarded, name="sse-subscriber", daemon=True)

    def start(self, timeout: float = 10) -> None:
        """Start reading; return once the stream has begun (the `retry:` field arrived)."""
        self._thread.start()
        if not self.opened.wait(timeout):
            self.ended.wait(0.5)
            raise AssertionError(f"the event stream did not open: {self.error!r}")

    def of_type(self, event: str) -> list[Received]:
        """The events of one type so far."""
        with self._changed:
            return [e for e in self.events if e.event == event]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float, what: str
    ) -> list[Received]:
        """Wait until `predicate(events)` holds; the events then, or fail naming `what`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.ended.is_set() and not predicate(self.events)):
                    raise AssertionError(
                        f"{what}: not within {timeout} s (ended: {self.ended.is_set()}, "
                        f"error: {self.error!r}); got {self.events}"
                    )
                self._changed.wait(min(remaining, 0.1))
            return list(self.events)

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> list[Received]:
        """Wait for the stream to end; every event it delivered."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the subscriber's stream did not end"
        return list(self.events)

    def _record(self, event: Received) -> bool:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
            return self._stop_when is not None and self._stop_when(self.events)

    def _comment(self, text: str) -> None:
        with self._changed:
            self.comments.append((text, time.monotonic()))
            self._changed.notify_all()

    def _guarded(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # kept for the test to report
            self.error = exc
        finally:
            with self._changed:
                self.ended_at = time.monotonic()
                self.ended.set()
                self._changed.notify_all()

    def _read(self) -> None:
        raise NotImplementedError


class SseSubscriber(Stream):
    """A subscriber using httpx-sse, as a Python trainer would."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        stop_when: Callable[[list[Received]], bool] | None = None,
    ) -> None:
        super().__init__(stop_when)
        self.url = url
        self.headers = headers or {}
        self.content_type: str | None = None

    def _read(self) -> None:
        timeout = httpx.Timeout(10, read=60)
        with (
            httpx.Client(timeout=timeout) as client,
            connect_sse(client, "GET", self.url, headers=dict(self.headers)) as source,
        ):
            source.response.raise_for_status()
            self.content_type = source.response.headers.get("content-type")
            for sse in source.iter_sse():
                if sse.retry is not None:
                    self.retry = sse.retry
                    self.opened.set()
                if not sse.data:  # the retry block, or a keep-alive once an id was seen
                    continue
                event = Received(
                    id=int(sse.id) if sse.id else None,
                    event=sse.event,
                    data=sse.json(),
                    at=time.monotonic(),
                    wall=time.time(),
                )
                if self._record(event):
                    return


class CurlSubscriber(Stream):
    """`curl -sS -N <url>` in a subprocess, its stdout parsed line by line, as a shell user sees it."""

    def __init__(self, url: str, *args: str) -> None:
        super().__init__()
        self.argv = ["curl", "-sS", "-N", *args, url]
        self.returncode: int | None = None
        self.stderr = b""
        self._process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """End curl if it is still running (for clean-up after a failure)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

    def _read(self) -> None:
        with subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            self._process = process
            assert process.stdout is not None
            block: dict[str, str] = {}
            for raw in process.stdout:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self._comment(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    block[name] = value.removeprefix(" ")
                else:
                    self._block(block)
                    block = {}
            assert process.stderr is not None
            self.stderr = process.stderr.read()
            self.returncode = process.wait()

    def _block(self, block: dict[str, str]) -> None:
        if "retry" in block:
            self.retry = int(block["retry"])
            self.opened.set()
        if "event" in block:
            self._record(
                Received(
                    id=int(block["id"]) if "id" in block else None,
                    event=block["event"],
                    data=json.loads(block["data"]),
                    at=time.monotonic(),
                    wall=time.time(),
                )
            )


def check_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and `type` /problems/<kind>."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{kind}", body
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def ids(events: list[Received]) -> list[int]:
    """The ids of events that carry one."""
    return [e.id for e in events if e.id is not None]


def of_type(events: list[Received], event: str) -> list[Received]:
    """The events of one type."""
    return [e for e in events if e.event == event]


def aggregation_ids(events: list[Received]) -> list[str]:
    """The upstream aggregation ids of the aggregation events, in arrival order."""
    return [str(e.data["aggregation_id"]) for e in events if e.event == "aggregation"]
