"""Notifications for protocol v1 leaves over RabbitMQ (§3.5): provisioning, topology and publishing.

Topology, per leaf: the vhost is its tree id, the user its leaf id (password: its session token), the
queue its leaf id (durable, bounded by `x-max-length`), bound to a durable fanout exchange named after
its branch id. A leaf may only read its own queue; the admin user of the AMQP URL gets full rights on
every tree's vhost and is the one that declares and publishes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import anyio
import httpx
from aio_pika.abc import AbstractExchange, AbstractRobustConnection
from pamqp.commands import Basic

from gateway.aggregator.settings import AggregatorSettings
from gateway.aggregator.store import Leaf
from gateway.logs import register_secret

__all__ = [
    "ADMIN_PERMISSIONS",
    "AmqpNotifier",
    "AmqpSetupError",
    "BrokerAdmin",
    "ManagementProvisioner",
    "RabbitmqctlProvisioner",
    "leaf_permissions",
    "provision",
    "publish_with_retry",
    "start_amqp",
]

log = logging.getLogger("gateway.aggregator.amqp")

ADMIN_PERMISSIONS: Final = (".*", ".*", ".*")
"""configure, write, read of the admin user on every tree's vhost."""

MAX_PENDING: Final = 1000
"""Notifications waiting to be published; beyond it new ones are dropped (and logged) while the broker is away."""

_ATTEMPT_TIMEOUT_S: Final = 10.0
_MAX_BACKOFF_S: Final = 10.0
_CONNECT_TIMEOUT_S: Final = 10.0
_MANAGEMENT_TIMEOUT_S: Final = 10.0
# rabbitmqctl starts an Erlang VM (~0.3 s); run a few at once, not hundreds.
_CTL_CONCURRENCY: Final = 8


class AmqpSetupError(Exception):
    """The broker could not be prepared for v1 leaves; the message says what failed and what to do."""


def leaf_permissions(leaf_id: str) -> tuple[str, str, str]:
    """configure, write, read of a leaf: nothing but consuming its own queue."""
    return ("^$", "^$", f"^{re.escape(leaf_id)}$")


@dataclass(frozen=True)
class BrokerAdmin:
    """Where the broker is and the admin credentials, from `amqp_url` (and `amqp_management_url`)."""

    scheme: str
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    management_url: str

    @classmethod
    def from_settings(cls, settings: AggregatorSettings) -> BrokerAdmin:
        """Parse the settings' AMQP URL; defaults as in the AMQP URI spec (guest/guest, port 5672/5671)."""
        if settings.amqp_url is None:
            raise ValueError("amqp_url is not set")
        parts = urlsplit(settings.amqp_url.get_secret_value())
        try:
            port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        except ValueError:
            raise AmqpSetupError(
                "BK_AGGREGATOR_AMQP_URL has an invalid port: use amqp://user:password@host:5672/."
            ) from None
        host = parts.hostname or "localhost"
        password = unquote(parts.password) if parts.password is not None else "guest"
        _redact(password)
        return cls(
            scheme=parts.scheme,
            host=host,
            port=port,
            user=unquote(parts.username) if parts.username else "guest",
            password=password,
            management_url=(settings.amqp_management_url or f"http://{host}:15672").rstrip("/"),
        )

    @property
    def where(self) -> str:
        """`host:port` for messages (never the URL, which holds the password)."""
        return f"{self.host}:{self.port}"

    def vhost_url(self, vhost: str) -> str:
        """An AMQP URL for `vhost` with the admin credentials."""
        user, password = quote(self.user, safe=""), quote(self.password, safe="")
        return f"{self.scheme}://{user}:{password}@{self.host}:{self.port}/{quote(vhost, safe='')}"


def _redact(*secrets: str) -> None:
    for secret in secrets:
        register_secret(secret)


def _check_leaves(admin: BrokerAdmin, leaves: Sequence[Leaf]) -> None:
    _redact(*(leaf.session_token for leaf in leaves))
    for leaf in leaves:
        if leaf.id == admin.user:
            raise AmqpSetupError(
                f"Leaf id {leaf.id!r} is also the RabbitMQ admin user of BK_AGGREGATOR_AMQP_URL: "
                "use another admin user, or other leaf ids."
            )


