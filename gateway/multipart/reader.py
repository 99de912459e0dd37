"""`read_multipart`: a request body fed to the parser while writer and hasher threads take the previous MiBs."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request

from gateway._io import FLUSH_BYTES, BatchThread, Digest
from gateway.multipart.model import Follow, FormData, MultipartError, MultipartLimits
from gateway.multipart.parser import BodyParser, Watch, parse_boundary
from gateway.multipart.sinks import BodyHash, Op, digest, discard, store


async def read_multipart(
    request: Request,
    dest_dir: Path,
    limits: MultipartLimits,
    *,
    file_fields: Collection[str] | None = None,
    watch: Watch | None = None,
    follow: Follow | None = None,
    body_digest: Digest | None = None,
) -> FormData:
    """Stream a multipart/form-data body into temp files under `dest_dir`, hashing as bytes arrive.

    A part is a file if its Content-Disposition has a filename or its name is in `file_fields`;
    other parts are UTF-8 fields kept in memory. Memory stays about 5 MiB whatever the file sizes:
    writes and hash updates run in two threads of the upload's own (a writer, a hasher), ~1 MiB per
    batch and at most `WRITE_DEPTH` batches queued, while the next MiB is read. Raises `MultipartError` (400/413/415)
    as soon as a problem is seen, without reading the rest; on any failure, cancellation included,
    the writer thread has stopped and every temp file is deleted first. On success the caller owns
    the files and must delete (`FormData.cleanup`) or move them. `watch` may give a file part
    something fed its bytes beside the hash (in the writer's thread); `follow` a `Follower` that
    reads its file as it is written; `body_digest` is fed the whole body (in the writer's thread).
    """
    boundary = parse_boundary(request.headers.get("content-type"))
    parser = BodyParser(boundary, dest_dir, limits, frozenset(file_fields or ()), watch, follow)
    writer: BatchThread[list[Op]] = BatchThread(store)
    hasher: BatchThread[list[Op]] = BatchThread(digest)
    try:
        try:
            await _read_and_write(request, parser, (writer, hasher), body_digest)
        except ClientDisconnect:
            raise MultipartError(
                400, "The client disconnected before the form was complete; retry the upload."
            ) from None
        if not parser.ended:
            raise MultipartError(
                400, "The body ended before the closing multipart boundary; resend the whole form."
            )
    except BaseException:
        parser.ops.clear()
        # Shielded so that a cancelled request still removes its files before the cancellation goes on.
        try:
            with anyio.CancelScope(shield=True):
                await writer.close(drop=True)
                await hasher.close(drop=True)
                await anyio.to_thread.run_sync(discard, parser.sinks)
        except BaseException:
            # A repeated native asyncio cancel can break through the shield: finish here, blocking.
            writer.stop()
            hasher.stop()
            discard(parser.sinks)
            raise
        raise
    return parser.form()


async def _read_and_write(
    request: Request,
    parser: BodyParser,
    threads: tuple[BatchThread[list[Op]], BatchThread[list[Op]]],
    body: Digest | None,
) -> None:
    """Feed the body to `parser`; the writer and the hasher threads take each ~1 MiB while the
    next is read."""
    body_hash = BodyHash(body) if body is not None else None
    async with contextlib.aclosing(request.stream()) as stream:
        pending = 0
        async for chunk in stream:
            if body_hash is not None:
                parser.ops.append((body_hash, memoryview(chunk)))
            parser.feed(chunk)
            pending += len(chunk)
            # One batch per ~1 MiB, not per network chunk: far fewer hand-overs to the threads.
            if parser.ops and (pending >= FLUSH_BYTES or parser.ended):
                ops, parser.ops, pending = parser.ops, [], 0
                for thread in threads:
                    await thread.put(ops)
            if parser.ended:
                break
        if parser.ops:
            for thread in threads:
                await thread.put(parser.ops)
            parser.ops = []
    for thread in threads:
        await thread.close()  # every batch is written and hashed, or the first failure is raised
