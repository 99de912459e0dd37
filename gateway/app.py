"""The gateway application: `create_app(settings)`; the lifespan owns every long-lived object."""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx
from anyio import to_thread
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__, logs, observability
from gateway.api import aggregations, events, session, uploads
from gateway.dependencies import GatewayState
from gateway.embedded import EmbeddedAggregator
from gateway.errors import (
    PROBLEM_JSON,
    GatewayError,
    NotAuthenticatedError,
    add_exception_handlers,
)
from gateway.events import EventHub, EventLog, Events
from gateway.openapi import problem_responses
from gateway.settings import Settings
from gateway.upstream import auto
from gateway.upstream.credentials import from_settings
from gateway.upstream.session import Session
from gateway.upstream.transport import RetryPolicy

log = logging.getLogger("gateway")


_LOOPBACK_HOSTS = frozenset({b"127.0.0.1", b"localhost", b"[::1]"})


def _hostname(value: bytes) -> bytes:
    """`host[:port]` (or an Origin URL) -> host, lower-case."""
    value = value.split(b"://", 1)[-1].lower()
    if value.startswith(b"["):
        return value.split(b"]", 1)[0] + b"]"
    return value.split(b":", 1)[0]


class RequireToken:
    """When GATEWAY_TOKEN is set, every route but /healthz needs `Authorization: Bearer <token>`.

    Without a token only loopback is trusted: the Host must be a loopback name (no DNS rebinding)
    and a browser's Origin, when sent, must be loopback too (no web page can post weights).
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.token is None:
            origin = headers.get(b"origin")
            if _hostname(headers.get(b"host", b"127.0.0.1")) in _LOOPBACK_HOSTS and (
                origin is None or _hostname(origin) in _LOOPBACK_HOSTS
            ):
                await self.app(scope, receive, send)
                return
            await _refuse(
                scope,
                send,
                "Without GATEWAY_TOKEN the gateway answers only loopback requests (Host 127.0.0.1, "
                "localhost or [::1], and no foreign Origin); set GATEWAY_TOKEN to serve others.",
            )
            return
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            await self.app(scope, receive, send)
            return
        await _refuse(
            scope, send, "Send 'Authorization: Bearer <GATEWAY_TOKEN>' with every request."
        )


async def _refuse(scope: Scope, send: Send, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    error = NotAuthenticatedError(detail)
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _client(settings: Settings, metrics: observability.Metrics) -> httpx.AsyncClient:
    timeout = httpx.Timeout(
        connect=settings.bk_connect_timeout_s,
        read=settings.bk_read_timeout_s,
        write=settings.bk_read_timeout_s,
        pool=settings.bk_connect_timeout_s,
    )
    mounts: dict[str, httpx.AsyncBaseTransport | None] | None = None
    if settings.bk_proxies:
        mounts = {
            f"{scheme}://": httpx.AsyncHTTPTransport(proxy=url, verify=settings.ssl_verify())
            for scheme, url in settings.bk_proxies.items()
        }
    return observability.MeasuredClient(
        metrics, timeout=timeout, verify=settings.ssl_verify(), mounts=mounts, trust_env=True
    )


def create_app(settings: Settings) -> FastAPI:
    """The gateway for `settings`."""
    metrics = observability.Metrics.create(lambda: getattr(app.state, "gateway", None))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        data_dir = settings.gateway_data_dir
        tmp_dir, cache_dir = data_dir / "tmp", data_dir / "cache"
        for folder in (tmp_dir, cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        await to_thread.run_sync(_clear, tmp_dir)
        embedded: EmbeddedAggregator | None = None
        credentials = from_settings(settings)
        host = settings.bk_host
        if host is None:
            embedded = EmbeddedAggregator(settings)
            await to_thread.run_sync(embedded.start)
            host = embedded.url
            credentials = credentials or embedded.credentials()
            log.warning("offline: no BK_HOST set, using the embedded local aggregator at %s", host)
        retry = RetryPolicy(max_retries=settings.bk_max_retries)
        async with _client(settings, metrics) as client:
            session_ = Session(
                auto.connector(settings.bk_dialect, client, host, retry),
                host,
                settings.bk_run_check_interval_s,
                offline=embedded is not None,
            )
            if credentials is not None:
                try:
                    await session_.login(credentials)
                except GatewayError as exc:
                    session_.adopt(credentials)
                    log.warning(
                        "upstream not reachable at start-up (%s); retrying on demand", exc.detail
                    )
            event_log = await to_thread.run_sync(
                lambda: EventLog(
                    data_dir / "events.db",
                    settings.gateway_events_max_count,
                    settings.gateway_events_max_age_s,
                )
            )
            hub = EventHub(settings.gateway_sse_buffer)
            events = Events(event_log, hub)
            consumer = auto.channel(settings, session_, events)
            app.state.gateway = GatewayState(
                settings=settings,
                client=client,
                session=session_,
                tmp_dir=tmp_dir,
                cache_dir=cache_dir,
                embedded=embedded,
                events=events,
                consumer=consumer,
            )
            loop = asyncio.get_running_loop()
            app.state.stop_streams = lambda: loop.call_soon_threadsafe(hub.close)
            forget_token = logs.register_secret_source(  # log lines never show it
                lambda: session_.credentials.session_token if session_.credentials else None
            )
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(consumer.run)
                    group.start_soon(hub.run_keepalive, settings.gateway_sse_keepalive_s)
                    # Start-up objects live for the whole process: keep them out of every full
                    # collection, whose pauses would otherwise delay event fan-out.
                    gc.freeze()
                    yield
                    hub.close()
                    group.cancel_scope.cancel()
            finally:
                forget_token()
                event_log.close()
                if embedded is not None:
                    await to_thread.run_sync(embedded.stop)

    app = FastAPI(
        title="BranchKey Gateway",
        version=__version__,
        description="Federated learning on BranchKey for any trainer, over localhost HTTP.",
        lifespan=lifespan,
        responses=problem_responses(),
    )
    token = settings.gateway_token.get_secret_value() if settings.gateway_token else None
    app.add_middleware(RequireToken, token=token)
    add_exception_handlers(app)
    observability.count_problems(app, metrics)  # after every handler is registered
    app.state.metrics = metrics
    app.include_router(observability.router)
    app.include_router(session.router)
    app.include_router(uploads.router)
    app.include_router(events.router)  # before aggregations: /aggregations/latest is not an id
    app.include_router(aggregations.router)
    return app


def _clear(folder: Path) -> None:
    """Remove what an earlier process left in a scratch folder."""
    for leftover in folder.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
