"""The upstream client's direct body read: a blob's bytes exactly, straight from the connection
when the answer has a length, through httpx otherwise, and a cut or silent connection an error."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse

from gateway.settings import Settings
from gateway.upstream.client import DIRECT_READ_BYTES, DirectBody, direct_body, upstream_client
from tests.support.faulty_upstream import Cut, FaultyUpstream, Paced, Reply
from tests.support.servers import serve

BLOB = np.random.default_rng(5).bytes(3 * DIRECT_READ_BYTES + 12345)
"""Larger than a read, and not a multiple of one."""


def _read(
    url: str,
    check: Callable[[httpx.Response], None] = lambda _: None,
    method: str = "GET",
    **settings: Any,
) -> bytes:
    """Ask `url` with the gateway's upstream client and read the body through `direct_body`."""

    async def main() -> bytes:
        config = Settings(_env_file=None, **settings)
        async with (
            upstream_client(config, lambda *_: None) as client,
            client.stream(method, url) as response,
        ):
            check(response)
            response.stream = direct_body(response)
            return b"".join([chunk async for chunk in response.aiter_raw()])

    return anyio.run(main)


def _is_direct(response: httpx.Response) -> None:
    assert isinstance(direct_body(response), DirectBody)


@pytest.mark.parametrize("size", [0, 100, len(BLOB)], ids=["empty", "small", "large"])
def test_a_blob_with_a_length_is_read_byte_for_byte_from_its_connection(size: int) -> None:
    """Bodies that fit the first read and bodies of several reads arrive exactly, read by
    `DirectBody` (the answer declares its length)."""
    fake = FaultyUpstream()
    fake.on("GET", "/blob", Reply(200, raw=BLOB[:size]))
    with fake.running() as url:
        assert _read(f"{url}/blob", _is_direct) == BLOB[:size]


def test_a_blob_arriving_in_pieces_is_read_whole() -> None:
    """A body sent in 64 KiB pieces with pauses between them is read whole, piece by piece."""
    fake = FaultyUpstream()
    fake.on("GET", "/blob", Paced(Reply(200, raw=BLOB[:300_000]), chunk=64 * 1024, every_s=0.01))
    with fake.running() as url:
        assert _read(f"{url}/blob", _is_direct) == BLOB[:300_000]


@pytest.mark.parametrize("after", [1000, 2 * DIRECT_READ_BYTES], ids=["first-read", "later"])
def test_a_blob_cut_short_is_an_error_never_a_shorter_file(after: int) -> None:
    """A connection closed before the declared length is httpx's RemoteProtocolError, whether it
    ends within what came with the headers or later."""
    fake = FaultyUpstream()
    fake.on("GET", "/blob", Cut(Reply(200, raw=BLOB), after=after))
    with fake.running() as url, pytest.raises(httpx.RemoteProtocolError):
        _read(f"{url}/blob", _is_direct)


def test_a_silent_connection_is_a_read_timeout() -> None:
    """A blob host that stops sending mid-body is cut by the client's read timeout, as httpx's
    ReadTimeout, the same error as through h11."""
    fake = FaultyUpstream()
    fake.on("GET", "/blob", Cut(Reply(200, raw=BLOB), after=100_000, hang=True))
    with fake.running() as url, pytest.raises(httpx.ReadTimeout):
        _read(f"{url}/blob", _is_direct, bk_read_timeout_s=0.3)


def test_an_answer_without_a_length_is_read_through_httpx() -> None:
    """A chunked answer (no Content-Length) keeps httpx's own stream: it alone knows where a
    chunked body ends."""
    app = FastAPI()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, 200_000, 50_000):
            yield BLOB[start : start + 50_000]

    @app.get("/blob")
    async def blob() -> StreamingResponse:
        return StreamingResponse(pieces(), media_type="application/octet-stream")

    def chunked(response: httpx.Response) -> None:
        assert response.headers["transfer-encoding"] == "chunked"
        assert direct_body(response) is response.stream

    with serve(app) as url:
        assert _read(f"{url}/blob", chunked) == BLOB[:200_000]


def test_an_answer_with_a_length_but_no_body_ends_at_once() -> None:
    """A HEAD answer declares the GET's length but has no body: h11 knows, so nothing is read
    from the connection (which would wait for bytes that never come)."""
    app = FastAPI()

    @app.api_route("/blob", methods=["GET", "HEAD"])
    async def blob() -> Response:
        return Response(BLOB[:5000], media_type="application/octet-stream")

    def declared(response: httpx.Response) -> None:
        assert response.headers["content-length"] == "5000"
        assert isinstance(direct_body(response), DirectBody)

    with serve(app) as url:
        assert _read(f"{url}/blob", declared, method="HEAD", bk_read_timeout_s=5.0) == b""
