"""The gateway's OpenAPI document: request bodies FastAPI cannot infer from a streamed route, the
bearer scheme, and the committed file (`openapi/openapi.json`), kept in step by a test."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"

BEARER_SCHEME: Final = "bearer"

TAGS: Final = (
    {"name": "uploads", "description": "Send this leaf's weights to the current round."},
    {"name": "aggregations", "description": "Wait for and download aggregated models."},
    {"name": "events", "description": "Server-Sent Events: aggregations, run status, gaps."},
    {"name": "session", "description": "The leaf session, the run and performance reports."},
    {"name": "health", "description": "Liveness and readiness, for probes and scripts."},
    {"name": "status", "description": "What the status page shows: uploads, reports, the channel."},
    {"name": "access", "description": "Short-lived `?access_token=` links for browsers."},
)

_BINARY: Final = {"type": "string", "format": "binary"}

WEIGHTS_FORM: Final[dict[str, Any]] = {
    "type": "object",
    "description": "Either one `file` part, or `layer_0`, `layer_1`, ... parts (numbered from 0 "
    "without gaps) with a `weighting` field.",
    "properties": {
        "file": {
            **_BINARY,
            "description": "The weights: an NPZ (weighting + layer_0.., or arrays in your own "
            "names), the v1 client's object .npy, a plain np.save .npy array, a list of arrays "
            "saved with np.save, or a safetensors file.",
        },
        "weighting": {
            "type": "string",
            "description": "Aggregation weight (the number of samples trained on), as decimal text; "
            "required with layer parts, else it overrides the file's.",
            "examples": ["128"],
        },
    },
    "patternProperties": {
        "^layer_(0|[1-9][0-9]*)$": {**_BINARY, "description": "One layer as a plain .npy array."}
    },
}
"""The multipart form of a weights upload (`curl -F file=@w.npz`, or `-F layer_0=@l0.npy -F weighting=12`)."""

RAW_WEIGHTS_TYPES: Final = ("application/octet-stream", "application/zip", "application/x-npy")
"""The raw-body media types an upload route reads (receiving.RAW_TYPES; a test keeps them equal)."""


def weights_body(description: str) -> dict[str, Any]:
    """`openapi_extra` for a route that reads a weights upload from the stream: the multipart form or
    the file as the raw body (FastAPI sees no body parameter on such a route)."""
    raw = {
        media_type: {"schema": {**_BINARY, "description": "The weights file as the whole body."}}
        for media_type in RAW_WEIGHTS_TYPES
    }
    return {
        "parameters": [_digest_header(name) for name in ("Content-Digest", "Repr-Digest")],
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"multipart/form-data": {"schema": WEIGHTS_FORM}, **raw},
        },
    }


def _digest_header(name: str) -> dict[str, Any]:
    """An RFC 9530 digest field the upload routes read (a form's `file` part may carry it too)."""
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": "The file's sha-256 as `sha-256=:<base64 of the 32 bytes>:` (RFC 9530): "
        "checked (400 digest-mismatch), and in v3 the file is sent on to BranchKey while it "
        "arrives. On a form it may name the file or the whole body.",
        "schema": {"type": "string", "pattern": "sha-256=:[A-Za-z0-9+/]{43}=:"},
    }


def operation_id(route: APIRoute) -> str:
    """A route's operationId: its handler's name (`create_upload`), what generated clients call it."""
    return route.name


def document(app: FastAPI, schemas: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The app's document, built once: FastAPI's, with `schemas` added to its components (those the
    routes' `responses` refer to), the bearer scheme, and without its `HTTPValidationError` answers
    (the gateway answers bad parameters with a 400 problem)."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=list(TAGS),
            servers=[
                {"url": "http://127.0.0.1:8000", "description": "The gateway's default bind."}
            ],
        )
        spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        _drop_validation_errors(spec)
        _add_security(spec)
        app.openapi_schema = spec
    return app.openapi_schema


def _drop_validation_errors(spec: dict[str, Any]) -> None:
    ref = "#/components/schemas/HTTPValidationError"
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if ref in json.dumps(responses.get("422", {})):
                del responses["422"]
    schemas = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _add_security(spec: dict[str, Any]) -> None:
    """Bearer GATEWAY_TOKEN, optional (`{}`: a gateway without a token answers loopback callers
    without one), so that Swagger UI's Authorize button sends it; /healthz needs none."""
    spec.setdefault("components", {})["securitySchemes"] = {
        BEARER_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "GATEWAY_TOKEN, when the gateway has one (always in a container "
            "reachable by others). Without it the gateway answers loopback requests only.",
        }
    }
    spec["security"] = [{}, {BEARER_SCHEME: []}]
    for operation in spec.get("paths", {}).get("/healthz", {}).values():
        operation["security"] = []


def render(app: FastAPI) -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
