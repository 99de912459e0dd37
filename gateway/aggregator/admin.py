"""The admin API (`/admin/...`, Bearer admin token): run control, forced aggregation, listings."""

from __future__ import annotations

from typing import Any, Final, get_args

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.aggregator.auth import require_admin
from gateway.aggregator.bodies import read_json
from gateway.aggregator.errors import BadRequestError, ConflictError
from gateway.aggregator.records import Branch
from gateway.aggregator.rounds import get_branch, maybe_close_round, min_leaves
from gateway.aggregator.settings import RunStatus
from gateway.aggregator.state import AggregatorState, StateDep
from gateway.aggregator.websocket import run_status_message

_RUN_STATUSES: Final = get_args(RunStatus)

admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


async def _admin_branch(state: AggregatorState, branch_id: str | None) -> Branch:
    if branch_id is not None:
        return await get_branch(state, branch_id)
    branches = await to_thread.run_sync(state.store.branches)
    if len(branches) != 1:
        raise BadRequestError("There are several branches: name one with 'branch_id'.")
    return branches[0]


@admin.post("/run")
async def set_run(request: Request, state: StateDep) -> dict[str, Any]:
    """Set a run's status: `{"status": "start"|"stop"|"pause", "branch_id"?}`; start opens a new run."""
    body = await read_json(request)
    if not isinstance(body, dict) or body.get("status") not in _RUN_STATUSES:
        raise BadRequestError('Send {"status": "start" | "stop" | "pause"}.')
    branch = await _admin_branch(state, body.get("branch_id"))
    async with state.branch_lock(branch.branch_id):
        updated = await to_thread.run_sync(
            state.store.set_run_status, branch.branch_id, body["status"]
        )
    state.notify(updated.branch_id, run_status_message(updated.run_status))
    return {"data": updated.__dict__}


@admin.post("/aggregate")
async def force_aggregation(request: Request, state: StateDep, wait: bool = False) -> JSONResponse:
    """Close the current round now, whatever the number of leaves; `?wait=true` waits for the result."""
    body = await read_json(request) if request.headers.get("content-length", "0") != "0" else {}
    branch = await _admin_branch(state, body.get("branch_id") if isinstance(body, dict) else None)
    async with state.branch_lock(branch.branch_id):
        current = await get_branch(state, branch.branch_id)
        aggregation_id = await maybe_close_round(state, current, force=True)
    if aggregation_id is None:
        raise ConflictError("The current round has no uploads to aggregate.")
    if wait:
        event = state.done.get(aggregation_id)
        if event is not None:
            await event.wait()
    record = await to_thread.run_sync(state.store.aggregation, aggregation_id)
    return JSONResponse(
        {"data": record.__dict__ if record else {"aggregation_id": aggregation_id}},
        status_code=202 if not wait else 200,
    )


@admin.get("/leaves")
async def list_leaves(state: StateDep) -> dict[str, Any]:
    """Known leaves (without tokens)."""
    leaves = await to_thread.run_sync(state.store.leaves)
    return {"data": [leaf.public() for leaf in leaves]}


@admin.get("/branches")
async def list_branches(state: StateDep) -> dict[str, Any]:
    """Branches with their run status, run number and current round."""
    branches = await to_thread.run_sync(state.store.branches)
    return {"data": [b.__dict__ for b in branches]}


@admin.get("/rounds")
async def list_rounds(state: StateDep) -> dict[str, Any]:
    """Each branch's open round: who has uploaded, and how many leaves complete it."""
    rounds = []
    for branch in await to_thread.run_sync(state.store.branches):
        uploads = await to_thread.run_sync(
            state.store.round_uploads, branch.branch_id, branch.run_number, branch.round
        )
        rounds.append(
            {
                "branch_id": branch.branch_id,
                "run_number": branch.run_number,
                "round": branch.round,
                "leaves": sorted({u.leaf_id for u in uploads}),
                "min_leaves": await to_thread.run_sync(min_leaves, state, branch.branch_id),
            }
        )
    return {"data": rounds}


@admin.get("/uploads")
async def list_uploads(state: StateDep) -> dict[str, Any]:
    """Every stored upload."""
    return {"data": [u.__dict__ for u in await to_thread.run_sync(state.store.uploads)]}


@admin.get("/aggregations")
async def list_aggregations(state: StateDep) -> dict[str, Any]:
    """Every aggregation with its status."""
    return {"data": [a.__dict__ for a in await to_thread.run_sync(state.store.aggregations)]}


@admin.get("/metrics")
async def list_metrics(state: StateDep) -> dict[str, Any]:
    """Every performance report."""
    return {"data": await to_thread.run_sync(state.store.metrics)}
