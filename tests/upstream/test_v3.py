"""The v3 upstream client's error mapping and retries (httpx.MockTransport: unit tests of mapping only)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest

from gateway import __version__
from gateway.errors import (
    GatewayError,
    NotFoundError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.settings import Settings
from gateway.upstream.client import upstream_client
from gateway.upstream.credentials import Credentials
from gateway.upstream.policy import Policy, RetryPolicy
from gateway.upstream.protocol import WeightsFile
from gateway.upstream.v3 import V3Upstream
from gateway.weights import ValidationPolicy

CREDS = Credentials(
    id="leaf-1", name="leaf", session_token="tok:en", tree_id="t", branch_id="b", owner_id="o"
)
FAST = Policy(retry=RetryPolicy(max_retries=2, backoff_s=0.01, max_delay_s=0.05))

Handler = Callable[[httpx.Request], httpx.Response]


def call_run(handler: Handler, policy: Policy = FAST) -> tuple[object, list[httpx.Request]]:
    """Run the run-status call against `handler`; return its result (or the error) and the requests seen."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    async def main() -> object:
        async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
            try:
                return await V3Upstream(client, "https://bk.example/", CREDS, policy).run()
            except GatewayError as error:
                return error

    return anyio.run(main), seen


def test_headers_and_url_like_the_official_client() -> None:
    """Bearer id:token (not base64), LEAF: true, accept JSON, host trailing slash handled."""
    result, seen = call_run(
        lambda _: httpx.Response(200, json={"data": {"run_status": "start", "run_number": 4}})
    )
    assert getattr(result, "run_number", None) == 4
    request = seen[0]
    assert str(request.url) == "https://bk.example/api/v1/run/b"
    assert request.headers["authorization"] == "Bearer leaf-1:tok:en"
    assert request.headers["leaf"] == "true"
    assert request.headers["accept"] == "application/json"


@pytest.mark.parametrize(
    ("status", "expected", "fragment"),
    [
        (400, UpstreamRejectedError, "bad thing"),
        (403, UpstreamRejectedError, "bad thing"),
        (404, NotFoundError, "bad thing"),
        (413, UpstreamRejectedError, "bad thing"),
    ],
)
def test_status_mapping_keeps_the_upstream_error_text(
    status: int, expected: type[GatewayError], fragment: str
) -> None:
    """4xx pass through with BranchKey's `error` sentence, and are not retried (a 413 without
    Retry-After included)."""
    result, seen = call_run(lambda _: httpx.Response(status, json={"error": "bad thing"}))
    assert isinstance(result, expected)
    assert fragment in result.detail
    assert len(seen) == 1  # none of these is retried
    if isinstance(result, UpstreamRejectedError):
        assert result.body()["status"] == status


def test_retries_honour_retry_after_then_succeed() -> None:
    """503 with Retry-After and 429 are retried; the third answer is used."""
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "0"}),
            httpx.Response(429),
            httpx.Response(200, json={"data": {"run_status": "stop", "run_number": 1}}),
        ]
    )
    result, seen = call_run(lambda _: next(answers))
    assert getattr(result, "run_status", None) == "stop"
    assert len(seen) == 3


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retries_are_bounded(status: int) -> None:
    """Each status the official client retries is retried max_retries times, then reported with
    the upstream's text (5xx as 502)."""
    result, seen = call_run(lambda _: httpx.Response(status, text="<html>bad gateway</html>"))
    assert isinstance(result, GatewayError)
    assert "bad gateway" in result.detail
    assert len(seen) == 3


def test_a_413_with_retry_after_is_retried() -> None:
    """413 becomes retryable when it carries Retry-After (urllib3's rule the client inherits)."""
    answers = iter(
        [
            httpx.Response(413, headers={"Retry-After": "0"}, json={"error": "later"}),
            httpx.Response(200, json={"data": {"run_status": "start", "run_number": 2}}),
        ]
    )
    result, seen = call_run(lambda _: next(answers))
    assert getattr(result, "run_number", None) == 2
    assert len(seen) == 2


