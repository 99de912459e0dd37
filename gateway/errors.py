"""The gateway's error tree, answered as RFC 9457 `application/problem+json` with stable `type` codes."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.multipart import MultipartError
from gateway.weights import WeightsError

log = logging.getLogger("gateway")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "/problems/"


class GatewayError(Exception):
    """Base of every error the gateway answers itself; subclasses fix status, type and title."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal gateway error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The problem document."""
        return {
            "type": PROBLEM_BASE + self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class BadRequestError(GatewayError):
    """The request is malformed."""

    status, type, title = 400, "bad-request", "Malformed request"


class NotAuthenticatedError(GatewayError):
    """The gateway token is missing or wrong."""

    status, type, title = 401, "unauthorized", "Gateway token required"


class NoSessionError(GatewayError):
    """There is no leaf session (logged out)."""

    status, type, title = 401, "no-session", "No leaf session"


class NotFoundError(GatewayError):
    """No such aggregation or route."""

    status, type, title = 404, "not-found", "Not found"


class ConflictError(GatewayError):
    """The request refers to state this gateway does not have (e.g. an unknown event id)."""

    status, type, title = 409, "unknown-event-id", "Unknown event id"


class RunNotStartedError(GatewayError):
    """The branch's run is not started, so uploads are refused."""

    status, type, title = 409, "run-not-started", "The run is not started"


class PayloadTooLargeError(GatewayError):
    """The upload is over the gateway's size limit."""

    status, type, title = 413, "payload-too-large", "Upload too large"


class UnsupportedMediaTypeError(GatewayError):
    """The upload's content type is not one the gateway reads."""

    status, type, title = 415, "unsupported-media-type", "Unsupported upload format"


class UpstreamRejectedError(GatewayError):
    """BranchKey answered with a client error; its status and `error` text are passed through."""

    status, type, title = 400, "upstream-rejected", "BranchKey refused the request"
    """(The status documented; the answer carries BranchKey's own 4xx status.)"""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.upstream_status = status

    def body(self) -> dict[str, Any]:
        """The problem document, with the upstream status."""
        return {**super().body(), "status": self.upstream_status}


class UpstreamUnavailableError(GatewayError):
    """BranchKey could not be reached or failed (transport error or 5xx)."""

    status, type, title = 502, "upstream-unavailable", "BranchKey is unavailable"


class NotReadyError(GatewayError):
    """The gateway is not ready (no session, upstream unreachable)."""

    status, type, title = 503, "not-ready", "Not ready"


class UpstreamTimeoutError(GatewayError):
    """BranchKey did not answer in time."""

    status, type, title = 504, "upstream-timeout", "BranchKey timed out"


WEIGHTS_TOO_LARGE = frozenset({"too-large", "zip-bomb"})


def weights_problem(error: WeightsError) -> dict[str, Any]:
    """The problem document of a refused weights file (its code kept as the type)."""
    status = 413 if error.code in WEIGHTS_TOO_LARGE else 422
    return {
        "type": f"{PROBLEM_BASE}weights/{error.code}",
        "title": "Invalid weights file",
        "status": status,
        "detail": error.message,
    }


def problem(body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    """A problem+json response."""
    return JSONResponse(
        body, status_code=int(body["status"]), media_type=PROBLEM_JSON, headers=headers
    )


def add_exception_handlers(app: FastAPI) -> None:
    """Every error the gateway produces becomes problem+json."""

    async def gateway_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)  # noqa: S101 - registered for this type only
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, NotAuthenticatedError) else None
        return problem(exc.body(), headers)

    async def weights_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, WeightsError)  # noqa: S101 - registered for this type only
        return problem(weights_problem(exc))

    async def multipart_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MultipartError)  # noqa: S101 - registered for this type only
        kind = {413: "payload-too-large", 415: "unsupported-media-type"}.get(
            exc.status, "bad-request"
        )
        return problem(
            {
                "type": PROBLEM_BASE + kind,
                "title": "Upload refused",
                "status": exc.status,
                "detail": exc.message,
            }
        )

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this type only
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return problem(BadRequestError(f"{where}: {first.get('msg', 'invalid')}.").body())

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this type only
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem(
            {
                "type": PROBLEM_BASE + kind,
                "title": str(exc.detail),
                "status": exc.status_code,
                "detail": str(exc.detail),
            }
        )

    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=exc)
        return problem(
            {
                "type": PROBLEM_BASE + "internal",
                "title": "Internal gateway error",
                "status": 500,
                "detail": "The gateway failed unexpectedly; the error is in its log. Retry the request.",
            }
        )

    app.add_exception_handler(Exception, unexpected_error)
    app.add_exception_handler(GatewayError, gateway_error)
    app.add_exception_handler(WeightsError, weights_error)
    app.add_exception_handler(MultipartError, multipart_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


PROBLEM_TYPES: tuple[type[GatewayError], ...] = (
    BadRequestError,
    NotAuthenticatedError,
    NoSessionError,
    NotFoundError,
    ConflictError,
    RunNotStartedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
    NotReadyError,
    UpstreamTimeoutError,
)
"""Every gateway problem type, for the OpenAPI description."""
