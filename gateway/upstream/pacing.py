"""The clocks that bound an upstream operation: a fixed deadline for control calls, a pace for transfers."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import anyio
import httpx
from anyio import AsyncFile

from gateway._io import Growth
from gateway.errors import UpstreamTimeoutError, UpstreamUnavailableError
from gateway.upstream.policy import TimeBounds

_CHUNK = 1 << 20


class Clock(Protocol):
    """What the transport asks of an operation's bound: a cancel scope over the attempts, and how
    long it may still wait (for a `Retry-After`)."""

    scope: anyio.CancelScope

    def remaining(self) -> float:
        """Seconds the operation may still spend waiting on the upstream."""

    def attempt(self) -> None:
        """An attempt (or a wait before one) begins: the upstream's time runs."""

    def expired(self, what: str) -> UpstreamTimeoutError:
        """The error for an operation cut by this clock."""


class Deadline:
    """A control call's bound: one deadline over every attempt, wait, redirect and answer body."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.scope = anyio.CancelScope(deadline=anyio.current_time() + seconds)

    def remaining(self) -> float:
        """Seconds left until the deadline."""
        return self.scope.deadline - anyio.current_time()

    def attempt(self) -> None:
        """Nothing to do: the deadline is fixed."""

    def expired(self, what: str) -> UpstreamTimeoutError:
        """BranchKey did not finish in time."""
        return UpstreamTimeoutError(
            f"BranchKey did not complete {what} within {self.seconds:g} s, retries included "
            "(BK_UPSTREAM_DEADLINE_S)."
        )


class Pace:
    """A transfer's bound: the upstream's time drains a slack of `stall_s` seconds, and every byte
    moved refills 1/`min_rate` s of it (never above `stall_s`); the transfer is cut when it is
    spent. Time the gateway spends on its own side between chunks (reading the file, writing the
    download) is not counted (a single pause longer than half of `stall_s` may be).

    The timer behind `scope` is moved only when it is off by more than a tenth of `stall_s` (at
    most 0.5 s): re-arming it for every 64 KiB chunk would cost more than the chunk's bookkeeping.
    """

    def __init__(self, bounds: TimeBounds) -> None:
        self.bounds = bounds
        self.scope = anyio.CancelScope()
        self._slack = bounds.stall_s
        self._since: float | None = None
        self._answering = False
        self._tolerance = min(0.5, bounds.stall_s / 10)
        # The scope's clock, read through time.monotonic (the same clock on asyncio) for speed.
        self._offset = anyio.current_time() - time.monotonic()
        self.attempt()

    def _now(self) -> float:
        return time.monotonic() + self._offset

    def remaining(self) -> float:
        """Slack left, counting the upstream's time since it last moved a byte."""
        if self._since is None:
            return self._slack
        return self._slack - (self._now() - self._since)

    def attempt(self) -> None:
        """The upstream's time runs (idempotent)."""
        if self._since is None:
            self._since = self._now()
        self._answering = False
        due = self._since + self._slack
        if not due - self._tolerance <= self.scope.deadline <= due:
            self.scope.deadline = due

    def moved(self, size: int) -> None:
        """`size` bytes went through: credit them, and stop the clock until `attempt()`."""
        now = self._now()
        spent = now - self._since if self._since is not None else 0.0
        self._slack = min(self._slack - spent + size / self.bounds.min_rate, self.bounds.stall_s)
        self._since = None
        if self.scope.deadline - now < self.bounds.stall_s / 2:
            self.scope.deadline = math.inf  # the gateway's own time is not the upstream's

    def pause(self) -> None:
        """The gateway waits on its own side (for bytes still arriving from the trainer): the
        upstream's clock stands still until `attempt()`, however long that takes."""
        self.moved(0)
        self.scope.deadline = math.inf

    def sent(self) -> None:
        """The last byte of an upload went out: BranchKey now has `answer_s` to answer."""
        self._since = None
        self._answering = True
        self.scope.deadline = anyio.current_time() + self.bounds.answer_s

    def expired(self, what: str) -> UpstreamTimeoutError:
        """The transfer stalled, or BranchKey did not answer an upload it had received."""
        if self._answering:
            return UpstreamTimeoutError(
                f"BranchKey did not answer {what} within {self.bounds.answer_s:g} s of receiving "
                "all of it (BK_READ_TIMEOUT_S)."
            )
        return UpstreamTimeoutError(
            f"{what.capitalize()} stalled: it fell {self.bounds.stall_s:g} s behind "
            f"{self.bounds.min_rate:g} bytes/s (BK_TRANSFER_STALL_S, BK_TRANSFER_MIN_RATE)."
        )


