"""`read_multipart`: a request body fed to the parser while the writer stores the previous MiB."""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request

from gateway._io import FLUSH_BYTES, Digest
from gateway.multipart.model import Follow, FormData, MultipartError, MultipartLimits
from gateway.multipart.parser import BodyParser, Watch, parse_boundary
from gateway.multipart.sinks import BodyHash, Writer, discard


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
    other parts are UTF-8 fields kept in memory. Memory stays about 2 MiB whatever the file sizes:
    writes and hash updates run in a worker thread, ~1 MiB per call, while the next MiB is read. Raises
    `MultipartError` (400/413/415) as soon as a problem is seen, without reading the rest; on any
    failure, cancellation included, every temp file is deleted first. On success the caller owns the
    files and must delete (`FormData.cleanup`) or move them. `watch` may give a file part
    something fed its bytes beside the hash (in the writer's thread); `follow` a `Follower` that
    reads its file as it is written; `body_digest` is fed the whole body (in the writer's thread).
    """
    boundary = parse_boundary(request.headers.get("content-type"))
    parser = BodyParser(boundary, dest_dir, limits, frozenset(file_fields or ()), watch, follow)
    try:
        try:
            await _read_and_write(request, parser, body_digest)
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
                await anyio.to_thread.run_sync(discard, parser.sinks)
        except BaseException:
            # A repeated native asyncio cancel can break through the shield: finish here, blocking.
            discard(parser.sinks)
            raise
        raise
    return parser.form()


async def _read_and_write(request: Request, parser: BodyParser, body: Digest | None) -> None:
    """Feed the body to `parser`; its file writes overlap the reading of the next ~1 MiB."""
    writer = Writer()
    body_hash = BodyHash(body) if body is not None else None
    failure: BaseException | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        try:
            async with writer.send, contextlib.aclosing(request.stream()) as stream:
                pending = 0
                async for chunk in stream:
                    if body_hash is not None:
                        parser.ops.append((body_hash, memoryview(chunk)))
                    parser.feed(chunk)
                    pending += len(chunk)
                    # One worker-thread call per ~1 MiB, not per network chunk: far fewer thread hops.
                    if parser.ops and (pending >= FLUSH_BYTES or parser.ended):
                        ops, parser.ops, pending = parser.ops, [], 0
                        writer.check()
                        await writer.send.send(ops)
                    if parser.ended:
                        break
                if parser.ops:
                    ops, parser.ops = parser.ops, []
                    await writer.send.send(ops)
        except BaseException as exc:  # raised after the group, which would wrap it in a group
            failure = exc
            group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    writer.check()  # every batch is written once the group has ended
