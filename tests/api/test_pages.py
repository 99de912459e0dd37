"""What the status page reads (`/uploads`, `GET /performance`, `/channel`) and the pages themselves:
every asset local, nothing from a CDN."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np

from gateway.api.pages import PAGES
from gateway.openapi import OPENAPI_PATH
from tests.support.gateways import GatewayFactory, one_leaf_federation
from tests.support.http import check_problem
from tests.support.weights import sdk_weights

EXTERNAL = re.compile(r"""(?:src|href|url)\s*[=(]\s*["']?(?:https?:)?//""", re.IGNORECASE)


def test_uploads_reports_and_channel_are_listed(tmp_path: Path) -> None:
    """A forwarded upload is listed with its size, layers and weighting, a refused one with its
    problem type, newest first; performance reports sent come back oldest first; /channel is live."""
    with one_leaf_federation(tmp_path) as federation:
        _check_listings(federation.gateway.url, tmp_path)


def _check_listings(url: str, tmp_path: Path) -> None:
    path = sdk_weights(
        tmp_path / "w.npz", 7.0, [np.ones((2, 2), np.float32), np.ones(3, np.float32)]
    )
    with httpx.Client() as client:
        assert client.get(f"{url}/uploads").json() == []
        with path.open("rb") as file:
            sent = client.post(f"{url}/upload", files={"file": file})
        assert sent.status_code == 201, sent.text
        refused = client.post(f"{url}/upload", files={"file": ("w.npz", b"not a zip")})
        check_problem(refused, 422, "weights/not-a-payload")
        uploads = client.get(f"{url}/uploads").json()
        assert [u["outcome"] for u in uploads] == ["refused", "forwarded"]
        assert uploads[0]["problem_type"] == "/problems/weights/not-a-payload"
        assert uploads[0]["detail"] == refused.json()["detail"]
        forwarded = uploads[1]
        assert forwarded["file_id"] == sent.json()["file_id"]
        assert forwarded["size"] == sent.json()["size"]
        assert (forwarded["layers"], forwarded["weighting"]) == (2, 7.0)
        assert forwarded["weighting_source"] == "file"
        assert forwarded["request_bytes"] > forwarded["size"] - 200  # the multipart body
        assert client.get(f"{url}/uploads", params={"limit": 1}).json() == uploads[:1]
        check_problem(client.get(f"{url}/uploads", params={"limit": 0}), 400, "bad-request")

        # The one leaf's upload closed its round: the reports are about that aggregation.
        (aggregation,) = client.get(f"{url}/aggregations", params={"after": 0, "wait": 20}).json()
        for accuracy in (0.5, 0.7):
            report = {
                "aggregation_id": aggregation["aggregation_id"],
                "mode": "test",
                "data": {"accuracy": accuracy},
            }
            assert client.post(f"{url}/performance", json=report).status_code == 201
        reports = client.get(f"{url}/performance").json()
        assert [r["data"]["accuracy"] for r in reports] == [0.5, 0.7]
        channel = client.get(f"{url}/channel").json()
        assert channel["state"] == "connected"
        assert channel["reconnects"] == 0


def test_pages_load_nothing_from_elsewhere(gateway_for: GatewayFactory) -> None:
    """The status page, /docs and /redoc name only local assets, and each of them is served."""
    url = gateway_for(0).url
    with httpx.Client() as client:
        for page in ("/", "/docs", "/redoc"):
            html = client.get(f"{url}{page}").text
            assert not EXTERNAL.findall(html), page
            for asset in re.findall(r"""(?:src|href)=["'](/static/[^"']+)""", html):
                assert client.get(f"{url}{asset}").status_code == 200, asset
        check_problem(client.get(f"{url}/static/settings.py"), 404, "not-found")
    for source in PAGES.iterdir():
        assert not EXTERNAL.findall(source.read_text(encoding="utf-8")), source.name


def test_the_document_declares_the_optional_bearer_token() -> None:
    """The OpenAPI document names `Authorization: Bearer` as optional, so Swagger UI's Authorize
    button sends GATEWAY_TOKEN with every call it tries."""
    document = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{}, {"bearer": []}]
