"""`gateway._io.disk_full`: which failures are a full disk (answered 507 by both servers)."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from gateway._io import disk_full


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
