"""`GET /events` (SSE with replay), the long-poll `GET /aggregations`, and `GET /aggregations/latest`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from gateway.dependencies import GatewayState, StateDep
from gateway.errors import BadRequestError, ConflictError, NotFoundError
from gateway.events import EVENT_TYPES, Event

router = APIRouter()

MAX_LONG_POLL_S = 60.0
_BATCH = 500


class AggregationEvent(BaseModel):
    """An aggregation the upstream announced."""

    id: int
    aggregation_id: str
    run_number: Any = None
    received_at: str


def _types(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return EVENT_TYPES
    wanted = tuple(part.strip() for part in raw.split(",") if part.strip())
    unknown = [t for t in wanted if t not in EVENT_TYPES]
    if unknown or not wanted:
        raise BadRequestError(
            f"Unknown event type(s) {unknown}: use any of {', '.join(EVENT_TYPES)}."
        )
    return wanted


def _start_id(last_event_id: str | None, after: int | None) -> int | None:
    raw = after if after is not None else last_event_id
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError("Last-Event-ID / after must be an event id (an integer).") from None
    if value < 0:
        raise BadRequestError("Last-Event-ID / after must be >= 0.")
    return value


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events."}},
)
async def stream_events(
    state: StateDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.")] = None,
    after: Annotated[
        int | None, Query(description="Resume after this event id (instead of the header).")
    ] = None,
    types: Annotated[
        str | None, Query(description="Comma-separated: aggregation, run_status, gap.")
    ] = None,
) -> StreamingResponse:
    """Events as they happen: `id`, `event: aggregation|run_status|gap`, one-line JSON `data`; replays after an id."""
    wanted = _types(types)
    start = _start_id(last_event_id, after)
    return StreamingResponse(
        _stream(state, wanted, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    state: GatewayState, wanted: tuple[str, ...], start: int | None
) -> AsyncIterator[bytes]:
    hub, log = state.events.hub, state.events.log
    subscriber = hub.subscribe(wanted)  # before reading the log, so nothing falls between the two
    try:
        yield b"retry: 3000\n\n"
        oldest, newest = await to_thread.run_sync(log.bounds)
        last = newest if start is None else start
        if start is not None and start > newest:
            # An id this gateway never issued (its data directory was replaced): start from now.
            yield _gap("unknown-event-id", start)
            last = newest
        elif start is not None and start < newest and oldest > start + 1:
            yield _gap("log-truncated", start)
        while True:  # replay what is stored after `last`
            batch: list[Event] = await to_thread.run_sync(log.after, last, wanted, _BATCH)
            for event in batch:
                yield event.sse()
                last = event.id
            if len(batch) < _BATCH:
                break
        while True:
            try:
                item = await subscriber.receive.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return  # shutdown, or too slow: the client reconnects with its last id
            if item is None:  # KEEPALIVE, the hub's shared tick (GATEWAY_SSE_KEEPALIVE_S)
                subscriber.tick_pending = False
                yield b": keep-alive\n\n"
            elif item.id > last:
                yield item.sse()
                last = item.id
    finally:
        hub.unsubscribe(subscriber)


@router.get("/aggregations/latest")
async def get_latest_aggregation(state: StateDep) -> AggregationEvent:
    """The newest aggregation the gateway has heard of."""
    event = await to_thread.run_sync(state.events.log.latest, "aggregation")
    if event is None:
        raise NotFoundError("No aggregation has been announced yet.")
    return _aggregation(event)


@router.get("/aggregations")
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
    deadline = anyio.current_time() + min(wait, MAX_LONG_POLL_S)
    while True:
        changed = state.events.changed
        found: list[Event] = await to_thread.run_sync(log.after, after, ("aggregation",), _BATCH)
        remaining = deadline - anyio.current_time()
        if found or remaining <= 0:
            return [_aggregation(event) for event in found]
        closing = state.events.hub.closing
        if closing.is_set():
            return []  # shutting down: answer now rather than hold the server open
        with anyio.move_on_after(remaining):
            async with anyio.create_task_group() as group:
                group.start_soon(_cancel_when_set, changed, group.cancel_scope)
                group.start_soon(_cancel_when_set, closing, group.cancel_scope)


def _gap(reason: str, since: int) -> bytes:
    data = json.dumps({"reason": reason, "since": since}, separators=(",", ":"))
    return f"event: gap\ndata: {data}\n\n".encode()


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _aggregation(event: Event) -> AggregationEvent:
    return AggregationEvent(id=event.id, **event.data)
