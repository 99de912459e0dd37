"""`gateway._io`: which failures are a full disk (answered 507 by both servers); the spool's
batches written and hashed by a thread of its own, size capped, failures reported."""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
from pathlib import Path

import anyio
import pytest

from gateway._io import Spool, disk_full


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
        raise TypeError("broken")


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
