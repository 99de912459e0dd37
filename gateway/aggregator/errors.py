"""Errors of the aggregator, answered as BranchKey does: JSON `{"error": "<sentence>"}` with an honest status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.multipart import MultipartError
from gateway.weights import WeightsError


class AggregatorError(Exception):
    """A refused request: the status code and one sentence for the `error` key."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, code: str | None = None) -> JSONResponse:
    """The one error body shape of the aggregator."""
    body: dict[str, str] = {"error": message}
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status)


def add_exception_handlers(app: FastAPI) -> None:
    """Every error becomes `{"error": ...}` JSON, including FastAPI's and Starlette's own."""

    async def aggregator_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AggregatorError)  # noqa: S101 - registered for this type only
        return error_response(exc.status, exc.message)

    async def multipart_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, MultipartError)  # noqa: S101 - registered for this type only
        return error_response(exc.status, exc.message)

    async def weights_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, WeightsError)  # noqa: S101 - registered for this type only
        status = 413 if exc.code in ("too-large", "zip-bomb") else 422
        return error_response(status, f"Invalid weights file: {exc.message}", exc.code)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for this type only
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(400, f"Malformed request: {where}: {first.get('msg', 'invalid')}.")

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this type only
        message = "No such route." if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message)

    app.add_exception_handler(AggregatorError, aggregator_error)
    app.add_exception_handler(MultipartError, multipart_error)
    app.add_exception_handler(WeightsError, weights_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
