"""The v1 upstream client's wire format (§3.3, §3.4), recorded with httpx.MockTransport."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from gateway.errors import (
    GatewayError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.upstream.credentials import Credentials
from gateway.upstream.policy import Policy, RetryPolicy
from gateway.upstream.protocol import Outgoing, WeightsFile
from gateway.upstream.v1 import V1_METADATA, V1Upstream
from gateway.weights import ValidationPolicy, npz_to_object_npy
from gateway.weights.objectnpy import read_object_npy

CREDS = Credentials(
    id="leaf-1", name="leaf one", session_token="tok:en", tree_id="", branch_id="", owner_id=""
)
FAST = Policy(retry=RetryPolicy(max_retries=1, backoff_s=0.01, max_delay_s=0.02))
IDS = {"user_id": "u-1", "tree_id": "t-1", "branch_id": "b-1"}
BASIC = "Basic " + base64.b64encode(b"leaf-1:tok:en").decode()


def _server(seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    """A v1 server: authenticate, run, upload, download, metrics."""

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        path = request.url.path
        if path == "/v1/leaf/authenticate":
            return httpx.Response(200, json={"data": IDS})
        if path == "/v1/branch/b-1/run":
            return httpx.Response(200, json={"data": {"run_status": "start", "run_number": 2}})
        if path == "/v1/file/upload":
            return httpx.Response(201, json={"data": {"file_id": "f-1"}})
        if path == "/v1/file/download/agg-1":
            return httpx.Response(200, json={"data": {"download_url": "https://blob.example/x"}})
        if path == "/v1/performance/analysis":
            return httpx.Response(201, json={"data": {}})
        return httpx.Response(404, json={"error": f"no route {path}"})

    return handle


def _talk(
    handler: Callable[[httpx.Request], httpx.Response],
    action: Callable[[V1Upstream], Awaitable[Any]],
) -> Any:
    async def main() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            upstream = V1Upstream(client, "https://api.example/", CREDS, FAST)
            try:
                return await action(upstream)
            except GatewayError as error:
                return error

    return anyio.run(main)


def test_authenticate_then_run_with_basic_auth_and_the_leaf_header() -> None:
    """The first call authenticates (Basic id:token) and takes tree/branch/user from it; the run call
    carries `leaf: true` and the authenticate call does not."""
    seen: list[httpx.Request] = []
    info = _talk(_server(seen), lambda up: up.run())
    assert (info.run_status, info.run_number) == ("start", 2)
    assert [r.url.path for r in seen] == ["/v1/leaf/authenticate", "/v1/branch/b-1/run"]
    for request in seen:
        assert request.headers["authorization"] == BASIC
        assert request.headers["accept"] == "application/json"
    assert "leaf" not in seen[0].headers
    assert seen[1].headers["leaf"] == "true"


def test_upload_is_the_clients_multipart_without_integrity_headers(tmp_path: Path) -> None:
    """Parts `data` (leaf_name + the fixed non-JSON metadata string) then `file` (name.npy), neither
    with its own Content-Type; no x-bk-* headers; the body is the file's bytes exactly."""
    npz = tmp_path / "w.npz"
    np.savez(npz, weighting=np.array(7), layer_0=np.arange(6, dtype=np.float32).reshape(2, 3))
    npy = tmp_path / "w.npy"
    npz_to_object_npy(npz, npy, ValidationPolicy())
    content = npy.read_bytes()
    seen: list[httpx.Request] = []

    async def upload(up: V1Upstream) -> str:
        await up.authenticate()
        npz_file = WeightsFile(npz, "federated_learning", "w.npz")
        outgoing = await up.prepare(npz_file, tmp_path / "sent.npy", ValidationPolicy())
        return (await up.upload(outgoing)).file_id

    assert _talk(_server(seen), upload) == "f-1"
    request = seen[-1]
    assert request.url.path == "/v1/file/upload"
    assert not any(name.startswith("x-bk") for name in request.headers)
    assert request.headers["authorization"] == BASIC
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    body = request.content
    assert int(request.headers["content-length"]) == len(body)
    parts = body.split(b"--" + boundary)
    assert parts[0] == b""
    assert parts[-1] == b"--\r\n"
    data_head, data_value = parts[1].split(b"\r\n\r\n", 1)
    assert data_head == b'\r\nContent-Disposition: form-data; name="data"'
    assert json.loads(data_value[:-2]) == {"leaf_name": "leaf one", "metadata": V1_METADATA}
    file_head, file_value = parts[2].split(b"\r\n\r\n", 1)
    assert file_head == b'\r\nContent-Disposition: form-data; name="file"; filename="w.npy"'
    assert file_value[:-2] == content
    parsed = read_object_npy(npy, ValidationPolicy().limits)
    assert parsed.num_samples == 7


def test_download_and_metrics_as_the_v1_client_sends_them() -> None:
    """Download asks with `accept: */*S` (the client's typo) and returns the blob URL; metrics are
    JSON text without a Content-Type, with the authenticated tree and branch, 201 expected."""
    seen: list[httpx.Request] = []

    async def both(up: V1Upstream) -> str:
        url = await up.download_url("agg-1")
        await up.send_metrics("agg-1", "test", {"accuracy": 0.9})
        return url

    assert _talk(_server(seen), both) == "https://blob.example/x"
    download = next(r for r in seen if r.url.path == "/v1/file/download/agg-1")
    assert download.headers["accept"] == "*/*S"
    metrics = seen[-1]
    assert metrics.url.path == "/v1/performance/analysis"
    assert "content-type" not in metrics.headers
    assert json.loads(metrics.content) == {
        "mode": "test",
        "aggregation_id": "agg-1",
        "leaf_id": "leaf-1",
        "branch_id": "b-1",
        "tree_id": "t-1",
        "data": json.dumps({"accuracy": 0.9}),
    }


@pytest.mark.parametrize(
    ("response", "expected", "fragment"),
    [
        (httpx.Response(401, json={"error": "bad token"}), UpstreamRejectedError, "bad token"),
        (httpx.Response(200, json={"data": {"tree_id": "t"}}), UpstreamUnavailableError, "lacks"),
    ],
)
def test_authenticate_failures_are_explained(
    response: httpx.Response, expected: type[GatewayError], fragment: str
) -> None:
    """A refused login passes BranchKey's sentence through; an answer without the ids is a 502."""
    result = _talk(lambda _: response, lambda up: up.authenticate())
    assert isinstance(result, expected)
    assert fragment in result.detail


def test_a_v1_upload_is_not_resent_after_a_read_timeout(tmp_path: Path) -> None:
    """A v1 server may count a resent upload twice in a round: a timed-out answer is a 504 after
    exactly one POST (v3 resends, its service deduplicates)."""
    npy = tmp_path / "w.npy"
    npy.write_bytes(b"\x93NUMPY")
    posts: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/file/upload":
            posts.append(request)
            raise httpx.ReadTimeout("no answer", request=request)
        return _server([])(request)

    async def upload(up: V1Upstream) -> str:
        outgoing = Outgoing(npy, 6, bytes(32), "federated_learning", "w.npy")
        return (await up.upload(outgoing)).file_id

    result = _talk(handle, upload)
    assert isinstance(result, UpstreamTimeoutError)
    assert len(posts) == 1
