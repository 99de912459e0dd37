"""Benchmark: what the transfer bound (`gateway/upstream/pacing.py`) costs on loopback.

    python bench/pacing.py [--size 256MiB] [--repeat 3]

A local asyncio server serves a blob of `--size` zero bytes (1 MiB writes) and swallows uploads.
Interleaved (alternating which goes first), `--repeat` times each, it measures
  download  (a) a plain httpx stream (`client.stream`, `aiter_bytes`): the baseline,
            (b) `Transport.blob` (the paced stream: one bounded wait per chunk);
  upload    (c) a plain httpx POST of the file as an async iterator of 1 MiB reads: the baseline,
            (d) `Transport.post_file` (the paced multipart body).
It prints the median MiB/s of each and the paced / plain ratio of the same run; it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx
from pydantic import ByteSize, TypeAdapter

from gateway.upstream.policy import Policy
from gateway.upstream.protocol import Outgoing
from gateway.upstream.transport import Transport

_MIB = 1 << 20


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    method = head.split(b" ", 1)[0]
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while length > 0:
        length -= len(await reader.read(min(length, _MIB)))
    if method == b"POST":
        body = b'{"data": {"file_id": "f"}}'
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        chunk = bytes(_MIB)
        for start in range(0, size, _MIB):
            writer.write(chunk[: min(_MIB, size - start)])
            await writer.drain()
    await writer.drain()
    writer.close()


async def _timed(action: Callable[[], Awaitable[None]]) -> float:
    began = time.perf_counter()
    await action()
    return time.perf_counter() - began


async def main(size: int, repeat: int) -> None:
    """Run the four measurements and print the table."""
    server = await asyncio.start_server(lambda r, w: _serve(r, w, size), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.npz"
        with path.open("wb") as stream:
            stream.truncate(size)
        outgoing = Outgoing(path, size, bytes(32), "federated_learning", "w.npz")
        async with httpx.AsyncClient(timeout=60) as client:
            transport = Transport(client, Policy())

            async def plain_download() -> None:
                async with client.stream("GET", f"{url}/blob") as response:
                    async for _ in response.aiter_bytes():
                        pass

            async def paced_download() -> None:
                async with transport.blob(f"{url}/blob") as response:
                    async for _ in response.aiter_bytes():
                        pass

            async def chunks() -> AsyncIterator[bytes]:
                async with await anyio.open_file(path, "rb") as stream:
                    while chunk := await stream.read(_MIB):
                        yield chunk

            async def plain_upload() -> None:
                headers = {"Content-Length": str(size)}
                response = await client.post(f"{url}/upload", content=chunks(), headers=headers)
                assert response.status_code == 201  # noqa: S101 - a broken run must not print numbers

            async def paced_upload() -> None:
                await transport.post_file(f"{url}/upload", {}, "{}", outgoing, resend=False)

            runs: dict[str, list[float]] = {name: [] for name in ("a", "b", "c", "d")}
            for turn in range(repeat):  # alternate which goes first, so drift favours neither
                order = ("a", "b", "c", "d") if turn % 2 == 0 else ("b", "a", "d", "c")
                actions = {
                    "a": plain_download,
                    "b": paced_download,
                    "c": plain_upload,
                    "d": paced_upload,
                }
                for name in order:
                    runs[name].append(await _timed(actions[name]))
    server.close()
    rate = {name: size / _MIB / statistics.median(times) for name, times in runs.items()}
    print(f"{size / _MIB:.0f} MiB over loopback, median of {repeat}")
    print("| transfer | plain httpx MiB/s | paced MiB/s | paced / plain |")
    print("|---|---|---|---|")
    for label, plain, paced in (("download", "a", "b"), ("upload", "c", "d")):
        ratio = rate[paced] / rate[plain]
        print(f"| {label} | {rate[plain]:.0f} | {rate[paced]:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    size = int(TypeAdapter(ByteSize).validate_python(arguments.size))
    asyncio.run(main(size, arguments.repeat))
    sys.exit(0)
