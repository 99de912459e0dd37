"""uvicorn's httptools protocol with a bound on request heads (431 above a size, closed after a time), and the Host and Origin rules of both servers.

httptools (what uvicorn's `http="auto"` picks, and the fast one for multi-GB uploads) has no header
limit at all: it buffers header values without bound (100 MiB of headers reach the app), and a
pure-ASGI middleware sees headers only after they are parsed. So this subclass measures the head of
each request itself as the bytes arrive, before the parser sees them: from the start of a message to
its blank line, it answers 431 and closes above `max_header_bytes`, and closes a connection whose
head is not complete `header_timeout_s` after its first byte (or after the connection opened).
uvicorn has only a keep-alive timer, which any byte resets, so a slowloris client otherwise holds a
connection forever; an idle keep-alive connection between requests stays governed by that timer.

Where a head ends is found in the raw bytes (a blank line split across reads included); the chunk
is fed to the parser in two pieces there, so the body that follows a head in the same read is never
counted, and the parser's callbacks say whether the head really ended. A `Content-Length` body is
followed byte for byte, so a pipelined head arriving in the same read as the end of the previous
body is counted exactly; after a chunked body such a head is counted from the next read on (at most
one read, 256 KiB, more). Body chunks go straight to the parser: uploads pay nothing.

`bounded_http_options` also tunes glibc's allocator for streamed bodies (`tune_allocator`): every
read of a body makes a few 64 KiB-1 MiB bytes objects, and glibc by default serves them from fresh
mmap pages (or hands a freed heap top back to the kernel), so each chunk paid page faults; a
512 MiB upload spent about three times as long in the kernel as in copying its bytes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

_END_OF_HEAD = re.compile(rb"\n\r?\n")
_TOO_LARGE_BODY = b"Request header fields too large.\n"
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: " + str(len(_TOO_LARGE_BODY)).encode("ascii") + b"\r\n\r\n" + _TOO_LARGE_BODY
)
_logger = logging.getLogger(__name__)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` refusing request heads over `max_header_bytes` and slower than `header_timeout_s`."""

    max_header_bytes = 16 * 1024
    header_timeout_s = 10.0

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # between messages or inside a head: bytes arriving are head bytes
        self._head_bytes = 0  # of the current head, so far
        self._head_tail = b""  # its last bytes: a blank line may be split across reads
        self._body_left: int | None = None  # of a Content-Length body; None: chunked
        self._refused = False  # a head was too large: 431 once the requests before it are answered

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that sends nothing at all is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        while data:
            if self._in_head:
                data = self._head_received(data)
            elif self._body_left is not None and len(data) > self._body_left:
                # the end of this body and what follows it: feed them apart, to count a next head
                piece, data = data[: self._body_left], data[self._body_left :]
                self._feed(piece)
            else:
                self._feed(data)
                if self._in_head:  # a chunked body ended and a next head began in this read
                    self._head_tail = data[-3:]
                return
            if (
                self._refused
                or self.transport.is_closing()
                or self.transport.get_protocol() is not self
            ):
                return  # refused, a parse error (400), or upgraded to a WebSocket

    def _head_received(self, data: bytes) -> bytes:
        """Count and feed `data` up to the end of the head (if it is there); return the rest."""
        self._arm_header_timer()
        buffered = self._head_tail + data
        end = _END_OF_HEAD.search(buffered)
        size = len(data) if end is None else end.end() - len(self._head_tail)
        if self._head_bytes + size > self.max_header_bytes:
            self._refuse_head()
            return b""
        self._head_bytes += size
        self._head_tail = buffered[-3:] if end is None else b""
        piece, rest = (data, b"") if end is None else (data[:size], data[size:])
        self._feed(piece)
        return rest

    def _feed(self, piece: bytes) -> None:
        super().data_received(piece)

    def on_message_begin(self) -> None:
        self._arm_header_timer()  # also for a head that began in the read ending a chunked body
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_header_timer()
        self._body_left = _content_length(self.headers)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._body_left is not None:
            self._body_left -= len(body)
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        # As uvicorn's own on_body, but the parser's chunks are kept, not copied into a bytearray
        # that `receive` copies again: two copies of every upload byte less on the event loop.
        held: object = cycle.body
        if isinstance(held, _Chunks):
            pending = held
        else:  # the bytearray the cycle starts with, or `receive` left after taking the last
            pending = _Chunks(bytes(cycle.body))
            cycle.body = pending  # type: ignore[assignment]  # read only through len() and bytes()
        pending.append(body)
        if len(pending) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes, self._head_tail = True, 0, b""
        self._body_left = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refused and not self.pipeline and not self.transport.is_closing():
            self._send_431()

    def _refuse_head(self) -> None:
        self._disarm_header_timer()
        _logger.warning("Request headers over %d bytes refused (431).", self.max_header_bytes)
        self._refused = True
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            self.flow.pause_reading()  # answer the pipelined requests before it first, in order
        else:
            self._send_431()

    def _send_431(self) -> None:
        self.transport.write(_TOO_LARGE)
        self.transport.close()

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            self._arm_header_timer()  # reading is paused while a previous request is served
            return
        _logger.debug(
            "Closed a connection whose request head took over %ss.", self.header_timeout_s
        )
        self.transport.close()


