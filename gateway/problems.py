"""Errors as RFC 9457 `application/problem+json` answers, and their description in the OpenAPI document."""

from __future__ import annotations

import logging
import re
import sqlite3
import typing
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from gateway._io import disk_full
from gateway.errors import (
    PROBLEM_BASE,
    PROBLEM_JSON,
    BadRequestError,
    DigestMismatchError,
    GatewayError,
    InsufficientStorageError,
    NameMapConflictError,
    NoNameMapError,
    NoSessionError,
    NotAuthenticatedError,
    NotFoundError,
    PayloadTooLargeError,
    RunNotStartedError,
    SessionChangedError,
    UnsupportedMediaTypeError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.multipart import MultipartError
from gateway.weights import ErrorCode, WeightsError

log = logging.getLogger("gateway")
requests_log = logging.getLogger("gateway.requests")

WEIGHTS_TOO_LARGE = frozenset({"too-large", "zip-bomb"})

ProblemHook = Callable[[Scope, str], None]
"""Told the request's scope and the problem `type` of every problem answered (metrics count them)."""


def weights_problem(error: WeightsError) -> dict[str, Any]:
    """The problem document of a refused weights file (its code kept as the type)."""
    status = 413 if error.code in WEIGHTS_TOO_LARGE else 422
    return {
        "type": f"{PROBLEM_BASE}weights/{error.code}",
        "title": "Invalid weights file",
        "status": status,
        "detail": error.message,
    }


def _multipart_problem(error: MultipartError) -> dict[str, Any]:
    kind = {413: "payload-too-large", 415: "unsupported-media-type"}.get(
        error.status, "bad-request"
    )
    return {
        "type": PROBLEM_BASE + kind,
        "title": "Upload refused",
        "status": error.status,
        "detail": error.message,
    }


def _validation_problem(error: RequestValidationError) -> dict[str, Any]:
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return BadRequestError(f"{where}: {first.get('msg', 'invalid')}.").body()


def _http_problem(error: StarletteHTTPException) -> dict[str, Any]:
    kind = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}.get(
        error.status_code, "http-error"
    )
    return {
        "type": PROBLEM_BASE + kind,
        "title": str(error.detail),
        "status": error.status_code,
        "detail": str(error.detail),
    }


DISK_FULL_DETAIL = (
    "The gateway's disk (GATEWAY_DATA_DIR) is full: nothing was kept and nothing was sent to "
    "BranchKey. Free some space there, then send the request again."
)


def _unexpected_problem(error: Exception) -> dict[str, Any]:
    log.error("unexpected error", exc_info=error)
    return {
        "type": PROBLEM_BASE + "internal",
        "title": "Internal gateway error",
        "status": 500,
        "detail": "The gateway failed unexpectedly; the error is in its log. Retry the request.",
    }


def problem_body(error: Exception) -> dict[str, Any]:
    """The problem document for any exception a route can raise."""
    if isinstance(error, GatewayError):
        return error.body()
    if isinstance(error, WeightsError):
        return weights_problem(error)
    if isinstance(error, MultipartError):
        return _multipart_problem(error)
    if isinstance(error, RequestValidationError):
        return _validation_problem(error)
    if isinstance(error, StarletteHTTPException):
        return _http_problem(error)
    if disk_full(error):  # logged as a refusal (507) like every problem, without a traceback
        return InsufficientStorageError(DISK_FULL_DETAIL).body()
    return _unexpected_problem(error)


