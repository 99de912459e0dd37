"""BranchKey down, slow or failing: the trainer gets a 502/503/504/4xx problem and the gateway stays up."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.support.gateways import (
    Gateway,
    leaf_gateway,
)
from tests.support.http import check_problem
from tests.support.ports import free_port
from tests.support.servers import serve, started_upstream
from tests.support.weights import sdk_weights

CREDENTIALS = {
    "id": "leaf-x",
    "name": "leaf x",
    "session_token": "token-x",
    "tree_id": "tree-x",
    "branch_id": "branch-x",
}


@dataclass(frozen=True)
class Reply:
    """One scripted answer of the fake upload route."""

    status: int = 201
    body: dict[str, Any] = field(default_factory=lambda: {"data": {"file_id": "fake-file-1"}})
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class FakeUpstream:
    """A BranchKey stand-in: the run route always answers 'start'; uploads get the scripted replies."""

    replies: list[Reply]
    uploads: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> FastAPI:
        """The ASGI app."""
        app = started_upstream(CREDENTIALS["branch_id"])

        @app.post("/api/v1/file/upload")
        async def create_upload(request: Request) -> JSONResponse:
            body = await request.body()
            self.uploads.append((dict(request.headers), body))
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            if reply.delay_s:
                await anyio.sleep(reply.delay_s)
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)

        return app


@pytest.fixture
def weights(tmp_path: Path) -> bytes:
    """A small SDK-layout NPZ."""
    path = sdk_weights(tmp_path / "w.npz", 2.0, [np.arange(6, dtype=np.float32)])
    return path.read_bytes()


@contextlib.contextmanager
def _faked(tmp_path: Path, fake: FakeUpstream, **overrides: Any) -> Iterator[Gateway]:
    with (
        serve(fake.app()) as upstream,
        leaf_gateway(tmp_path, upstream, CREDENTIALS, **overrides) as gateway,
    ):
        yield gateway


def _upload(gateway: Gateway, weights: bytes) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.post(f"{gateway.url}/upload", files={"file": ("w.npz", weights)})


def _still_up(gateway: Gateway) -> None:
    with httpx.Client() as client:
        health = client.get(f"{gateway.url}/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert list(gateway.tmp_dir.iterdir()) == []


def test_unreachable_upstream_is_502_and_not_ready(tmp_path: Path, weights: bytes) -> None:
    """With BranchKey unreachable: upload 502 upstream-unavailable, /readyz 503, /healthz still 200."""
    with leaf_gateway(
        tmp_path, f"http://127.0.0.1:{free_port()}", CREDENTIALS, bk_connect_timeout_s=2
    ) as gw:
        check_problem(_upload(gw, weights), 502, "upstream-unavailable")
        with httpx.Client() as client:
            check_problem(client.get(f"{gw.url}/readyz"), 503, "not-ready")
            check_problem(client.get(f"{gw.url}/run"), 502, "upstream-unavailable")
            session = client.get(f"{gw.url}/session").json()
        assert session["state"] == "authenticated"
        assert session["leaf_id"] == CREDENTIALS["id"]
        _still_up(gw)


def test_slow_upstream_is_504(tmp_path: Path, weights: bytes) -> None:
    """An upload BranchKey does not answer within BK_READ_TIMEOUT_S gives a 504 upstream-timeout problem."""
    fake = FakeUpstream([Reply(delay_s=2.0)])
    with _faked(tmp_path, fake, bk_read_timeout_s=0.3) as gateway:
        began = time.monotonic()
        answer = _upload(gateway, weights)
        elapsed = time.monotonic() - began
        check_problem(answer, 504, "upstream-timeout")
        assert elapsed < 1.5
        assert len(fake.uploads) == 1
        _still_up(gateway)


def test_upstream_500_is_502(tmp_path: Path, weights: bytes) -> None:
    """BranchKey failing an upload with 500 gives a 502 upstream-unavailable problem carrying its status."""
    fake = FakeUpstream([Reply(500, {"error": "database on fire"})])
    with _faked(tmp_path, fake) as gateway:
        problem = check_problem(_upload(gateway, weights), 502, "upstream-unavailable")
        assert problem["upstream_status"] == 500
        assert "database on fire" in problem["detail"]
        assert len(fake.uploads) == 1
        _still_up(gateway)


def test_upstream_400_is_passed_through(tmp_path: Path, weights: bytes) -> None:
    """BranchKey refusing an upload with 400 {"error": "nope"} gives a 400 upstream-rejected problem with 'nope'."""
    fake = FakeUpstream([Reply(400, {"error": "nope"})])
    with _faked(tmp_path, fake) as gateway:
        problem = check_problem(_upload(gateway, weights), 400, "upstream-rejected")
        assert "nope" in problem["detail"]
        _still_up(gateway)


def test_upstream_503_with_retry_after_is_retried(tmp_path: Path, weights: bytes) -> None:
    """A 503 with Retry-After: 1 is retried after about a second, and the upload then succeeds."""
    fake = FakeUpstream(
        [Reply(503, {"error": "busy"}, {"Retry-After": "1"}), Reply()],
    )
    with _faked(tmp_path, fake, bk_max_retries=1) as gateway:
        began = time.monotonic()
        answer = _upload(gateway, weights)
        elapsed = time.monotonic() - began
        assert answer.status_code == 201, answer.text
        assert answer.json()["file_id"] == "fake-file-1"
        assert 1.0 <= elapsed < 5.0
        assert len(fake.uploads) == 2
        (first_headers, first), (_, second) = fake.uploads
        assert first == second
        assert weights in first
        assert first_headers["x-bk-file-size"] == str(len(weights))
        _still_up(gateway)
