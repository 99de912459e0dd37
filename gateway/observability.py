"""Observability: Prometheus metrics (one registry per app) and structured log lines with secrets redacted."""

from __future__ import annotations

import contextlib
import inspect
import json
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, get_args

import anyio
import httpx
from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from starlette.types import Message, Receive, Scope, Send

from gateway.dependencies import GatewayState
from gateway.errors import PROBLEM_JSON
from gateway.upstream.channel import ChannelState

# --- metrics -------------------------------------------------------------------------------------

UPSTREAM_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds. Up to minutes: a multi-GB upload is a single request (BK_READ_TIMEOUT_S is 120 s)."""

CHANNEL_STATES: tuple[str, ...] = get_args(ChannelState)

_UPLOAD = ("POST", "/upload")
_DOWNLOAD = ("GET", "/aggregations/{aggregation_id}")

_UPSTREAM_ROUTES = tuple(
    (re.compile(pattern + "$"), template)
    for pattern, template in (
        (r"/api/v1/run/[^/]+", "/api/v1/run/{branch}"),
        (r"/api/v1/file/upload", "/api/v1/file/upload"),
        (r"/api/v1/file/download/[^/]+", "/api/v1/file/download/{file_id}"),
        (r"/api/v1/performance/analysis", "/api/v1/performance/analysis"),
        (r"/api/v1/ws/ticket", "/api/v1/ws/ticket"),
    )
)


def upstream_route(url: httpx.URL) -> str:
    """The route template of an upstream URL (never an id, so the label's values stay few)."""
    for pattern, template in _UPSTREAM_ROUTES:
        if pattern.search(url.path):
            return template
    if "/api/v1/" in url.path and "/api/v1/blob/" not in url.path:
        return "/api/v1/other"
    return "{download_url}"  # the signed blob URL BranchKey hands out (S3, or the local aggregator)


@dataclass(frozen=True)
class Metrics:
    """The gateway's metrics, in a registry of their own (tests run many apps in one process)."""

    registry: CollectorRegistry
    uploads: Counter
    upload_bytes: Counter
    upload_failures: Counter
    downloads: Counter
    download_bytes: Counter
    download_failures: Counter
    upstream_seconds: Histogram

    @classmethod
    def create(cls, state: Callable[[], GatewayState | None]) -> Metrics:
        """Metrics of one app; `state()` is its lifespan state (None before start-up), read at scrape time."""
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(_LiveCollector(state))
        return cls(
            registry=registry,
            uploads=Counter(
                "gateway_uploads", "Uploads forwarded to BranchKey.", registry=registry
            ),
            upload_bytes=Counter(
                "gateway_upload_bytes",
                "Bytes of the uploads forwarded to BranchKey (the NPZ as sent).",
                registry=registry,
            ),
            upload_failures=Counter(
                "gateway_upload_failures",
                "Uploads answered with a problem, by problem type.",
                ["type"],
                registry=registry,
            ),
            downloads=Counter(
                "gateway_downloads",
                "Aggregation downloads sent completely (GET, 200 or 206).",
                registry=registry,
            ),
            download_bytes=Counter(
                "gateway_download_bytes",
                "Body bytes of the aggregation downloads sent.",
                registry=registry,
            ),
            download_failures=Counter(
                "gateway_download_failures",
                "Aggregation downloads answered with a problem, by problem type.",
                ["type"],
                registry=registry,
            ),
            upstream_seconds=Histogram(
                "gateway_upstream_request_duration_seconds",
                "BranchKey requests (each retry on its own) until the answer's headers, by route template "
                "and HTTP status ('error' when no answer came).",
                ["route", "status"],
                buckets=UPSTREAM_BUCKETS,
                registry=registry,
            ),
        )

    def record_upload(self, size: int) -> None:
        """An upload of `size` bytes reached BranchKey."""
        self.uploads.inc()
        self.upload_bytes.inc(size)

    def record_download(self, size: int) -> None:
        """A download response of `size` body bytes was sent."""
        self.downloads.inc()
        self.download_bytes.inc(size)

    def record_problem(self, scope: Scope, response: Response) -> None:
        """Count a problem+json answer to an upload or a download by its `type`."""
        if scope.get("type") != "http" or response.media_type != PROBLEM_JSON:
            return
        route = (str(scope.get("method")), str(getattr(scope.get("route"), "path", "")))
        counter = {_UPLOAD: self.upload_failures, _DOWNLOAD: self.download_failures}.get(route)
        if counter is None:
            return
        try:
            kind = str(json.loads(bytes(response.body))["type"])
        except (ValueError, KeyError, TypeError):
            kind = "unknown"
        counter.labels(kind).inc()

    def observe_upstream(self, url: httpx.URL, status: int | str, seconds: float) -> None:
        """One upstream request took `seconds`."""
        self.upstream_seconds.labels(upstream_route(url), str(status)).observe(seconds)


class _LiveCollector:
    """Values read from the running gateway at scrape time: the channel, SSE subscribers, the event log."""

    def __init__(self, state: Callable[[], GatewayState | None]) -> None:
        self._state = state

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (for the registry's name check)."""
        return iter(_live_families())

    def collect(self) -> Iterator[Metric]:
        """The families with their current values."""
        channel, reconnects, subscribers, events = families = _live_families()
        state = self._state()
        if state is not None:
            status = state.consumer.status
            for name in CHANNEL_STATES:
                channel.add_metric([name], 1.0 if status.state == name else 0.0)
            reconnects.add_metric([], status.reconnects)
            subscribers.add_metric([], len(state.events.hub.subscribers))
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed: the app has shut down
                events.add_metric([], state.events.log.count())
        return iter(families)


def _live_families() -> tuple[
    GaugeMetricFamily, CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily
]:
    return (
        GaugeMetricFamily(
            "gateway_notification_channel_state",
            "1 for the notification channel's current state, 0 for the others.",
            labels=["state"],
        ),
        CounterMetricFamily(
            "gateway_notification_channel_reconnects",
            "Times the notification channel went down and was reconnected.",
        ),
        GaugeMetricFamily("gateway_sse_subscribers", "Open /events streams."),
        GaugeMetricFamily("gateway_event_log_events", "Events retained in the event log."),
    )


def current_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    metrics: Metrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[Metrics, Depends(current_metrics)]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def get_metrics(request: Request, metrics: MetricsDep) -> Response:
    """The metrics in the Prometheus text format (OpenMetrics when the scraper asks for it)."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    body = await to_thread.run_sync(encode, metrics.registry)  # the event log count is a query
    return Response(body, media_type=content_type)


def count_problems(app: FastAPI, metrics: Metrics) -> None:
    """Count the problems answered to uploads and downloads: wraps every registered exception handler."""
    for key, handler in list(app.exception_handlers.items()):
        app.exception_handlers[key] = _counting(handler, metrics)


def _counting(
    handler: Callable[[Request, Any], Response | Awaitable[Response]], metrics: Metrics
) -> Callable[[Request, Any], Awaitable[Any]]:
    async def counted(request: Request, exc: Any) -> Any:
        result: object
        if inspect.iscoroutinefunction(handler):
            result = handler(request, exc)
        else:
            result = await to_thread.run_sync(handler, request, exc)
        response = await result if inspect.isawaitable(result) else result
        if isinstance(response, Response):
            metrics.record_problem(request.scope, response)
        return response

    return counted


class MeasuredClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` that times every request into the upstream latency histogram."""

    def __init__(self, metrics: Metrics, **options: Any) -> None:
        super().__init__(**options)
        self.metrics = metrics

    async def send(self, request: httpx.Request, **options: Any) -> httpx.Response:
        """Send `request`, recording its route template, status and duration."""
        started = time.perf_counter()
        try:
            response = await super().send(request, **options)
        except Exception:
            self.metrics.observe_upstream(request.url, "error", time.perf_counter() - started)
            raise
        self.metrics.observe_upstream(
            request.url, response.status_code, time.perf_counter() - started
        )
        return response


class MeteredFileResponse(FileResponse):
    """A `FileResponse` that reports the body bytes it sent once it sent them all (not for HEAD)."""

    # Models are hundreds of MiB: 1 MiB reads cost one worker-thread hop each instead of sixteen.
    chunk_size = 1024 * 1024

    def __init__(
        self,
        *args: Any,
        on_sent: Callable[[int], None],
        cleanup: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_sent = on_sent
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the file, counting the body bytes."""
        sent = 0

        async def counting(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.pathsend":
                sent += int(self.headers.get("content-length", "0"))
            await send(message)

        try:
            await super().__call__(scope, receive, counting)
        finally:
            # Also after a refused Range (400/416), where FileResponse skips its background task.
            if self.cleanup is not None:
                await anyio.to_thread.run_sync(self.cleanup)
        if scope.get("method") != "HEAD":
            self.on_sent(sent)
