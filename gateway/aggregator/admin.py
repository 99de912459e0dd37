"""The admin API (`/admin/...`, Bearer admin token): run control, forced aggregation, listings."""

from __future__ import annotations

from typing import Any, Final, get_args

from anyio import to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.aggregator.analytics import FIELD_OPERATIONS
from gateway.aggregator.auth import require_admin
from gateway.aggregator.bodies import read_json
from gateway.aggregator.errors import BadRequestError, ConflictError
from gateway.aggregator.openapi import errors, link
from gateway.aggregator.records import Branch
from gateway.aggregator.rounds import get_branch, maybe_close_round, min_leaves
from gateway.aggregator.schemas import (
    AggregationBody,
    AggregationListBody,
    BranchListBody,
    BranchRecordBody,
    FieldOperationsBody,
    LeafListBody,
    MetricListBody,
    RoundListBody,
    UploadListBody,
    json_body,
)
from gateway.aggregator.settings import RunStatus
from gateway.aggregator.state import AggregatorState, StateDep
from gateway.aggregator.websocket import run_status_message

_RUN_STATUSES: Final = get_args(RunStatus)

_NAMED: Final = "The branch; may be left out (or null) when there is only one."

_AGGREGATION_LINKS: Final = {
    "Download": link("get_download", "file_id", "$response.body#/data/aggregation_id"),
    "DownloadV1": link("get_download_v1", "file_id", "$response.body#/data/aggregation_id"),
}

admin = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


async def _admin_branch(state: AggregatorState, branch_id: object) -> Branch:
    if branch_id is not None and not isinstance(branch_id, str):
        raise BadRequestError("'branch_id' must be a string.")
    if branch_id is not None:
        return await get_branch(state, branch_id)
    branches = await to_thread.run_sync(state.store.branches)
    if len(branches) != 1:
        raise BadRequestError("There are several branches: name one with 'branch_id'.")
    return branches[0]


@admin.post(
    "/run",
    response_model=BranchRecordBody,
    responses=errors(400, 401, 404, 413),
    openapi_extra=json_body(
        {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string", "enum": ["start", "stop", "pause"]},
                "branch_id": {"type": ["string", "null"], "description": _NAMED},
            },
        }
    ),
)
async def set_run(request: Request, state: StateDep) -> dict[str, Any]:
    """Set a run's status: `{"status": "start"|"stop"|"pause", "branch_id"?}`.

    `start` after `stop` opens a new run; after `pause` it resumes the run and its open round.
    """
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


@admin.get("/fields", response_model=FieldOperationsBody, responses=errors(400, 401, 404))
async def list_field_operations(state: StateDep, branch_id: str | None = None) -> dict[str, Any]:
    """The operations assigned to a branch's analytics fields."""
    branch = await _admin_branch(state, branch_id)
    assigned = await to_thread.run_sync(state.store.field_operations, branch.branch_id)
    return {"data": {"branch_id": branch.branch_id, "fields": assigned}}


@admin.put(
    "/fields",
    response_model=FieldOperationsBody,
    responses=errors(400, 401, 404, 413),
    openapi_extra=json_body(
        {
            "type": "object",
            "required": ["fields"],
            "properties": {
                "fields": {
                    "type": "object",
                    "minProperties": 1,
                    "propertyNames": {"minLength": 1},
                    "additionalProperties": {"type": "string", "enum": list(FIELD_OPERATIONS)},
                },
                "branch_id": {"type": ["string", "null"], "description": _NAMED},
            },
        }
    ),
)
async def assign_field_operations(request: Request, state: StateDep) -> dict[str, Any]:
    """Assign operations to analytics fields: `{"fields": {"<field>": "sum"|"min"|"max"|"mean"|
    "must_match"}, "branch_id"?}` (the bundle suffixes of save_analytics need none)."""
    body = await read_json(request)
    fields = body.get("fields") if isinstance(body, dict) else None
    if (
        not isinstance(fields, dict)
        or not fields
        or not all(
            isinstance(name, str) and name and operation in FIELD_OPERATIONS
            for name, operation in fields.items()
        )
    ):
        raise BadRequestError(
            f'Send {{"fields": {{"<field>": "<operation>"}}}} with operations among '
            f"{', '.join(FIELD_OPERATIONS)}."
        )
    branch = await _admin_branch(state, body.get("branch_id"))
    async with state.branch_lock(branch.branch_id):
        assigned = await to_thread.run_sync(
            state.store.assign_field_operations, branch.branch_id, fields
        )
    return {"data": {"branch_id": branch.branch_id, "fields": assigned}}


@admin.post(
    "/aggregate",
    response_model=AggregationBody,
    status_code=202,
    responses={
        200: {"model": AggregationBody, "links": _AGGREGATION_LINKS},
        202: {"links": _AGGREGATION_LINKS},
        **errors(400, 401, 404, 409, 413),
    },
    openapi_extra=json_body(
        {
            "type": "object",
            "properties": {"branch_id": {"type": ["string", "null"], "description": _NAMED}},
        },
        required=False,
    ),
)
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
    assert record is not None  # noqa: S101 - close_round wrote it, and nothing deletes aggregations
    return JSONResponse({"data": record.__dict__}, status_code=200 if wait else 202)


@admin.get("/leaves", response_model=LeafListBody, responses=errors(401))
async def list_leaves(state: StateDep) -> dict[str, Any]:
    """Known leaves (without tokens)."""
    leaves = await to_thread.run_sync(state.store.leaves)
    return {"data": [leaf.public() for leaf in leaves]}


@admin.get("/branches", response_model=BranchListBody, responses=errors(401))
async def list_branches(state: StateDep) -> dict[str, Any]:
    """Branches with their run status, run number and current round."""
    branches = await to_thread.run_sync(state.store.branches)
    return {"data": [b.__dict__ for b in branches]}


@admin.get("/rounds", response_model=RoundListBody, responses=errors(401))
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


@admin.get("/uploads", response_model=UploadListBody, responses=errors(401))
async def list_uploads(state: StateDep) -> dict[str, Any]:
    """Every stored upload."""
    return {"data": [u.__dict__ for u in await to_thread.run_sync(state.store.uploads)]}


@admin.get("/aggregations", response_model=AggregationListBody, responses=errors(401))
async def list_aggregations(state: StateDep) -> dict[str, Any]:
    """Every aggregation with its status."""
    return {"data": [a.__dict__ for a in await to_thread.run_sync(state.store.aggregations)]}


@admin.get("/metrics", response_model=MetricListBody, responses=errors(401))
async def list_metrics(state: StateDep) -> dict[str, Any]:
    """Every performance report."""
    return {"data": await to_thread.run_sync(state.store.metrics)}
