"""The gateway's answer to a request with two Host (or Origin) headers, or a user name in either:
`http_limits.SingleHostOrigin` refuses them outside the token and loopback checks, which read one
Host and one Origin and must never read a value another parser would understand differently."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse

from gateway.errors import PROBLEM_JSON, BadRequestError

log = logging.getLogger("gateway.requests")


def host_origin_refusal(problem: str) -> JSONResponse:
    """The 400 bad-request problem for an ambiguous Host or Origin, and the connection closed."""
    return JSONResponse(
        BadRequestError(problem).body(),
        status_code=400,
        media_type=PROBLEM_JSON,
        headers={"Connection": "close"},
    )
