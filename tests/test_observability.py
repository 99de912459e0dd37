"""`GET /metrics` against real servers, and log lines: JSON or text, with credentials, tokens and tickets redacted."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import log_handler, redact, register_secret
from gateway.state import running_state
from tests.support.aggregator import ADMIN, Running, start
from tests.support.gateways import Gateway, gateway_settings, run_gateway, write_credentials
from tests.support.http import wait_for_aggregation, wait_ready
from tests.support.ports import free_port
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


# --- logging -------------------------------------------------------------------------------------

REGISTERED = "registered-secret-6f1c2e"
LEAF_TOKEN = "leaf-session-token-93ab"
V1_TOKEN = "v1-leaf-token-7d20"
TICKET = "ticket-5e8a11"
REQUEST_ID = "request-id-0c44"
SIGNATURE = "signature-77aa"
NEVER_LOGGED = (REGISTERED, LEAF_TOKEN, V1_TOKEN, TICKET, REQUEST_ID, SIGNATURE, "dXNlcjpwYXNz")


def _records() -> list[logging.LogRecord]:
    """Records as the gateway, httpx and uvicorn would log them, each holding a secret."""

    def record(name: str, msg: str, *args: object, **extra: object) -> logging.LogRecord:
        made = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args or None, None)
        made.__dict__.update(extra)
        return made

    v3 = {"id": "leaf", "name": "n", "session_token": LEAF_TOKEN, "tree_id": "t", "branch_id": "b"}
    v1 = {"leaf_name": "n", "leaf_id": "leaf", "leaf_session_token": V1_TOKEN}
    try:
        raise RuntimeError(f"upstream said no to Bearer leaf:{LEAF_TOKEN}")
    except RuntimeError:
        failed = record("gateway", "request failed")
        failed.exc_info = sys.exc_info()
    return [
        record("gateway.upstream", "sending %s", {"Authorization": f"Bearer leaf:{LEAF_TOKEN}"}),
        record("gateway", "proxy auth: Basic dXNlcjpwYXNz"),
        record("gateway", "credentials file: %s", json.dumps(v3)),
        record("gateway", "v1 credentials: %s", json.dumps(v1)),
        record("gateway.session", "logged in with %s", REGISTERED),
        record(
            "uvicorn.error",
            '%s - "WebSocket %s" [accepted]',
            "127.0.0.1:50000",
            f"/api/v1/ws?ticket={TICKET}&request_id={REQUEST_ID}",
        ),
        record(
            "uvicorn.access",
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:50001",
            "GET",
            f"/api/v1/blob/f1?expires=1&signature={SIGNATURE}",
            "1.1",
            200,
        ),
        record("gateway", "download", url=f"https://blobs.example/f1?signature={SIGNATURE}"),
        failed,
    ]


def _emit(fmt: str) -> str:
    """What the gateway's handler writes for `_records()` in format `fmt`."""
    register_secret(REGISTERED)
    stream = io.StringIO()
    handler = log_handler(fmt, stream)
    for record in _records():
        handler.handle(record)
    return stream.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_are_redacted(fmt: str) -> None:
    """Bearer and Basic values, v1/v3 credentials, a registered secret, tickets and signatures never reach the log."""
    written = _emit(fmt)
    for secret in NEVER_LOGGED:
        assert secret not in written, (secret, written)
    assert "Bearer [redacted]" in written
    assert "Basic [redacted]" in written
    assert "ticket=[redacted]&request_id=[redacted]" in written
    assert "signature=[redacted]" in written
    assert "leaf_session_token" in written  # the key stays, so the reader knows what was there


def test_json_lines_are_one_object_each() -> None:
    """Every record is one line holding one JSON object with ts, level, logger and msg (tracebacks included)."""
    lines = _emit("json").splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == len(_records())
    for entry in entries:
        assert {"ts", "level", "logger", "msg"} <= entry.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
        assert entry["level"] == "INFO"
    access = next(entry for entry in entries if entry["logger"] == "uvicorn.access")
    assert access["method"] == "GET"
    assert access["path"] == "/api/v1/blob/f1?expires=1&signature=[redacted]"
    assert access["status"] == 200
    assert entries[-1]["exc"].startswith("Traceback")
    assert entries[-2]["url"] == "https://blobs.example/f1?signature=[redacted]"


