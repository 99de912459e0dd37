"""The aggregator's store on disk: who may read it."""

from __future__ import annotations

import stat
from pathlib import Path

from gateway.aggregator.store import Store


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_data_dir_is_0700_and_the_database_files_0600(tmp_path: Path) -> None:
    """A new store's folder is 0700 and aggregator.db, -wal and -shm are 0600 (they hold leaf tokens and the blob key)."""
    data_dir = tmp_path / "agg"
    store = Store(data_dir)
    try:
        store.secret("blob-key")
        files = sorted(data_dir.glob("aggregator.db*"))
        assert [f.name for f in files] == [
            "aggregator.db",
            "aggregator.db-shm",
            "aggregator.db-wal",
        ]
        assert _mode(data_dir) == 0o700
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        store.close()


def test_an_older_world_readable_data_dir_is_narrowed(tmp_path: Path) -> None:
    """Reopening a data dir left 0755 with a 0644 database makes them 0700 and 0600."""
    data_dir = tmp_path / "agg"
    Store(data_dir).close()
    data_dir.chmod(0o755)
    (data_dir / "aggregator.db").chmod(0o644)
    store = Store(data_dir)
    try:
        assert _mode(data_dir) == 0o700
        assert _mode(data_dir / "aggregator.db") == 0o600
    finally:
        store.close()
