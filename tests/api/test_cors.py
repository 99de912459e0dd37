"""Browsers: CORS for loopback pages and GATEWAY_CORS_ORIGINS, `?access_token=` for EventSource
and links, and the pages that stay open with GATEWAY_TOKEN."""

from __future__ import annotations

import httpx
import pytest

from tests.support.gateways import GatewayFactory
from tests.support.http import check_problem

TOKEN = "gateway-secret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PAGE = "http://127.0.0.1:5500"
LISTED = "https://dashboard.example"


def _preflight(
    client: httpx.Client, url: str, origin: str, headers: str = "authorization"
) -> httpx.Response:
    return client.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


def test_loopback_pages_are_served_cross_origin_without_a_token(
    gateway_for: GatewayFactory,
) -> None:
    """Without GATEWAY_TOKEN a page on any loopback port gets its preflight answered (no more 405)
    and CORS headers on answers, errors included; a foreign page gets neither."""
    url = gateway_for(0).url
    with httpx.Client() as client:
        for origin in (PAGE, "http://localhost:3000", "http://[::1]:8080"):
            preflight = _preflight(client, f"{url}/upload", origin, "content-type, last-event-id")
            assert preflight.status_code == 200, preflight.text
            assert preflight.headers["access-control-allow-origin"] == origin
            assert "POST" in preflight.headers["access-control-allow-methods"]
        answer = client.get(f"{url}/session", headers={"Origin": PAGE})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == PAGE
        missing = client.get(f"{url}/aggregations/nothing-here", headers={"Origin": PAGE})
        assert missing.headers["access-control-allow-origin"] == PAGE
        assert "etag" in missing.headers["access-control-expose-headers"].lower()

        foreign = _preflight(client, f"{url}/upload", "https://evil.example")
        assert foreign.status_code == 400
        assert "access-control-allow-origin" not in foreign.headers
        read = client.get(f"{url}/session", headers={"Origin": "https://evil.example"})
        assert read.status_code == 401
        assert "access-control-allow-origin" not in read.headers


def test_a_file_page_is_refused_without_a_token(gateway_for: GatewayFactory) -> None:
    """A page opened from a file sends `Origin: null`, as sandboxed frames of any site do: refused."""
    url = gateway_for(0).url
    with httpx.Client() as client:
        answer = client.get(f"{url}/session", headers={"Origin": "null"})
    check_problem(answer, 401, "unauthorized")
    assert "access-control-allow-origin" not in answer.headers


def test_listed_origins_only_with_a_token(gateway_for: GatewayFactory) -> None:
    """With GATEWAY_TOKEN only GATEWAY_CORS_ORIGINS get CORS headers (loopback pages too need listing)."""
    url = gateway_for(0, gateway_token=TOKEN, gateway_cors_origins=[LISTED]).url
    with httpx.Client() as client:
        listed = _preflight(client, f"{url}/upload", LISTED)
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == LISTED
        assert _preflight(client, f"{url}/upload", PAGE).status_code == 400
        answer = client.get(f"{url}/session", headers={"Origin": LISTED, **BEARER})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == LISTED
        unlisted = client.get(f"{url}/session", headers={"Origin": PAGE, **BEARER})
        assert "access-control-allow-origin" not in unlisted.headers


def test_listed_origins_without_a_token(gateway_for: GatewayFactory) -> None:
    """Without a token a listed non-loopback origin is served like a loopback page."""
    url = gateway_for(0, gateway_cors_origins=[LISTED]).url
    with httpx.Client() as client:
        answer = client.get(f"{url}/session", headers={"Origin": LISTED})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == LISTED


def test_access_tokens_open_get_and_head_only(gateway_for: GatewayFactory) -> None:
    """POST /access needs the bearer token; its ?access_token= opens GET and HEAD (the event stream,
    a download link) and nothing else; altered tokens are refused with a sentence saying what to do."""
    url = gateway_for(0, gateway_token=TOKEN).url
    with httpx.Client() as client:
        check_problem(client.post(f"{url}/access"), 401, "unauthorized")
        grant = client.post(f"{url}/access", headers=BEARER, params={"ttl": 30})
        assert grant.status_code == 201, grant.text
        body = grant.json()
        assert 29 <= body["expires_in"] <= 30
        assert body["query"] == f"access_token={body['access_token']}"
        signed = {"access_token": body["access_token"]}
        assert client.get(f"{url}/session", params=signed).status_code == 200
        with client.stream("GET", f"{url}/events", params=signed) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
        assert client.head(f"{url}/aggregations/none", params=signed).status_code == 404
        post = client.delete(f"{url}/session", params=signed)
        assert "GET and HEAD only" in check_problem(post, 401, "unauthorized")["detail"]
        forged = client.get(f"{url}/session", params={"access_token": body["access_token"] + "x"})
        assert "POST /access" in check_problem(forged, 401, "unauthorized")["detail"]
        twice = client.get(f"{url}/session?{body['query']}&{body['query']}")
        check_problem(twice, 401, "unauthorized")
        bare = client.get(f"{url}/session")
        assert "?access_token=" in check_problem(bare, 401, "unauthorized")["detail"]
        assert client.post(f"{url}/access", headers=BEARER, params={"ttl": 0}).status_code == 400


@pytest.mark.parametrize(
    "path",
    ["/", "/docs", "/redoc", "/openapi.json", "/static/status.js", "/static/swagger-ui-bundle.js"],
)
def test_pages_stay_open_with_a_token(gateway_for: GatewayFactory, path: str) -> None:
    """The status page, its assets and the API docs hold no data: they load without the token
    (their scripts ask for it)."""
    url = gateway_for(0, gateway_token=TOKEN).url
    answer = httpx.get(f"{url}{path}")
    assert answer.status_code == 200, answer.text