class UploadBody:
    """The streamed multipart body of one upload attempt, read from disk and paced; `complete`
    once its last byte was handed to the connection (only then can BranchKey have stored it).
    A `growing` file is read as it is written, each wait for it off the upstream's clock.
    The sender closes it (`aclose`) after the attempt, however the attempt ended."""

    def __init__(
        self,
        head: bytes,
        path: Path,
        size: int,
        tail: bytes,
        pace: Pace,
        growing: Growth | None = None,
    ) -> None:
        self.head, self.path, self.size, self.tail = head, path, size, tail
        self.pace = pace
        self.growing = growing
        self.complete = False
        self._file: AsyncFile[bytes] | None = None

    async def _readable(self, offset: int) -> int:
        """Bytes that may be read from `offset` on (all of the rest for a complete file; of a
        growing one, a whole chunk unless the end is nearer)."""
        growing = self.growing
        if growing is None:
            return self.size - offset
        if ready := growing.ready(offset, _CHUNK):
            return ready
        self.pace.pause()
        return await growing.readable(offset, _CHUNK)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pace = self.pace
        yield self.head
        pace.moved(len(self.head))
        await self._readable(0)  # a growing file exists once its first bytes are written
        self._file = await anyio.open_file(self.path, "rb")
        sent = 0
        while sent < self.size:
            ready = await self._readable(sent)
            chunk = await self._file.read(min(_CHUNK, ready, self.size - sent))
            if not chunk:
                raise UpstreamUnavailableError("The upload file shrank while it was being sent.")
            sent += len(chunk)
            pace.attempt()
            yield chunk
            pace.moved(len(chunk))
        pace.attempt()
        yield self.tail
        self.complete = True
        pace.sent()

    async def aclose(self) -> None:
        """Close the file (shielded: the attempt may have been cancelled)."""
        stream, self._file = self._file, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()


class PacedStream(httpx.AsyncByteStream):
    """A response body read under a `Pace` whose scope spans the reading (see `Transport.blob`):
    the clock runs only while the next chunk is awaited, so a trickling or silent blob host
    cannot hold a download forever, and a slow reader downstream is never taken for a stall.
    A connection that fails mid-body (cut short, silent past the read timeout) is a gateway error
    (502, 504), as a failed request is, never a bare httpx error (500)."""

    def __init__(self, inner: httpx.AsyncByteStream, pace: Pace, what: str) -> None:
        self.inner = inner
        self.pace = pace
        self.what = what

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self.inner.__aiter__()
        while True:
            self.pace.attempt()
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                self.pace.moved(0)
                return
            except httpx.TimeoutException as exc:
                raise UpstreamTimeoutError(
                    f"BranchKey went silent during {self.what} ({type(exc).__name__}, "
                    "BK_READ_TIMEOUT_S)."
                ) from None
            except httpx.TransportError as exc:
                raise UpstreamUnavailableError(
                    f"BranchKey's connection failed during {self.what} ({type(exc).__name__}: "
                    f"{exc})."
                ) from None
            self.pace.moved(len(chunk))
            yield chunk

    async def aclose(self) -> None:
        """Close the wrapped stream."""
        await self.inner.aclose()
