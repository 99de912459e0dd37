"""WebSocket notifications (BranchKey protocol §5.6): single-use tickets and a per-branch fan-out hub."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = [
    "MAX_MESSAGE_BYTES",
    "Hub",
    "Ticket",
    "TicketCapacityError",
    "TicketStore",
    "aggregation_message",
    "run_status_message",
    "uvicorn_ws_options",
]

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES: Final = 1024 * 1024
"""The official client's `max_size` (websockets' default): a larger message is closed with 1009 and retried forever."""

# The client never sends data frames (§5.6.3), so anything it does send only needs to be small enough to drain.
_MAX_INCOMING_BYTES: Final = 64 * 1024

# Close codes. 1000/1001 make the official client reconnect at once, without backoff (§5.6.5), so the hub only
# uses them when the caller asks (close_all on shutdown); its own decisions use codes that trigger a backoff.
_TRY_AGAIN_LATER: Final = 1013
_SERVICE_RESTART: Final = 1012

# What a send or close on a socket that is already gone raises: starlette turns uvicorn's ClientDisconnected
# (an OSError) into WebSocketDisconnect, and uvicorn raises RuntimeError for a send after it has itself sent a
# close frame (its keepalive does that on a ping timeout, without telling the app until the transport is gone).
_GONE: Final = (WebSocketDisconnect, OSError, RuntimeError)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A ticket for one WebSocket connection of one leaf; `ticket_id` and `request_id` go in the URL unencoded."""

    ticket_id: str = field(repr=False)
    request_id: str = field(repr=False)
    leaf_id: str
    branch_id: str
    expires_at: float

    def expires_at_iso(self) -> str:
        """The expiry as RFC 3339 UTC with second precision, e.g. `2025-01-31T12:00:00Z`."""
        return datetime.fromtimestamp(self.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TicketCapacityError(Exception):
    """`TicketStore.issue` refused: `max_tickets` unexpired tickets are outstanding."""


class TicketStore:
    """Single-use, expiring tickets; bounded (max_tickets, oldest expired first, then refuse).

    Not thread-safe: call it from the event loop only (its methods never await, so they are atomic there).
    """

    def __init__(
        self, ttl_s: float = 60.0, max_tickets: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if max_tickets < 1:
            raise ValueError("max_tickets must be at least 1")
        self._ttl_s = ttl_s
        self._max_tickets = max_tickets
        self._clock = clock
        # Keyed by a digest of the ticket id, so the lookup's timing says nothing about the id itself.
        # Insertion order is expiry order while the clock moves forward.
        self._tickets: dict[bytes, Ticket] = {}

    def issue(self, leaf_id: str, branch_id: str) -> Ticket:
        """A fresh ticket valid for `ttl_s`; raises TicketCapacityError when `max_tickets` are outstanding."""
        now = self._clock()
        self._evict_expired(now)
        if len(self._tickets) >= self._max_tickets:
            raise TicketCapacityError(
                f"{self._max_tickets} WebSocket tickets are outstanding; try again later"
            )
        ticket = Ticket(
            ticket_id=secrets.token_urlsafe(24),
            request_id=secrets.token_urlsafe(16),
            leaf_id=leaf_id,
            branch_id=branch_id,
            expires_at=now + self._ttl_s,
        )
        self._tickets[_digest(ticket.ticket_id)] = ticket
        return ticket

    def redeem(self, ticket_id: str, request_id: str) -> Ticket | None:
        """The ticket, consumed; None if unknown, expired, already used, or `request_id` does not match.

        Any attempt consumes the ticket, so a wrong `request_id` burns it too.
        """
        ticket = self._tickets.pop(_digest(ticket_id), None)
        if ticket is None or ticket.expires_at <= self._clock():
            return None
        # Bytes, not str: compare_digest refuses non-ASCII str, and the query string is the client's choice.
        if not hmac.compare_digest(ticket.request_id.encode(), request_id.encode()):
            return None
        return ticket

    def _evict_expired(self, now: float) -> None:
        while self._tickets:
            oldest_key, oldest = next(iter(self._tickets.items()))
            if oldest.expires_at > now:
                break
            del self._tickets[oldest_key]
        if len(self._tickets) >= self._max_tickets:
            # Only reachable if the clock went backwards, which breaks the expiry order: sweep everything.
            for key in [k for k, t in self._tickets.items() if t.expires_at <= now]:
                del self._tickets[key]


def _digest(ticket_id: str) -> bytes:
    return hashlib.sha256(ticket_id.encode("utf-8", "surrogatepass")).digest()


def aggregation_message(aggregation_id: str) -> dict[str, Any]:
    """The notification that an aggregation is ready for download."""
    return {"message_type": "aggregation_status", "body": {"aggregation_id": aggregation_id}}


def run_status_message(run_status: str) -> dict[str, Any]:
    """The notification that the branch's run status changed (`start`, `stop`, `pause`, ...)."""
    return {"message_type": "run_status", "body": {"run_status": run_status}}


def _encode(message: dict[str, Any]) -> str:
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    size = len(text.encode())
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(
            f"a notification of {size} bytes exceeds the client's {MAX_MESSAGE_BYTES}-byte limit"
        )
    return text


@dataclass(eq=False)
class _Connection:
    websocket: WebSocket
    ticket: Ticket
    queue: asyncio.Queue[str]
    done: anyio.Event
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    close_code: int | None = None
    close_reason: str = ""
    peer_gone: bool = False


class Hub:
    """Fan-out of JSON messages to the WebSocket connections of a branch.

    Every connection has its own bounded queue and sender, so a client that stops reading (§5.8) only ever
    fills its own queue: it is closed with 1013 when that queue is full or one send outlasts `send_timeout_s`,
    and delivery to the others never waits for it. Use it from the event loop only.
    """

    def __init__(self, queue_size: int = 64, send_timeout_s: float = 10.0) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if send_timeout_s <= 0:
            raise ValueError("send_timeout_s must be positive")
        self._queue_size = queue_size
        self._send_timeout_s = send_timeout_s
        self._branches: dict[str, set[_Connection]] = {}
        self._stopped = False

    async def serve(
        self, websocket: WebSocket, ticket: Ticket, first_message: dict[str, Any] | None
    ) -> None:
        """Deliver `first_message`, then the branch's messages, to an accepted socket until it closes.

        Returns when the peer disconnects, the connection is dropped (1013) or the hub stops (close_all);
        a connection that arrives after close_all is closed at once with 1012, so the client backs off.
        """
        first = None if first_message is None else _encode(first_message)
        if self._stopped:
            await self._close(websocket, _SERVICE_RESTART, "server shutting down")
            return
        connection = _Connection(websocket, ticket, asyncio.Queue(self._queue_size), anyio.Event())
        self._branches.setdefault(ticket.branch_id, set()).add(connection)
        try:
            with connection.scope:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(self._receive_until_disconnect, connection)
                    await self._deliver(connection, first)
            if connection.close_code is not None and not connection.peer_gone:
                await self._close(websocket, connection.close_code, connection.close_reason)
        finally:
            self._forget(connection)
            connection.done.set()

    def publish(self, branch_id: str, message: dict[str, Any]) -> int:
        """Queue `message` for every connection of `branch_id` without waiting; return how many took it.

        Raises ValueError if its JSON exceeds MAX_MESSAGE_BYTES. A connection whose queue is full is dropped.
        """
        text = _encode(message)
        queued = 0
        for connection in list(self._branches.get(branch_id, ())):
            try:
                connection.queue.put_nowait(text)
            except asyncio.QueueFull:
                self._drop(connection, _TRY_AGAIN_LATER, "notification queue full")
            else:
                queued += 1
        return queued

    def connections(self, branch_id: str | None = None) -> int:
        """How many connections are registered, for `branch_id` or in total."""
        if branch_id is not None:
            return len(self._branches.get(branch_id, ()))
        return sum(len(connections) for connections in self._branches.values())

    def connected_leaves(self) -> set[str]:
        """Ids of the leaves with an open notification WebSocket."""
        return {c.ticket.leaf_id for group in self._branches.values() for c in group}

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop the hub: close every connection with `code` and refuse new ones (with 1012).

        Waits for the close frames to be written, at most `send_timeout_s`. Messages still queued are dropped.
        """
        self._stopped = True
        closing = [connection for group in self._branches.values() for connection in group]
        for connection in closing:
            self._drop(connection, code, reason)
        with anyio.move_on_after(self._send_timeout_s):
            for connection in closing:
                await connection.done.wait()

    async def _receive_until_disconnect(self, connection: _Connection) -> None:
        # The client sends no data frames, but reading is how a disconnect is noticed (and uvicorn stops
        # reading the socket until the app takes each message).
        while True:
            message = await connection.websocket.receive()
            if message["type"] == "websocket.disconnect":
                connection.peer_gone = True
                connection.scope.cancel()
                return

    async def _deliver(self, connection: _Connection, first: str | None) -> None:
        if first is not None and not await self._send(connection, first):
            return
        while True:
            text = await connection.queue.get()
            if not await self._send(connection, text):
                return

    async def _send(self, connection: _Connection, text: str) -> bool:
        with anyio.move_on_after(self._send_timeout_s) as deadline:
            try:
                await connection.websocket.send_text(text)
            except _GONE:
                connection.peer_gone = True
                connection.scope.cancel()
                return False
        if deadline.cancelled_caught:
            self._drop(connection, _TRY_AGAIN_LATER, "send timed out")
            return False
        return True

    def _drop(self, connection: _Connection, code: int, reason: str) -> None:
        if connection.close_code is None:
            connection.close_code = code
            connection.close_reason = reason
            if code == _TRY_AGAIN_LATER:
                logger.warning(
                    "dropping a notification connection of leaf %s (branch %s): %s",
                    connection.ticket.leaf_id,
                    connection.ticket.branch_id,
                    reason,
                )
        self._forget(connection)
        connection.scope.cancel()

    def _forget(self, connection: _Connection) -> None:
        group = self._branches.get(connection.ticket.branch_id)
        if group is not None:
            group.discard(connection)
            if not group:
                del self._branches[connection.ticket.branch_id]

    async def _close(self, websocket: WebSocket, code: int, reason: str) -> None:
        # A peer that stopped reading never lets the close frame out: give up after one send's worth of time.
        with anyio.move_on_after(self._send_timeout_s), contextlib.suppress(*_GONE):
            await websocket.close(code, reason)


def uvicorn_ws_options(
    ping_interval_s: float = 30.0, ping_timeout_s: float = 30.0
) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that make the server ping every WebSocket client.

    The official client never pings and relies on the server to (§5.6.4). With these options uvicorn 0.54's
    `websockets-sansio` implementation (what `ws="auto"` picks when websockets is installed; the legacy
    `websockets` one is deprecated and warns on import, `wsproto` is not installed) guarantees that:

    - it sends a ping `ping_interval_s` after the handshake and after each pong (minus the round trip);
    - a peer that has not answered a ping within `ping_timeout_s` is sent close 1011 ("keepalive ping
      timeout") and its transport is closed, so a silent peer is gone within about
      `ping_interval_s + ping_timeout_s`; the app then sees `websocket.disconnect` and Hub.serve returns;
    - incoming messages over 64 KiB are refused with 1009 (the client sends none at all).

    Limit: asyncio closes a transport only once its write buffer has drained, so for a peer that stopped
    reading with data still buffered, the 1011 frame waits behind it and the app is not told; Hub's
    `send_timeout_s` unregisters such connections. Such a socket lingers until the peer reads or goes away,
    which also holds up uvicorn's shutdown: set `timeout_graceful_shutdown` too. On shutdown uvicorn itself
    closes open WebSockets with 1012 before the lifespan ends.
    """
    if ping_interval_s <= 0 or ping_timeout_s <= 0:
        raise ValueError(
            "ping_interval_s and ping_timeout_s must be positive (0 would disable pings)"
        )
    return {
        "ws": "websockets-sansio",
        "ws_ping_interval": ping_interval_s,
        "ws_ping_timeout": ping_timeout_s,
        "ws_max_size": _MAX_INCOMING_BYTES,
    }
