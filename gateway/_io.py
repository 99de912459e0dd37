"""Small I/O plumbing shared by the gateway and the aggregator: hashed writes, keyed locks, cancels."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, Generic, Protocol, TypeVar

import anyio
from anyio import to_thread

FLUSH_BYTES = 1 << 20
"""Bytes gathered into one batch for a writer thread (one hand-over per ~1 MiB, not per chunk)."""
WRITE_DEPTH = 4
"""Batches queued for a writer thread at most: ~4 MiB per upload, enough to ride out a busy loop."""


T = TypeVar("T")

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(error: BaseException | None) -> bool:
    """Whether `error` (or what caused it) is a full disk or quota: ENOSPC, EDQUOT, SQLite's FULL."""
    seen = 0
    while error is not None and seen < 8:  # a bounded walk down the cause chain
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        if (
            isinstance(error, sqlite3.Error)
            and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        ):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


class Digest(Protocol):
    """What `hashlib` digests offer (and all this module needs of them)."""

    def update(self, data: bytes | memoryview, /) -> None:
        """Feed `data`."""


class Progress(Protocol):
    """Told how much of a file being written is on disk (a reader following it)."""

    def store(self, size: int) -> None:
        """The file holds its first `size` bytes, flushed (called from the writer's thread)."""


class Tee:
    """Feeds two digests (or checks that read like one) with the same bytes."""

    __slots__ = ("first", "second")

    def __init__(self, first: Digest, second: Digest) -> None:
        self.first = first
        self.second = second

    def update(self, data: bytes | memoryview, /) -> None:
        """Feed `data` to both."""
        self.first.update(data)
        self.second.update(data)


