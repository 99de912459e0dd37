"""Health: `/healthz` (alive), `/readyz` (session, upstream and channel up), `/metrics` (Prometheus)."""

from __future__ import annotations

from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.errors import GatewayError, NotReadyError
from gateway.problems import UNAUTHORIZED, problem_responses, problems_of
from gateway.state import MetricsDep, StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def get_health() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: session, upstream and notification channel up",
    responses=problem_responses(UNAUTHORIZED, problems_of(NotReadyError)),
)
async def get_ready(state: StateDep) -> dict[str, Any]:
    """The session is authenticated, the upstream answers, and the notification channel is connected."""
    session = state.session
    channel = state.consumer.status
    if session.upstream is None:
        raise NotReadyError(
            "No leaf session: set credentials or POST them to /session.", channel=channel.state
        )
    try:
        info = await session.refresh_run()
    except GatewayError as exc:
        raise NotReadyError(
            f"The upstream does not answer: {exc.detail}", channel=channel.state
        ) from None
    if channel.state != "connected":
        raise NotReadyError(
            f"The notification channel is {channel.state}: {channel.last_error or 'connecting'}.",
            channel=channel.state,
        )
    return {"status": "ready", "run_status": info.run_status, "channel": channel.state}


@router.get("/metrics", include_in_schema=False)
async def get_metrics(request: Request, metrics: MetricsDep) -> Response:
    """The metrics in the Prometheus text format (OpenMetrics when the scraper asks for it)."""
    # A worker thread: the event log's count is a database query.
    body, content_type = await to_thread.run_sync(metrics.encode, request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