def test_transport_errors_map_to_502_and_504() -> None:
    """Connection failures become 502, timeouts 504, after the retries (an idempotent GET is
    repeated after a read timeout too)."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    refused, seen = call_run(refuse)
    assert isinstance(refused, UpstreamUnavailableError)
    assert len(seen) == 3
    timed_out, seen = call_run(slow)
    assert isinstance(timed_out, UpstreamTimeoutError)
    assert len(seen) == 3


def test_retry_after_http_date_and_caps() -> None:
    """Retry-After may be seconds or an HTTP date; waits are capped; without it the client's
    backoff: 0 s, 2 s, 4 s."""
    policy = RetryPolicy(max_retries=3, backoff_s=1.0, max_delay_s=10.0)
    assert policy.delay(1, "3") == 3.0
    assert policy.delay(1, "999") == 10.0
    assert policy.delay(1, "Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert [policy.delay(n, None) for n in (1, 2, 3)] == [0.0, 2.0, 4.0]
    assert policy.delay(2, "soon") == 2.0


def test_upload_body_is_the_clients_multipart(tmp_path: Path) -> None:
    """The upload streams data then file parts with integrity headers and an exact Content-Length."""
    payload = tmp_path / "w.npz"
    payload.write_bytes(b"PK" + b"x" * 5000)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return httpx.Response(201, json={"data": {"file_id": "f-1"}})

    async def main() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            upstream = V3Upstream(client, "https://bk.example", CREDS, FAST)
            npz = WeightsFile(payload, "federated_learning", 'we"ird\nname.npz', bytes(32))
            outgoing = await upstream.prepare(npz, tmp_path / "unused", ValidationPolicy())
            return (await upstream.upload(outgoing)).file_id

    assert anyio.run(main) == "f-1"
    request = seen[0]
    body = request.content
    assert int(request.headers["content-length"]) == len(body)
    assert request.headers["x-bk-file-size"] == "5002"
    assert request.headers["x-bk-file-digest"] == "sha256=" + "A" * 43 + "="
    assert body.index(b'name="data"') < body.index(b'name="file"; filename="weirdname.npz"')
    data = json.loads(body.split(b"\r\n\r\n", 1)[1].split(b"\r\n--", 1)[0])
    metadata = json.loads(data["metadata"])
    assert data["leaf_name"] == "leaf"
    assert metadata["file_size"] == 5002
    assert metadata["kind"] == "federated_learning"
    # the version of the client whose dialect is spoken; the gateway names itself in User-Agent
    assert metadata["client_version"] == "3.0.1"
    assert b"x" * 5000 in body


def test_the_ticket_call_carries_the_clients_headers() -> None:
    """`POST /api/v1/ws/ticket` with the headers the client's aiohttp call sends (captured from
    3.0.1): Bearer, accept JSON, LEAF, and an empty application/octet-stream body."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": {"ticket_id": "t-1", "request_id": "r-1"}})

    async def main() -> dict[str, object]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await V3Upstream(client, "https://bk.example", CREDS, FAST).ticket()

    assert anyio.run(main)["ticket_id"] == "t-1"
    [request] = seen
    assert (request.method, str(request.url)) == ("POST", "https://bk.example/api/v1/ws/ticket")
    assert request.headers["authorization"] == "Bearer leaf-1:tok:en"
    assert request.headers["accept"] == "application/json"
    assert request.headers["leaf"] == "true"
    assert request.headers["content-type"] == "application/octet-stream"
    assert request.headers["content-length"] == "0"
    assert request.content == b""


def test_the_gateway_names_itself_in_user_agent_only() -> None:
    """Every upstream request says `branchkey-gateway/<version>` in User-Agent; uploads say the
    client version whose dialect is spoken (3.0.1), see the multipart test above."""
    client = upstream_client(Settings(_env_file=None), lambda *_: None)
    request = client.build_request("GET", "https://bk.example/api/v1/run/b")
    assert request.headers["user-agent"] == f"branchkey-gateway/{__version__}"
    anyio.run(client.aclose)
