"""What the status page shows besides sessions and events: the last uploads, the performance reports
sent, and the notification channel (`/uploads`, `GET /performance`, `/channel`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from gateway.activity import MAX_REPORTS, MAX_UPLOADS, ReportRecord, UploadRecord
from gateway.problems import MALFORMED, UNAUTHORIZED, problem_responses
from gateway.state import StateDep
from gateway.upstream.channel import ChannelState

router = APIRouter(tags=["status"])


class ChannelInfo(BaseModel):
    """The notification channel: WebSocket (v3) or the leaf's RabbitMQ queue (v1)."""

    state: ChannelState
    since: float
    reconnects: int
    last_error: str | None
    last_message_at: float | None


@router.get(
    "/uploads",
    summary="The last uploads, forwarded or refused",
    responses=problem_responses(UNAUTHORIZED, MALFORMED),
)
async def list_uploads(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=MAX_UPLOADS)] = 20,
) -> list[UploadRecord]:
    """The last uploads, newest first: forwarded ones with what BranchKey received, refused ones
    with their problem type (kept in memory: a restart forgets them)."""
    return state.activity.uploads(limit)


@router.get(
    "/performance",
    summary="The performance reports sent",
    responses=problem_responses(UNAUTHORIZED, MALFORMED),
)
async def list_performance(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=MAX_REPORTS)] = MAX_REPORTS,
) -> list[ReportRecord]:
    """The performance reports sent through this gateway, oldest first (kept in memory)."""
    return state.activity.reports(limit)


@router.get(
    "/channel",
    summary="The notification channel's state",
    responses=problem_responses(UNAUTHORIZED),
)
async def get_channel(state: StateDep) -> ChannelInfo:
    """The notification channel's state, reconnect count and last error."""
    status = state.consumer.status
    return ChannelInfo(
        state=status.state,
        since=status.since,
        reconnects=status.reconnects,
        last_error=status.last_error,
        last_message_at=status.last_message_at,
    )
