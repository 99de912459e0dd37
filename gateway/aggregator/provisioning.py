"""Provisioning RabbitMQ for protocol v1 leaves (§3.5): a vhost per tree, a user per leaf, their permissions.

Through the management HTTP API when it answers, else with `rabbitmqctl`; the admin user of the AMQP URL
gets full rights on every tree's vhost, a leaf only the right to read its own queue.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import anyio
import httpx

from gateway.aggregator.records import Leaf
from gateway.aggregator.settings import AggregatorSettings
from gateway.logs import register_secret

__all__ = [
    "ADMIN_PERMISSIONS",
    "AmqpSetupError",
    "BrokerAdmin",
    "ManagementProvisioner",
    "RabbitmqctlProvisioner",
    "leaf_permissions",
    "provision",
]

ADMIN_PERMISSIONS: Final = (".*", ".*", ".*")
"""configure, write, read of the admin user on every tree's vhost."""

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
