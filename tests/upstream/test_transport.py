"""The transport both dialects compose: the same retries, and each dialect's upload file and digest."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from gateway.errors import GatewayError, UpstreamTimeoutError
from gateway.upstream.credentials import Credentials
from gateway.upstream.policy import Policy, RetryPolicy
from gateway.upstream.protocol import Upstream, WeightsFile
from gateway.upstream.transport import Transport
from gateway.upstream.v1 import V1Upstream
from gateway.upstream.v3 import V3Upstream
from gateway.weights import ValidationPolicy
from gateway.weights.objectnpy import read_object_npy

CREDS = Credentials(id="leaf-1", name="leaf", session_token="tok", tree_id="t-1", branch_id="b-1")
FAST = Policy(retry=RetryPolicy(max_retries=2, backoff_s=0.01, max_delay_s=0.02))
IDS = {"user_id": "u-1", "tree_id": "t-1", "branch_id": "b-1"}
DIALECTS = [V3Upstream, V1Upstream]

Handler = Callable[[httpx.Request], httpx.Response]


def _talk(
    kind: Callable[..., Upstream],
    handler: Handler,
    action: Callable[[Upstream], Awaitable[Any]],
    policy: Policy = FAST,
) -> Any:
    """Run `action` on a `kind` upstream whose server is `handler` (which also answers v1's
    authenticate); return its result or the gateway error it raised."""

    def serve(request: httpx.Request) -> httpx.Response:
        request.read()
        if request.url.path == "/v1/leaf/authenticate":
            return httpx.Response(200, json={"data": IDS})
        return handler(request)

    async def main() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as client:
            try:
                return await action(kind(client, "https://bk.example", CREDS, policy))
            except GatewayError as error:
                return error

    return anyio.run(main)


@pytest.mark.parametrize("kind", DIALECTS)
def test_both_dialects_retry_the_same_statuses(kind: Callable[..., Upstream]) -> None:
    """A 503 then a 429 on the run call are retried by either dialect; the third answer is used."""
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "0"}),
            httpx.Response(429),
            httpx.Response(200, json={"data": {"run_status": "start", "run_number": 3}}),
        ]
    )
    runs: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        runs.append(request)
        return next(answers)

    info = _talk(kind, handle, lambda up: up.run())
    assert (info.run_status, info.run_number) == ("start", 3)
    assert len(runs) == 3


def test_transport_retries_connect_failures_up_to_the_policy() -> None:
    """A refused connection is tried 1 + max_retries times, then reported as a 502."""
    tries: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        tries.append(request)
        raise httpx.ConnectError("refused", request=request)

    async def main() -> GatewayError:
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
            transport = Transport(client, FAST)
            with pytest.raises(GatewayError) as caught:
                await transport.call_json("GET", "https://bk.example/x", {}, "the test call", 200)
            return caught.value

    error = anyio.run(main)
    assert error.status == 502
    assert len(tries) == 3


@pytest.mark.parametrize("kind", DIALECTS)
@pytest.mark.parametrize(("deduplicates", "posts"), [(False, 1), (True, 3)])
def test_a_lost_upload_answer_is_resent_only_where_the_upstream_deduplicates(
    kind: Callable[..., Upstream], deduplicates: bool, posts: int, tmp_path: Path
) -> None:
    """A read timeout after the whole upload was sent (its outcome unknown): posted once, unless
    the upstream deduplicates identical uploads (the local aggregator, BK_UPSTREAM_DEDUPLICATES);
    either way a 504 in the end."""
    npz = tmp_path / "w.npz"
    np.savez(npz, weighting=np.array(2), layer_0=np.ones(3, dtype=np.float32))
    seen: list[httpx.Request] = []

    def lose(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ReadTimeout("no answer", request=request)

    async def upload(up: Upstream) -> Any:
        weights = WeightsFile(npz, "federated_learning", "w.npz")
        return await up.upload(await up.prepare(weights, tmp_path / "out", ValidationPolicy()))

    policy = dataclasses.replace(FAST, resend_uploads=deduplicates)
    assert isinstance(_talk(kind, lose, upload, policy), UpstreamTimeoutError)
    assert len(seen) == posts


def _file_part(request: httpx.Request) -> bytes:
    boundary = request.headers["content-type"].split("boundary=")[1].encode()
    part = request.content.split(b"--" + boundary)[2]
    return part.split(b"\r\n\r\n", 1)[1][:-2]


def test_v1_upload_converts_and_reports_the_sent_file(tmp_path: Path) -> None:
    """v1 sends the object .npy it converted from the NPZ, and reports that file's sha256 and
    size (not the NPZ's); the scratch path it was given holds it."""
    npz = tmp_path / "w.npz"
    np.savez(npz, weighting=np.array(7), layer_0=np.arange(6, dtype=np.float32).reshape(2, 3))
    scratch = tmp_path / "converted"
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"data": {"file_id": "f-1"}})

    async def upload(up: Upstream) -> Any:
        weights = WeightsFile(npz, "federated_learning", "w.npz")
        return await up.upload(await up.prepare(weights, scratch, ValidationPolicy()))

    sent = _talk(V1Upstream, accept, upload)
    body = _file_part(seen[-1])
    assert sent.file_id == "f-1"
    assert (sent.size, sent.sha256) == (len(body), hashlib.sha256(body).digest())
    assert sent.sha256 != hashlib.sha256(npz.read_bytes()).digest()
    assert body == scratch.read_bytes()
    assert b'filename="w.npy"' in seen[-1].content
    assert read_object_npy(scratch, ValidationPolicy().limits).num_samples == 7


def test_v3_upload_sends_the_npz_and_reports_its_digest(tmp_path: Path) -> None:
    """v3 sends the NPZ itself: the reported sha256 and size, and the integrity headers, are the
    NPZ's (computed when the caller does not know them), and no scratch file is written."""
    npz = tmp_path / "w.npz"
    np.savez(npz, weighting=np.array(1.5), layer_0=np.ones(4, dtype=np.float32))
    content = npz.read_bytes()
    seen: list[httpx.Request] = []

    def accept(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"data": {"file_id": "f-3"}})

    async def upload(up: Upstream) -> Any:
        weights = WeightsFile(npz, "federated_learning", "w.npz")
        return await up.upload(await up.prepare(weights, tmp_path / "unused", ValidationPolicy()))

    sent = _talk(V3Upstream, accept, upload)
    assert (sent.size, sent.sha256) == (len(content), hashlib.sha256(content).digest())
    assert _file_part(seen[-1]) == content
    assert seen[-1].headers["x-bk-file-size"] == str(len(content))
    assert not (tmp_path / "unused").exists()
