"""Small I/O plumbing shared by the gateway and the aggregator: hashed writes, keyed locks, cancels."""

from __future__ import annotations

import errno
import hashlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

import anyio

FLUSH_BYTES = 1 << 20
"""Bytes gathered before one worker-thread hop writes them (one hop per ~1 MiB, not per chunk)."""


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

    def update(self, data: bytes, /) -> None:
        """Feed `data`."""


def write_hashed(stream: BinaryIO, digest: Digest, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to `stream` and feed them to `digest` (run in a worker thread)."""
    for chunk in chunks:
        stream.write(chunk)
        digest.update(chunk)


def sha256_file(path: Path) -> bytes:
    """The sha256 of a file, read 1 MiB at a time (run in a worker thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(FLUSH_BYTES):
            digest.update(chunk)
    return digest.digest()


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
