"""Notification tickets and the WebSocket fan-out hub, against a real uvicorn server and real clients."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Body, FastAPI, Query, WebSocket
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

from gateway.aggregator.websocket import (
    MAX_MESSAGE_BYTES,
    Hub,
    TicketCapacityError,
    TicketStore,
    aggregation_message,
    run_status_message,
    uvicorn_ws_options,
)
from tests.support.servers import serve

BRANCH = "branch-1"
LEAF = "leaf-1"
PING_S = 0.5
"""Server ping interval and pong timeout of the default test server."""


class _Clock:
    """time.time() plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class _ErrorLog(logging.Handler):
    """Collects ERROR records of uvicorn (an exception in the app), so the test can fail on them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _create_app(hub: Hub, tickets: TicketStore) -> FastAPI:
    """The tiny app the aggregator's routes will resemble: tickets, the WebSocket, publish and inspection."""
    app = FastAPI()

    @app.post("/ticket")
    async def create_ticket(branch: str = BRANCH) -> dict[str, str]:
        ticket = tickets.issue(LEAF, branch)
        return {"ticket_id": ticket.ticket_id, "request_id": ticket.request_id}

    @app.websocket("/api/v1/ws")
    async def stream_notifications(
        websocket: WebSocket,
        ticket: Annotated[str, Query()] = "",
        request_id: Annotated[str, Query()] = "",
    ) -> None:
        redeemed = tickets.redeem(ticket, request_id)
        if redeemed is None:
            await websocket.close(code=1008)  # before accept: the handshake fails with 403
            return
        await websocket.accept()
        await hub.serve(websocket, redeemed, run_status_message("start"))

    @app.post("/publish/{branch_id}")
    async def publish_message(
        branch_id: str, message: Annotated[dict[str, Any], Body()]
    ) -> dict[str, int]:
        return {"queued": hub.publish(branch_id, message)}

    @app.get("/connections")
    async def count_connections(branch: str | None = None) -> dict[str, int]:
        return {"count": hub.connections(branch)}

    @app.post("/close-all")
    async def close_connections() -> None:
        await hub.close_all()

    return app


@dataclass
class _Server:
    """A running test server and the HTTP side of talking to it."""

    http: httpx.Client
    ws_url: str

    def ws_uri(self, branch: str = BRANCH) -> str:
        """The WebSocket URL with a fresh ticket, as the official client builds it (no percent-encoding)."""
        ticket = self.http.post("/ticket", params={"branch": branch}).raise_for_status().json()
        return f"{self.ws_url}/api/v1/ws?ticket={ticket['ticket_id']}&request_id={ticket['request_id']}"

    def publish(self, message: dict[str, Any], branch: str = BRANCH) -> int:
        """POST a message to the hub; the number of connections it was queued for."""
        count: int = (
            self.http.post(f"/publish/{branch}", json=message).raise_for_status().json()["queued"]
        )
        return count

    def connections(self, branch: str | None = None) -> int:
        """hub.connections(branch), asked on the server's own event loop."""
        params = {} if branch is None else {"branch": branch}
        count: int = self.http.get("/connections", params=params).raise_for_status().json()["count"]
        return count

    def wait_for_connections(
        self, expected: int, timeout: float, branch: str | None = None
    ) -> float:
        """Poll until hub.connections(branch) == expected; the seconds it took (fails after `timeout`)."""
        start = time.monotonic()
        while (count := self.connections(branch)) != expected:
            assert time.monotonic() - start < timeout, (
                f"{count} connections, not {expected}, after {timeout} s"
            )
            time.sleep(0.02)
        return time.monotonic() - start


@contextlib.contextmanager
def _serve(hub: Hub, tickets: TicketStore, ping_s: float = PING_S) -> Iterator[_Server]:
    """Run the test app under uvicorn on a free port in a thread; fail if the app logged an error."""
    errors = _ErrorLog()
    logging.getLogger("uvicorn.error").addHandler(errors)
    try:
        with (
            serve(
                _create_app(hub, tickets),
                **uvicorn_ws_options(ping_interval_s=ping_s, ping_timeout_s=ping_s),
            ) as url,
            httpx.Client(base_url=url, trust_env=False, timeout=10) as http,
        ):
            yield _Server(http=http, ws_url=url.replace("http://", "ws://", 1))
    finally:
        logging.getLogger("uvicorn.error").removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]


