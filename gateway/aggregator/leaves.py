"""Where the aggregator's leaves come from: a credentials file, or generated development leaves."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from pathlib import Path
from typing import Any

from gateway.aggregator.records import LEAF_FIELDS, Leaf


class LeavesFileError(Exception):
    """The leaves file cannot be used; the message says why and what to do."""


def load_leaves(path: Path) -> list[Leaf]:
    """Read a JSON list of v3 credential objects (`id, name, session_token, tree_id, branch_id, owner_id`)."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeavesFileError(f"Cannot read leaves file {path}: {exc}.") from None
    if not isinstance(raw, list) or not raw:
        raise LeavesFileError(
            f"Leaves file {path} must hold a non-empty JSON list of leaf objects."
        )
    leaves: list[Leaf] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) and item[k] for k in LEAF_FIELDS
        ):
            raise LeavesFileError(
                f"Leaf {index} in {path} needs the string fields {', '.join(LEAF_FIELDS)}."
            )
        if any(ch in item[k] for k in ("id", "branch_id") for ch in "/?#% "):
            raise LeavesFileError(
                f"Leaf {index} in {path}: ids must be URL-safe (no '/', '?', '#', '%' or spaces)."
            )
        leaves.append(Leaf(**{k: item[k] for k in LEAF_FIELDS}))
    ids = [leaf.id for leaf in leaves]
    if len(set(ids)) != len(ids):
        raise LeavesFileError(f"Leaves file {path} lists a leaf id twice.")
    return leaves


def dev_leaves(data_dir: Path, count: int) -> tuple[list[Leaf], Path]:
    """Development leaves on one tree and branch, kept in `<data_dir>/leaves.json` across restarts."""
    path = data_dir / "leaves.json"
    if path.exists():
        leaves = load_leaves(path)
        if len(leaves) >= count:
            return leaves, path
    tree_id, branch_id, owner_id = (str(uuid.uuid4()) for _ in range(3))
    leaves = [
        Leaf(
            id=str(uuid.uuid4()),
            name=f"leaf-{n}",
            session_token=secrets.token_urlsafe(32),
            tree_id=tree_id,
            branch_id=branch_id,
            owner_id=owner_id,
        )
        for n in range(1, count + 1)
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump([{k: getattr(leaf, k) for k in LEAF_FIELDS} for leaf in leaves], out, indent=2)
    os.replace(tmp, path)
    return leaves, path
