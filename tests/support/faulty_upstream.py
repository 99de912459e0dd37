"""A BranchKey stand-in on a real loopback socket that misbehaves on cue: it hangs, trickles,
redirects, fails then recovers, asks to retry later, or dies in the middle of an upload."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Reply:
    """Answer at once with this status, JSON (or raw) body and headers."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        """The body bytes and the headers that go with them."""
        if self.raw is not None:
            return self.raw, {"Content-Type": "application/octet-stream", **self.headers}
        body = json.dumps(self.body if self.body is not None else {}).encode()
        return body, {"Content-Type": "application/json", **self.headers}


@dataclass(frozen=True)
class Redirect:
    """Answer `status` with `Location: location`."""

    location: str
    status: int = 302


@dataclass(frozen=True)
class Hang:
    """Read the request (its body too unless `read_body` is False: the sender's writes then
    block), then never answer; the connection stays open until the server stops."""

    read_body: bool = True


@dataclass(frozen=True)
class Trickle:
    """Send `reply`, head and body, one byte every `every_s` seconds."""

    reply: Reply
    every_s: float = 0.15


@dataclass(frozen=True)
class Paced:
    """Send `reply`'s head at once, then its body in `chunk`-byte pieces every `every_s` seconds."""

    reply: Reply
    chunk: int
    every_s: float


@dataclass(frozen=True)
class Die:
    """Read `after` bytes of the request body, then reset the connection without an answer."""

    after: int = 0


Fault = Reply | Redirect | Hang | Trickle | Paced | Die


@dataclass(frozen=True)
class Seen:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    """Lower-cased names."""
    body: bytes
    complete: bool
    """The whole body (per Content-Length) arrived (False also for a request its sender cut)."""


class FaultyUpstream:
    """Scripted answers per `METHOD /path`: each request takes the next fault of its route's list
    (the last one repeats); unscripted routes answer 404. Every request is recorded in `seen`."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[Fault]] = {}
        self.seen: list[Seen] = []
        self.url = ""
        self._lock = threading.Lock()
        self._writers: list[asyncio.StreamWriter] = []
        self._arriving: dict[str, int] = {}

    def on(self, method: str, path: str, *faults: Fault) -> None:
        """Script the answers to `method path`, in order."""
        self.scripts[f"{method} {path}"] = list(faults)

    def requests(self, method: str, path: str) -> list[Seen]:
        """The requests that came for `method path`."""
        with self._lock:
            return [s for s in self.seen if s.method == method and s.path == path]

    def arriving(self, method: str, path: str) -> int:
        """Body bytes of the newest `method path` request received so far (while it arrives)."""
        with self._lock:
            return self._arriving.get(f"{method} {path}", 0)

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve on a free loopback port in a thread; yield the base URL."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop = asyncio.Event()

        async def main() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            started.set()
            await stop.wait()
            server.close()
            handlers = asyncio.all_tasks() - {asyncio.current_task()}
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            for writer in self._writers:
                writer.close()
            await server.wait_closed()
            await asyncio.sleep(0.05)  # let the closed transports finish closing

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        try:
            assert started.wait(START_TIMEOUT_S), "the faulty upstream did not start"
            yield self.url
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(START_TIMEOUT_S)
            loop.close()

    def _next(self, method: str, path: str) -> Fault:
        with self._lock:
            faults = self.scripts.get(f"{method} {path}")
            if not faults:
                return Reply(404, {"error": f"no route {method} {path}"})
            return faults.pop(0) if len(faults) > 1 else faults[0]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with suppress(ConnectionError, RuntimeError):
                writer.close()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = {}
        for item in lines:
            if item:
                name, _, value = item.partition(":")
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        fault = self._next(method, path)
        size = int(headers.get("content-length", "0"))
        with self._lock:
            self._arriving[f"{method} {path}"] = 0
        wanted = size
        if isinstance(fault, Die):
            wanted = min(fault.after, size)
        elif isinstance(fault, Hang) and not fault.read_body:
            wanted = 0
        body = bytearray()
        try:
            while len(body) < wanted:
                piece = await reader.read(min(1 << 16, wanted - len(body)))
                if not piece:
                    return  # the sender cut the request
                body += piece
                with self._lock:
                    self._arriving[f"{method} {path}"] = len(body)
        finally:
            with self._lock:
                self.seen.append(Seen(method, path, headers, bytes(body), len(body) == size))
        if isinstance(fault, Die):
            writer.transport.abort()
            return
        if isinstance(fault, Hang):
            await asyncio.Event().wait()
        if isinstance(fault, Redirect):
            fault = Reply(fault.status, {}, {"Location": fault.location})
        reply = fault.reply if isinstance(fault, Trickle | Paced) else fault
        assert isinstance(reply, Reply)  # every other fault has returned
        data, extra = reply.encoded()
        status = f"HTTP/1.1 {reply.status} Scripted\r\n"
        fields = {**extra, "Content-Length": str(len(data)), "Connection": "close"}
        head_bytes = (
            status + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        ).encode()
        if isinstance(fault, Trickle):
            for byte in head_bytes + data:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(fault.every_s)
        elif isinstance(fault, Paced):
            writer.write(head_bytes)
            for start in range(0, len(data), fault.chunk):
                await asyncio.sleep(fault.every_s)
                writer.write(data[start : start + fault.chunk])
                await writer.drain()
        else:
            writer.write(head_bytes + data)
        await writer.drain()
