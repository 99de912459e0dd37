"""`/aggregations`: the long-poll list, the latest one, and each aggregation's file (Range, ETag, If-None-Match)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from gateway.cache import Format, Passing, Served, check_id
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
from gateway.state import GatewayState, MetricsDep, StateDep

log = logging.getLogger("gateway.aggregations")
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
    log = state.events.log
    newest = (await to_thread.run_sync(log.bounds))[1]
    if after is None:
        after = newest
    elif after > newest:
        raise ConflictError(
            f"Event id {after} was never issued here (the newest is {newest}); "
            "start again without 'after', or from /aggregations/latest.",
            newest=newest,
        )
    # None: shutting down, so answer now rather than hold the server open.
    found = await state.events.wait_after(
        after, ("aggregation",), _BATCH, min(wait, MAX_LONG_POLL_S)
    )
    return [_aggregation(event) for event in found or []]


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


_CACHE_CONTROL = "private, max-age=31536000, immutable"
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
    names are remembered or they do not fit this aggregation's layers.

    The first GET of an NPZ that BranchKey already holds in this layout is passed on while it
    arrives (no ETag then: the digest is known only at the end); a file that turns out invalid
    ends the answer early, never complete. Every later answer comes from the cache, with ETag."""
    check_id(aggregation_id)
    if not wants_names(fmt, names):
        cache_fmt = Format(fmt.value)
        return AggregationResponse(
            Delivery(
                lambda through: state.cache.deliver(
                    state.session.require, aggregation_id, cache_fmt, through=through
                ),
                f"{aggregation_id}.{fmt.value}",
                if_none_match,
                metrics.record_download,
            )
        )
    path, sha256, suffix = await aggregation_file(state, aggregation_id, fmt, names)
    filename = f"{aggregation_id}.{suffix}"
    return await cached_answer(path, sha256, filename, if_none_match, metrics.record_download)


@dataclass(frozen=True)
class Delivery:
    """What one answer sends: the cache's delivery of (id, format), named `filename`."""

    deliver: Callable[[bool], AbstractAsyncContextManager[Served | Passing]]
    filename: str
    if_none_match: str | None
    on_sent: Callable[[int], None]


class AggregationResponse(Response):
    """Answers from the cache (a file: Range, HEAD, ETag) or, for a cold GET, while the file
    arrives; the trainer going away cancels the fetch at once (and releases the id's lock)."""

    def __init__(self, delivery: Delivery) -> None:
        super().__init__()
        self.delivery = delivery

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer, watching for the client's disconnect meanwhile."""
        failure: Exception | None = None
        complete = anyio.Event()

        async def sending(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.pathsend" or (
                message["type"] == "http.response.body" and not message.get("more_body", False)
            ):
                complete.set()  # a disconnect from now on is the client being done

        async with anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, receive, complete, group.cancel_scope)
            try:
                await self._answer(scope, receive, sending)
            except Exception as exc:  # re-raised outside the group, unwrapped
                failure = exc
            group.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        through = (
            scope["method"] == "GET"
            and "range" not in headers
            and self.delivery.if_none_match is None
        )
        async with self.delivery.deliver(through) as got:
            if isinstance(got, Served):
                await self._served(got, scope, receive, send)
            else:
                await self._passed(got, send)

    async def _served(self, served: Served, scope: Scope, receive: Receive, send: Send) -> None:
        delivery = self.delivery
        answer = await cached_answer(
            served.path, served.sha256, delivery.filename, delivery.if_none_match, delivery.on_sent
        )
        await answer(scope, receive, send)

    async def _passed(self, passing: Passing, send: Send) -> None:
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-disposition", f'attachment; filename="{self.delivery.filename}"'.encode()),
            (b"cache-control", _CACHE_CONTROL.encode()),
        ]
        if passing.length is not None:
            headers.append((b"content-length", str(passing.length).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        try:
            async for chunk in passing.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        except Exception:
            log.warning(
                "cut off the answer for %s after %d bytes: the file did not check out",
                self.delivery.filename,
                sent,
                exc_info=True,
            )
            raise
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.delivery.on_sent(sent)


async def _cancel_on_disconnect(
    receive: Receive, complete: anyio.Event, scope: anyio.CancelScope
) -> None:
    """Cancel `scope` once the client has gone before the answer was complete."""
    while (await receive())["type"] != "http.disconnect":
        pass  # any request body is skipped
    if not complete.is_set():
        scope.cancel()


async def aggregation_file(
    state: GatewayState, aggregation_id: str, fmt: DownloadFormat, names: Names | None
) -> tuple[Path, str, str]:
    """A private link to an aggregation's complete file in `fmt` (the caller removes it), its sha256
    and its file suffix: from the cache (stored first), or in the trainer's names (`/exchange`)."""
    if wants_names(fmt, names):
        plain = await state.cache.open(state.session.require, aggregation_id, Format.npz)
        try:
            served = await state.names.open(
                Plain(plain.path, plain.sha256), aggregation_id, fmt, names
            )
        finally:
            await to_thread.run_sync(functools.partial(plain.path.unlink, missing_ok=True))
        return served.path, served.sha256, served.suffix
    cached = await state.cache.open(state.session.require, aggregation_id, Format(fmt.value))
    return cached.path, cached.sha256, fmt.value


async def cached_answer(
    path: Path,
    sha256: str,
    filename: str,
    if_none_match: str | None,
    on_sent: Callable[[int], None],
) -> Response:
    """A cached file's answer with its ETag: 304 when the client holds it, else the file (`path`, a
    private link, is removed either way)."""
    headers = {"ETag": f'"{sha256}"', "Cache-Control": _CACHE_CONTROL}
    if etag_matches(if_none_match, headers["ETag"]):
        await to_thread.run_sync(functools.partial(path.unlink, missing_ok=True))
        return Response(status_code=304, headers=headers)
    return model_file(path, filename, headers, on_sent)


def model_file(
    path: Path, filename: str, headers: dict[str, str], on_sent: Callable[[int], None]
) -> SentFileResponse:
    """A model sent as the attachment `filename`; `path`, a private link, is removed once sent."""
    return SentFileResponse(
        path,
        media_type="application/octet-stream",
        filename=filename,
        headers=headers,
        cleanup=lambda: path.unlink(missing_ok=True),
        on_sent=on_sent,
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
            # Also after a refused Range (400/416), where FileResponse skips its background task,
            # and after a disconnect.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.cleanup)
        if scope.get("method") != "HEAD":
            self.on_sent(sent)
