"""The leaf session (`/session`), the run status (`/run`) and performance reports (`/performance`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway.api.bodies import BoundedJSONRoute
from gateway.errors import BadRequestError
from gateway.problems import JSON_BODY, NO_SESSION, UNAUTHORIZED, UPSTREAM, problem_responses
from gateway.state import SessionDep, StateDep
from gateway.upstream.credentials import CredentialsError, from_mapping

router = APIRouter(
    route_class=BoundedJSONRoute, tags=["session"]
)  # POST /session, /performance: bounded JSON


class RunStatus(BaseModel):
    """The branch's run."""

    run_status: str
    run_number: Any


class SessionInfo(BaseModel):
    """Who the gateway is, and where it talks to."""

    state: Literal["authenticated", "logged-out"]
    leaf_id: str | None = None
    leaf_name: str | None = None
    tree_id: str | None = None
    branch_id: str | None = None
    dialect: str
    upstream_host: str
    offline: bool = Field(description="True when the upstream is the embedded local aggregator.")
    run_status: str | None = None
    run_number: Any = None


class PerformanceReport(BaseModel):
    """A performance report for an aggregation."""

    aggregation_id: str = Field(min_length=1)
    mode: Literal["test", "train", "non-federated"]
    data: dict[str, Any] | str


@router.get(
    "/run",
    summary="The run status, from BranchKey",
    responses=problem_responses(UNAUTHORIZED, NO_SESSION, UPSTREAM),
)
async def get_run(session: SessionDep) -> RunStatus:
    """The run status, fresh from the upstream."""
    info = await session.refresh_run()
    return RunStatus(run_status=info.run_status, run_number=info.run_number)


def _session_info(state: StateDep) -> SessionInfo:
    session = state.session
    creds = session.credentials
    return SessionInfo(
        state="authenticated" if creds else "logged-out",
        leaf_id=creds.id if creds else None,
        leaf_name=creds.name if creds else None,
        tree_id=creds.tree_id if creds else None,
        branch_id=creds.branch_id if creds else None,
        dialect=state.settings.bk_dialect,
        upstream_host=session.host,
        offline=session.offline,
        run_status=session.run.run_status if session.run else None,
        run_number=session.run.run_number if session.run else None,
    )


@router.get("/session", summary="The current session", responses=problem_responses(UNAUTHORIZED))
async def get_session_info(state: StateDep) -> SessionInfo:
    """The current leaf, tree and branch, the dialect, the upstream and the session state."""
    return _session_info(state)


_CREDENTIALS = {
    "description": "The leaf's credentials file as BranchKey issues it: v3 `id`, `name`, "
    "`session_token`, `tree_id`, `branch_id` (all needed against a v3 upstream), or the v1 client's "
    "`leaf_id`, `leaf_name`, `leaf_session_token` (+ `response_host`).",
    "properties": {
        key: {"type": "string"}
        for key in (
            *("id", "name", "session_token", "tree_id", "branch_id", "owner_id", "response_host"),
            *("leaf_id", "leaf_name", "leaf_session_token"),
        )
    },
}


@router.post(
    "/session",
    summary="Log in with leaf credentials",
    responses=problem_responses(UNAUTHORIZED, JSON_BODY, UPSTREAM),
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": _CREDENTIALS}}}},
)
async def create_session(credentials: dict[str, Any], state: StateDep) -> SessionInfo:
    """Log in (or switch leaf) with JSON credentials in the v3 or v1 client shape."""
    try:
        settings = state.settings
        parsed = from_mapping(
            credentials, "The request body", settings.bk_dialect, settings.bk_response_host
        )
    except CredentialsError as exc:
        raise BadRequestError(str(exc)) from None
    await state.session.login(parsed)  # the notification channel follows by itself
    return _session_info(state)


@router.delete("/session", summary="Log out", responses=problem_responses(UNAUTHORIZED))
async def delete_session(state: StateDep) -> SessionInfo:
    """Log out: uploads get 401 problems until the next login."""
    state.session.logout()
    return _session_info(state)


@router.post(
    "/performance",
    status_code=201,
    summary="Send a performance report",
    responses=problem_responses(UNAUTHORIZED, JSON_BODY, NO_SESSION, UPSTREAM),
)
async def create_performance(report: PerformanceReport, state: StateDep) -> dict[str, str]:
    """Send a performance report for an aggregation to BranchKey."""
    await state.session.require().send_metrics(report.aggregation_id, report.mode, report.data)
    state.activity.record_report(report.aggregation_id, report.mode, report.data)
    return {"status": "sent"}
