"""schemathesis hooks for the gateway's document (loaded by the schemathesis subprocess only)."""

from __future__ import annotations

import contextlib
from typing import Any

import schemathesis

LONG_POLL_CAP_S = 0.2
"""GET /aggregations?wait= is honoured up to 60 s; the fuzzer's waits are cut to this."""


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:  # noqa: ARG001 - the hook's signature
    """Shorten long polls so that a bounded run tests more than a few waits."""
    query = case.query or {}
    if case.path == "/aggregations" and "wait" in query:
        # An invalid wait is left alone: it is the point of the case (the gateway must answer 400).
        with contextlib.suppress(TypeError, ValueError):
            query["wait"] = min(float(query["wait"]), LONG_POLL_CAP_S)
