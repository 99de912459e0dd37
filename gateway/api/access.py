"""`POST /access`: a short-lived `?access_token=` for a browser's EventSource streams and links."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from gateway.access import QUERY_PARAMETER
from gateway.problems import MALFORMED, UNAUTHORIZED, problem_responses
from gateway.state import AccessDep

router = APIRouter(tags=["access"])


class AccessGrant(BaseModel):
    """A token to add as `?access_token=` to GET and HEAD URLs (it opens nothing else)."""

    access_token: str
    expires_at: str = Field(description="RFC 3339 UTC.")
    expires_in: int = Field(description="Seconds from now.")
    query: str = Field(description="`access_token=<token>`, ready to append to a URL.")


@router.post(
    "/access",
    status_code=201,
    summary="A short-lived access token for links and event streams",
    responses=problem_responses(UNAUTHORIZED, MALFORMED),
)
async def create_access(
    signer: AccessDep,
    ttl: Annotated[
        float | None,
        Query(gt=0, description="Lifetime in seconds (at most GATEWAY_ACCESS_TTL_S, the default)."),
    ] = None,
) -> AccessGrant:
    """Trade the bearer token for a short-lived, signed `?access_token=` that GET and HEAD requests
    accept where a header cannot be sent (EventSource, `<a href>`); an open stream outlives it."""
    grant = signer.issue(ttl)
    expires = datetime.fromtimestamp(grant.expires_at, UTC)
    return AccessGrant(
        access_token=grant.token,
        expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        expires_in=max(0, round(grant.expires_at - datetime.now(UTC).timestamp())),
        query=f"{QUERY_PARAMETER}={grant.token}",
    )
