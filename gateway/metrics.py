"""Prometheus metrics of one gateway app, fed small typed facts (it knows nothing of the app's state)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import get_args

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from gateway.upstream.channel import ChannelState

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
class LiveFacts:
    """What the running gateway reports at scrape time."""

    channel_state: ChannelState
    channel_reconnects: int
    sse_subscribers: int
    events_retained: int | None
    """None when the event log cannot be read (closed at shutdown)."""


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
    def create(cls, live: Callable[[], LiveFacts | None]) -> Metrics:
        """Metrics of one app; `live()` (None before start-up) is asked at every scrape."""
        registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        registry.register(_LiveCollector(live))
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

    def record_problem(self, method: str, route: str, problem_type: str) -> None:
        """Count a problem answered to an upload or a download, by its `type`."""
        counter = {_UPLOAD: self.upload_failures, _DOWNLOAD: self.download_failures}.get(
            (method, route)
        )
        if counter is not None:
            counter.labels(problem_type).inc()

    def encode(self, accept: str) -> tuple[bytes, str]:
        """The metrics in the format the scraper accepts (Prometheus text, or OpenMetrics), and its
        content type; blocking (run it in a worker thread)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def observe_upstream(self, url: httpx.URL, status: int | str, seconds: float) -> None:
        """One upstream request took `seconds`."""
        self.upstream_seconds.labels(upstream_route(url), str(status)).observe(seconds)


class _LiveCollector:
    """Values read from the running gateway at scrape time: the channel, SSE subscribers, the event log."""

    def __init__(self, live: Callable[[], LiveFacts | None]) -> None:
        self._live = live

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (for the registry's name check)."""
        return iter(_live_families())

    def collect(self) -> Iterator[Metric]:
        """The families with their current values."""
        channel, reconnects, subscribers, events = families = _live_families()
        facts = self._live()
        if facts is not None:
            for name in CHANNEL_STATES:
                channel.add_metric([name], 1.0 if facts.channel_state == name else 0.0)
            reconnects.add_metric([], facts.channel_reconnects)
            subscribers.add_metric([], facts.sse_subscribers)
            if facts.events_retained is not None:
                events.add_metric([], facts.events_retained)
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
