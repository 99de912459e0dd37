"""Errors of the aggregator, answered as BranchKey does: JSON `{"error": "<sentence>"}` with an honest status."""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Mapping
from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway._io import disk_full
from gateway.multipart import MultipartError
from gateway.weights import WeightsError

__all__ = [
    "AggregatorError",
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "InsufficientStorageError",
    "NotAuthenticatedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServiceUnavailableError",
    "UnprocessableError",
    "add_exception_handlers",
    "error_response",
]


class AggregatorError(Exception):
    """A refused request: one sentence for the `error` key (and a stable `code` where a client may
    act on it); the subclass says the status code."""

    status: ClassVar[int] = 500

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class BadRequestError(AggregatorError):
    """The request is malformed: a missing part, a bad header, a body that is not the JSON asked for."""

    status = 400


class NotAuthenticatedError(AggregatorError):
    """No credentials, malformed ones, or credentials nobody here knows."""

    status = 401


class ForbiddenError(AggregatorError):
    """Known credentials, but not for this branch, file or URL."""

    status = 403


class NotFoundError(AggregatorError):
    """No branch, aggregation or upload has that id."""

    status = 404


class ConflictError(AggregatorError):
    """Not now: the run is not started, the aggregation is pending or failed, the round is empty."""

    status = 409


class PayloadTooLargeError(AggregatorError):
    """The file or body is larger than this aggregator accepts."""

    status = 413


class UnprocessableError(AggregatorError):
    """The upload arrived whole but cannot be used: integrity mismatch, wrong kind or weighting."""

    status = 422


class ServiceUnavailableError(AggregatorError):
    """A bounded resource is full; retry shortly."""

    status = 503


class InsufficientStorageError(AggregatorError):
    """The aggregator's disk is full: nothing of the request was kept."""

    status = 507


DISK_FULL_MESSAGE = (
    "The aggregator's disk is full: the request was not stored (nothing of it was kept). "
    "Free space in its data directory, then send it again."
)

log = logging.getLogger("gateway.aggregator")


def error_response(
    status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error body shape of the aggregator."""
    body: dict[str, str] = {"error": message}
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status, headers=headers)


def _allowed(request: Request, given: str) -> str:
    """The methods the OpenAPI document lists for the request's path (a path may have one route
    per method, and Starlette's 405 names only the first), or `given`."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.scope["path"]):
            methods |= {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods)) if methods else given


def add_exception_handlers(app: FastAPI) -> None:
    """Every error becomes `{"error": ...}` JSON, including FastAPI's and Starlette's own."""

    async def aggregator_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AggregatorError)  # noqa: S101 - registered for this type only
        return error_response(exc.status, exc.message, exc.code)

    async def multipart_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MultipartError)  # noqa: S101 - registered for this type only
        return error_response(exc.status, exc.message)

    async def weights_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, WeightsError)  # noqa: S101 - registered for this type only
        too_large = exc.code in ("too-large", "zip-bomb")
        status = PayloadTooLargeError.status if too_large else UnprocessableError.status
        return error_response(status, f"Invalid weights file: {exc.message}", exc.code)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this type only
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"Malformed request: {where}: {first.get('msg', 'invalid')}."
        return error_response(BadRequestError.status, message)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this type only
        message = "No such route." if exc.status_code == NotFoundError.status else str(exc.detail)
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names only the first route of the path
            given = (exc.headers or {}).get("Allow", "")
            headers = {**(exc.headers or {}), "Allow": _allowed(request, given)}
        return error_response(exc.status_code, message, headers=headers)

    async def storage_error(_: Request, exc: Exception) -> JSONResponse:
        if not disk_full(exc):
            raise exc  # any other failure stays a 500 with its traceback in the log
        log.warning("refused a request: the disk is full (%s: %s)", type(exc).__name__, exc)
        return error_response(InsufficientStorageError.status, DISK_FULL_MESSAGE)

    app.add_exception_handler(AggregatorError, aggregator_error)
    app.add_exception_handler(OSError, storage_error)
    app.add_exception_handler(sqlite3.Error, storage_error)
    app.add_exception_handler(MultipartError, multipart_error)
    app.add_exception_handler(WeightsError, weights_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
