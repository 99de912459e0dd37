"""The committed OpenAPI document (`openapi/openapi.json`), rendered from the app and kept in step by a test."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI

OPENAPI_PATH = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def render(app: FastAPI) -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
