"""Performance reports of leaves (both protocol dialects): checked against the leaf, then stored."""

from __future__ import annotations

import json
from typing import Final

from anyio import to_thread
from fastapi import Request

from gateway.aggregator.bodies import read_json
from gateway.aggregator.errors import BadRequestError, ForbiddenError, NotFoundError
from gateway.aggregator.records import Leaf
from gateway.aggregator.state import AggregatorState

METRIC_MODES: Final = ("test", "train", "non-federated")
_REQUIRED: Final = ("mode", "aggregation_id", "leaf_id", "branch_id", "tree_id", "data")


async def store_metric(request: Request, leaf: Leaf, state: AggregatorState) -> int:
    """Both dialects' performance report: checked against the leaf, stored; its id."""
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequestError("The body must be a JSON object.")
    missing = [k for k in _REQUIRED if k not in body]
    if missing:
        raise BadRequestError(f"The report lacks {', '.join(missing)}.")
    if (
        body["leaf_id"] != leaf.id
        or body["branch_id"] != leaf.branch_id
        or body["tree_id"] != leaf.tree_id
    ):
        raise ForbiddenError("leaf_id, branch_id and tree_id must be the authenticated leaf's.")
    if body["mode"] not in METRIC_MODES:
        raise BadRequestError(f"mode must be one of {', '.join(METRIC_MODES)}.")
    if not isinstance(body["aggregation_id"], str):
        raise BadRequestError("aggregation_id must be a string.")
    aggregation = await to_thread.run_sync(state.store.aggregation, body["aggregation_id"])
    if aggregation is None or aggregation.branch_id != leaf.branch_id:
        # A foreign branch's aggregation is answered like an unknown one: its ids are not told.
        raise NotFoundError(
            f"No aggregation {body['aggregation_id'][:80]!r} in this leaf's branch: report on an id "
            "from an aggregation_status notification."
        )
    data = body["data"] if isinstance(body["data"], str) else json.dumps(body["data"])
    return await to_thread.run_sync(
        state.store.add_metric, leaf, body["aggregation_id"], body["mode"], data
    )