@pytest.fixture
def clock() -> _Clock:
    """The clock of the default server's ticket store."""
    return _Clock()


@pytest.fixture
def server(clock: _Clock) -> Iterator[_Server]:
    """The default server: 0.5 s pings, a 64-message queue and a 2 s send timeout per connection."""
    with _serve(
        Hub(queue_size=64, send_timeout_s=2.0), TicketStore(ttl_s=60, clock=clock)
    ) as running:
        yield running


def _client(uri: str) -> ClientConnection:
    """A WebSocket client configured as the official one: no pings of its own, 1 MiB max message."""
    return connect(uri, ping_interval=None, proxy=None, open_timeout=5, close_timeout=2)


def _recv_json(ws: ClientConnection, timeout: float = 5) -> Any:
    return json.loads(ws.recv(timeout=timeout))


def _handshake_status(uri: str) -> int:
    """The HTTP status of a refused handshake (fails the test if the handshake succeeds)."""
    with pytest.raises(InvalidStatus) as refused:
        _client(uri).close()
    return refused.value.response.status_code


class _RawClient:
    """A WebSocket client on a bare socket with a tiny receive buffer: after the handshake it reads only in drain()."""

    def __init__(self, uri: str) -> None:
        ws_uri = parse_uri(uri)
        self.protocol = ClientProtocol(ws_uri)
        self.frames: list[Frame] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect(), so the advertised TCP window stays small and the server's writes back up quickly.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(5)
        try:
            self.sock.connect((ws_uri.host, ws_uri.port))
            self.protocol.send_request(self.protocol.connect())
            self._flush()
            while self.protocol.state is State.CONNECTING:
                self._read()
            assert self.protocol.state is State.OPEN, self.protocol.handshake_exc
        except BaseException:
            self.sock.close()
            raise

    def _flush(self) -> None:
        with contextlib.suppress(OSError):  # the server may already have closed the socket
            self.sock.sendall(b"".join(self.protocol.data_to_send()))

    def _read(self) -> bool:
        data = self.sock.recv(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self.frames.append(event)
            else:
                assert isinstance(event, Response)
        return bool(data)

    def drain(self) -> int | None:
        """Read everything up to the server's close frame; the close code it sent (None if it sent none)."""
        # Nothing is sent before the close frame is in: bytes sent to a server socket that is already closed
        # make its kernel answer with a reset, which throws away the data still queued for us.
        while self.protocol.close_rcvd is None and self._read():
            pass
        self._flush()  # the close echo (after stale pongs), so the server can finish its closing handshake
        with contextlib.suppress(ConnectionResetError):
            while self._read():
                pass
        return None if self.protocol.close_rcvd is None else self.protocol.close_rcvd.code

    def messages(self) -> list[Any]:
        """The JSON messages received so far."""
        return [
            json.loads(bytes(frame.data)) for frame in self.frames if frame.opcode is Opcode.TEXT
        ]

    def close(self) -> None:
        """Close the socket without a closing handshake."""
        self.sock.close()


@contextlib.contextmanager
def _raw_client(uri: str) -> Iterator[_RawClient]:
    client = _RawClient(uri)
    try:
        yield client
    finally:
        client.close()


_PADDING = secrets.token_urlsafe(48 * 1024)


def _big_message(index: int) -> dict[str, Any]:
    """An aggregation notification padded to about 64 KiB (random text, beyond deflate's 4 KiB window)."""
    message = aggregation_message(f"agg-{index}")
    message["body"]["padding"] = _PADDING
    return message


def _collect(ws: ClientConnection, count: int, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    return [
        json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic()))) for _ in range(count)
    ]


