"""An upload sent on to BranchKey while it arrives (cut-through), when the trainer told its digest."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio
from anyio.abc import TaskGroup
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers

from gateway._io import Growth
from gateway.digests import ClaimedDigest
from gateway.receiving import npz_name
from gateway.upstream.protocol import Outgoing, Sent
from gateway.upstream.transport import safe_filename
from gateway.weights import LEARNING

log = logging.getLogger("gateway.upload")

BeforeSend = Callable[[], Awaitable[object]]
Send = Callable[[Outgoing], Awaitable[Sent]]


class Relay:
    """Follows the `file` of one upload and sends it to BranchKey while it is written to disk.

    It starts once the file's size is known: the raw body's Content-Length, the part's own
    Content-Length, or a multipart body's length less what precedes the part and the closing
    delimiter after it (the part is taken to be the last one; `carries` finds out). The upload
    goes with the digest the trainer claimed and the kind of a learning upload; its last byte is
    held until `finish()`, so BranchKey cannot complete a file the gateway has not checked.
    `cancel()` cuts the request (BranchKey sees an incomplete body and stores nothing).
    """

    def __init__(
        self,
        group: TaskGroup,
        send: Send,
        headers: Headers,
        path: Path,
        limit: int,
        before_send: BeforeSend | None = None,
    ) -> None:
        self._group = group
        self._send_file = send
        self._claim: ClaimedDigest | None = None
        self.path = path
        """Where the followed file is written."""
        self._limit = limit
        self._before_send = before_send
        length = headers.get("content-length", "")
        self._body_size = int(length) if length.isdigit() else None
        media, options = parse_options_header(headers.get("content-type"))
        boundary = options.get(b"boundary", b"") if media == b"multipart/form-data" else None
        self._closing = 0 if boundary is None else len(b"\r\n--" + boundary + b"--\r\n")
        self._followed = False
        self._size: int | None = None
        self._filename = "weights.npz"
        self.outgoing: Outgoing | None = None
        """What is being sent (None: not started)."""
        self.growth: Growth | None = None
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._sent: Sent | None = None
        self._error: Exception | None = None
        self.failed = False
        """The request failed before it could be completed (the upload then goes the usual way)."""

    def follow(self, headers: Mapping[bytes, bytes], claim: ClaimedDigest) -> Relay | None:
        """The receive's `FollowFile` hook: this relay for the upload's file (`headers`: its
        part's, none for a raw body), whose digest the trainer claimed."""
        if self._followed:
            return None
        self._claim, self._followed = claim, True
        length = headers.get(b"content-length", b"")
        self._size = int(length) if length.isdigit() else None
        _, options = parse_options_header(headers.get(b"content-disposition"))
        if (filename := options.get(b"filename")) is not None:
            self._filename = filename.decode("utf-8", "replace")
        return self

    def begin(self, offset: int | None) -> None:
        """The file's data starts at `offset` of the body: start sending if its size is known."""
        size = self._size
        if size is None and offset is not None and self._body_size is not None:
            size = self._body_size - offset - self._closing
        if self._claim is None or size is None or not 0 < size <= self._limit:
            return
        self.growth = Growth(self.path, size)
        self.outgoing = Outgoing(
            path=self.path,
            size=size,
            sha256=self._claim.sha256,
            kind=LEARNING,
            filename=safe_filename(npz_name(self._filename), "weights.npz"),
            growing=self.growth,
        )
        self._group.start_soon(self._run, self.outgoing)

    def store(self, size: int) -> None:
        """The file holds `size` bytes (from the writer's thread)."""
        if self.growth is not None:
            self.growth.store(size)

    async def _run(self, outgoing: Outgoing) -> None:
        with self._scope:
            try:
                if self._before_send is not None:
                    await self._before_send()
                self._sent = await self._send_file(outgoing)
            except Exception as exc:
                if self.growth is not None and self.growth.released:
                    self._error = exc  # it may have been complete: raised by `finish`, not resent
                else:  # BranchKey cannot have stored it: the upload goes the usual way
                    self.failed = True
                    log.info(
                        "sending the upload while it arrived failed (%s); it is sent once received",
                        exc,
                    )
            finally:
                self._done.set()

    def carries(self, sha256: bytes, size: int, kind: str) -> bool:
        """Whether what is being sent is this file, as it is to go upstream."""
        out = self.outgoing
        return (
            out is not None
            and not self.failed
            and out.sha256 == sha256
            and out.size == size
            and out.kind == kind
        )

    async def finish(self) -> Sent | None:
        """Release the held byte and wait for BranchKey's answer (None: the request failed before it
        was complete, so the upload must be sent again the usual way)."""
        if self.growth is None:
            return None
        self.growth.release()
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return None if self.failed else self._sent

    def cancel(self) -> None:
        """Cut the request if it is still going (BranchKey stores nothing of it)."""
        self._scope.cancel()
