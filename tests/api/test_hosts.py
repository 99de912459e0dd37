"""An ambiguous Host or Origin (two of either, or a user name in one) is refused before any check reads it."""

from __future__ import annotations

import pytest

from gateway.http_limits import host_origin_problem
from tests.support.gateways import Gateway, GatewayFactory
from tests.support.raw import raw_request


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (["Host: localhost:8000"], None),
        (["Host: localhost:8000", "Origin: http://localhost:3000"], None),
        (["Host: localhost:8000", "Host: evil.example"], "2 Host headers"),
        (["Host: localhost", "Origin: http://a", "Origin: http://b"], "2 Origin headers"),
        (["Host: localhost:80@evil.example"], "holds a user name"),
        (["Host: localhost", "Origin: http://localhost:80@evil.example"], "holds a user name"),
        (["HOST: localhost", "host: localhost"], "2 Host headers"),
    ],
)
def test_host_origin_problem(head: list[str], expected: str | None) -> None:
    """One Host and one Origin without '@' pass; duplicates (any case) and userinfo are named."""
    headers = [tuple(line.encode().split(b": ", 1)) for line in head]
    problem = host_origin_problem([(name.lower(), value) for name, value in headers])
    assert (problem is None) if expected is None else (expected in (problem or ""))


@pytest.mark.parametrize(
    "head",
    [
        ["Host: localhost:80@evil.example"],
        ["Host: 127.0.0.1", "Host: evil.example"],
        ["Host: evil.example", "Host: 127.0.0.1"],
        ["Host: 127.0.0.1", "Origin: http://localhost:80@evil.example"],
        ["Host: 127.0.0.1", "Origin: http://127.0.0.1", "Origin: http://evil.example"],
    ],
)
@pytest.mark.parametrize("path", ["/run", "/healthz"])
def test_gateway_refuses_ambiguous_host(
    gateway_for: GatewayFactory, head: list[str], path: str
) -> None:
    """The loopback-only gateway answers 400 /problems/bad-request saying which header is wrong."""
    gateway: Gateway = gateway_for(0)
    status, body = raw_request(gateway.url + path, [*head, "Connection: close"])
    assert status == 400
    assert body["type"] == "/problems/bad-request"
    assert "Host" in body["detail"] or "Origin" in body["detail"]


def test_gateway_refuses_ambiguous_host_with_token(gateway_for: GatewayFactory) -> None:
    """A valid token does not make two Host headers acceptable."""
    gateway = gateway_for(0, gateway_token="t0ken")
    head = ["Host: 127.0.0.1", "Host: evil.example", "Authorization: Bearer t0ken"]
    status, body = raw_request(gateway.url + "/run", [*head, "Connection: close"])
    assert (status, body["type"]) == (400, "/problems/bad-request")
    assert body["detail"].startswith("The request has 2 Host headers")


def test_gateway_serves_one_loopback_host(gateway_for: GatewayFactory) -> None:
    """One loopback Host with a loopback Origin is served as before."""
    gateway = gateway_for(0)
    head = ["Host: localhost:8000", "Origin: http://localhost:3000", "Connection: close"]
    status, body = raw_request(gateway.url + "/run", head)
    assert status == 200, body
