"""Minimal streaming sinks, the baselines of bench/transfer.py's upload rows: they read a request body and discard it.

    python bench/sink.py PORT            # (s)  an asyncio protocol on uvloop (asyncio without it)
    python bench/sink.py PORT --asgi     # (s2) plain uvicorn (its defaults) + a bare ASGI app

(s) parses nothing but the request head: it counts `Content-Length` bytes as the event loop hands
them over (each read is dropped at once), answers `100 Continue` to `Expect: 100-continue`, then
`201` with the byte count, and closes the connection. (s2) is what a server framework costs on top:
uvicorn with `http="auto"` (httptools) and `loop="auto"` (uvloop), an app that awaits every
`http.request` message and answers the same 201. Neither writes, hashes or validates anything.
Stop them with SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

MAX_HEAD = 64 * 1024
"""Bytes of request head the raw sink reads before it gives up (431)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _answer(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode("ascii") + body


class RawSink(asyncio.Protocol):
    """One connection: the head, then `Content-Length` bytes dropped as they arrive, then 201."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.left: int | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP server's transport (uvloop's is not an asyncio.Transport subclass, only alike).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.left is None:
            self._head_received(data)
        else:
            self.left -= len(data)
            self.received += len(data)
        if self.left is not None and self.left <= 0:
            self._finish("201 Created", b"%d\n" % self.received)

    def _head_received(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                self._finish("431 Request Header Fields Too Large", b"")
            return
        length: int | None = None
        for line in bytes(self.head[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"expect" and value.lower() == b"100-continue" and self.transport:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if length is None:
            self._finish("411 Length Required", b"")
            return
        rest = len(self.head) - end - 4
        self.head = bytearray()
        self.received = rest
        self.left = length - rest

    def _finish(self, status: str, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_answer(status, body))
            self.transport.close()


async def serve_raw(port: int) -> None:
    """Serve `RawSink` on 127.0.0.1:`port` until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawSink, "127.0.0.1", port)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An ASGI app that reads every body message and answers 201 with the byte count."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"%d\n" % received
    headers = [(b"content-length", str(len(body)).encode("ascii"))]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("port", type=int)
    parser.add_argument("--asgi", action="store_true", help="plain uvicorn + a bare ASGI app")
    args = parser.parse_args(argv)
    if args.asgi:
        import uvicorn

        config = uvicorn.Config(bare_app, host="127.0.0.1", port=args.port, log_level="warning")
        server = uvicorn.Server(config)
        server.run()
        return 0
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_raw(args.port))
    else:
        uvloop.run(serve_raw(args.port))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
