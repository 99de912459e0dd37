"""Observability: Prometheus metrics (one registry per app) and structured log lines with secrets redacted."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TextIO, get_args

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
from gateway.upstream.consumer import ChannelState

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


# --- logging -------------------------------------------------------------------------------------


REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6
"""Shorter registered secrets are ignored: replacing every 'abc' would garble the log, not protect it."""

_SENSITIVE_NAMES = (
    r"[\w-]*(?:token|password|passwd|secret|signature)|ticket(?:_id)?|request_id|api[_-]?key"
)
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)(?!\[redacted\])[^\s\"',;}\])\\]+")
_PAIR = re.compile(
    r"(?i)(?P<key>(?<![\w-])(?:" + _SENSITIVE_NAMES + r")(?:\\?[\"']\s*:|\s*=)\s*)"
    r"(?:(?P<quote>\\?[\"'])(?P<quoted>.*?)(?P=quote)"
    r"|(?P<bare>(?!\[redacted\])[^\s&,;\"'}\])\\]+))"
)

_lock = threading.Lock()
_secrets: set[str] = set()
_sources: dict[object, Callable[[], str | None]] = {}


def register_secret(value: str | None) -> None:
    """Redact `value` wherever it appears in a log line from now on (logging is process-wide)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def register_secret_source(source: Callable[[], str | None]) -> Callable[[], None]:
    """Redact whatever `source()` returns when a line is logged (a session's current token).

    Returns the function that unregisters it.
    """
    key = object()
    with _lock:
        _sources[key] = source

    def unregister() -> None:
        with _lock:
            _sources.pop(key, None)

    return unregister


def redact(text: str) -> str:
    """`text` without credentials: Bearer/Basic values, token/password/ticket/signature values, secrets."""
    for secret in _current_secrets():
        text = text.replace(secret, REDACTED)
    text = _SCHEME.sub(lambda m: f"{m[1]}{m[2]}{REDACTED}", text)
    return _PAIR.sub(_redact_pair, text)


def _current_secrets() -> list[str]:
    with _lock:
        found, sources = set(_secrets), list(_sources.values())
    for source in sources:
        value = source()
        if value and len(value) >= MIN_SECRET_LENGTH:
            found.add(value)
    return sorted(found, key=len, reverse=True)  # a secret containing another goes first


def _redact_pair(match: re.Match[str]) -> str:
    if match["quote"] is not None:
        return f"{match['key']}{match['quote']}{REDACTED}{match['quote']}"
    return f"{match['key']}{REDACTED}"


_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of the message with terminal colour codes
}
ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
"""What an access log line carries as fields (uvicorn's access record arguments, in order)."""


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class RedactFilter(logging.Filter):
    """Redacts every record (message, arguments, extra fields, traceback) before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record, rewritten."""
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            for name, value in zip(ACCESS_FIELDS, args, strict=True):
                setattr(record, name, redact(value) if isinstance(value, str) else value)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that do not fit the format
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message), None
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <msg> key=value ...` (an access line's fields are already its message)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a text line (and its traceback below it)."""
        fields = "".join(
            f" {key}={json.dumps(value, default=str, ensure_ascii=False)}"
            for key, value in _extras(record).items()
            if key not in ACCESS_FIELDS
        )
        line = (
            f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}{fields}"
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


_HANDLER_NAME = "gateway-observability"


def log_handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing `fmt` ("json" or "text") lines to `stream` (stderr), secrets redacted."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter())
    return handler


def configure_logging(fmt: str, level: int = logging.INFO) -> None:
    """Send every log line, uvicorn's access and error lines included, through one redacting handler.

    Run uvicorn with `log_config=None` afterwards, so that it keeps this configuration.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    handler = log_handler(fmt)
    handler.set_name(_HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every URL, signed ones too
