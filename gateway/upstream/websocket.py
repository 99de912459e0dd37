"""The protocol v3 notification consumer: a fresh ticket per attempt, then the WebSocket (§5.6)."""

from __future__ import annotations

import ssl

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from gateway.events import Events
from gateway.upstream.channel import ConsumerSettings, NotificationConsumer
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
            ping_interval=self.settings.ping_interval_s,
            ping_timeout=self.settings.ping_timeout_s,
            max_size=1 << 20,
            proxy=None,
        )
        try:
            await self._connected(upstream)
            await self._read(connection)
        finally:
            # Close politely but briefly, even when cancelled; then make sure the socket is gone.
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await connection.close()
            connection.transport.abort()

    async def _read(self, connection: ClientConnection) -> None:
        async for raw in connection:
            await self._handle_raw(raw)


def _context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
