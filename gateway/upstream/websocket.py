"""The protocol v3 notification consumer: a fresh ticket per attempt, then the WebSocket (§5.6)."""

from __future__ import annotations

import functools
import ssl

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from gateway.events import Events
from gateway.upstream.channel import ConsumerSettings, NotificationConsumer
from gateway.upstream.client import USER_AGENT
from gateway.upstream.session import Session
from gateway.upstream.v3 import V3Upstream


def ws_url(host: str, ticket_id: str, request_id: str) -> str:
    """The WebSocket URL the official client builds from the API host (§5.6.1)."""
    base = host.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    else:
        base = "wss://" + base
    return f"{base}/api/v1/ws?ticket={ticket_id}&request_id={request_id}"


class WebSocketConsumer(NotificationConsumer):
    """Protocol v3: a fresh ticket per attempt, then the WebSocket (§5.6)."""

    transient_errors = (
        *NotificationConsumer.transient_errors,
        InvalidHandshake,
        InvalidURI,
        ConnectionClosed,
    )

    def __init__(
        self,
        session: Session,
        events: Events,
        verify: bool | ssl.SSLContext,
        settings: ConsumerSettings | None = None,
    ) -> None:
        super().__init__(session, events, settings)
        self.verify = verify

    async def _connect_and_read(self) -> None:
        upstream = self.session.require(V3Upstream)
        ticket = await upstream.ticket()
        url = ws_url(upstream.host, str(ticket["ticket_id"]), str(ticket.get("request_id", "")))
        ssl_option: ssl.SSLContext | None = None
        if url.startswith("wss://"):
            ssl_option = (
                self.verify if isinstance(self.verify, ssl.SSLContext) else _context(self.verify)
            )
        connection = await connect(
            url,
            ssl=ssl_option,
            open_timeout=self.settings.open_timeout_s,
            ping_interval=None,  # our own pings (`_keep_proving`) also tell when it was last up
            max_size=1 << 20,
            proxy=None,
            user_agent_header=USER_AGENT,
        )
        try:
            await self._connected(upstream)
            await self._read_while_alive(connection)
        finally:
            # Close politely but briefly, even when cancelled; then make sure the socket is gone.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await connection.close()
            connection.transport.abort()

    async def _read_while_alive(self, connection: ClientConnection) -> None:
        """Read until the connection ends, pinging it meanwhile; a ping left unanswered ends it."""
        silent: str | None = None
        error: Exception | None = None
        async with anyio.create_task_group() as group:

            async def keepalive() -> None:
                nonlocal silent
                silent = await self._keep_proving(functools.partial(_ping, connection))
                group.cancel_scope.cancel()

            group.start_soon(keepalive)
            try:
                await self._read(connection)
            except Exception as exc:  # kept out of the task group, which would wrap it in a group
                error = exc
            group.cancel_scope.cancel()
        if error is not None:
            raise error
        if silent is not None:
            raise TimeoutError(f"the notification WebSocket went silent: {silent}")

    async def _read(self, connection: ClientConnection) -> None:
        try:
            async for raw in connection:
                await self._handle_raw(raw)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:  # the server closed it: it was up until now
                await self._proved_up()
            raise
        await self._proved_up()  # a normal close by the server


async def _ping(connection: ClientConnection) -> None:
    """A ping and its pong; a connection closing meanwhile is left to the reader to report."""
    try:
        pong = await connection.ping()
        await pong
    except ConnectionClosed:
        await anyio.sleep_forever()


def _context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
