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
    assert performance.headers["allow"] == "POST"
