"""The aggregator's own OpenAPI document (`GET /openapi.json`): error responses, request bodies read by
hand, security schemes and links."""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from gateway.aggregator.schemas import ErrorBody

_MEANINGS: Final[dict[int, str]] = {
    400: "Malformed request: a missing part, a bad header, a body that is not the JSON asked for.",
    401: "No credentials, malformed ones, or credentials nobody here knows.",
    403: "Known credentials, but not for this branch, file or URL.",
    404: "No branch, file or aggregation has that id.",
    409: "Not now: the run is not started, or the aggregation is pending or failed.",
    413: "The file or body is larger than this aggregator accepts.",
    422: "The upload arrived whole but cannot be used (integrity, kind, weighting, or it does not fit its round).",
    503: "A bounded resource is full; retry shortly.",
}

_SCHEMES: Final[dict[str, dict[str, Any]]] = {
    "leafBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Protocol v3: `Bearer <leaf id>:<session token>` (not base64).",
    },
    "leafBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "Protocol v1: HTTP Basic `<leaf id>:<session token>`.",
    },
    "adminBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The admin token (`--admin-token`, or `<data dir>/admin-token`).",
    },
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route: its error statuses, and `default` for the ones any route can give."""
    documented: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in statuses
    }
    documented["default"] = {
        "model": ErrorBody,
        "description": "Any other error (405 with `Allow`, 413 of a JSON body, ...).",
    }
    return documented


def link(operation_id: str, parameter: str, expression: str) -> dict[str, Any]:
    """An OpenAPI link: call `operation_id` with `parameter` taken from this response."""
    return {"operationId": operation_id, "parameters": {parameter: expression}}


def install_openapi(app: FastAPI) -> None:
    """Serve the document with the security scheme of each route, chosen by its path."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            document.setdefault("components", {})["securitySchemes"] = _SCHEMES
            for path, operations in document.get("paths", {}).items():
                scheme = _scheme(path)
                for operation in operations.values():
                    operation["security"] = [{scheme: []}] if scheme else []
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _scheme(path: str) -> str | None:
    if path.startswith("/admin/"):
        return "adminBearer"
    if path.startswith(("/api/v1/blob/", "/v1/blob/")):
        return None  # the signed URL is the credential
    if path.startswith("/api/v1/"):
        return "leafBearer"
    return "leafBasic" if path.startswith("/v1/") else None


def operation_ids(route: APIRoute) -> str:
    """Operation ids are the handlers' names (unique in the app), so links can name them."""
    return route.name
