"""`GET /metrics` against real servers: upload, download and upstream counters, the channel, failures by problem type."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.state import running_state
from tests.support.aggregator import ADMIN, Running, start
from tests.support.gateways import Gateway, gateway_settings, run_gateway, write_credentials
from tests.support.http import wait_for_aggregation, wait_ready
from tests.support.weights import sdk_weights

TOKEN = "observability-gateway-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_ROUTE = "/api/v1/file/upload"
ROUTE_TEMPLATES = {
    "/api/v1/run/{branch}",
    UPLOAD_ROUTE,
    "/api/v1/file/download/{file_id}",
    "/api/v1/ws/ticket",
    "/api/v1/performance/analysis",
    "{download_url}",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of `GET <url>/metrics`, keyed by (name, labels)."""
    answer = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value (None when the series does not exist)."""
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Running]:
    """An aggregator whose rounds complete with one upload."""
    with start(tmp_path / "agg", min_leaves=1) as running:
        yield running


@pytest.fixture
def gateway(aggregator: Running, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway for the aggregator's first leaf."""
    credentials = write_credentials(tmp_path / "leaf.json", aggregator.leaves[0])
    settings = gateway_settings(
        tmp_path / "gw", bk_host=aggregator.url, bk_credentials_file=credentials
    )
    with run_gateway(settings) as running:
        yield running


@pytest.fixture
def weights(tmp_path: Path) -> bytes:
    """A small SDK-layout NPZ."""
    layers: list[np.ndarray[Any, Any]] = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(5)]
    return sdk_weights(tmp_path / "w.npz", 8.0, layers).read_bytes()


def test_metrics_after_an_upload_and_a_download(
    aggregator: Running, gateway: Gateway, weights: bytes
) -> None:
    """/metrics counts the upload and downloads with their bytes, times the upload upstream (201), and shows the channel state, open SSE streams and the event log size."""
    url = gateway.url
    wait_ready(url)
    with httpx.Client(timeout=30) as client:
        uploaded = client.post(f"{url}/upload", files={"file": ("w.npz", weights)})
        assert uploaded.status_code == 201, uploaded.text
        aggregation_id = wait_for_aggregation(aggregator.url, ADMIN, client)["aggregation_id"]
        announced = client.get(f"{url}/aggregations", params={"after": 0, "wait": 20}).json()
        assert [event["aggregation_id"] for event in announced] == [aggregation_id]
        model = client.get(f"{url}/aggregations/{aggregation_id}")
        assert model.status_code == 200
        part = client.get(f"{url}/aggregations/{aggregation_id}", headers={"Range": "bytes=0-9"})
        assert part.status_code == 206
        assert client.head(f"{url}/aggregations/{aggregation_id}").status_code == 200

        with client.stream("GET", f"{url}/events") as events:
            chunks = events.iter_raw()  # kept: dropping the iterator would close the stream
            assert next(chunks).startswith(b"retry:")  # the stream is open: it has subscribed
            open_stream = scrape(url)
        deadline = time.monotonic() + 10
        while value(scrape(url), "gateway_sse_subscribers") != 0:
            assert time.monotonic() < deadline, "the closed stream still counts as a subscriber"
            time.sleep(0.05)

    assert value(open_stream, "gateway_uploads_total") == 1
    assert value(open_stream, "gateway_upload_bytes_total") == uploaded.json()["size"]
    assert value(open_stream, "gateway_downloads_total") == 2  # whole and range; not the HEAD
    assert value(open_stream, "gateway_download_bytes_total") == len(model.content) + 10
    upload = {"route": UPLOAD_ROUTE, "status": "201"}
    assert value(open_stream, "gateway_upstream_request_duration_seconds_count", **upload) == 1
    assert value(open_stream, "gateway_upstream_request_duration_seconds_sum", **upload)
    routes = {
        dict(labels)["route"]
        for name, labels in open_stream
        if name == "gateway_upstream_request_duration_seconds_count"
    }
    assert routes <= ROUTE_TEMPLATES, routes  # templates, never ids
    assert "/api/v1/file/download/{file_id}" in routes
    assert value(open_stream, "gateway_notification_channel_state", state="connected") == 1
    assert value(open_stream, "gateway_notification_channel_state", state="down") == 0
    assert value(open_stream, "gateway_notification_channel_reconnects_total") == 0
    assert value(open_stream, "gateway_sse_subscribers") == 1
    retained = running_state(gateway.app).events.log.count()
    assert retained >= 1
    assert value(open_stream, "gateway_event_log_events") == retained


def test_refused_requests_count_as_failures_by_problem_type(gateway: Gateway) -> None:
    """A refused upload and a download of an unknown id are counted under their problem types."""
    url = gateway.url
    with httpx.Client(timeout=30) as client:
        refused = client.post(
            f"{url}/upload",
            content=b"these bytes are not weights",
            headers={"Content-Type": "application/octet-stream"},
        )
        assert refused.status_code == 422, refused.text
        kind = refused.json()["type"]
        assert kind.startswith("/problems/weights/")
        missing = client.get(f"{url}/aggregations/no-such-aggregation")
        assert missing.status_code == 404
        assert missing.json()["type"] == "/problems/not-found"
    samples = scrape(url)
    assert value(samples, "gateway_upload_failures_total", type=kind) == 1
    assert value(samples, "gateway_uploads_total") == 0
    assert value(samples, "gateway_download_failures_total", type="/problems/not-found") == 1
    assert value(samples, "gateway_downloads_total") == 0
    upstream_404 = {"route": "/api/v1/file/download/{file_id}", "status": "404"}
    assert value(samples, "gateway_upstream_request_duration_seconds_count", **upstream_404) == 1


def test_metrics_need_the_gateway_token(aggregator: Running, tmp_path: Path) -> None:
    """With GATEWAY_TOKEN set, /metrics answers 401 without it and the metrics with it."""
    credentials = write_credentials(tmp_path / "leaf.json", aggregator.leaves[0])
    settings = gateway_settings(
        tmp_path / "gw",
        bk_host=aggregator.url,
        bk_credentials_file=credentials,
        gateway_token=TOKEN,
    )
    with run_gateway(settings) as guarded:
        refused = httpx.get(f"{guarded.url}/metrics")
        assert refused.status_code == 401
        assert refused.json()["type"] == "/problems/unauthorized"
        wrong = httpx.get(f"{guarded.url}/metrics", headers={"Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
        assert value(scrape(guarded.url, BEARER), "gateway_uploads_total") == 0


def test_openmetrics_when_the_scraper_asks_for_it(gateway: Gateway) -> None:
    """A scraper that accepts OpenMetrics gets it (content negotiation of prometheus-client)."""
    answer = httpx.get(
        f"{gateway.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")
