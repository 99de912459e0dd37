"""The aggregator refuses an ambiguous Host or Origin as the gateway does, in its own error shape."""

from __future__ import annotations

import pytest

from tests.support.aggregator import Running
from tests.support.raw import raw_request


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (["Host: localhost:80@evil.example"], "The Host header 'localhost:80@evil.example'"),
        (["Host: 127.0.0.1", "Host: evil.example"], "The request has 2 Host headers"),
        (["Host: 127.0.0.1", "Origin: http://x@evil.example"], "The Origin header"),
        (
            ["Host: 127.0.0.1", "Origin: http://a", "Origin: http://b"],
            "The request has 2 Origin headers",
        ),
    ],
)
def test_aggregator_refuses_ambiguous_host(
    aggregator: Running, head: list[str], expected: str
) -> None:
    """400 with `{"error": ...}` naming the header; one plain Host is served."""
    status, body = raw_request(
        aggregator.url + "/api/v1/no-such-route", [*head, "Connection: close"]
    )
    assert status == 400
    assert body["error"].startswith(expected)
    status, _ = raw_request(
        aggregator.url + "/api/v1/no-such-route", ["Host: 127.0.0.1", "Connection: close"]
    )
    assert status == 404
