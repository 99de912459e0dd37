"""The bounded httptools protocol both servers run: 431 above the header bound, slow heads closed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import socket
import time
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gateway.http_limits import bounded_http_options, tune_allocator
from tests.support.servers import serve

BOUND = 16 * 1024
TIMEOUT_S = 1.0


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"headers {len(request.headers)}")


async def _sink(request: Request) -> PlainTextResponse:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return PlainTextResponse(f"body {size}")


async def _digest(request: Request) -> PlainTextResponse:
    digest = hashlib.sha256()
    async for chunk in request.stream():
        assert type(chunk) is bytes
        digest.update(chunk)
    return PlainTextResponse(digest.hexdigest())


APP = Starlette(
    routes=[
        Route("/", _hello),
        Route("/sink", _sink, methods=["POST"]),
        Route("/digest", _digest, methods=["POST"]),
    ]
)


@contextlib.contextmanager
def bounded_server() -> Iterator[tuple[str, int]]:
    """The test app behind the bounded protocol (16 KiB, 1 s); yields its host and port."""
    with serve(APP, **bounded_http_options(BOUND, TIMEOUT_S)) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def head(size: int, *, close: bool = True) -> bytes:
    """A GET request whose head (request line, headers, blank line) is exactly `size` bytes."""
    connection = b"close" if close else b"keep-alive"
    start = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: " + connection + b"\r\nx-pad: "
    end = b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def exchange(address: tuple[str, int], *chunks: bytes, pause_s: float = 0.0) -> bytes:
    """Send `chunks` (pausing between them) on a new connection; return all it answers until closed."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause_s)
        answer = b""
        with contextlib.suppress(ConnectionError):
            while data := sock.recv(65536):
                answer += data
        return answer


def test_a_head_at_the_bound_is_served() -> None:
    """A request whose head is exactly 16 KiB gets its 200."""
    with bounded_server() as address:
        answer = exchange(address, head(BOUND))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


def test_a_head_over_the_bound_in_one_write_gets_431() -> None:
    """A 16 KiB + 1 head sent at once (which httptools alone accepts) gets 431 and the connection closes."""
    with bounded_server() as address:
        answer = exchange(address, head(BOUND + 1))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


def test_a_huge_head_sent_in_pieces_gets_431_early() -> None:
    """Headers trickling in past 16 KiB get 431 (not a 400, and not after megabytes are buffered)."""
    with bounded_server() as address:
        request = head(1024 * 1024)
        pieces = [request[i : i + 4096] for i in range(0, len(request), 4096)]
        answer = exchange(address, *pieces)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


def test_slowloris_connections_are_closed_and_others_still_served() -> None:
    """30 connections sending a header byte every 0.2 s (and 10 silent ones) are all closed within 1 s + slack."""
    with bounded_server() as address:
        slow = [socket.create_connection(address, timeout=5) for _ in range(40)]
        try:
            started = time.monotonic()
            for sock in slow[:30]:
                sock.sendall(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            closed: set[int] = set()
            while len(closed) < len(slow) and time.monotonic() - started < 5:
                for index, sock in enumerate(slow):
                    if index in closed:
                        continue
                    try:
                        if index < 30:
                            sock.sendall(b"x")
                        sock.setblocking(False)
                        if sock.recv(1) == b"":
                            closed.add(index)
                    except BlockingIOError:
                        pass
                    except ConnectionError:
                        closed.add(index)
                    finally:
                        sock.setblocking(True)
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            assert exchange(address, head(200)).startswith(b"HTTP/1.1 200 ")
        finally:
            for sock in slow:
                sock.close()
    assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow connections still open"
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 2.5


def test_a_keep_alive_connection_serves_its_next_request() -> None:
    """An idle keep-alive connection outlives the head timeout and serves its next request."""
    with bounded_server() as address:
        answer = exchange(address, head(100, close=False), head(100), pause_s=TIMEOUT_S * 1.5)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer


def upload(size: int, *, pad: int = 0, close: bool = True) -> bytes:
    """A POST /sink request with a `size`-byte body (of blank lines, as if more heads) and a `pad`-byte header."""
    connection = b"close" if close else b"keep-alive"
    return (
        b"POST /sink HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: " + connection + b"\r\n"
        b"x-pad: "
        + b"a" * pad
        + b"\r\ncontent-length: "
        + str(size).encode()
        + b"\r\n\r\n"
        + b"\r\n" * (size // 2)
    )


def test_a_large_body_straddling_the_head_is_not_counted() -> None:
    """A 5 MB body sent in odd pieces (the first holding the 15 KiB head and body bytes) is served, not refused."""
    request = upload(5_000_000, pad=15 * 1024)
    with bounded_server() as address:
        pieces = [request[i : i + 20_000] for i in range(0, len(request), 20_000)]
        answer = exchange(address, *pieces)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    assert answer.endswith(b"body 5000000"), answer[-100:]


def test_pipelined_requests_with_large_bodies_are_served() -> None:
    """Two 5 MB uploads and a GET on one keep-alive connection, sent as one stream, all get 200."""
    stream = upload(5_000_000, pad=15 * 1024, close=False) + upload(
        5_000_000, pad=15 * 1024, close=False
    )
    stream += head(15 * 1024)
    with bounded_server() as address:
        pieces = [stream[i : i + 65_537] for i in range(0, len(stream), 65_537)]
        answer = exchange(address, *pieces)
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer[-300:]
    assert answer.count(b"body 5000000") == 2, answer[-300:]


def test_a_pipelined_head_over_the_bound_after_a_body_gets_431() -> None:
    """A head over 16 KiB arriving in the same write as the previous request's body end is counted: 431."""
    stream = upload(1000, close=False) + head(BOUND + 1)
    with bounded_server() as address:
        answer = exchange(address, stream)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    assert b"HTTP/1.1 431 " in answer, answer[-200:]


def test_the_servers_options_tune_glibcs_allocator_once() -> None:
    """Under glibc both mallopt calls succeed, once per process, when a server's options are built."""
    bounded_http_options(16 * 1024, 10.0)
    assert tune_allocator.cache_info().currsize == 1
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert tune_allocator() is True


def test_a_body_in_many_reads_reaches_the_app_whole_and_in_order() -> None:
    """The parser's chunks handed over as they are (not via a bytearray) still make the exact body,
    also when the app reads more slowly than they arrive; the next request on the connection works."""
    body = os.urandom(5 * 1024 * 1024 + 17)
    request = (
        b"POST /digest HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
    )
    pieces = [request + body[:1000]]
    pieces += [body[i : i + 300_000] for i in range(1000, len(body), 300_000)]
    pieces[-1] += head(200)
    with bounded_server() as address:
        answer = exchange(address, *pieces)
    assert answer.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(body).hexdigest().encode() in answer
    assert answer.count(b"HTTP/1.1 200") == 2
