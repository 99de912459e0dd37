"""`GET /events`: Server-Sent Events, replayed from the event log after an id, then live from the hub."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from gateway.errors import BadRequestError
from gateway.events import EVENT_TYPES, KEEPALIVE, Event, Events
from gateway.problems import MALFORMED, UNAUTHORIZED, problem_responses
from gateway.state import StateDep

router = APIRouter(tags=["events"])

REPLAY_BATCH = 500
"""Stored events read from the log per query while replaying."""


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
    summary="Stream events (Server-Sent Events)",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-Sent Events: `id`, `event` and one-line JSON `data` per event.",
        },
        **problem_responses(UNAUTHORIZED, MALFORMED),
    },
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
        _stream(state.events, wanted, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    events: Events, wanted: tuple[str, ...], start: int | None
) -> AsyncIterator[bytes]:
    # Subscribe before reading the log, so that nothing falls between the two.
    with events.hub.subscribe(wanted) as subscriber:
        yield b"retry: 3000\n\n"
        oldest, newest = await to_thread.run_sync(events.log.bounds)
        last = newest if start is None else start
        if start is not None and start > newest:
            # An id this gateway never issued (its data directory was replaced): start from now.
            yield _gap("unknown-event-id", start)
            last = newest
        elif start is not None and start < newest and oldest > start + 1:
            yield _gap("log-truncated", start)
        while True:  # replay what is stored after `last`
            batch: list[Event] = await to_thread.run_sync(
                events.log.after, last, wanted, REPLAY_BATCH
            )
            for event in batch:
                yield event.sse()
                last = event.id
            if len(batch) < REPLAY_BATCH:
                break
        # Ends at shutdown, or when too slow: the client reconnects with its last id.
        async for item in subscriber:
            if item is KEEPALIVE:  # the hub's shared tick (GATEWAY_SSE_KEEPALIVE_S)
                yield b": keep-alive\n\n"
            elif item.id > last:
                yield item.sse()
                last = item.id


def _gap(reason: str, since: int) -> bytes:
    data = json.dumps({"reason": reason, "since": since}, separators=(",", ":"))
    return f"event: gap\ndata: {data}\n\n".encode()
