"""The gateway application: `create_app(settings)`; its lifespan opens each subsystem in turn and
closes them in reverse order."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
from anyio import to_thread
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Scope

from gateway import __version__, logs, state
from gateway.access import AccessSigner
from gateway.api import (
    access,
    activity,
    aggregations,
    events,
    exchange,
    health,
    hosts,
    pages,
    session,
    uploads,
)
from gateway.api.auth import RequireToken
from gateway.api.cors import cors_options
from gateway.cache import AggregationCache, remove_partials
from gateway.embedded import EmbeddedAggregator
from gateway.errors import GatewayError
from gateway.events import EventHub, EventLog, Events
from gateway.forwarding import Forwarder
from gateway.http_limits import SingleHostOrigin
from gateway.layouts import LayoutBook
from gateway.metrics import LiveFacts, Metrics
from gateway.names import NamedDownloads
from gateway.openapi import document, operation_id
from gateway.problems import PROBLEM_SCHEMA, add_exception_handlers
from gateway.settings import Settings
from gateway.upstream import auto
from gateway.upstream.channel import NotificationConsumer
from gateway.upstream.client import upstream_client
from gateway.upstream.credentials import Credentials, from_settings
from gateway.upstream.policy import Policy
from gateway.upstream.session import Session
from gateway.weights import Payload

log = logging.getLogger("gateway")


@dataclass(frozen=True)
class _Upstream:
    """Where the leaf's session goes: BK_HOST, or the embedded aggregator when none is set."""

    host: str
    credentials: Credentials | None
    embedded: EmbeddedAggregator | None


@asynccontextmanager
async def _folders(settings: Settings) -> AsyncIterator[tuple[Path, Path]]:
    """The scratch folder and the download cache, both rid of what an earlier process left."""
    tmp_dir, cache_dir = settings.gateway_data_dir / "tmp", settings.gateway_data_dir / "cache"
    for folder in (tmp_dir, cache_dir):
        folder.mkdir(parents=True, exist_ok=True)
    await to_thread.run_sync(_clear, tmp_dir)
    await to_thread.run_sync(remove_partials, cache_dir)
    yield tmp_dir, cache_dir


@asynccontextmanager
async def _upstream(settings: Settings) -> AsyncIterator[_Upstream]:
    """The configured upstream, or an embedded aggregator started for the gateway's lifetime."""
    credentials = from_settings(settings)
    if settings.bk_host is not None:
        yield _Upstream(settings.bk_host, credentials, None)
        return
    embedded = EmbeddedAggregator(settings)
    await to_thread.run_sync(embedded.start)
    try:
        log.warning(
            "offline: no BK_HOST set, using the embedded local aggregator at %s", embedded.url
        )
        yield _Upstream(embedded.url, credentials or embedded.credentials(), embedded)
    finally:
        await to_thread.run_sync(embedded.stop)


@asynccontextmanager
async def _session(
    settings: Settings, client: httpx.AsyncClient, upstream: _Upstream
) -> AsyncIterator[Session]:
    """The leaf session, logged in when credentials are configured; its token is kept out of logs."""
    # The embedded aggregator deduplicates identical uploads (same leaf, run and digest).
    policy = Policy.from_settings(settings, deduplicates=upstream.embedded is not None)
    session = Session(
        auto.connector(settings.bk_dialect, client, upstream.host, policy),
        upstream.host,
        settings.bk_run_check_interval_s,
        offline=upstream.embedded is not None,
    )
    if upstream.credentials is not None:
        try:
            await session.login(upstream.credentials)
        except GatewayError as exc:
            session.adopt(upstream.credentials)
            log.warning("upstream not reachable at start-up (%s); retrying on demand", exc.detail)
    forget_token = logs.register_secret_source(
        lambda: session.credentials.session_token if session.credentials else None
    )
    try:
        yield session
    finally:
        forget_token()


@asynccontextmanager
async def _events(settings: Settings) -> AsyncIterator[Events]:
    """The event log (closed at the end) and the fan-out hub."""
    event_log = await to_thread.run_sync(
        lambda: EventLog(
            settings.gateway_data_dir / "events.db",
            settings.gateway_events_max_count,
            settings.gateway_events_max_age_s,
        )
    )
    try:
        yield Events(event_log, EventHub(settings.gateway_sse_buffer))
    finally:
        event_log.close()


@asynccontextmanager
async def _background(
    settings: Settings, consumer: NotificationConsumer, hub: EventHub
) -> AsyncIterator[None]:
    """The notification consumer and the keep-alive tick, until shutdown ends every stream."""
    async with anyio.create_task_group() as group:
        group.start_soon(consumer.run)
        group.start_soon(hub.run_keepalive, settings.gateway_sse_keepalive_s)
        yield
        hub.close()
        group.cancel_scope.cancel()