def test_first_message_then_fan_out_to_the_branch_only(server: _Server) -> None:
    """Each connection gets run_status first; a publish reaches all 3 connections of its branch and none of another."""
    with (
        _client(server.ws_uri()) as a,
        _client(server.ws_uri()) as b,
        _client(server.ws_uri()) as c,
        _client(server.ws_uri("branch-2")) as other,
    ):
        for ws in (a, b, c, other):
            assert _recv_json(ws) == {"message_type": "run_status", "body": {"run_status": "start"}}
        server.wait_for_connections(3, timeout=5, branch=BRANCH)
        assert server.connections() == 4
        assert server.publish(aggregation_message("agg-1")) == 3
        for ws in (a, b, c):
            assert _recv_json(ws) == {
                "message_type": "aggregation_status",
                "body": {"aggregation_id": "agg-1"},
            }
        with pytest.raises(TimeoutError):
            other.recv(timeout=0.3)
    server.wait_for_connections(0, timeout=5)


def test_ticket_is_single_use(server: _Server) -> None:
    """A ticket opens one connection; the same URL a second time is refused with HTTP 403 at the handshake."""
    uri = server.ws_uri()
    with _client(uri) as ws:
        assert _recv_json(ws)["message_type"] == "run_status"
    assert _handshake_status(uri) == 403


def test_ticket_expires_after_its_ttl(server: _Server, clock: _Clock) -> None:
    """A ticket 59 s old still opens a connection; one 61 s old (ttl 60 s) is refused with 403."""
    fresh, stale = server.ws_uri(), server.ws_uri()
    clock.offset += 59
    with _client(fresh) as ws:
        assert _recv_json(ws)["message_type"] == "run_status"
    clock.offset += 2
    assert _handshake_status(stale) == 403


def test_wrong_request_id_is_refused_and_burns_the_ticket(server: _Server) -> None:
    """A wrong request_id is refused with 403, and the ticket is then useless with the right one."""
    uri = server.ws_uri()
    wrong = re.sub(r"request_id=[^&]*", "request_id=wrong", uri)
    assert _handshake_status(wrong) == 403
    assert _handshake_status(uri) == 403


def test_slow_consumer_does_not_delay_others(server: _Server) -> None:
    """With a client that never reads, a fast one still gets 200 x 64 KiB in <= 5 s; the slow one is closed (1013/1011)."""
    with _client(server.ws_uri()) as fast, _raw_client(server.ws_uri()) as slow:
        assert _recv_json(fast)["message_type"] == "run_status"
        server.wait_for_connections(2, timeout=5)
        with ThreadPoolExecutor(max_workers=1) as reader:
            start = time.monotonic()
            received = reader.submit(_collect, fast, 200, 10.0)
            queued = [server.publish(_big_message(i)) for i in range(200)]
            messages = received.result(timeout=15)
            elapsed = time.monotonic() - start
        assert [m["body"]["aggregation_id"] for m in messages] == [f"agg-{i}" for i in range(200)]
        assert elapsed <= 5.0, f"the fast client needed {elapsed:.1f} s"
        assert queued[0] == 2
        server.wait_for_connections(1, timeout=10)
        code = slow.drain()
        assert code in (1013, 1011), code
        # It was closed before it got everything, and run_status still came first.
        assert len(slow.messages()) < 201
        assert slow.messages()[0]["message_type"] == "run_status"


@pytest.mark.parametrize(
    ("queue_size", "send_timeout_s", "reason"),
    [(4, 5.0, "notification queue full"), (10_000, 2.0, "send timed out")],
    ids=["queue-full", "send-timeout"],
)
def test_slow_consumer_is_closed_with_1013(
    queue_size: int, send_timeout_s: float, reason: str
) -> None:
    """A full queue, or one send outlasting send_timeout_s, closes the connection with 1013 ("try again later")."""
    hub = Hub(queue_size=queue_size, send_timeout_s=send_timeout_s)
    with _serve(hub, TicketStore(), ping_s=30) as server, _raw_client(server.ws_uri()) as slow:
        server.wait_for_connections(1, timeout=5)
        for index in range(400):
            if server.publish(_big_message(index)) == 0:
                break
        server.wait_for_connections(0, timeout=send_timeout_s + 5)
        assert slow.drain() == 1013
        assert slow.protocol.close_rcvd is not None
        assert slow.protocol.close_rcvd.reason == reason


