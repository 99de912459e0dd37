"""Log lines (gateway/logs.py): JSON or text, with credentials, tokens, tickets and signatures redacted."""

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
from pathlib import Path

import httpx
import pytest

from gateway.logs import log_handler, redact, register_secret
from tests.support.aggregator import ADMIN, Running, ready_leaves
from tests.support.gateways import gateway_settings, run_gateway, write_credentials
from tests.support.http import wait_ready
from tests.support.ports import free_port

TOKEN = "logs-gateway-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}

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
    """`serve` with GATEWAY_LOG_FORMAT=json writes only JSON lines; the access line's query (a ticket,
    an ?access_token=) and the tokens are redacted."""
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
        access_token = httpx.post(f"{url}/access", headers=BEARER).json()["access_token"]
        signed = httpx.get(f"{url}/session", params={"access_token": access_token})
        assert signed.status_code == 200, signed.text
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
    assert any(entry["path"] == "/session?access_token=[redacted]" for entry in access), access
    for secret in (TOKEN, TICKET, leaf["session_token"], access_token):
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
        leaf = ready_leaves(port, tmp_path / "agg" / "leaves.json")[0]
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
