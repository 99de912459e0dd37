"""The OpenAPI document: every problem type listed, and the committed copy kept in step by a test."""

from __future__ import annotations

import json
import typing
from collections import defaultdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from gateway.errors import PROBLEM_BASE, PROBLEM_JSON, PROBLEM_TYPES, WEIGHTS_TOO_LARGE
from gateway.weights import ErrorCode

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"

_PROBLEM_SCHEMA = {
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
    },
}


def problem_responses() -> dict[int | str, dict[str, Any]]:
    """One response per status, naming every problem type the gateway can answer with it."""
    by_status: dict[int, list[str]] = defaultdict(list)
    for error in PROBLEM_TYPES:
        by_status[error.status].append(PROBLEM_BASE + error.type)
    for status in (403, 409, 413, 422):  # BranchKey's 4xx answers are passed through
        by_status[status].append(PROBLEM_BASE + "upstream-rejected")
    for code in typing.get_args(ErrorCode):
        by_status[413 if code in WEIGHTS_TOO_LARGE else 422].append(f"{PROBLEM_BASE}weights/{code}")
    return {
        status: {
            "description": "Problem types: " + ", ".join(sorted(set(types))),
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}},
        }
        for status, types in sorted(by_status.items())
    }


def render(app: FastAPI) -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