class _Chunks:
    """Body bytes waiting for the app's next `receive`, as the parser gave them: `bytes()` of one
    chunk is that chunk itself, of several their join."""

    __slots__ = ("chunks", "size")

    def __init__(self, first: bytes) -> None:
        self.chunks = [first] if first else []
        self.size = len(first)

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body length the parser will follow: Content-Length, 0 without one, None when chunked."""
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
    return length


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
"""Allocations from this size on get pages of their own (glibc's default starts at 128 KiB)."""
TRIM_THRESHOLD = 16 << 20
"""Free memory at the top of a heap kept for the next chunks, up to this much (default 128 KiB)."""


@functools.cache
def tune_allocator() -> bool:
    """Serve body chunks (up to `MMAP_THRESHOLD`) from the heap and keep up to `TRIM_THRESHOLD` of
    it free between chunks (glibc's mallopt, process-wide, once); False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def bounded_http_options(max_header_bytes: int, header_timeout_s: float) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` that bound request heads (see the module docstring);
    tunes the allocator for streamed bodies too (`tune_allocator`)."""
    tune_allocator()
    protocol = type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes, "header_timeout_s": header_timeout_s},
    )
    return {"http": protocol}


__all__ = [
    "BoundedHttpToolsProtocol",
    "SingleHostOrigin",
    "bounded_http_options",
    "host_origin_problem",
    "tune_allocator",
]


class SingleHostOrigin:
    """Pure-ASGI middleware of both servers: a request with an ambiguous Host or Origin
    (`host_origin_problem`) is answered `refusal(problem)` (each server's own 400 body, sent with
    `Connection: close`), a WebSocket closed with 1008, before any route or other check reads
    them; `log` (if given) notes each refusal."""

    def __init__(
        self,
        app: ASGIApp,
        refusal: Callable[[str], ASGIApp],
        log: logging.Logger | None = None,
    ) -> None:
        self.app = app
        self.refusal = refusal
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = None
        if scope["type"] in ("http", "websocket"):
            problem = host_origin_problem(scope.get("headers") or ())
        if problem is None:
            await self.app(scope, receive, send)
            return
        if self.log is not None:
            self.log.info("%s refused: 400 /problems/bad-request: %s", scope["path"], problem)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
        else:
            await self.refusal(problem)(scope, receive, send)


def host_origin_problem(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request's Host or Origin cannot be trusted, or None: each at most once, and no userinfo.

    Two Host headers (or two Origins) let a check read one value and a proxy or router the other;
    `localhost:80@evil.example` looks like localhost to a naive parser but names evil.example.
    """
    seen: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name.lower() in (b"host", b"origin"):
            seen.setdefault(name.lower(), []).append(value)
    for name, values in seen.items():
        label = name.decode().capitalize()
        if len(values) > 1:
            example = "localhost:8000" if name == b"host" else "http://localhost:3000"
            return (
                f"The request has {len(values)} {label} headers; send exactly one "
                f"({label}: {example})."
            )
        shown = values[0][:100].decode("latin-1")
        if b"@" in values[0]:
            return (
                f"The Host header {shown!r} holds a user name ('@'): send only the host and "
                "port, e.g. 'localhost:8000'."
                if name == b"host"
                else f"The Origin header {shown!r} holds a user name ('@'); an Origin is "
                "scheme://host[:port], e.g. 'http://localhost:3000'."
            )
    return None
