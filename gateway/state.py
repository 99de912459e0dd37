"""The gateway's long-lived objects, and typed access to them: the only reader of `app.state`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from gateway.access import AccessSigner
from gateway.activity import Activity
from gateway.cache import AggregationCache
from gateway.embedded import EmbeddedAggregator
from gateway.events import Events
from gateway.forwarding import Forwarder
from gateway.metrics import Metrics
from gateway.names import NamedDownloads
from gateway.settings import Settings
from gateway.upstream.channel import NotificationConsumer
from gateway.upstream.session import Session


@dataclass(frozen=True)
class GatewayState:
    """Every long-lived object of the gateway, created and closed by the lifespan."""

    settings: Settings
    session: Session
    events: Events
    consumer: NotificationConsumer
    cache: AggregationCache
    forwarder: Forwarder
    names: NamedDownloads
    """The leaf's tensor names and the aggregations served in them."""
    embedded: EmbeddedAggregator | None
    stop_streams: Callable[[], object]
    """Ends every open event stream; callable from any thread (the server's shutdown)."""
    activity: Activity = field(default_factory=Activity)
    """The last uploads and performance reports, for the status page."""


def attach_metrics(app: FastAPI, metrics: Metrics) -> None:
    """Give `app` its metrics (they exist before the lifespan starts: handlers count problems)."""
    app.state.metrics = metrics


def attach_access(app: FastAPI, signer: AccessSigner) -> None:
    """Give `app` its access-token signer (the auth middleware holds the same one)."""
    app.state.access = signer


def attach(app: FastAPI, state: GatewayState) -> None:
    """Make `state` the app's lifespan state."""
    app.state.gateway = state


def lifespan_state(app: FastAPI) -> GatewayState | None:
    """The app's lifespan state: None before start-up."""
    state: GatewayState | None = getattr(app.state, "gateway", None)
    return state


def stop_streams(app: FastAPI) -> None:
    """End every open event stream of `app` now, from any thread (uvicorn waits for open
    connections before it runs the lifespan's shutdown, so SSE streams need this signal)."""
    state = lifespan_state(app)
    if state is not None:
        state.stop_streams()


def running_state(app: FastAPI) -> GatewayState:
    """The lifespan state of a started app."""
    state = lifespan_state(app)
    if state is None:
        raise RuntimeError("The gateway's lifespan has not started.")
    return state


def get_state(request: Request) -> GatewayState:
    """The gateway's state."""
    return running_state(request.app)


def get_session(request: Request) -> Session:
    """The leaf session."""
    return get_state(request).session


def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_access(request: Request) -> AccessSigner:
    """The app's access-token signer."""
    signer: AccessSigner = request.app.state.access
    return signer


StateDep = Annotated[GatewayState, Depends(get_state)]
SessionDep = Annotated[Session, Depends(get_session)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
AccessDep = Annotated[AccessSigner, Depends(get_access)]