# ---------------------------------------------------------------- provisioning


class ManagementProvisioner:
    """Vhosts, users and permissions through the RabbitMQ management HTTP API."""

    def __init__(self, client: httpx.AsyncClient, admin_user: str) -> None:
        self._client = client
        self._admin_user = admin_user

    async def answers(self) -> bool:
        """True if the API answers with these credentials, False if nothing listens there."""
        try:
            response = await self._client.get("/api/overview")
        except httpx.TransportError:
            return False
        if response.status_code != 200:
            raise AmqpSetupError(
                f"The RabbitMQ management API at {self._client.base_url} answered "
                f"{response.status_code} to the admin user {self._admin_user!r}: give that user the "
                "administrator tag, or set BK_AGGREGATOR_AMQP_PROVISIONER=rabbitmqctl."
            )
        return True

    async def provision(self, leaves: Sequence[Leaf]) -> None:
        """Create every tree's vhost and every leaf's user (password updated) with its permissions."""
        for vhost in sorted({leaf.tree_id for leaf in leaves}):
            await self._put(f"/api/vhosts/{_segment(vhost)}", {})
            await self._put(_permissions_path(vhost, self._admin_user), _rights(ADMIN_PERMISSIONS))
        for leaf in leaves:
            await self._put(
                f"/api/users/{_segment(leaf.id)}", {"password": leaf.session_token, "tags": ""}
            )
            await self._put(
                _permissions_path(leaf.tree_id, leaf.id), _rights(leaf_permissions(leaf.id))
            )

    async def _put(self, path: str, body: dict[str, str]) -> None:
        try:
            response = await self._client.put(path, json=body)
        except httpx.HTTPError as exc:
            raise AmqpSetupError(
                f"The RabbitMQ management API at {self._client.base_url} failed on PUT {path} "
                f"({type(exc).__name__}): check that the broker is running."
            ) from None
        if response.status_code not in (200, 201, 204):
            raise AmqpSetupError(
                f"The RabbitMQ management API refused PUT {path} ({response.status_code}: "
                f"{response.text[:200]}): check that the user of BK_AGGREGATOR_AMQP_URL is an "
                "administrator."
            )


def _segment(name: str) -> str:
    return quote(name, safe="")


def _permissions_path(vhost: str, user: str) -> str:
    return f"/api/permissions/{_segment(vhost)}/{_segment(user)}"


def _rights(permissions: tuple[str, str, str]) -> dict[str, str]:
    configure, write, read = permissions
    return {"configure": configure, "write": write, "read": read}


class RabbitmqctlProvisioner:
    """Vhosts, users and permissions with `rabbitmqctl` (passwords go through stdin, never argv)."""

    def __init__(self, executable: str) -> None:
        self._executable = executable
        self._limiter = anyio.CapacityLimiter(_CTL_CONCURRENCY)

    async def provision(self, leaves: Sequence[Leaf], admin_user: str = "guest") -> None:
        """Create what is missing, update every leaf's password, set the permissions."""
        users_json, vhosts_json = await _gather(
            self._ctl("list_users", "--formatter", "json"),
            self._ctl("list_vhosts", "--formatter", "json"),
        )
        users = {item["user"] for item in _json_list(users_json, "list_users")}
        vhosts = {item["name"] for item in _json_list(vhosts_json, "list_vhosts")}
        trees = sorted({leaf.tree_id for leaf in leaves})
        await _gather(
            *(self._ctl("add_vhost", vhost) for vhost in trees if vhost not in vhosts),
            *(
                self._ctl(
                    "change_password" if leaf.id in users else "add_user",
                    leaf.id,
                    stdin=leaf.session_token,
                )
                for leaf in leaves
            ),
        )
        await _gather(
            *(
                self._ctl("set_permissions", "-p", vhost, admin_user, *ADMIN_PERMISSIONS)
                for vhost in trees
            ),
            *(
                self._ctl(
                    "set_permissions", "-p", leaf.tree_id, leaf.id, *leaf_permissions(leaf.id)
                )
                for leaf in leaves
            ),
        )

    async def _ctl(self, *args: str, stdin: str | None = None) -> str:
        async with self._limiter:
            done = await anyio.run_process(
                [self._executable, "-q", *args],
                input=None if stdin is None else stdin.encode(),
                check=False,
            )
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            raise AmqpSetupError(
                f"rabbitmqctl {args[0]} failed (exit {done.returncode}: "
                f"{reason[-1] if reason else 'no output'}): run the aggregator as a user allowed to "
                "use rabbitmqctl, or enable the RabbitMQ management plugin."
            )
        return done.stdout.decode(errors="replace")