def _live(app: FastAPI) -> LiveFacts | None:
    """What /metrics reads from the running gateway."""
    current = state.lifespan_state(app)
    if current is None:
        return None
    status, events = current.consumer.status, current.events
    try:
        retained: int | None = events.log.count()
    except sqlite3.ProgrammingError:  # closed: the app has shut down
        retained = None
    return LiveFacts(
        channel_state=status.state,
        channel_reconnects=status.reconnects,
        sse_subscribers=len(events.hub.subscribers),
        events_retained=retained,
    )


def create_app(settings: Settings) -> FastAPI:
    """The gateway for `settings`."""
    metrics = Metrics.create(lambda: _live(app))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            tmp_dir, cache_dir = await stack.enter_async_context(_folders(settings))
            upstream = await stack.enter_async_context(_upstream(settings))
            client = await stack.enter_async_context(
                upstream_client(settings, metrics.observe_upstream)
            )
            session_ = await stack.enter_async_context(_session(settings, client, upstream))
            events_ = await stack.enter_async_context(_events(settings))
            consumer = auto.channel(settings, session_, events_)
            layouts = await to_thread.run_sync(
                LayoutBook, settings.gateway_data_dir / "layouts.json"
            )
            limits = settings.weights.policy().limits
            names = NamedDownloads(
                settings.gateway_data_dir, tmp_dir, limits, settings.gateway_cache_keep
            )
            await to_thread.run_sync(names.load)
            loop = asyncio.get_running_loop()
            state.attach(
                app,
                state.GatewayState(
                    settings=settings,
                    session=session_,
                    events=events_,
                    consumer=consumer,
                    cache=AggregationCache(
                        cache_dir,
                        tmp_dir,
                        limits,
                        settings.gateway_cache_keep,
                        functools.partial(_saw_aggregation, layouts, session_, events_),
                    ),
                    forwarder=Forwarder(
                        session_,
                        settings,
                        tmp_dir,
                        metrics.record_upload,
                        names.remember,
                        layouts=layouts,
                    ),
                    names=names,
                    embedded=upstream.embedded,
                    stop_streams=functools.partial(loop.call_soon_threadsafe, events_.hub.close),
                ),
            )
            await stack.enter_async_context(_background(settings, consumer, events_.hub))
            # Start-up objects live for the whole process: keep them out of every full
            # collection, whose pauses would otherwise delay event fan-out.
            gc.freeze()
            yield

    app = FastAPI(
        title="BranchKey Gateway",
        version=__version__,
        description="Federated learning on BranchKey for any trainer, over localhost HTTP.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        docs_url=None,  # api/pages.py serves /docs and /redoc from local assets
        redoc_url=None,
    )
    # FastAPI's documented way to extend its document (the optional bearer token, which Swagger UI's
    # Authorize button then sends; no HTTPValidationError).
    app.openapi = functools.partial(document, app, {"Problem": PROBLEM_SCHEMA})  # type: ignore[method-assign]
    token = settings.gateway_token.get_secret_value() if settings.gateway_token else None
    signer = AccessSigner(token, settings.gateway_access_ttl_s)
    app.add_middleware(
        RequireToken, token=token, access=signer, origins=settings.gateway_cors_origins
    )
    app.add_middleware(CORSMiddleware, **cors_options(settings))  # outside the token: preflights
    # outermost: before CORS, the token and loopback checks
    app.add_middleware(SingleHostOrigin, refusal=hosts.host_origin_refusal, log=hosts.log)

    def count_problem(scope: Scope, problem_type: str) -> None:
        route = getattr(scope.get("route"), "path", "")
        metrics.record_problem(str(scope.get("method")), str(route), problem_type)

    add_exception_handlers(app, count_problem)
    state.attach_metrics(app, metrics)
    state.attach_access(app, signer)
    for module in (
        health,
        session,
        uploads,
        exchange,
        events,
        aggregations,
        access,
        activity,
        pages,
    ):
        app.include_router(module.router)
    return app


def _saw_aggregation(
    layouts: LayoutBook, session: Session, events: Events, aggregation_id: str, payload: Payload
) -> None:
    """An aggregation fetched from upstream becomes its branch's reference layout when it is the
    latest one announced (an older one fetched later must not undo a newer model)."""
    latest = events.log.latest("aggregation")
    credentials = session.credentials
    if credentials and latest and latest.data.get("aggregation_id") == aggregation_id:
        source = f"the latest aggregation ({aggregation_id})"
        layouts.record(credentials.branch_id, payload, source)


def _clear(folder: Path) -> None:
    """Remove what an earlier process left in a scratch folder."""
    for leftover in folder.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