def write_chunks(stream: BinaryIO, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to `stream` (run in a writer thread)."""
    for chunk in chunks:
        stream.write(chunk)


def sha256_file(path: Path) -> bytes:
    """The sha256 of a file, read 1 MiB at a time (run in a worker thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(FLUSH_BYTES):
            digest.update(chunk)
    return digest.digest()


class BatchThread(Generic[T]):
    """Applies batches in order in a thread of its own while the event loop queues the next ones.

    At most `depth` batches wait or are being applied (memory stays flat). The thread goes from one
    batch to the next without the event loop: a loop busy with the next chunk, or slow to be
    scheduled on a busy machine, does not leave it idle (one worker-thread call per batch did, and
    halved the rate of an upload). A failed batch is kept in `failure` (the rest are dropped) and
    raised on the loop by the next `put`, `join` or `close`. Construct it on the event loop.
    """

    def __init__(self, apply: Callable[[T], None], depth: int = WRITE_DEPTH) -> None:
        self._apply = apply
        self.depth = depth
        self.failure: Exception | None = None
        self._queue: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._pending = 0  # batches queued and not yet applied; touched by the loop only
        self._dropping = False
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._progress = anyio.Event()  # set whenever a batch is done, then replaced
        self._exited = anyio.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="batch-writer")
        self._thread.start()

    def _run(self) -> None:
        try:
            while (batch := self._queue.get()) is not None:
                if self.failure is None and not self._dropping:
                    try:
                        self._apply(batch)
                    except Exception as exc:  # raised on the loop by the next put/join/close
                        self.failure = exc
                self._notify(self._done)
        finally:
            self._notify(self._exited.set)

    def _notify(self, callback: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(callback)

    def _done(self) -> None:
        self._pending -= 1
        self._progress.set()

    async def _progressed(self) -> None:
        self._progress = anyio.Event()
        await self._progress.wait()

    def check(self) -> None:
        """Raise the failure of a batch, if one failed."""
        if self.failure is not None:
            raise self.failure

    async def put(self, batch: T) -> None:
        """Queue `batch`, first waiting while `depth` batches are queued; raises a failed batch's error."""
        self.check()
        while self._pending >= self.depth:
            await self._progressed()
            self.check()
        self._pending += 1
        self._queue.put(batch)

    async def join(self) -> None:
        """Wait until every batch queued so far is applied; raises a failed batch's error."""
        while self._pending:
            await self._progressed()
        self.check()

    async def close(self, *, drop: bool = False) -> None:
        """Apply the batches queued (none more if `drop`), and wait for the thread to end; raises a
        failed batch's error unless dropping."""
        self._dropping = self._dropping or drop
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        await self._exited.wait()
        if not drop:
            self.check()

    def stop(self) -> None:
        """Drop the batches queued and wait for the thread, blocking (when the loop cannot wait)."""
        self._dropping = True
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()


class Spool:
    """A file arriving in batches, its size capped: a writer thread stores each batch and a hasher
    thread hashes it while the caller receives the next (`WRITE_DEPTH` batches queued at most:
    memory stays flat)."""

    def __init__(self, path: Path, limit: int, too_large: Callable[[], Exception]) -> None:
        self.path = path
        self.limit = limit
        self.too_large = too_large
        self.size = 0
        self.digest = hashlib.sha256()
        self.feed: Digest = self.digest
        """What each batch is fed to: the digest, or a `Tee` of it and a check reading beside it."""
        self.threads: tuple[BatchThread[list[bytes]], ...] = ()
        """The writer and the hasher, once open."""
        self.follower: Progress | None = None
        """Told after every batch how much of the file is on disk (a reader following it)."""
        self._stream: BinaryIO | None = None
        self._stored = 0

    @property
    def failure(self) -> Exception | None:
        """Why a batch could not be written or hashed, if one could not."""
        return next((t.failure for t in self.threads if t.failure is not None), None)

    async def open(self) -> None:
        """Create the file and start its writer and hasher threads."""
        self._stream = await to_thread.run_sync(self.path.open, "wb")
        self.threads = (BatchThread(self._write), BatchThread(self._hash))

    def _write(self, batch: list[bytes]) -> None:
        stream = self._stream
        if stream is None:  # pragma: no cover - the threads exist only once the file is open
            raise RuntimeError("spool written before it was opened")
        write_chunks(stream, batch)
        if self.follower is not None:
            stream.flush()
            self._stored += sum(len(chunk) for chunk in batch)
            self.follower.store(self._stored)

    def _hash(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self.feed.update(chunk)

    async def write(self, batch: list[bytes]) -> None:
        """Queue `batch`; raises `too_large()` past the limit, or a thread's failure."""
        self.size += sum(len(chunk) for chunk in batch)
        if self.size > self.limit:
            raise self.too_large()
        if not self.threads:
            raise RuntimeError("spool written before it was opened")
        for thread in self.threads:
            await thread.put(batch)

    async def sync(self) -> None:
        """Wait until every batch queued so far is written and hashed; raises a thread's failure."""
        for thread in self.threads:
            await thread.join()

    async def close(self) -> None:
        """Wait until every batch is written and hashed, and the file closed."""
        try:
            for thread in self.threads:
                await thread.close()
        finally:
            await self._close_stream()

    async def _close_stream(self) -> None:
        if self._stream is not None and not self._stream.closed:
            await to_thread.run_sync(self._stream.close)

    def hexdigest(self) -> str:
        """The sha256 of the bytes written (after `close`)."""
        return self.digest.hexdigest()

    async def discard(self) -> None:
        """Stop the threads and remove the file (also when cancelled)."""
        with anyio.CancelScope(shield=True):
            for thread in self.threads:
                await thread.close(drop=True)
            await self._close_stream()
            await to_thread.run_sync(lambda: self.path.unlink(missing_ok=True))


class Growth:
    """A file that a worker thread writes while the event loop reads it (an upload sent on before it
    has all arrived). The writer reports what is on disk with `store`; a reader waits for the bytes
    it needs with `readable`, woken once per `at_least` bytes (not per write); the last `held`
    bytes of the expected `size` stay back until `release()`, so that a reader cannot finish
    before the file is checked."""

    def __init__(self, path: Path, size: int, held: int = 1) -> None:
        self.path = path
        self.size = size
        self.held = min(held, size)
        self.stored = 0
        self.released = False
        self._loop = asyncio.get_running_loop()
        self._event = anyio.Event()
        self._want = size + 1
        """The stored size that wakes the waiting reader (past the end: only `release` does)."""

    def store(self, size: int) -> None:
        """The file holds its first `size` bytes, flushed (called from the writer's thread)."""
        self.stored = size
        if size >= self._want:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
                self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._event.set()

    def release(self) -> None:
        """Let readers have the held bytes (the file is known good)."""
        self.released = True
        self._wake()

    def _target(self, offset: int, at_least: int) -> tuple[int, int]:
        """Where readable bytes end now, and the end a reader at `offset` waits for."""
        end = self.size if self.released else self.size - self.held
        return min(self.stored, end), min(offset + at_least, end)

    def ready(self, offset: int, at_least: int = 1) -> int:
        """How many bytes from `offset` on may be read now: 0 unless `at_least` of them (or all
        that may be read before `release`) are there."""
        limit, want = self._target(offset, at_least)
        return limit - offset if offset < want <= limit else 0

    async def readable(self, offset: int, at_least: int = 1) -> int:
        """How many bytes from `offset` on may be read, waiting until `at_least` of them are
        there (fewer at the end, and none until `release` once only the held ones are left);
        0 at the expected end."""
        while offset < self.size:
            if ready := self.ready(offset, at_least):
                return ready
            self._event = anyio.Event()
            _, want = self._target(offset, at_least)
            self._want = want if want > offset else self.size + 1
            if ready := self.ready(offset, at_least):  # stored before `_want` was set
                return ready
            await self._event.wait()
        return 0


class KeyedLocks:
    """One `anyio.Lock` per key, forgotten again when nobody holds or waits for it (a bounded table)."""

    def __init__(self) -> None:
        self._locks: dict[str, anyio.Lock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    def get(self, key: str) -> anyio.Lock:
        """The lock of `key` (created on first use)."""
        return self._locks.setdefault(key, anyio.Lock())

    def discard(self, key: str, lock: anyio.Lock) -> None:
        """Forget `key`'s lock if it is `lock` and is idle."""
        if (
            not lock.locked()
            and lock.statistics().tasks_waiting == 0
            and self._locks.get(key) is lock
        ):
            del self._locks[key]


async def cancel_on(event: anyio.Event, scope: anyio.CancelScope) -> None:
    """Cancel `scope` once `event` is set (start it in the scope's task group)."""
    await event.wait()
    scope.cancel()


class Signal:
    """A repeatable wake-up: every `fire()` wakes whoever waits on the event `armed()` gave them.

    Take `armed()` before checking the condition it guards, then wait on it: a `fire()` between
    the check and the wait is never missed.
    """

    def __init__(self) -> None:
        self._event = anyio.Event()

    def armed(self) -> anyio.Event:
        """The event the next `fire()` sets."""
        return self._event

    def fire(self) -> None:
        """Wake every waiter, and arm a fresh event for the next round."""
        self._event.set()
        self._event = anyio.Event()

    async def wait(self) -> None:
        """Wait for the next `fire()`."""
        await self._event.wait()