async def _gather(*calls: Awaitable[str]) -> list[str]:
    results: list[str] = [""] * len(calls)

    async def run(index: int, call: Awaitable[str]) -> None:
        results[index] = await call

    async with anyio.create_task_group() as group:
        for index, call in enumerate(calls):
            group.start_soon(run, index, call)
    return results


def _json_list(text: str, command: str) -> list[dict[str, Any]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        items = None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise AmqpSetupError(
            f"rabbitmqctl {command} printed something that is not a JSON list: use RabbitMQ 3.8 or "
            "newer, or enable the management plugin."
        )
    return items


async def provision(
    settings: AggregatorSettings, admin: BrokerAdmin, leaves: Sequence[Leaf]
) -> str:
    """Provision the broker for `leaves` as `settings.amqp_provisioner` says; returns the method used."""
    _check_leaves(admin, leaves)
    mode = settings.amqp_provisioner
    if mode != "rabbitmqctl":
        async with httpx.AsyncClient(
            base_url=admin.management_url,
            auth=(admin.user, admin.password),
            timeout=_MANAGEMENT_TIMEOUT_S,
        ) as client:
            management = ManagementProvisioner(client, admin.user)
            if await management.answers():
                await management.provision(leaves)
                return "management API"
        if mode == "management":
            raise AmqpSetupError(
                f"The RabbitMQ management API at {admin.management_url} does not answer: enable "
                "the rabbitmq_management plugin, fix BK_AGGREGATOR_AMQP_MANAGEMENT_URL, or set "
                "BK_AGGREGATOR_AMQP_PROVISIONER=rabbitmqctl."
            )
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        raise AmqpSetupError(
            f"Cannot provision RabbitMQ: its management API at {admin.management_url} does not "
            "answer and rabbitmqctl is not on PATH; enable the rabbitmq_management plugin or run "
            "the aggregator where rabbitmqctl works."
        )
    await RabbitmqctlProvisioner(executable).provision(leaves, admin.user)
    return "rabbitmqctl"


# ---------------------------------------------------------------- publishing


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
        self, admin: BrokerAdmin, leaves: Sequence[Leaf], queue_max_length: int, attempts: int
    ) -> None:
        self._admin = admin
        self._leaves = list(leaves)
        self._queue_max_length = queue_max_length
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
                    queue = await channel.declare_queue(
                        leaf.id, durable=True, arguments={"x-max-length": self._queue_max_length}
                    )
                    await queue.bind(exchange)
            except aio_pika.exceptions.ChannelPreconditionFailed as exc:
                raise AmqpSetupError(
                    f"RabbitMQ refused a declaration in vhost {tree} ({exc}): an exchange or queue "
                    "of that name exists with other settings; delete it (rabbitmqctl delete_queue "
                    "-p <vhost> <leaf id>) or match BK_AGGREGATOR_AMQP_QUEUE_MAX_LENGTH to it."
                ) from None
            except aio_pika.exceptions.AMQPError as exc:
                raise AmqpSetupError(
                    f"RabbitMQ refused to declare the topology of branch {branch} in vhost {tree} "
                    f"({type(exc).__name__}: {exc}): check the admin user's permissions."
                ) from None
            self._exchanges[branch] = (tree, exchange)

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
        admin, leaves, settings.amqp_queue_max_length, settings.amqp_publish_attempts
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
