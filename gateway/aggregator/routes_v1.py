"""Protocol v1 routes of the aggregator (§3.4): HTTP Basic, `/v1/...` paths, object `.npy` weights.

They share the store, the rounds and the checks of the v3 routes: a v1 leaf and a v3 leaf can take
part in the same round. Notifications for v1 leaves go over AMQP (gateway/aggregator/amqp.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from gateway.aggregator.auth import BasicLeafDep, own_branch
from gateway.aggregator.blobs import download_url, serve_blob
from gateway.aggregator.openapi import errors, link
from gateway.aggregator.performance import store_metric
from gateway.aggregator.rounds import get_branch
from gateway.aggregator.schemas import (
    BLOB_RESPONSES,
    METRIC_REQUEST,
    UPLOAD_REQUEST,
    DownloadBody,
    FileIdBody,
    LeafIdsBody,
    MetricBody,
    RunBody,
)
from gateway.aggregator.state import StateDep
from gateway.aggregator.uploads import receive_upload

v1_api = APIRouter(prefix="/v1")


@v1_api.get("/leaf/authenticate", response_model=LeafIdsBody, responses=errors(401))
async def authenticate(leaf: BasicLeafDep) -> dict[str, Any]:
    """The ids the v1 client works with: owner (`user_id`), tree and branch."""
    return {
        "data": {"user_id": leaf.owner_id, "tree_id": leaf.tree_id, "branch_id": leaf.branch_id}
    }


@v1_api.get("/branch/{branch_id}/run", response_model=RunBody, responses=errors(401, 403, 404))
async def get_run_v1(branch_id: str, leaf: BasicLeafDep, state: StateDep) -> dict[str, Any]:
    """Run status and number of the leaf's branch."""
    own_branch(leaf, branch_id)
    branch = await get_branch(state, branch_id)
    return {"data": {"run_status": branch.run_status, "run_number": branch.run_number}}


@v1_api.post(
    "/file/upload",
    status_code=201,
    response_model=FileIdBody,
    responses={
        201: {
            "links": {
                "DownloadUpload": link("get_download_v1", "file_id", "$response.body#/data/file_id")
            }
        },
        **errors(400, 401, 409, 413, 422),
    },
    openapi_extra=UPLOAD_REQUEST,
)
async def create_upload_v1(request: Request, leaf: BasicLeafDep, state: StateDep) -> dict[str, Any]:
    """Receive a v1 object `.npy` (or an NPZ with a whole weighting); the fixed non-JSON metadata is kept as text."""
    return {"data": {"file_id": await receive_upload(request, leaf, state, whole_weighting=True)}}


@v1_api.get(
    "/file/download/{file_id}",
    response_model=DownloadBody,
    responses=errors(401, 403, 404, 409, 422),
)
async def get_download_v1(
    file_id: str, request: Request, leaf: BasicLeafDep, state: StateDep
) -> dict[str, Any]:
    """A signed URL of the file in the v1 object `.npy` layout (converted now, so the blob cannot fail)."""
    return {"data": {"download_url": await download_url(state, request, leaf, "npy", file_id)}}


@v1_api.get("/blob/{file_id}", response_model=None, responses=BLOB_RESPONSES)
async def get_blob_v1(
    file_id: str,
    state: StateDep,
    expires: Annotated[int, Query()] = 0,
    signature: Annotated[str, Query()] = "",
) -> FileResponse:
    """The v1 file behind a download URL: no credentials, a signature made for this format instead."""
    return await serve_blob(state, "npy", file_id, expires, signature)


@v1_api.post(
    "/performance/analysis",
    status_code=201,
    response_model=MetricBody,
    responses=errors(400, 401, 403, 404, 413),
    openapi_extra=METRIC_REQUEST,
)
async def create_metric_v1(request: Request, leaf: BasicLeafDep, state: StateDep) -> dict[str, Any]:
    """Store a performance report (the v1 client sends JSON without a Content-Type)."""
    return {"data": {"id": await store_metric(request, leaf, state)}}
