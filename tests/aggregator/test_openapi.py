"""The aggregator's own OpenAPI document: served, complete, and what the server really answers (Schemathesis)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.aggregator import ADMIN, Running, start
from tests.support.schema_fuzz import run_schemathesis, write_config

# A schema-valid upload can still carry an unusable weights file (422), declare a size over the
# limit (413), or, in the coverage phase, an x-bk-file-digest that is not the pattern documented
# (400): Schemathesis counts those as "valid data rejected" unless they are listed. Every other
# operation is held to the document.
_UPLOAD_REFUSALS = ["2xx", "400", "401", "403", "404", "409", "413", "422"]

_ROUTES = {
    ("/api/v1/run/{branch_id}", "get"),
    ("/api/v1/file/upload", "post"),
    ("/api/v1/file/download/{file_id}", "get"),
    ("/api/v1/blob/{file_id}", "get"),
    ("/api/v1/performance/analysis", "post"),
    ("/api/v1/config/branch/{branch_id}", "get"),
    ("/api/v1/ws/ticket", "post"),
    ("/v1/leaf/authenticate", "get"),
    ("/v1/branch/{branch_id}/run", "get"),
    ("/v1/file/upload", "post"),
    ("/v1/file/download/{file_id}", "get"),
    ("/v1/blob/{file_id}", "get"),
    ("/v1/performance/analysis", "post"),
    ("/admin/run", "post"),
    ("/admin/fields", "get"),
    ("/admin/fields", "put"),
    ("/admin/aggregate", "post"),
    ("/admin/leaves", "get"),
    ("/admin/branches", "get"),
    ("/admin/rounds", "get"),
    ("/admin/uploads", "get"),
    ("/admin/aggregations", "get"),
    ("/admin/metrics", "get"),
}
"""Every HTTP route of the aggregator (the WebSocket is not an OpenAPI operation)."""


def test_document_lists_every_route_with_its_security(tmp_path: Path) -> None:
    """GET /openapi.json names every HTTP route, each with its security scheme and an error schema."""
    with start(tmp_path / "agg") as agg, httpx.Client() as client:
        document = client.get(f"{agg.url}/openapi.json").json()
        # Every documented operation exists: without credentials it is refused, never "No such route".
        for path, operations in document["paths"].items():
            for method in operations:
                answer = client.request(method, agg.url + path.replace("{", "").replace("}", ""))
                assert answer.status_code in (400, 401, 403), (method, path, answer.text)
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert documented == _ROUTES
    assert set(document["components"]["securitySchemes"]) == {
        "leafBearer",
        "leafBasic",
        "adminBearer",
    }
    assert "HTTPValidationError" not in document["components"]["schemas"]
    upload = document["paths"]["/api/v1/file/upload"]["post"]
    assert upload["security"] == [{"leafBearer": []}]
    assert document["paths"]["/v1/file/upload"]["post"]["security"] == [{"leafBasic": []}]
    assert document["paths"]["/admin/run"]["post"]["security"] == [{"adminBearer": []}]
    assert document["paths"]["/api/v1/blob/{file_id}"]["get"]["security"] == []
    assert "links" in upload["responses"]["201"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "default" in operation["responses"], (path, method)


@pytest.mark.timeout(180)
def test_schemathesis_finds_no_server_error_or_schema_violation(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Every check of Schemathesis in every phase (stateful included) over the whole document: 0 5xx, 0 violations."""
    with start(tmp_path / "agg") as agg:
        config = write_config(tmp_path / "schemathesis.toml", _auth(agg), _operations())
        started = time.monotonic()
        run = run_schemathesis(
            f"{agg.url}/openapi.json", config, tmp_path, max_examples=10, max_time_s=40
        )
        elapsed = time.monotonic() - started
    assert run.returncode == 0, run.output[-20_000:]
    phases = {name: phase["status"] for name, phase in run.report["phases"].items()}
    assert phases == {
        "examples": "skip",  # the document has no examples
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "success",
    }, run.output[-5_000:]
    assert run.report["test_cases"]["generated"] > 500
    assert run.report["test_cases"]["errored"] == 0
    assert run.report["failures"] == []
    record_property("schemathesis_cases", run.report["test_cases"]["generated"])
    record_property("schemathesis_seconds", round(elapsed, 1))


def _auth(agg: Running) -> dict[str, dict[str, str]]:
    leaf = agg.leaves[0]
    return {
        "leafBearer": {"bearer": f"{leaf['id']}:{leaf['session_token']}"},
        "leafBasic": {"username": leaf["id"], "password": leaf["session_token"]},
        "adminBearer": {"bearer": ADMIN},
    }


def _operations() -> list[dict[str, object]]:
    return [
        {
            "include-path-regex": "/file/upload$",
            "checks": {"positive_data_acceptance": {"expected-statuses": _UPLOAD_REFUSALS}},
        }
    ]
