"""Notifications for protocol v1 leaves over RabbitMQ (§3.5): topology and publishing.

Topology, per leaf: the vhost is its tree id, the user its leaf id (password: its session token), the
queue its leaf id (durable, bounded by `x-max-length`), bound to a durable fanout exchange named after
its branch id. The broker is provisioned for it first (gateway/aggregator/provisioning.py); the admin
user of the AMQP URL is the one that declares and publishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, Protocol

import aio_pika
import anyio
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from pamqp.commands import Basic

from gateway.aggregator.provisioning import AmqpSetupError, BrokerAdmin, provision
from gateway.aggregator.records import Leaf
from gateway.aggregator.settings import AggregatorSettings

__all__ = ["MAX_PENDING", "AmqpNotifier", "publish_with_retry", "start_amqp"]

log = logging.getLogger("gateway.aggregator.amqp")

MAX_PENDING: Final = 1000
"""Notifications waiting to be published; beyond it new ones are dropped (and logged) while the broker is away."""

_ATTEMPT_TIMEOUT_S: Final = 10.0
_MAX_BACKOFF_S: Final = 10.0
_CONNECT_TIMEOUT_S: Final = 10.0


class _Exchange(Protocol):
    async def publish(self, message: aio_pika.abc.AbstractMessage, routing_key: str) -> object: ...


async def publish_with_retry(
    exchange: _Exchange,
    body: bytes,
    attempts: int,
    *,
    backoff_s: float = 0.5,
    attempt_timeout_s: float = _ATTEMPT_TIMEOUT_S,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> Exception | None:
    """Publish `body` (persistent JSON, broker-confirmed) up to `attempts` times; the last error, or None."""
    error: Exception | None = None
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        message = aio_pika.Message(
            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
        )
        try:
            with anyio.fail_after(attempt_timeout_s):
                confirmation = await exchange.publish(message, routing_key="")
            if isinstance(confirmation, Basic.Ack):
                return None
            error = RuntimeError(f"the broker did not confirm the message ({confirmation!r})")
        # Whatever the broker or a reconnecting channel raises is retried, then reported: a
        # notification must never take the request or the aggregation down with it.
        except Exception as exc:
            error = exc
        if attempt < attempts:
            await sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_S)
    return error


class AmqpNotifier:
    """Publishes to the branch exchanges; owns one robust connection per tree vhost and one publisher task."""

    def __init__(
        self,
        admin: BrokerAdmin,
        leaves: Sequence[Leaf],
        queue_max_length: int,
        attempts: int,
        message_ttl_s: int = 600,
    ) -> None:
        self._admin = admin
        self._leaves = list(leaves)
        self._queue_arguments: dict[str, Any] = {
            "x-max-length": queue_max_length,
            "x-message-ttl": message_ttl_s * 1000,
        }
        self._attempts = attempts
        self._connections: list[AbstractRobustConnection] = []
        self._exchanges: dict[str, tuple[str, AbstractExchange]] = {}
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, bytes]](
            MAX_PENDING
        )

    async def open(self) -> None:
        """Connect to every tree's vhost and declare its exchanges, queues and bindings."""
        try:
            for tree in sorted({leaf.tree_id for leaf in self._leaves}):
                await self._declare(tree, [leaf for leaf in self._leaves if leaf.tree_id == tree])
        except BaseException:
            await self.aclose()
            raise

    async def _declare(self, tree: str, leaves: list[Leaf]) -> None:
        try:
            connection = await aio_pika.connect_robust(
                self._admin.vhost_url(tree),
                timeout=_CONNECT_TIMEOUT_S,
                client_properties={"connection_name": "branchkey-aggregator"},
            )
        except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
            raise AmqpSetupError(
                f"Cannot connect to RabbitMQ at {self._admin.where} as {self._admin.user!r} (vhost "
                f"{tree}): {type(exc).__name__}; check BK_AGGREGATOR_AMQP_URL and that the broker runs."
            ) from None
        self._connections.append(connection)
        channel = await connection.channel(publisher_confirms=True)
        for branch in sorted({leaf.branch_id for leaf in leaves}):
            try:
                exchange = await channel.declare_exchange(
                    branch, aio_pika.ExchangeType.FANOUT, durable=True
                )
                for leaf in (leaf for leaf in leaves if leaf.branch_id == branch):
                    await self._leaf_queue(connection, tree, leaf)
            except aio_pika.exceptions.ChannelPreconditionFailed as exc:
                raise AmqpSetupError(
                    f"RabbitMQ refused a declaration in vhost {tree} ({exc}): an exchange or queue "
                    "of that name exists with other settings and is in use; delete it "
                    "(rabbitmqctl delete_queue -p <vhost> <leaf id>) or match "
                    "BK_AGGREGATOR_AMQP_QUEUE_MAX_LENGTH and BK_AGGREGATOR_AMQP_MESSAGE_TTL_S to it."
                ) from None
            except aio_pika.exceptions.AMQPError as exc:
                raise AmqpSetupError(
                    f"RabbitMQ refused to declare the topology of branch {branch} in vhost {tree} "
                    f"({type(exc).__name__}: {exc}): check the admin user's permissions."
                ) from None
            self._exchanges[branch] = (tree, exchange)

    async def _leaf_queue(
        self, connection: AbstractRobustConnection, tree: str, leaf: Leaf
    ) -> None:
        """Declare the leaf's queue and bind it to its branch's exchange, each try on a channel of its
        own (a refused declaration closes its channel). A queue an older version (or other settings)
        declared with other arguments is declared again if no client is consuming from it."""
        try:
            await self._declare_queue(connection, leaf, delete_first=False)
            return
        except aio_pika.exceptions.ChannelPreconditionFailed:
            pass
        await self._declare_queue(connection, leaf, delete_first=True)
        log.warning(
            "queue %s in vhost %s had other arguments: declared again with %s (the notifications "
            "waiting in it are dropped)",
            leaf.id,
            tree,
            self._queue_arguments,
        )

    async def _declare_queue(
        self, connection: AbstractRobustConnection, leaf: Leaf, *, delete_first: bool
    ) -> None:
        channel = await connection.channel()
        try:
            if delete_first:
                await channel.queue_delete(leaf.id, if_unused=True)
            queue = await channel.declare_queue(
                leaf.id, durable=True, arguments=self._queue_arguments
            )
            await queue.bind(leaf.branch_id)
        finally:
            with contextlib.suppress(Exception):  # already closed by the broker's refusal
                await channel.close()

    def publish_soon(self, branch_id: str, message: dict[str, Any]) -> None:
        """Queue `message` for the branch's exchange without waiting (dropped and logged if the queue is full)."""
        if branch_id not in self._exchanges:
            return  # a branch without leaves has nobody to notify
        body = json.dumps(message, separators=(",", ":")).encode()
        try:
            self._send.send_nowait((branch_id, body))
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.error(
                "AMQP notification for branch %s dropped: %d are already waiting for the broker",
                branch_id,
                MAX_PENDING,
            )

    async def run(self) -> None:
        """Publish queued notifications in order, each with bounded retries; runs until cancelled."""
        async with self._receive:
            async for branch_id, body in self._receive:
                tree, exchange = self._exchanges[branch_id]
                error = await publish_with_retry(exchange, body, self._attempts)
                if error is not None:
                    log.error(
                        "AMQP notification %s to exchange %s in vhost %s lost after %d attempts: %s",
                        body.decode(),
                        branch_id,
                        tree,
                        self._attempts,
                        f"{type(error).__name__}: {error}",
                    )

    async def aclose(self) -> None:
        """Stop accepting notifications and close every connection."""
        waiting = self._send.statistics().current_buffer_used
        if waiting:
            log.warning("%d AMQP notifications not yet published are dropped at shutdown", waiting)
        self._send.close()
        connections, self._connections = self._connections, []
        for connection in connections:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await connection.close()


async def start_amqp(settings: AggregatorSettings, leaves: Iterable[Leaf]) -> AmqpNotifier:
    """Provision the broker and open the notifier; raises AmqpSetupError with one clear sentence."""
    admin = BrokerAdmin.from_settings(settings)
    leaves = list(leaves)
    method = await provision(settings, admin, leaves)
    notifier = AmqpNotifier(
        admin,
        leaves,
        settings.amqp_queue_max_length,
        settings.amqp_publish_attempts,
        settings.amqp_message_ttl_s,
    )
    await notifier.open()
    log.info(
        "v1 notifications over RabbitMQ at %s: %d leaves provisioned (%s), %d branch exchanges",
        admin.where,
        len(leaves),
        method,
        len({leaf.branch_id for leaf in leaves}),
    )
    return notifier
