"""A method a gateway route does not serve: 405 problem with `Allow`."""

from __future__ import annotations

import httpx

from tests.support.gateways import GatewayFactory
from tests.support.http import check_problem


def test_a_wrong_method_gets_405_with_allow(gateway_for: GatewayFactory) -> None:
    """DELETE /healthz and PUT /performance get a 405 problem whose `Allow` names the methods served."""
    gateway = gateway_for()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        health = client.delete("/healthz")
        performance = client.put("/performance", json={})
    check_problem(health, 405, "method-not-allowed")
    check_problem(performance, 405, "method-not-allowed")
    assert "GET" in health.headers["allow"].split(", ")
    assert performance.headers["allow"] == "GET, POST"


def test_allow_names_every_method_of_a_path(gateway_for: GatewayFactory) -> None:
    """PUT /session's `Allow` names DELETE, GET and POST, each a route of its own; a download, GET and HEAD."""
    gateway = gateway_for()
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        session = client.put("/session", json={})
        download = client.post("/aggregations/some-id")
    check_problem(session, 405, "method-not-allowed")
    assert session.headers["allow"] == "DELETE, GET, POST"
    assert download.headers["allow"] == "GET, HEAD"
