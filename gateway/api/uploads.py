"""`POST /upload`: a weights file from the trainer, validated and forwarded to BranchKey."""

from __future__ import annotations

import time
from typing import Annotated, NamedTuple

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from gateway.activity import UploadRecord
from gateway.errors import PROBLEM_BASE, GatewayError
from gateway.forwarding import Forwarded, UploadOptions
from gateway.multipart import MultipartError
from gateway.openapi import weights_body
from gateway.problems import (
    MALFORMED,
    NO_SESSION,
    UNAUTHORIZED,
    UPLOAD,
    UPSTREAM,
    problem_body,
    problem_responses,
)
from gateway.state import GatewayState, StateDep
from gateway.weights import LEARNING, WeightingSource, WeightsError

router = APIRouter(tags=["uploads"])


class LayerInfo(BaseModel):
    """One layer of the uploaded payload."""

    key: str
    dtype: str
    shape: list[int]
    name: str | None = Field(
        None,
        description="The tensor's own name in a safetensors file or named NPZ (sent as `key`).",
    )


class UploadResult(BaseModel):
    """What BranchKey received (`sha256` and `size` are of the file sent upstream: the NPZ, or in
    protocol v1 the object `.npy`)."""

    file_id: str
    sha256: str
    size: int
    kind: str
    weighting: float | None
    weighting_source: WeightingSource | None = Field(
        description="Where the weighting came from: 'file' (the NPZ's weighting or the v1 sample "
        "count), 'request' (a 'weighting' form field or ?weighting=), 'default' (neither: 1.0)."
    )
    layers: list[LayerInfo]
    note: str | None = Field(
        None,
        description="Something worth knowing about an accepted upload, e.g. that a weighting of 0 "
        "leaves the aggregated mean where the other uploads put it.",
    )


@router.post(
    "/upload",
    status_code=201,
    summary="Upload this leaf's weights",
    responses=problem_responses(UNAUTHORIZED, MALFORMED, NO_SESSION, UPLOAD, UPSTREAM),
    openapi_extra=weights_body(
        "A multipart form (`file`, or `layer_<n>` parts and `weighting`) or the file as the raw body."
    ),
)
async def create_upload(
    request: Request,
    state: StateDep,
    wait: Annotated[
        bool | None, Query(description="Wait for the run to start (default BK_WAIT_FOR_RUN).")
    ] = None,
    wait_timeout: Annotated[
        float | None, Query(gt=0, description="Longest wait in seconds.")
    ] = None,
    weighting: Annotated[
        str | None, Query(description="Aggregation weight; overrides the file's.")
    ] = None,
) -> UploadResult:
    """Upload weights: a multipart `file` part (NPZ, v1 object .npy, a plain .npy array, a list of
    arrays saved with np.save, a safetensors file or an NPZ in your own array names), `layer_<n>`
    .npy parts plus `weighting`, or a raw `application/octet-stream` body. A file without a
    weighting gets `weighting`, else 1.0. Named tensors are sent as `layer_0 ..` in the file's
    order; their names are kept for `GET /aggregations/{id}?format=safetensors`."""
    options = UploadOptions(wait=wait, wait_timeout_s=wait_timeout, weighting=weighting)
    return _result((await forward_recorded(state, request, options)).forwarded)


class Accepted(NamedTuple):
    """An upload BranchKey took, and the newest event id noted when it first took that file."""

    forwarded: Forwarded
    after: int


async def forward_recorded(
    state: GatewayState, request: Request, options: UploadOptions
) -> Accepted:
    """The upload through the forwarder, recorded for GET /uploads whether it is sent or refused
    (`/upload` and `/exchange` alike), with the event id to wait after for its round."""
    length = request.headers.get("content-length")
    received = int(length) if length is not None and length.isdigit() else None
    log = state.events.log
    newest = 0

    async def note_newest_event() -> None:
        # Taken right before the upload goes upstream: an aggregation announced while it is on
        # its way, or before a wait for it starts, has a later id and is not missed.
        nonlocal newest
        newest = (await to_thread.run_sync(log.bounds))[1]

    try:
        forwarded = await state.forwarder.handle(request, options, note_newest_event)
    except Exception as exc:
        state.activity.record_upload(_refused(exc, received))
        raise
    after = await to_thread.run_sync(log.first_sent, forwarded.file_id, newest)
    result = _result(forwarded)
    state.activity.record_upload(
        UploadRecord(
            time.time(),
            "forwarded",
            received,
            size=result.size,
            file_id=result.file_id,
            kind=result.kind,
            weighting=result.weighting,
            weighting_source=result.weighting_source,
            layers=len(result.layers),
        )
    )
    return Accepted(forwarded, after)


def _refused(error: Exception, received: int | None) -> UploadRecord:
    if isinstance(error, GatewayError | WeightsError | MultipartError):
        problem = problem_body(error)
        kind, detail = str(problem["type"]), str(problem["detail"])
    else:  # the exception handler logs it and answers the internal problem
        kind, detail = PROBLEM_BASE + "internal", "The gateway failed unexpectedly."
    return UploadRecord(time.time(), "refused", received, problem_type=kind, detail=detail)


def _names(forwarded: Forwarded, count: int) -> list[str | None]:
    if forwarded.names is None:
        return [None] * count
    return [tensor.name for tensor in forwarded.names.tensors]


def _result(forwarded: Forwarded) -> UploadResult:
    payload = forwarded.payload
    return UploadResult(
        file_id=forwarded.file_id,
        sha256=forwarded.sha256.hex(),
        size=forwarded.size,
        kind=payload.kind,
        weighting=payload.weighting,
        weighting_source=forwarded.weighting_source,
        layers=[
            LayerInfo(key=a.key, dtype=a.dtype, shape=list(a.shape), name=name)
            for a, name in zip(payload.arrays, _names(forwarded, len(payload.arrays)), strict=True)
        ],
        note=upload_note(forwarded),
    )


def upload_note(forwarded: Forwarded) -> str | None:
    """What the trainer should know about an accepted upload (None: nothing special)."""
    payload = forwarded.payload
    if payload.kind == LEARNING and payload.weighting == 0:
        return (
            "weighting is 0: the upload is accepted and counts for the round, but it will not "
            "move the aggregated mean (unless every upload of the round weighs 0)."
        )
    return None
