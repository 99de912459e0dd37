"""The committed OpenAPI document matches the app, and says what generated clients and fuzzers need."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.app import create_app
from gateway.errors import PROBLEM_TYPES
from gateway.openapi import BEARER_SCHEME, OPENAPI_PATH, RAW_WEIGHTS_TYPES, render
from gateway.receiving import RAW_TYPES
from gateway.settings import Settings

METHODS = ("get", "head", "post", "put", "delete", "patch")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The committed document, parsed."""
    parsed: dict[str, Any] = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    return parsed


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) for every operation of the document."""
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_committed_openapi_is_current() -> None:
    """openapi/openapi.json is what the app generates (regenerate with `branchkey-gateway openapi`)."""
    assert OPENAPI_PATH.read_text(encoding="utf-8") == render(create_app(Settings(_env_file=None)))


def test_upload_declares_its_request_bodies(document: dict[str, Any]) -> None:
    """/upload takes a multipart `file` or `layer_<n>` + `weighting` form, or a raw binary body."""
    body = document["paths"]["/upload"]["post"]["requestBody"]
    assert body["required"] is True
    form = body["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["file"] == {
        **form["properties"]["file"],
        "type": "string",
        "format": "binary",
    }
    assert form["properties"]["weighting"]["type"] == "string"
    assert list(form["patternProperties"]) == ["^layer_(0|[1-9][0-9]*)$"]
    assert RAW_WEIGHTS_TYPES == RAW_TYPES
    for media_type in RAW_WEIGHTS_TYPES:
        assert body["content"][media_type]["schema"]["format"] == "binary"


def test_each_route_lists_only_the_errors_it_can_answer(document: dict[str, Any]) -> None:
    """/healthz lists no error at all; others list what their code can raise, all as problem+json."""
    statuses = {
        (method, path): sorted(int(s) for s in operation["responses"] if s[0] in "45")
        for method, path, operation in operations(document)
    }
    assert statuses["get", "/healthz"] == []
    assert statuses["get", "/readyz"] == [401, 503]
    assert statuses["get", "/session"] == [401]
    assert statuses["delete", "/session"] == [401]
    assert statuses["get", "/aggregations/latest"] == [401, 404]
    assert statuses["get", "/aggregations"] == [400, 401, 409]
    assert statuses["get", "/events"] == [400, 401]
    assert 415 not in statuses["post", "/session"]
    assert {409, 413, 415, 422, 502, 504} <= set(statuses["post", "/upload"])
    assert 416 in statuses["get", "/aggregations/{aggregation_id}"]
    upload = document["paths"]["/upload"]["post"]["responses"]
    assert "/problems/run-not-started" in upload["409"]["description"]
    assert "/problems/weights/pickle-forbidden" in upload["422"]["description"]
    assert "/problems/weights/zip-bomb" in upload["413"]["description"]
    for status in ("400", "401", "502", "504"):
        assert "application/problem+json" in upload[status]["content"]


def test_every_problem_type_is_documented_somewhere(document: dict[str, Any]) -> None:
    """Each type of the error tree appears under its status on at least one route."""
    text = {
        status: " ".join(
            operation["responses"].get(str(status), {}).get("description", "")
            for _, _, operation in operations(document)
        )
        for status in {error.status for error in PROBLEM_TYPES}
    }
    for error in PROBLEM_TYPES:
        assert f"/problems/{error.type}" in text[error.status], error.__name__


def test_no_validation_error_schema_remains(document: dict[str, Any]) -> None:
    """Bad parameters are 400 problems, so FastAPI's 422 HTTPValidationError is not in the document."""
    assert "HTTPValidationError" not in json.dumps(document)


def test_bearer_scheme_is_declared_and_optional(document: dict[str, Any]) -> None:
    """A bearer scheme (GATEWAY_TOKEN), optional for the whole API; /healthz needs none."""
    scheme = document["components"]["securitySchemes"][BEARER_SCHEME]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{}, {BEARER_SCHEME: []}]
    for method, path, operation in operations(document):
        assert operation.get("security") == ([] if path == "/healthz" else None), (method, path)


def test_every_operation_has_a_summary_a_tag_and_a_readable_id(document: dict[str, Any]) -> None:
    """Summaries are written, not derived from the function name; ids are the handlers' names."""
    tags = {tag["name"] for tag in document["tags"]}
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    for method, path, operation in operations(document):
        assert operation["summary"][0].isupper(), (method, path)
        assert operation["summary"] != operation["operationId"].replace("_", " ").title()
        assert len(operation["tags"]) == 1, (method, path)
        assert operation["tags"][0] in tags, (method, path)
        assert operation["operationId"].isidentifier(), (method, path)
