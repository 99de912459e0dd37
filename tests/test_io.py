"""`gateway._io`: which failures are a full disk (answered 507 by both servers); the spool's
batches written and hashed by a thread of its own, size capped, failures reported; the batch
thread's bounded queue."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import threading
from pathlib import Path

import anyio
import pytest

from gateway._io import BatchThread, Growth, Spool, disk_full


def _chained(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "full"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), True),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
        (_chained(OSError(errno.ENOSPC, "No space left on device")), True),
        (OSError(errno.EIO, "Input/output error"), False),
        (sqlite3.OperationalError("database is locked"), False),
        (ValueError("x"), False),
        (None, False),
    ],
)
def test_disk_full(error: BaseException | None, full: bool) -> None:
    """ENOSPC, EDQUOT and SQLite's FULL, also as the cause of another error; nothing else."""
    assert disk_full(error) is full


def test_sqlite_reports_a_full_database() -> None:
    """A real SQLite database at its page limit raises an error `disk_full` recognises."""
    database = sqlite3.connect(":memory:")
    database.execute("PRAGMA max_page_count = 2")
    database.execute("CREATE TABLE t (x BLOB)")
    with pytest.raises(sqlite3.Error) as raised:
        database.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert disk_full(raised.value)


class TooLarge(Exception):
    """The test's size-limit error."""


def test_the_spool_writes_and_hashes_every_batch_in_order(tmp_path: Path) -> None:
    """Many batches queued faster than written arrive whole, in order, with their sha256."""
    batches = [[os.urandom(1000), os.urandom(24)] for _ in range(200)]
    spool = Spool(tmp_path / "f", 10**9, TooLarge)

    async def main() -> None:
        await spool.open()
        for batch in batches:
            await spool.write(batch)
        await spool.close()

    anyio.run(main)
    expected = b"".join(b"".join(batch) for batch in batches)
    assert (tmp_path / "f").read_bytes() == expected
    assert spool.size == len(expected)
    assert spool.hexdigest() == hashlib.sha256(expected).hexdigest()


def test_the_spool_refuses_past_its_limit_and_discard_removes_the_file(tmp_path: Path) -> None:
    """A batch that crosses the limit raises the caller's error; discard removes the file."""
    spool = Spool(tmp_path / "f", 1500, TooLarge)

    async def main() -> None:
        await spool.open()
        await spool.write([b"x" * 1000])
        with pytest.raises(TooLarge):
            await spool.write([b"x" * 1000])
        await spool.discard()

    anyio.run(main)
    assert not (tmp_path / "f").exists()


class _BrokenDigest:
    """A digest whose update fails, as a check reading beside the hash may."""

    def update(self, data: bytes | memoryview, /) -> None:
        raise TypeError(f"broken, {len(data)} bytes lost")


def test_a_failed_write_is_raised_by_close(tmp_path: Path) -> None:
    """A batch the thread could not write (here: its digest fails) surfaces in `close`, as it is."""
    spool = Spool(tmp_path / "f", 10**9, TooLarge)
    spool.feed = _BrokenDigest()

    async def main() -> None:
        await spool.open()
        await spool.write([b"x"])
        with pytest.raises(TypeError):
            await spool.close()

    anyio.run(main)


def test_the_batch_thread_queues_at_most_depth_batches() -> None:
    """With the thread stuck, `depth` puts return at once and the next one waits for room."""
    gate = threading.Event()
    applied: list[int] = []

    def apply(batch: int) -> None:
        gate.wait(10)
        applied.append(batch)

    async def main() -> None:
        writer = BatchThread(apply, depth=3)
        for batch in range(3):
            with anyio.fail_after(1):
                await writer.put(batch)
        with anyio.move_on_after(0.2) as waited:
            await writer.put(3)
        assert waited.cancelled_caught  # no room while the first three are not applied
        gate.set()
        with anyio.fail_after(5):
            await writer.put(3)
            await writer.close()

    anyio.run(main)
    assert applied == [0, 1, 2, 3]


def test_the_batch_thread_raises_a_failure_and_drops_on_close() -> None:
    """A failed batch is raised by the next put; `close(drop=True)` ends the thread without it."""
    applied: list[int] = []

    def apply(batch: int) -> None:
        if batch == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        applied.append(batch)

    async def main() -> None:
        writer = BatchThread(apply, depth=1)
        await writer.put(0)
        await writer.put(1)
        with pytest.raises(OSError, match="No space"):
            await writer.join()
        with pytest.raises(OSError, match="No space"):
            await writer.put(2)
        with anyio.fail_after(5):
            await writer.close(drop=True)

    anyio.run(main)
    assert applied == [0]


def test_a_growth_reader_is_woken_per_chunk_and_gets_the_held_bytes_on_release(
    tmp_path: Path,
) -> None:
    """`readable` waits for a whole chunk (not each small write), never hands out the held last
    byte before `release`, and the writer's thread can wake it."""
    woken: list[tuple[int, int]] = []

    async def main() -> None:
        growth = Growth(tmp_path / "f", size=10, held=1)

        async def reader() -> None:
            offset = 0
            while ready := await growth.readable(offset, at_least=4):
                woken.append((offset, ready))
                offset += ready

        async with anyio.create_task_group() as group:
            group.start_soon(reader)
            for stored in (1, 2, 3, 5, 9, 10):
                await anyio.to_thread.run_sync(growth.store, stored)
                await anyio.sleep(0.02)
            assert woken == [(0, 5), (5, 4)]  # 4 bytes at least; the 10th is held
            growth.release()

    anyio.run(main)
    assert woken == [(0, 5), (5, 4), (9, 1)]
