"""The committed OpenAPI document matches the app."""

from __future__ import annotations

import json

from gateway.app import create_app
from gateway.openapi import OPENAPI_PATH, render
from gateway.settings import Settings


def test_committed_openapi_is_current() -> None:
    """openapi/openapi.json is what the app generates (regenerate with `branchkey-gateway openapi`)."""
    assert OPENAPI_PATH.read_text(encoding="utf-8") == render(create_app(Settings(_env_file=None)))


def test_openapi_lists_every_problem_type() -> None:
    """Every route documents problem+json answers, and the weights codes appear as problem types."""
    document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    upload = document["paths"]["/upload"]["post"]["responses"]
    assert "/problems/run-not-started" in upload["409"]["description"]
    assert "/problems/weights/pickle-forbidden" in upload["422"]["description"]
    assert "/problems/weights/zip-bomb" in upload["413"]["description"]
    for status in ("401", "502", "503", "504"):
        assert "application/problem+json" in upload[status]["content"]
