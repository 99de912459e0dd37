"""Protocol v1 routes of the aggregator (§3.4): HTTP Basic, `/v1/...` paths, object `.npy` weights.

They share the store, the rounds and the checks of the v3 routes: a v1 leaf and a v3 leaf can take
part in the same round. Notifications for v1 leaves go over AMQP (gateway/aggregator/amqp.py).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from gateway.aggregator.app import (
    AggregatorState,
    BlobResponse,
    StateDep,
    authenticate_leaf,
    blob_url,
    check_blob_signature,
    downloadable,
    receive_upload,
    run_details,
    store_metric,
)
from gateway.aggregator.errors import AggregatorError
from gateway.aggregator.store import Aggregation, Leaf, Upload
from gateway.weights import Limits, ValidationPolicy, aggregate_to_object_npy, npz_to_object_npy

V1_SUFFIX = ".v1.npy"
"""A stored NPZ's v1 copy lives next to it as `<id>.v1.npy`, made on the first v1 download."""


async def _basic_leaf(request: Request, state: StateDep) -> Leaf:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    try:
        # requests encodes `user:password` as latin-1 before base64 (§3.3).
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        decoded = ""
    if scheme.lower() != "basic" or ":" not in decoded:
        raise AggregatorError(
            401,
            "Missing or malformed Authorization header: send HTTP Basic <leaf id>:<session token>.",
        )
    leaf_id, _, token = decoded.partition(":")  # tokens may contain colons
    return await authenticate_leaf(state, leaf_id, token)


BasicLeafDep = Annotated[Leaf, Depends(_basic_leaf)]

v1_api = APIRouter(prefix="/v1")


@v1_api.get("/leaf/authenticate")
async def authenticate(leaf: BasicLeafDep) -> dict[str, Any]:
    """The ids the v1 client works with: owner (`user_id`), tree and branch."""
    return {
        "data": {"user_id": leaf.owner_id, "tree_id": leaf.tree_id, "branch_id": leaf.branch_id}
    }


@v1_api.get("/branch/{branch_id}/run")
async def get_run_v1(branch_id: str, leaf: BasicLeafDep, state: StateDep) -> dict[str, Any]:
    """Run status and number of the leaf's branch."""
    return await run_details(state, leaf, branch_id)


@v1_api.post("/file/upload", status_code=201)
async def create_upload_v1(request: Request, leaf: BasicLeafDep, state: StateDep) -> dict[str, Any]:
    """Receive a v1 object `.npy` (or an NPZ with a whole weighting); the fixed non-JSON metadata is kept as text."""
    return {"data": {"file_id": await receive_upload(request, leaf, state, whole_weighting=True)}}


@v1_api.get("/file/download/{file_id}")
async def get_download_v1(
    file_id: str, request: Request, leaf: BasicLeafDep, state: StateDep
) -> dict[str, Any]:
    """A signed URL of the file in the v1 object `.npy` layout (converted now, so the blob cannot fail)."""
    await v1_copy(state, file_id, await downloadable(state, leaf, file_id))
    return {"data": {"download_url": blob_url(state, request, "npy", file_id)}}


@v1_api.get("/blob/{file_id}", response_model=None)
async def get_blob_v1(
    file_id: str,
    state: StateDep,
    expires: Annotated[int, Query()] = 0,
    signature: Annotated[str, Query()] = "",
) -> FileResponse:
    """The v1 file behind a download URL: no credentials, a signature made for this format instead."""
    check_blob_signature(state, "npy", file_id, expires, signature)
    aggregation: Aggregation | None = await to_thread.run_sync(state.store.aggregation, file_id)
    source = aggregation.path if aggregation else None
    if source is None:
        upload: Upload | None = await to_thread.run_sync(state.store.upload, file_id)
        source = upload.path if upload else None
    if source is None or not await to_thread.run_sync(os.path.exists, source):
        raise AggregatorError(404, f"No file with id {file_id!r}.")
    path = await v1_copy(state, file_id, Path(source))
    return BlobResponse(path, media_type="application/octet-stream", filename=f"{file_id}.npy")


@v1_api.post("/performance/analysis", status_code=201)
async def create_metric_v1(request: Request, leaf: BasicLeafDep, state: StateDep) -> dict[str, Any]:
    """Store a performance report (the v1 client sends JSON without a Content-Type)."""
    return {"data": {"id": await store_metric(request, leaf, state)}}


async def v1_copy(state: AggregatorState, file_id: str, source: Path) -> Path:
    """The v1 object `.npy` of a stored NPZ, written once next to it (off the event loop, one writer)."""
    target = source.with_name(source.name.removesuffix(".npz") + V1_SUFFIX)
    if await to_thread.run_sync(target.exists):
        return target
    lock = state.v1_locks.setdefault(file_id, anyio.Lock())
    try:
        async with lock:
            if not await to_thread.run_sync(target.exists):
                await to_thread.run_sync(_write_v1_copy, state, file_id, source, target)
    finally:
        if not lock.locked() and not lock.statistics().tasks_waiting:
            state.v1_locks.pop(file_id, None)
    return target


def _write_v1_copy(state: AggregatorState, file_id: str, source: Path, target: Path) -> None:
    limits: Limits = state.settings.weights.policy().limits
    aggregation = state.store.aggregation(file_id)
    if aggregation is None:  # one of the leaf's own uploads, kept as an NPZ with its weighting
        npz_to_object_npy(source, target, ValidationPolicy.lenient(limits))
        return
    inputs = state.store.round_uploads(
        aggregation.branch_id, aggregation.run_number, aggregation.round
    )
    aggregate_to_object_npy(source, target, limits, num_samples=_sample_count(inputs))


def _sample_count(inputs: list[Upload]) -> int:
    """The samples behind an aggregate: the sum of its inputs' weightings when they are whole numbers."""
    weightings = [u.weighting for u in inputs]
    if not weightings or any(w is None or not float(w).is_integer() or w < 0 for w in weightings):
        return 0
    return int(sum(w for w in weightings if w is not None))
