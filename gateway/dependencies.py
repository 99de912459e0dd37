"""Typed access to the lifespan's state, for route handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import anyio
import httpx
from fastapi import Depends, Request

from gateway.embedded import EmbeddedAggregator
from gateway.events import Events
from gateway.settings import Settings
from gateway.upstream.channel import NotificationConsumer
from gateway.upstream.session import Session


@dataclass
class GatewayState:
    """Every long-lived object of the gateway, created and closed by the lifespan."""

    settings: Settings
    client: httpx.AsyncClient
    session: Session
    tmp_dir: Path
    cache_dir: Path
    embedded: EmbeddedAggregator | None
    events: Events
    consumer: NotificationConsumer
    fetch_locks: dict[str, anyio.Lock] = field(default_factory=dict)


def get_state(request: Request) -> GatewayState:
    """The gateway's state."""
    state: GatewayState = request.app.state.gateway
    return state


def get_session(request: Request) -> Session:
    """The leaf session."""
    return get_state(request).session


StateDep = Annotated[GatewayState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]
