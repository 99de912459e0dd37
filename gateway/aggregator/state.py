"""What the aggregator's routes share, owned by the lifespan; the only reader of `app.state` here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import anyio.abc
from fastapi import Depends, FastAPI
from starlette.requests import HTTPConnection

from gateway._io import KeyedLocks
from gateway.aggregator.amqp import AmqpNotifier
from gateway.aggregator.records import Leaf
from gateway.aggregator.settings import AggregatorSettings
from gateway.aggregator.store import Store
from gateway.aggregator.websocket import Hub, TicketStore


@dataclass
class AggregatorState:
    """Everything the routes share; owned by the lifespan."""

    settings: AggregatorSettings
    store: Store
    tickets: TicketStore
    hub: Hub
    admin_token: str
    blob_key: bytes
    task_group: anyio.abc.TaskGroup | None = None
    amqp: AmqpNotifier | None = None
    branch_locks: KeyedLocks = field(default_factory=KeyedLocks)
    """Serialise the round bookkeeping of one branch."""
    file_locks: KeyedLocks = field(default_factory=KeyedLocks)
    """One writer of a stored file's converted copy."""
    done: dict[str, anyio.Event] = field(default_factory=dict)
    """Set when the aggregation of that id has finished (or failed)."""

    @asynccontextmanager
    async def branch_lock(self, branch_id: str) -> AsyncIterator[None]:
        """Hold the lock of one branch's round bookkeeping (the table forgets idle locks)."""
        async with locked(self.branch_locks, branch_id):
            yield

    def notify(self, branch_id: str, message: dict[str, Any]) -> None:
        """Tell the branch's leaves: v3 leaves over the WebSocket hub, v1 leaves over AMQP (if enabled)."""
        self.hub.publish(branch_id, message)
        if self.amqp is not None:
            self.amqp.publish_soon(branch_id, message)


@asynccontextmanager
async def locked(locks: KeyedLocks, key: str) -> AsyncIterator[None]:
    """Hold `key`'s lock of `locks`, and let the table forget it once nobody holds or waits for it."""
    lock = locks.get(key)
    try:
        async with lock:
            yield
    finally:
        locks.discard(key, lock)


@dataclass
class Launch:
    """What an aggregator app tells whoever runs it (the command line, the embedded runner, tests)."""

    leaves: list[Leaf]
    admin_token: str
    admin_token_generated: bool = False
    """True when this start generated the token (and wrote it to `<data_dir>/admin-token`)."""


def attach_launch(app: FastAPI, launch: Launch) -> None:
    """Give `app` the facts its runner reads (set by the factory, before the lifespan)."""
    app.state.launch = launch


def launch_of(app: FastAPI) -> Launch:
    """The leaves, admin token and start-up error of an aggregator app."""
    launch: Launch = app.state.launch
    return launch


def attach_state(app: FastAPI, state: AggregatorState) -> None:
    """Make `state` what StateDep hands to the routes of `app` (called by the lifespan)."""
    app.state.aggregator = state


def _state(connection: HTTPConnection) -> AggregatorState:
    state: AggregatorState = connection.app.state.aggregator
    return state


StateDep = Annotated[AggregatorState, Depends(_state)]
"""The aggregator's state, for HTTP and WebSocket routes alike."""
