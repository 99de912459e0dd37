"""The aggregator's SQLite schema, and the private modes of its data directory and database files."""

from __future__ import annotations

import os
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS leaves (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, session_token TEXT NOT NULL,
    tree_id TEXT NOT NULL, branch_id TEXT NOT NULL, owner_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS branches (
    branch_id TEXT PRIMARY KEY, tree_id TEXT NOT NULL, run_status TEXT NOT NULL,
    run_number INTEGER NOT NULL, round INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    file_id TEXT PRIMARY KEY, leaf_id TEXT NOT NULL, branch_id TEXT NOT NULL,
    run_number INTEGER NOT NULL, round INTEGER NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    path TEXT NOT NULL, kind TEXT NOT NULL, weighting REAL, metadata TEXT NOT NULL,
    created_at TEXT NOT NULL, active INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS uploads_dedup ON uploads (leaf_id, run_number, round, digest);
CREATE TABLE IF NOT EXISTS aggregations (
    aggregation_id TEXT PRIMARY KEY, branch_id TEXT NOT NULL, run_number INTEGER NOT NULL,
    round INTEGER NOT NULL, status TEXT NOT NULL, path TEXT, size INTEGER, sha256 TEXT,
    contributors TEXT NOT NULL, error TEXT, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT, leaf_id TEXT NOT NULL, branch_id TEXT NOT NULL,
    tree_id TEXT NOT NULL, aggregation_id TEXT NOT NULL, mode TEXT NOT NULL, data TEXT NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS field_operations (
    branch_id TEXT NOT NULL, field TEXT NOT NULL, operation TEXT NOT NULL,
    PRIMARY KEY (branch_id, field)
);
"""


def private_folder(folder: Path) -> None:
    """Create `folder` (and its parents) if need be, and make it 0700 whatever it was."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)


def private_files(database: Path) -> None:
    """Make the SQLite files 0600: a new database is created so (SQLite gives its -wal and -shm files
    the database's mode), and the files of an older data directory are narrowed."""
    os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in (database, *(database.with_name(database.name + end) for end in ("-wal", "-shm"))):
        if path.exists():
            path.chmod(0o600)
