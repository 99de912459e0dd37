"""The protocol v1 notification consumer: the leaf's RabbitMQ queue -> events, acked only once stored."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import aio_pika
import aiormq.exceptions
import anyio
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import AMQPException

from gateway.errors import GatewayError
from gateway.events import Events
from gateway.upstream.channel import ConsumerSettings, NotificationConsumer
from gateway.upstream.session import Session
from gateway.upstream.v1 import V1Upstream

log = logging.getLogger("gateway.consumer")

_CLEAN_CLOSES = (aiormq.exceptions.ConnectionClosed, aiormq.exceptions.ChannelClosed)
"""Closes the broker announced (a close frame), as opposed to a connection found dead."""


@dataclass(frozen=True)
class AmqpSettings:
    """Where and how the v1 notifications are consumed."""

    port: int = 5672
    heartbeat_s: int = 30
    prefetch: int = 32


class AmqpConnectionLostError(ConnectionError):
    """The broker closed the connection (restart, `rabbitmqctl close_connection`, network loss)."""


class AmqpConsumer(NotificationConsumer):
    """Protocol v1 (§3.5): vhost = tree id, user = leaf id, password = session token, and the queue
    named after the leaf id, which the server provisions (nothing is declared here).

    Unlike the official v1 client it reconnects with backoff, bounds the unacked messages
    (`prefetch`), and acks a message only after its event is in the event log, so a crash can
    never lose an acked aggregation id. A message that can never be understood (not JSON, unknown
    `message_type`, no id) is rejected without requeue: requeueing would redeliver it forever,
    and the broker's dead-letter exchange, when one is configured, keeps it for inspection.
    """

    transient_errors = (
        *NotificationConsumer.transient_errors,
        AMQPException,
        aiormq.exceptions.AMQPError,
        ConnectionError,
    )

    def __init__(
        self,
        session: Session,
        events: Events,
        amqp: AmqpSettings,
        settings: ConsumerSettings | None = None,
    ) -> None:
        super().__init__(session, events, settings)
        self.amqp = amqp

    async def _connect_and_read(self) -> None:
        upstream = self.session.require(V1Upstream)
        await upstream.ensure_authenticated()  # the vhost is the tree id authenticate returns
        creds = upstream.credentials
        if not creds.response_host:
            raise GatewayError(
                "No RabbitMQ host for the notifications: set BK_RESPONSE_HOST or response_host "
                "in the credentials."
            )
        where = f"RabbitMQ at {creds.response_host}:{self.amqp.port}"
        try:
            connection = await aio_pika.connect(
                host=creds.response_host,
                port=self.amqp.port,
                login=creds.id,
                password=creds.session_token,
                virtualhost=creds.tree_id,
                timeout=self.settings.open_timeout_s,
                heartbeat=self.amqp.heartbeat_s,
                client_properties={"connection_name": f"branchkey-gateway leaf-{creds.id}"},
            )
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise GatewayError(
                f"{where} refused leaf {creds.id} on vhost {creds.tree_id} ({exc}): check the "
                "session token, and that BranchKey has set up this leaf's notification user."
            ) from exc
        except OSError as exc:
            raise GatewayError(f"{where} cannot be reached ({exc}).") from exc
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self.amqp.prefetch)
            queue = await channel.get_queue(creds.id, ensure=False)  # declared by the server
            try:
                await self._consume_until_closed(upstream, connection, channel, queue)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise GatewayError(
                    f"{where} has no queue {creds.id} in vhost {creds.tree_id} ({exc}): BranchKey "
                    "creates it for each leaf."
                ) from exc
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await connection.close()

    async def _consume_until_closed(
        self,
        upstream: V1Upstream,
        connection: aio_pika.abc.AbstractConnection,
        channel: aio_pika.abc.AbstractChannel,
        queue: AbstractQueue,
    ) -> None:
        """Consume until the connection or channel closes or the broker cancels the consumer (a
        deleted or failed-over queue): a queue iterator notices none of these by itself."""
        lost: str | None = None
        told = False
        error: Exception | None = None
        ended = anyio.Event()

        def end(reason: str, exc: object = None, *, said: bool = False) -> None:
            nonlocal lost, told
            if lost is None:
                lost = reason
                told = said or isinstance(exc, _CLEAN_CLOSES)
            ended.set()

        # A close by the broker runs the close callbacks (connection.closed() only resolves on
        # a close we asked for); a close the broker announced means it was up until then.
        connection.close_callbacks.add(
            lambda _, exc=None, *__: end("the broker closed the connection", exc)
        )
        channel.close_callbacks.add(
            lambda _, exc=None, *__: end("the broker closed the channel", exc)
        )
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(
            lambda *_: end("the broker cancelled the consumer (queue deleted or moved)", said=True)
        )
        async with anyio.create_task_group() as group:

            async def watch() -> None:
                await ended.wait()
                group.cancel_scope.cancel()

            async def keepalive() -> None:
                # basic.qos is a round trip that needs no permission: proof the broker is there.
                probe = functools.partial(channel.set_qos, prefetch_count=self.amqp.prefetch)
                end(await self._keep_proving(probe))

            group.start_soon(watch)
            group.start_soon(keepalive)
            try:
                await self._consume(upstream, queue)
            except Exception as exc:  # kept out of the task group, which would wrap it in a group
                error = exc
            group.cancel_scope.cancel()
        if told:
            await self._proved_up()
        if error is not None:
            raise error
        raise AmqpConnectionLostError(lost or "the broker ended the consumer")

    async def _consume(self, upstream: V1Upstream, queue: AbstractQueue) -> None:
        async with queue.iterator(no_ack=False) as messages:
            await self._connected(upstream)
            async for message in messages:
                await self._settle(message)

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        # An exception here (the event log cannot be written) leaves the message unacked: the
        # connection is dropped and the broker redelivers it after the reconnect.
        understood = await self._handle_raw(message.body)
        try:
            if understood:
                await message.ack()
            else:
                await message.reject(requeue=False)
        except (RuntimeError, AMQPException, aiormq.exceptions.AMQPError) as exc:
            # The channel went away while the event was being written: the broker redelivers
            # the message to the next connection, where the log's dedup keeps it single.
            raise AmqpConnectionLostError(f"the channel closed before the ack ({exc})") from exc