def problem(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """A problem+json response."""
    return JSONResponse(
        body, status_code=int(body["status"]), media_type=PROBLEM_JSON, headers=headers
    )


def _log_refusal(request: Request, body: dict[str, Any]) -> None:
    """One line per refused request: what was asked, the problem type and its detail."""
    status = int(body["status"])
    requests_log.log(
        logging.WARNING if status >= 500 else logging.INFO,
        "%s %s refused: %d %s: %s",
        request.method,
        request.url.path,
        status,
        body["type"],
        body["detail"],
    )


def add_exception_handlers(app: FastAPI, on_problem: ProblemHook | None = None) -> None:
    """Every error a route raises becomes problem+json; `on_problem` hears of each one."""

    async def answer(request: Request, error: Exception) -> JSONResponse:
        body = problem_body(error)
        _log_refusal(request, body)
        if on_problem is not None:
            on_problem(request.scope, str(body["type"]))
        headers: dict[str, str] | None = None
        if isinstance(error, NotAuthenticatedError):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(error, StarletteHTTPException) and error.headers:
            headers = dict(error.headers)
            if error.status_code == 405:
                headers["Allow"] = _allowed(request) or headers.get("Allow", "")
        return problem(body, headers)

    for kind in (
        Exception,
        OSError,  # and sqlite3.Error: a full disk is answered (507), not re-raised with a traceback
        sqlite3.Error,
        GatewayError,
        WeightsError,
        MultipartError,
        RequestValidationError,
        StarletteHTTPException,
    ):
        app.add_exception_handler(kind, answer)


def _allowed(request: Request) -> str:
    """Every documented method of the request's path ('' for an undocumented one): Starlette's 405
    names only the methods of the first route that matched (GET /session, where POST and DELETE
    /session are routes of their own)."""
    path = request.url.path
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return ", ".join(sorted(method.upper() for method in operations))
    return ""


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document: every error the gateway answers itself.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {
            "type": "string",
            "description": "Stable problem code, e.g. /problems/run-not-started.",
        },
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What was wrong and what to do."},
        "run_status": {"type": "string", "description": "run-not-started: the run's status."},
        "run_number": {"description": "run-not-started: the run's number."},
        "newest": {"type": "integer", "description": "unknown-event-id: the newest event id."},
        "channel": {
            "type": "string",
            "description": "not-ready: the notification channel's state.",
        },
        "upstream_status": {
            "type": "integer",
            "description": "upstream-unavailable, not-found: BranchKey's HTTP status.",
        },
    },
}

"""components/schemas/Problem of the OpenAPI document (`gateway.openapi.document` adds it)."""

Problem = tuple[int, str]
"""A status and the problem `type` (after /problems/) answered with it."""


def problems_of(*errors: type[GatewayError]) -> tuple[Problem, ...]:
    """The status and type of each error class."""
    return tuple((error.status, error.type) for error in errors)


UNAUTHORIZED = problems_of(NotAuthenticatedError)
"""Every route but /healthz: a missing or wrong GATEWAY_TOKEN, or a non-loopback caller without one."""
MALFORMED = problems_of(BadRequestError)
"""A query parameter, header or path segment that does not parse."""
NO_SESSION = problems_of(NoSessionError)
"""Routes that need the leaf session (logged out with DELETE /session)."""
JSON_BODY = (*MALFORMED, (413, "payload-too-large"))
"""The bounded JSON bodies of POST /session and /performance."""
UPSTREAM_REJECTED_STATUSES = (400, 401, 403, 409, 413, 422)
"""BranchKey's own 4xx answers, passed through as /problems/upstream-rejected (404 is not-found)."""
UPSTREAM = (
    *problems_of(NotFoundError, UpstreamUnavailableError, UpstreamTimeoutError),
    *((status, UpstreamRejectedError.type) for status in UPSTREAM_REJECTED_STATUSES),
)
"""Routes that call BranchKey."""
WEIGHTS = tuple(
    (413 if code in WEIGHTS_TOO_LARGE else 422, f"weights/{code}")
    for code in typing.get_args(ErrorCode)
)
"""A weights file the validator refuses."""
DISK_FULL = problems_of(InsufficientStorageError)
"""Routes that write files under GATEWAY_DATA_DIR (upload scratch files, the download cache)."""
UPLOAD = (
    *problems_of(BadRequestError, DigestMismatchError, RunNotStartedError, PayloadTooLargeError),
    *problems_of(UnsupportedMediaTypeError, SessionChangedError),
    *DISK_FULL,
    *WEIGHTS,
)
"""What an upload can be refused for (multipart, size, media type, weights, run status, session)."""
NAMED_DOWNLOAD = problems_of(NoNameMapError, NameMapConflictError)
"""A download in the trainer's own tensor names."""


def problem_responses(*groups: tuple[Problem, ...]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of a route that can answer `groups`: one per status, naming its types."""
    by_status: dict[int, set[str]] = defaultdict(set)
    for group in groups:
        for status, kind in group:
            by_status[status].add(PROBLEM_BASE + kind)
    return {
        status: {
            "description": "Problem types: " + ", ".join(sorted(types)),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, types in sorted(by_status.items())
    }