def test_text_lines_carry_time_level_and_logger() -> None:
    """Text lines read `<ts> <LEVEL> <logger>: <msg>`, extra fields appended as key=value."""
    lines = _emit("text").splitlines()
    assert re.fullmatch(
        r"\S+Z INFO gateway\.upstream: sending \{'Authorization': 'Bearer \[redacted\]'\}", lines[0]
    )
    assert any(
        line.endswith('download url="https://blobs.example/f1?signature=[redacted]"')
        for line in lines
    )


def test_redact_keeps_ordinary_text() -> None:
    """Text without credentials is left as it is."""
    text = (
        'uploaded w.npz (411 bytes) to branch b-1; {"file_id": "f-1", "kind": "federated_learning"}'
    )
    assert redact(text) == text


def test_serve_writes_redacted_json_access_lines(aggregator: Running, tmp_path: Path) -> None:
    """`serve` with GATEWAY_LOG_FORMAT=json writes only JSON lines; the access line's query and the tokens are redacted."""
    leaf = aggregator.leaves[0]
    credentials = write_credentials(tmp_path / "leaf.json", leaf)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BK_", "GATEWAY_"))}
    env.update(
        GATEWAY_LOG_FORMAT="json",
        GATEWAY_TOKEN=TOKEN,
        GATEWAY_DATA_DIR=str(tmp_path / "gw"),
        BK_HOST=aggregator.url,
        BK_CREDENTIALS_FILE=str(credentials),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the gateway did not start"
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        answer = httpx.get(f"{url}/run", params={"ticket": TICKET}, headers=BEARER)
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{url}/metrics", headers=BEARER).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode in (0, 130), err  # 130: uvicorn re-raises the SIGINT it handled
    entries = [json.loads(line) for line in err.splitlines()]
    access = [entry for entry in entries if entry["logger"] == "uvicorn.access"]
    run = next(entry for entry in access if entry["path"].startswith("/run"))
    assert run["path"] == "/run?ticket=[redacted]"
    assert run["status"] == 200
    assert any(entry["path"] == "/metrics" for entry in access)
    for secret in (TOKEN, TICKET, leaf["session_token"]):
        assert secret not in out + err


def test_aggregator_redacts_websocket_tickets(tmp_path: Path) -> None:
    """The `aggregator` command's log shows a gateway's WebSocket URL with its ticket and request id redacted."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BK_", "GATEWAY_"))}
    env.update(GATEWAY_LOG_FORMAT="json", BK_AGGREGATOR_ADMIN_TOKEN=ADMIN)
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "aggregator", "--port", str(port), "--data-dir", "agg"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        leaves = tmp_path / "agg" / "leaves.json"
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the aggregator did not start"
            time.sleep(0.1)
            if not leaves.exists():
                continue
            leaf = json.loads(leaves.read_text())[0]
            auth = {"Authorization": f"Bearer {leaf['id']}:{leaf['session_token']}"}
            try:
                run = httpx.get(f"{url}/api/v1/run/{leaf['branch_id']}", headers=auth)
            except httpx.TransportError:
                continue
            if run.status_code == 200:
                break
        credentials = write_credentials(tmp_path / "leaf.json", leaf)
        settings = gateway_settings(tmp_path / "gw", bk_host=url, bk_credentials_file=credentials)
        with run_gateway(settings) as gateway:
            wait_ready(gateway.url)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    entries = [json.loads(line) for line in err.splitlines()]
    accepted = [entry["msg"] for entry in entries if "WebSocket /api/v1/ws" in entry["msg"]]
    assert accepted, err
    assert all("ws?ticket=[redacted]&request_id=[redacted]" in msg for msg in accepted), accepted
    assert not re.search(r"ticket=(?!\[redacted\])", err)
    assert ADMIN not in err
    assert leaf["session_token"] not in out + err
