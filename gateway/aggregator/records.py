"""The aggregator's records: leaves, branches, uploads and aggregations, as the store returns them."""

from __future__ import annotations

from dataclasses import dataclass

LEAF_FIELDS = ("id", "name", "session_token", "tree_id", "branch_id", "owner_id")


@dataclass(frozen=True)
class Leaf:
    """A leaf's credentials (the v3 `Credentials` fields)."""

    id: str
    name: str
    session_token: str
    tree_id: str
    branch_id: str
    owner_id: str

    def public(self) -> dict[str, str]:
        """Everything but the token."""
        return {k: getattr(self, k) for k in LEAF_FIELDS if k != "session_token"}


@dataclass(frozen=True)
class Branch:
    """A branch and its run."""

    branch_id: str
    tree_id: str
    run_status: str
    run_number: int
    round: int
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Upload:
    """One stored upload."""

    file_id: str
    leaf_id: str
    branch_id: str
    run_number: int
    round: int
    digest: str
    size: int
    path: str
    kind: str
    weighting: float | None
    metadata: str
    created_at: str
    active: int


@dataclass(frozen=True)
class Aggregation:
    """One aggregation (pending, done or failed)."""

    aggregation_id: str
    branch_id: str
    run_number: int
    round: int
    status: str
    path: str | None
    size: int | None
    sha256: str | None
    contributors: str
    error: str | None
    created_at: str
