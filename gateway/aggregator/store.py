"""The aggregator's persistent state: SQLite (WAL) for records, plain files for payloads and results.

Every method is synchronous and short; the app calls them from worker threads.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.aggregator.database import SCHEMA, private_files, private_folder
from gateway.aggregator.records import LEAF_FIELDS, Aggregation, Branch, Leaf, Upload
from gateway.clock import now_iso


class Store:
    """State under one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        private_folder(data_dir)  # the database holds every leaf token and the blob signing key
        self.uploads_dir = data_dir / "uploads"
        self.results_dir = data_dir / "aggregations"
        self.tmp_dir = data_dir / "tmp"
        for folder in (self.uploads_dir, self.results_dir, self.tmp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # partial uploads of a previous process
            leftover.unlink(missing_ok=True)
        self._lock = threading.Lock()
        database = data_dir / "aggregator.db"
        private_files(database)
        self._db = sqlite3.connect(database, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    # ------------------------------------------------------------ secrets, leaves, branches

    def secret(self, name: str) -> str:
        """A random secret that survives restarts (created on first use)."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return str(row["value"])
            value = secrets.token_urlsafe(32)
            db.execute("INSERT INTO secrets (name, value) VALUES (?, ?)", (name, value))
            return value

    def replace_leaves(self, leaves: list[Leaf], initial_status: str) -> None:
        """Make `leaves` the known leaves, creating their branches (existing runs are kept)."""
        stamp = now_iso()
        with self._tx() as db:
            db.execute("DELETE FROM leaves")
            db.executemany(
                "INSERT INTO leaves VALUES (?, ?, ?, ?, ?, ?)",
                [tuple(getattr(leaf, k) for k in LEAF_FIELDS) for leaf in leaves],
            )
            for leaf in leaves:
                run_number = 1 if initial_status == "start" else 0
                db.execute(
                    "INSERT OR IGNORE INTO branches VALUES (?, ?, ?, ?, 0, ?, ?)",
                    (leaf.branch_id, leaf.tree_id, initial_status, run_number, stamp, stamp),
                )

    def leaf(self, leaf_id: str) -> Leaf | None:
        """A leaf by id."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM leaves WHERE id = ?", (leaf_id,)).fetchone()
        return Leaf(**dict(row)) if row else None

    def leaves(self, branch_id: str | None = None) -> list[Leaf]:
        """All leaves (of one branch)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM leaves WHERE ?1 IS NULL OR branch_id = ?1 ORDER BY id", (branch_id,)
            ).fetchall()
        return [Leaf(**dict(row)) for row in rows]

    def branch(self, branch_id: str) -> Branch | None:
        """A branch by id."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM branches WHERE branch_id = ?", (branch_id,)).fetchone()
        return Branch(**dict(row)) if row else None

    def branches(self) -> list[Branch]:
        """All branches."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM branches ORDER BY branch_id").fetchall()
        return [Branch(**dict(row)) for row in rows]

    def set_run_status(self, branch_id: str, status: str) -> Branch:
        """Change a run's status. `start` after `stop` (or on a branch never started) opens a new
        run (run_number + 1, round 0); `start` after `pause` resumes the same run and its open round."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM branches WHERE branch_id = ?", (branch_id,)).fetchone()
            if row is None:
                raise KeyError(branch_id)
            new_run = row["run_status"] == "stop" or row["run_number"] == 0
            if status == "start" and row["run_status"] != "start" and new_run:
                db.execute(
                    "UPDATE branches SET run_status = ?, run_number = run_number + 1, round = 0, "
                    "updated_at = ? WHERE branch_id = ?",
                    (status, now_iso(), branch_id),
                )
            elif status != row["run_status"]:
                db.execute(
                    "UPDATE branches SET run_status = ?, updated_at = ? WHERE branch_id = ?",
                    (status, now_iso(), branch_id),
                )
            updated = db.execute(
                "SELECT * FROM branches WHERE branch_id = ?", (branch_id,)
            ).fetchone()
        return Branch(**dict(updated))

    def field_operations(self, branch_id: str) -> dict[str, str]:
        """The operations assigned to a branch's analytics fields (field name -> operation)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT field, operation FROM field_operations WHERE branch_id = ? ORDER BY field",
                (branch_id,),
            ).fetchall()
        return {str(row["field"]): str(row["operation"]) for row in rows}

    def assign_field_operations(self, branch_id: str, operations: dict[str, str]) -> dict[str, str]:
        """Assign (or reassign) operations to analytics fields of a branch; all of its assignments."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO field_operations VALUES (?, ?, ?) ON CONFLICT (branch_id, field) "
                "DO UPDATE SET operation = excluded.operation",
                [(branch_id, name, operation) for name, operation in operations.items()],
            )
        return self.field_operations(branch_id)

    # ------------------------------------------------------------ uploads and rounds

    def add_upload(
        self,
        leaf: Leaf,
        branch: Branch,
        digest: str,
        size: int,
        source: Path,
        kind: str,
        weighting: float | None,
        metadata: dict[str, Any],
    ) -> tuple[str, bool]:
        """Store an upload in the branch's current round; returns (file_id, duplicate).

        A duplicate (same leaf, run and digest, in any round of the run: a client's retry may
        arrive after its round closed) returns the first file id and stores nothing.
        A new upload replaces the leaf's earlier upload of the same round.
        """
        file_id = str(uuid.uuid4())
        target = self.uploads_dir / f"{file_id}.npz"
        with self._tx() as db:
            row = self._duplicate(db, leaf.id, branch, digest)
            if row is not None:
                return str(row["file_id"]), True
            os.replace(source, target)
            db.execute(
                "UPDATE uploads SET active = 0 WHERE leaf_id = ? AND run_number = ? AND round = ?",
                (leaf.id, branch.run_number, branch.round),
            )
            db.execute(
                "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (
                    file_id,
                    leaf.id,
                    branch.branch_id,
                    branch.run_number,
                    branch.round,
                    digest,
                    size,
                    str(target),
                    kind,
                    weighting,
                    json.dumps(metadata),
                    now_iso(),
                ),
            )
        return file_id, False

    def _duplicate(
        self, db: sqlite3.Connection, leaf_id: str, branch: Branch, digest: str
    ) -> sqlite3.Row | None:
        row: sqlite3.Row | None = db.execute(
            "SELECT file_id FROM uploads WHERE leaf_id = ? AND branch_id = ? AND run_number = ? "
            "AND digest = ? ORDER BY created_at, rowid LIMIT 1",
            (leaf_id, branch.branch_id, branch.run_number, digest),
        ).fetchone()
        return row

    def duplicate_of(self, leaf_id: str, branch: Branch, digest: str) -> str | None:
        """The file id of this leaf's upload with `digest` in the branch's current run, if any."""
        with self._tx() as db:
            row = self._duplicate(db, leaf_id, branch, digest)
        return None if row is None else str(row["file_id"])

    def first_run_upload(
        self, branch_id: str, run_number: int, kind: str, leaf_id: str
    ) -> Upload | None:
        """The earliest active upload of `kind` in a run (analytics: it fixes the run's fields),
        leaving out `leaf_id`'s uploads of the open round, which its next upload replaces."""
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM uploads AS u WHERE branch_id = ? AND run_number = ? AND kind = ? "
                "AND active = 1 AND NOT (leaf_id = ? AND round = "
                "(SELECT round FROM branches AS b WHERE b.branch_id = u.branch_id)) "
                "ORDER BY created_at, rowid LIMIT 1",
                (branch_id, run_number, kind, leaf_id),
            ).fetchone()
        return Upload(**dict(row)) if row else None

    def round_uploads(self, branch_id: str, run_number: int, round_: int) -> list[Upload]:
        """The active (latest per leaf) uploads of one round."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM uploads WHERE branch_id = ? AND run_number = ? AND round = ? AND active = 1 "
                "ORDER BY created_at",
                (branch_id, run_number, round_),
            ).fetchall()
        return [Upload(**dict(row)) for row in rows]

    def close_round(
        self, branch_id: str, run_number: int, round_: int
    ) -> tuple[str, list[Upload]] | None:
        """Atomically end a round: its uploads, a new pending aggregation id; later uploads go to the next round."""
        aggregation_id = str(uuid.uuid4())
        with self._tx() as db:
            row = db.execute(
                "SELECT run_number, round FROM branches WHERE branch_id = ?", (branch_id,)
            ).fetchone()
            if row is None or (row["run_number"], row["round"]) != (run_number, round_):
                return None  # somebody else closed it
            rows = db.execute(
                "SELECT * FROM uploads WHERE branch_id = ? AND run_number = ? AND round = ? AND active = 1 "
                "ORDER BY created_at",
                (branch_id, run_number, round_),
            ).fetchall()
            if not rows:
                return None
            uploads = [Upload(**dict(r)) for r in rows]
            db.execute(
                "UPDATE branches SET round = round + 1, updated_at = ? WHERE branch_id = ?",
                (now_iso(), branch_id),
            )
            db.execute(
                "INSERT INTO aggregations VALUES (?, ?, ?, ?, 'pending', NULL, NULL, NULL, ?, NULL, ?)",
                (
                    aggregation_id,
                    branch_id,
                    run_number,
                    round_,
                    json.dumps([u.leaf_id for u in uploads]),
                    now_iso(),
                ),
            )
        return aggregation_id, uploads

    def finish_aggregation(
        self,
        aggregation_id: str,
        path: Path | None,
        size: int | None,
        sha256: str | None,
        error: str | None,
    ) -> None:
        """Record an aggregation's result (or its failure)."""
        with self._tx() as db:
            db.execute(
                "UPDATE aggregations SET status = ?, path = ?, size = ?, sha256 = ?, error = ? "
                "WHERE aggregation_id = ?",
                (
                    "failed" if error else "done",
                    str(path) if path else None,
                    size,
                    sha256,
                    error,
                    aggregation_id,
                ),
            )

    def pending_aggregations(self) -> list[tuple[Aggregation, list[Upload]]]:
        """Aggregations a previous process started but did not finish, with their inputs."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM aggregations WHERE status = 'pending' ORDER BY created_at"
            ).fetchall()
            found = []
            for row in rows:
                uploads = db.execute(
                    "SELECT * FROM uploads WHERE branch_id = ? AND run_number = ? AND round = ? "
                    "AND active = 1 ORDER BY created_at",
                    (row["branch_id"], row["run_number"], row["round"]),
                ).fetchall()
                found.append((Aggregation(**dict(row)), [Upload(**dict(u)) for u in uploads]))
        return found

    def aggregation(self, aggregation_id: str) -> Aggregation | None:
        """An aggregation by id."""
        with self._tx() as db:
            row = db.execute(
                "SELECT * FROM aggregations WHERE aggregation_id = ?", (aggregation_id,)
            ).fetchone()
        return Aggregation(**dict(row)) if row else None

    def aggregations(self) -> list[Aggregation]:
        """All aggregations, oldest first."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM aggregations ORDER BY created_at").fetchall()
        return [Aggregation(**dict(row)) for row in rows]

    def upload(self, file_id: str) -> Upload | None:
        """An upload by id."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM uploads WHERE file_id = ?", (file_id,)).fetchone()
        return Upload(**dict(row)) if row else None

    def uploads(self) -> list[Upload]:
        """All uploads, oldest first."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM uploads ORDER BY created_at").fetchall()
        return [Upload(**dict(row)) for row in rows]

    # ------------------------------------------------------------ metrics

    def add_metric(self, leaf: Leaf, aggregation_id: str, mode: str, data: str) -> int:
        """Store one performance report; returns its id."""
        with self._tx() as db:
            cursor = db.execute(
                "INSERT INTO metrics (leaf_id, branch_id, tree_id, aggregation_id, mode, data, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (leaf.id, leaf.branch_id, leaf.tree_id, aggregation_id, mode, data, now_iso()),
            )
            return int(cursor.lastrowid or 0)

    def metrics(self) -> list[dict[str, Any]]:
        """All performance reports, oldest first."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM metrics ORDER BY id").fetchall()
        return [dict(row) for row in rows]