def test_client_that_ignores_pings_is_closed(server: _Server) -> None:
    """The server pings; a client that never answers is closed with 1011 within ping interval + timeout (+ margin)."""
    uri = server.ws_uri()
    start = time.monotonic()
    with _raw_client(uri) as silent:
        server.wait_for_connections(1, timeout=2)
        server.wait_for_connections(0, timeout=3)
        elapsed = time.monotonic() - start
        assert elapsed <= 2 * PING_S + 1.0, f"dropped after {elapsed:.1f} s"
        assert silent.drain() == 1011
        assert any(frame.opcode is Opcode.PING for frame in silent.frames)


def test_client_that_answers_pings_stays_connected(server: _Server) -> None:
    """A client that answers pings (as websockets does on its own) survives many ping intervals and still receives."""
    with _client(server.ws_uri()) as ws:
        assert _recv_json(ws)["message_type"] == "run_status"
        time.sleep(5 * PING_S)
        assert server.connections() == 1
        assert server.publish(run_status_message("stop")) == 1
        assert _recv_json(ws) == {"message_type": "run_status", "body": {"run_status": "stop"}}


def test_close_all_closes_with_1001_and_refuses_later_connections_with_1012(
    server: _Server,
) -> None:
    """close_all closes every connection with 1001; a connection opened afterwards is closed with 1012 (client backs off)."""
    with _client(server.ws_uri()) as a, _client(server.ws_uri("branch-2")) as b:
        server.wait_for_connections(2, timeout=5)
        server.http.post("/close-all").raise_for_status()
        for ws in (a, b):
            assert _recv_json(ws)["message_type"] == "run_status"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
        assert server.connections() == 0
    with _client(server.ws_uri()) as late, pytest.raises(ConnectionClosed) as refused:
        late.recv(timeout=5)
    assert refused.value.rcvd is not None
    assert refused.value.rcvd.code == 1012


def test_publish_refuses_messages_over_1_mib() -> None:
    """A message whose compact JSON is exactly 1 MiB is accepted; one byte more raises ValueError."""
    hub = Hub()
    overhead = len(json.dumps(aggregation_message(""), separators=(",", ":")))
    assert hub.publish(BRANCH, aggregation_message("a" * (MAX_MESSAGE_BYTES - overhead))) == 0
    with pytest.raises(ValueError, match="exceeds"):
        hub.publish(BRANCH, aggregation_message("a" * (MAX_MESSAGE_BYTES - overhead + 1)))
    with pytest.raises(ValueError, match="exceeds"):
        # 512 Ki characters, but 1 MiB of UTF-8 plus the envelope.
        hub.publish(BRANCH, aggregation_message("é" * (MAX_MESSAGE_BYTES // 2)))


def test_ticket_fields() -> None:
    """Tickets carry URL-safe random ids, the leaf and branch, and an RFC 3339 UTC expiry ttl seconds ahead."""
    ticket = TicketStore(ttl_s=60, clock=lambda: 1_700_000_000.5).issue(LEAF, BRANCH)
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", ticket.ticket_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,}", ticket.request_id)
    assert (ticket.leaf_id, ticket.branch_id, ticket.expires_at) == (LEAF, BRANCH, 1_700_000_060.5)
    assert ticket.expires_at_iso() == "2023-11-14T22:14:20Z"
    assert ticket.ticket_id not in repr(ticket)


def test_ticket_store_is_bounded() -> None:
    """A full store evicts the oldest expired ticket first, and refuses new tickets while none has expired."""
    now = [0.0]
    store = TicketStore(ttl_s=10, max_tickets=2, clock=lambda: now[0])
    first = store.issue(LEAF, BRANCH)
    now[0] = 5.0
    second = store.issue(LEAF, BRANCH)
    with pytest.raises(TicketCapacityError):
        store.issue(LEAF, BRANCH)
    now[0] = 10.0  # the first ticket has just expired
    third = store.issue(LEAF, BRANCH)
    with pytest.raises(TicketCapacityError):
        store.issue(LEAF, BRANCH)
    assert store.redeem(first.ticket_id, first.request_id) is None
    assert store.redeem(second.ticket_id, second.request_id) == second
    assert store.redeem(third.ticket_id, "é") is None  # non-ASCII input is refused, not an error
    assert store.redeem(third.ticket_id, third.request_id) is None
