"""Protocol v3 routes of the aggregator (`/api/v1/...`): Bearer leaves, NPZ weights, WebSocket notifications."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse

from gateway.aggregator.auth import LeafDep, own_branch
from gateway.aggregator.blobs import download_url, serve_blob
from gateway.aggregator.errors import ServiceUnavailableError
from gateway.aggregator.openapi import errors, link
from gateway.aggregator.performance import store_metric
from gateway.aggregator.rounds import get_branch, min_leaves
from gateway.aggregator.schemas import (
    BLOB_RESPONSES,
    METRIC_REQUEST,
    UPLOAD_REQUEST,
    BranchConfigBody,
    DownloadBody,
    FileIdBody,
    MetricBody,
    RunBody,
    TicketBody,
)
from gateway.aggregator.state import StateDep
from gateway.aggregator.uploads import receive_upload
from gateway.aggregator.websocket import TicketCapacityError, run_status_message

api = APIRouter(prefix="/api/v1")


@api.get("/run/{branch_id}", response_model=RunBody, responses=errors(401, 403, 404))
async def get_run(branch_id: str, leaf: LeafDep, state: StateDep) -> dict[str, Any]:
    """Run status and number of the leaf's branch."""
    own_branch(leaf, branch_id)
    branch = await get_branch(state, branch_id)
    return {"data": {"run_status": branch.run_status, "run_number": branch.run_number}}


@api.post(
    "/file/upload",
    status_code=201,
    response_model=FileIdBody,
    responses={
        201: {
            "links": {
                "DownloadUpload": link("get_download", "file_id", "$response.body#/data/file_id")
            }
        },
        **errors(400, 401, 409, 413, 422),
    },
    openapi_extra=UPLOAD_REQUEST,
)
async def create_upload(request: Request, leaf: LeafDep, state: StateDep) -> dict[str, Any]:
    """Receive one weights file: stream, verify integrity, validate, store, maybe close the round."""
    return {"data": {"file_id": await receive_upload(request, leaf, state)}}


@api.get(
    "/file/download/{file_id}",
    response_model=DownloadBody,
    responses=errors(401, 403, 404, 409, 422),
)
async def get_download(
    file_id: str, request: Request, leaf: LeafDep, state: StateDep
) -> dict[str, Any]:
    """A signed, expiring, absolute URL for an aggregation of the leaf's branch or one of its uploads."""
    return {"data": {"download_url": await download_url(state, request, leaf, "npz", file_id)}}


@api.get("/blob/{file_id}", response_model=None, responses=BLOB_RESPONSES)
async def get_blob(
    file_id: str,
    state: StateDep,
    expires: Annotated[int, Query()] = 0,
    signature: Annotated[str, Query()] = "",
) -> FileResponse:
    """The file behind a download URL: no credentials, a valid unexpired signature instead."""
    return await serve_blob(state, "npz", file_id, expires, signature)


@api.post(
    "/performance/analysis",
    status_code=201,
    response_model=MetricBody,
    responses=errors(400, 401, 403, 404, 413),
    openapi_extra=METRIC_REQUEST,
)
async def create_metric(request: Request, leaf: LeafDep, state: StateDep) -> dict[str, Any]:
    """Store a performance report (the body is JSON whatever its Content-Type)."""
    return {"data": {"id": await store_metric(request, leaf, state)}}


@api.get(
    "/config/branch/{branch_id}", response_model=BranchConfigBody, responses=errors(401, 403, 404)
)
async def get_branch_config(branch_id: str, leaf: LeafDep, state: StateDep) -> dict[str, Any]:
    """The branch configuration in its documented shape."""
    own_branch(leaf, branch_id)
    branch = await get_branch(state, branch_id)
    needed = await to_thread.run_sync(min_leaves, state, branch_id)
    return {
        "data": {
            "branch": {"id": branch.branch_id, "name": branch.branch_id, "tree_id": branch.tree_id},
            "service": {"algorithm": "fedavg", "parameters": {"min_leaves": needed}},
            "created_at": branch.created_at,
            "updated_at": branch.updated_at,
        }
    }


@api.post(
    "/ws/ticket", response_model=None, responses={200: {"model": TicketBody}, **errors(401, 503)}
)
async def create_ticket(leaf: LeafDep, state: StateDep) -> JSONResponse:
    """A single-use, expiring ticket for the notification WebSocket (exactly 200, application/json)."""
    try:
        ticket = state.tickets.issue(leaf.id, leaf.branch_id)
    except TicketCapacityError:
        raise ServiceUnavailableError(
            "Too many WebSocket tickets are outstanding; retry shortly."
        ) from None
    body = {
        "ticket_id": ticket.ticket_id,
        "request_id": ticket.request_id,
        "expires_at": ticket.expires_at_iso(),
    }
    return JSONResponse({"data": body}, status_code=200)


@api.websocket("/ws")
async def notifications(
    websocket: WebSocket, state: StateDep, ticket: str = "", request_id: str = ""
) -> None:
    """Notifications of the leaf's branch: run status on connect, then aggregations and run changes."""
    redeemed = state.tickets.redeem(ticket, request_id)
    if redeemed is None:
        await websocket.close(code=1008)  # before accept: the handshake fails with 403
        return
    branch = await to_thread.run_sync(state.store.branch, redeemed.branch_id)
    await websocket.accept()
    first = run_status_message(branch.run_status) if branch else None
    await state.hub.serve(websocket, redeemed, first)
