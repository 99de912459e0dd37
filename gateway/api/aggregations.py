"""`/aggregations`: the long-poll list, the latest one, and each aggregation's file (Range, ETag, If-None-Match)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from starlette.types import Message, Receive, Scope, Send

from gateway.cache import Format
from gateway.errors import ConflictError, NotFoundError
from gateway.events import Event
from gateway.names import DownloadFormat, Names, Plain, wants_names
from gateway.problems import (
    DISK_FULL,
    MALFORMED,
    NAMED_DOWNLOAD,
    NO_SESSION,
    UNAUTHORIZED,
    UPSTREAM,
    problem_responses,
    problems_of,
)
from gateway.state import MetricsDep, StateDep

router = APIRouter(tags=["aggregations"])

MAX_LONG_POLL_S = 60.0
_BATCH = 500


class AggregationEvent(BaseModel):
    """An aggregation the upstream announced."""

    id: int
    aggregation_id: str
    run_number: Any = None
    received_at: str


def _aggregation(event: Event) -> AggregationEvent:
    return AggregationEvent(id=event.id, **event.data)


@router.get(
    "/aggregations",
    summary="List aggregations after an event id (long poll)",
    responses=problem_responses(UNAUTHORIZED, MALFORMED, problems_of(ConflictError)),
)
async def list_aggregations(
    state: StateDep,
    after: Annotated[
        int | None, Query(ge=0, description="Return aggregation events after this id.")
    ] = None,
    wait: Annotated[
        float, Query(ge=0, description=f"Seconds to wait for one (max {MAX_LONG_POLL_S:g}).")
    ] = 0,
) -> list[AggregationEvent]:
    """Long-poll: aggregation events after `after` at once, or wait up to `wait` s for the next; [] on timeout."""
    log, hub = state.events.log, state.events.hub
    newest = (await to_thread.run_sync(log.bounds))[1]
    if after is None:
        after = newest
    elif after > newest:
        raise ConflictError(
            f"Event id {after} was never issued here (the newest is {newest}); "
            "start again without 'after', or from /aggregations/latest.",
            newest=newest,
        )
    deadline = anyio.current_time() + min(wait, MAX_LONG_POLL_S)
    while True:
        # Subscribed before the log is read: an event stored in between still wakes the wait.
        with hub.subscribe(("aggregation",)) as subscriber:
            found: list[Event] = await to_thread.run_sync(
                log.after, after, ("aggregation",), _BATCH
            )
            remaining = deadline - anyio.current_time()
            if found or remaining <= 0:
                return [_aggregation(event) for event in found]
            if hub.closing.is_set():
                return []  # shutting down: answer now rather than hold the server open
            with anyio.move_on_after(remaining):
                await anext(subscriber, None)  # an event, a keep-alive tick, or shutdown


_ID = "$response.body#/aggregation_id"
_LATEST_LINKS = {
    "download": {"operationId": "stream_aggregation", "parameters": {"aggregation_id": _ID}},
    "headers": {"operationId": "head_aggregation", "parameters": {"aggregation_id": _ID}},
    "newer": {"operationId": "list_aggregations", "parameters": {"after": "$response.body#/id"}},
}
"""Where the newest aggregation leads (OpenAPI links: generated clients and stateful fuzzers follow them)."""


@router.get(
    "/aggregations/latest",
    summary="The newest aggregation",
    responses={
        200: {"description": "The newest aggregation event.", "links": _LATEST_LINKS},
        **problem_responses(UNAUTHORIZED, problems_of(NotFoundError)),
    },
)
async def get_latest_aggregation(state: StateDep) -> AggregationEvent:
    """The newest aggregation the gateway has heard of."""
    event = await to_thread.run_sync(state.events.log.latest, "aggregation")
    if event is None:
        raise NotFoundError("No aggregation has been announced yet.")
    return _aggregation(event)


_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The aggregated model.",
    },
    206: {"description": "Partial Content: the byte range asked for with Range."},
    304: {"description": "Not Modified: If-None-Match holds the current ETag (or *)."},
    416: {"description": "Range Not Satisfiable: the Range lies outside the file."},
    **problem_responses(UNAUTHORIZED, MALFORMED, NO_SESSION, UPSTREAM, NAMED_DOWNLOAD, DISK_FULL),
}


@router.head(
    "/aggregations/{aggregation_id}",
    response_class=FileResponse,
    responses=_FILE_RESPONSES,
    operation_id="head_aggregation",
    summary="An aggregation's headers (size, ETag) without the file",
)
@router.get(
    "/aggregations/{aggregation_id}",
    response_class=FileResponse,
    responses=_FILE_RESPONSES,
    operation_id="stream_aggregation",
    summary="Download an aggregation",
)
async def stream_aggregation(
    aggregation_id: str,
    state: StateDep,
    metrics: MetricsDep,
    fmt: Annotated[
        DownloadFormat,
        Query(
            alias="format",
            description="npz: an NPZ of plain arrays; npy: the v1 object array; safetensors: "
            "safetensors in the trainer's own names and dtypes.",
        ),
    ] = DownloadFormat.npz,
    names: Annotated[
        Names | None,
        Query(
            description="original: the tensor names and dtypes of this leaf's last safetensors "
            "or named-NPZ upload (the default for safetensors); layer: layer_0 .. (the default "
            "for npz and npy)."
        ),
    ] = None,
    if_none_match: Annotated[
        str | None,
        Header(description="ETags the client holds (or *): a match is answered 304 Not Modified."),
    ] = None,
) -> Response:
    """The aggregated model: `layer_0 ..` as an NPZ of plain arrays, or (`?format=npy`) the v1 object
    array (from a v1 upstream with its sample count; from a v3 upstream with 0 samples), or in the
    trainer's own tensor names (`?format=safetensors`, `?format=npz&names=original`): 409 when no
    names are remembered or they do not fit this aggregation's layers."""
    if wants_names(fmt, names):
        plain = await state.cache.open(state.session.require, aggregation_id, Format.npz)
        try:
            served = await state.names.open(
                Plain(plain.path, plain.sha256), aggregation_id, fmt, names
            )
        finally:
            await to_thread.run_sync(functools.partial(plain.path.unlink, missing_ok=True))
        path, sha256, suffix = served.path, served.sha256, served.suffix
    else:
        cached = await state.cache.open(state.session.require, aggregation_id, Format(fmt.value))
        path, sha256, suffix = cached.path, cached.sha256, fmt.value
    headers = {
        "ETag": f'"{sha256}"',
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if etag_matches(if_none_match, headers["ETag"]):
        await to_thread.run_sync(functools.partial(path.unlink, missing_ok=True))
        return Response(status_code=304, headers=headers)
    return SentFileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{aggregation_id}.{suffix}",
        headers=headers,
        cleanup=lambda: path.unlink(missing_ok=True),
        on_sent=metrics.record_download,
    )


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or any listed tag equal to `etag` by weak comparison."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    ours = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == ours for tag in if_none_match.split(","))


class SentFileResponse(FileResponse):
    """A `FileResponse` that reports the body bytes it sent once it sent them all (not for HEAD),
    and removes its file afterwards whatever happened."""

    # Models are hundreds of MiB: 1 MiB reads cost one worker-thread hop each instead of sixteen.
    chunk_size = 1024 * 1024

    def __init__(
        self,
        *args: Any,
        on_sent: Callable[[int], None],
        cleanup: Callable[[], Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.on_sent = on_sent
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the file, counting the body bytes."""
        sent = 0

        async def counting(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            elif message["type"] == "http.response.pathsend":
                sent += int(self.headers.get("content-length", "0"))
            await send(message)

        try:
            await super().__call__(scope, receive, counting)
        finally:
            # Also after a refused Range (400/416), where FileResponse skips its background task.
            await anyio.to_thread.run_sync(self.cleanup)
        if scope.get("method") != "HEAD":
            self.on_sent(sent)
