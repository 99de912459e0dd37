"""`POST /exchange`: one call per round: the upload, then the file of the first aggregation announced after it."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute

from gateway.api import uploads
from gateway.api.aggregations import aggregation_file, model_file
from gateway.errors import (
    AggregationTimeoutError,
    BadRequestError,
    GatewayError,
    ShuttingDownError,
)
from gateway.events import Event, Events
from gateway.forwarding import Forwarded, UploadOptions
from gateway.names import DownloadFormat, Names
from gateway.problems import (
    DISK_FULL,
    MALFORMED,
    NAMED_DOWNLOAD,
    NO_SESSION,
    UNAUTHORIZED,
    UPLOAD,
    UPSTREAM,
    problem_responses,
    problems_of,
)
from gateway.state import MetricsDep, StateDep

router = APIRouter(tags=["uploads"])

DISCONNECT_POLL_S = 1.0
"""How often a waiting exchange checks that its client is still there."""


def _upload_openapi() -> dict[str, Any] | None:
    """What `/upload` adds to its OpenAPI operation (its request bodies): `/exchange` takes the same."""
    for route in uploads.router.routes:
        if isinstance(route, APIRoute) and route.path == "/upload":
            return route.openapi_extra
    return None


@router.post(
    "/exchange",
    response_class=FileResponse,
    summary="Upload, then download the round's aggregation",
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "The first aggregation announced after the upload was sent, as "
            "GET /aggregations/{id} serves it; X-Aggregation-Id and X-File-Id name both files.",
        },
        **problem_responses(
            UNAUTHORIZED,
            MALFORMED,
            NO_SESSION,
            UPLOAD,
            UPSTREAM,
            NAMED_DOWNLOAD,
            DISK_FULL,
            problems_of(AggregationTimeoutError, ShuttingDownError),
        ),
    },
    openapi_extra=_upload_openapi(),
)
async def exchange_weights(
    request: Request,
    state: StateDep,
    metrics: MetricsDep,
    wait: Annotated[
        bool | None, Query(description="Wait for the run to start (default BK_WAIT_FOR_RUN).")
    ] = None,
    wait_timeout: Annotated[
        float | None,
        Query(
            gt=0,
            description="Longest wait in seconds, for the run and then for the aggregation "
            "(default and cap GATEWAY_WAIT_TIMEOUT_S).",
        ),
    ] = None,
    weighting: Annotated[
        str | None, Query(description="Aggregation weight; overrides the file's.")
    ] = None,
    fmt: Annotated[
        DownloadFormat,
        Query(
            alias="format",
            description="npz: an NPZ of plain arrays; npy: the v1 object array; safetensors: "
            "safetensors in the trainer's own names and dtypes (as GET /aggregations/{id}).",
        ),
    ] = DownloadFormat.npz,
    names: Annotated[
        Names | None,
        Query(
            description="original: the tensor names and dtypes of this leaf's last named upload "
            "(the default for safetensors); layer: layer_0 .. (as GET /aggregations/{id})."
        ),
    ] = None,
) -> Response:
    """Upload weights exactly as `POST /upload` takes them, wait for the first aggregation announced
    after the upload was sent, and answer with its file, as `GET /aggregations/{id}` does: a bash
    trainer's round is `curl -F file=@w.npy localhost:8000/exchange -o next.npz`. A 504
    `aggregation-timeout` problem (with `file_id` and the event id to resume `after`) when none comes
    within `wait_timeout`: the upload was accepted then, so do not send it again."""
    options = UploadOptions(wait=wait, wait_timeout_s=wait_timeout, weighting=weighting)
    events = state.events
    # `after` is from the file's first sending: a retried exchange of a file BranchKey deduplicated
    # gets the round that file is in, instead of waiting for one that never comes.
    forwarded, after = await uploads.forward_recorded(state, request, options)
    budget = state.forwarder.wait_timeout(options)
    event = await _next_aggregation(events, after, budget, request, forwarded)
    aggregation_id = str(event.data["aggregation_id"])
    try:
        path, sha256, suffix = await aggregation_file(state, aggregation_id, fmt, names)
    except GatewayError as error:
        error.extra.update(file_id=forwarded.file_id, aggregation_id=aggregation_id)
        raise
    headers = {
        "ETag": f'"{sha256}"',
        "X-Aggregation-Id": _header(aggregation_id),
        "X-File-Id": _header(forwarded.file_id),
        "X-Event-Id": str(event.id),
    }
    note = uploads.upload_note(forwarded)
    if note is not None:
        headers["X-Upload-Note"] = note
    return model_file(path, f"{aggregation_id}.{suffix}", headers, metrics.record_download)


async def _next_aggregation(
    events: Events, after: int, budget_s: float, request: Request, forwarded: Forwarded
) -> Event:
    """The first aggregation event after `after`, waiting up to `budget_s`."""
    deadline = anyio.current_time() + budget_s
    resume = f"curl 'localhost:8000/aggregations?after={after}&wait=60'"
    while True:
        remaining = deadline - anyio.current_time()
        found = await events.wait_after(
            after, ("aggregation",), 1, max(0.0, min(remaining, DISCONNECT_POLL_S))
        )
        if found:
            return found[0]
        if found is None:
            raise ShuttingDownError(
                f"The gateway is shutting down; the upload was accepted (file_id "
                f"{forwarded.file_id}): fetch the round's aggregation after the restart "
                f"({resume}).",
                file_id=forwarded.file_id,
                after=after,
            )
        if deadline - anyio.current_time() <= 0:
            raise AggregationTimeoutError(
                f"The upload was accepted (file_id {forwarded.file_id}), but no aggregation "
                f"was announced within {budget_s:g} s. Do not upload it again: fetch the "
                f"round's aggregation when it comes ({resume}), or raise ?wait_timeout "
                "(at most GATEWAY_WAIT_TIMEOUT_S).",
                file_id=forwarded.file_id,
                after=after,
            )
        if await request.is_disconnected():
            raise BadRequestError(
                f"The client left while waiting for the aggregation (upload file_id "
                f"{forwarded.file_id} was accepted).",
                file_id=forwarded.file_id,
                after=after,
            )


def _header(value: str) -> str:
    """An id as a header value (ASCII: anything else percent-encoded)."""
    return quote(value, safe="-._~:@!$&'()*+,;=/")
