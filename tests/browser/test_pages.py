"""Headless Chromium against live servers: the README's JavaScript in a page of another loopback
origin, the gateway's status page, the aggregator's admin page and the offline API docs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from selenium.webdriver.common.by import By
from starlette.applications import Starlette
from starlette.responses import FileResponse, HTMLResponse
from starlette.routing import Route

from gateway.events import Event
from tests.support.aggregator import ADMIN
from tests.support.browser import MISSING, chromium, chromium_paths, screenshot, wait_for
from tests.support.gateways import Federation
from tests.support.readme import ROOT, js_listener
from tests.support.servers import serve
from tests.support.waiting import wait_until
from tests.support.weights import sdk_weights

if chromium_paths() is None:  # one line for the whole module where the browser is missing
    pytest.skip(MISSING, allow_module_level=True)

NPZ_READER = ROOT / "examples" / "js" / "npz.mjs"
SCREENSHOTS_ENV = "GATEWAY_SCREENSHOTS"
"""A folder to copy the status page's screenshot to: `GATEWAY_SCREENSHOTS=docs` renews the README's."""
EVENT_TIMEOUT_S = 30


def _page(snippet: str) -> str:
    # The README's snippet, unchanged but for the gateway URL; what it logs is kept for the test.
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>README snippet</title>
<script>window.logged = []; const log = console.log;
console.log = (...args) => {{ window.logged.push(args.map(String).join(" ")); log(...args); }};
window.addEventListener("error", (e) => window.logged.push("error: " + e.message));</script>
<script type="module">
{snippet}
</script></head><body>README snippet</body></html>"""


@pytest.fixture
def page_server(federation: Federation) -> Iterator[str]:
    """Another loopback origin serving a page that runs the README's JavaScript, and npz.mjs."""
    gateway_port = federation.gateway.url.rsplit(":", 1)[1]
    html = _page(js_listener(f"http://localhost:{gateway_port}"))

    async def index(_: Any) -> HTMLResponse:
        return HTMLResponse(html)

    async def reader(_: Any) -> FileResponse:
        return FileResponse(NPZ_READER, media_type="text/javascript")

    app = Starlette(routes=[Route("/", index), Route("/npz.mjs", reader)])
    with serve(app) as url:
        yield url


def _upload(client: httpx.Client, url: str, folder: Path, seed: int, **headers: str) -> list[Any]:
    layers = [
        np.random.default_rng(seed).normal(size=(2, 3)).astype(np.float32),
        np.arange(4, dtype=np.float32) + seed,
    ]
    path = sdk_weights(folder / f"w{seed}.npz", 10.0 + seed, layers)
    with path.open("rb") as file:
        answer = client.post(f"{url}/upload", files={"file": file}, headers=headers)
    assert answer.status_code == 201, answer.text
    return layers


def _announced(fed: Federation) -> list[Event]:
    return fed.gateway.log.after(0, ("aggregation",))


def _logged(driver: Any) -> list[str]:
    lines: list[str] = driver.execute_script("return window.logged")
    return lines


def _keep(path: Path) -> None:
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        shutil.copy(path, Path(folder) / path.name)


def test_readme_javascript_in_a_page_of_another_origin(
    federation: Federation, page_server: str, tmp_path: Path
) -> None:
    """The README's EventSource snippet, in a page served from another loopback port, receives the
    aggregations of uploads made meanwhile, downloads each with fetch and reads its layers."""
    gateway = federation.gateway
    with chromium() as driver, httpx.Client(timeout=30) as client:
        driver.get(page_server)
        wait_for(
            driver, lambda _: gateway.subscribers() == 1, EVENT_TIMEOUT_S, "the page's EventSource"
        )
        uploaded = [_upload(client, gateway.url, tmp_path, seed) for seed in (1, 2, 3)]
        wait_for(driver, lambda d: len(_logged(d)) >= 3, EVENT_TIMEOUT_S, "three aggregations read")
        lines = _logged(driver)
    announced = [e.data["aggregation_id"] for e in gateway.log.after(0, ("aggregation",))]
    assert not [line for line in lines if line.startswith("error")], lines
    # One leaf: each aggregate is that round's upload. The snippet fetches each model as its event
    # comes, so the lines are in the order the fetches finished, not always the order announced.
    expected = [
        f"{aggregation_id} layer_0 [2,3] {float(layers[0].flat[0])!r}, layer_1 [4] {float(layers[1][0]):g}"
        for aggregation_id, layers in zip(announced, uploaded, strict=True)
    ]
    assert sorted(lines) == sorted(expected)


def test_status_pages_and_offline_docs(guarded_federation: Federation, tmp_path: Path) -> None:
    """The gateway's page (behind GATEWAY_TOKEN, given once as #token=) shows the session, live
    events, aggregations with working links, uploads and plotted metrics; the aggregator's admin page
    lists its leaves and stops the run; /docs renders from local assets. Screenshots of all three."""
    fed = guarded_federation
    gateway, aggregator = fed.gateway, fed.aggregator
    bearer = {"Authorization": f"Bearer {fed.token}"}
    shots = tmp_path / "shots"
    with chromium() as driver, httpx.Client(timeout=30, headers=bearer) as client:
        _upload(client, gateway.url, tmp_path, 1)
        driver.get(f"{gateway.url}/#token={fed.token}")
        wait_for(
            driver, lambda _: gateway.subscribers() == 1, EVENT_TIMEOUT_S, "the page's EventSource"
        )
        assert "token=" not in driver.current_url  # taken out of the address bar
        for seed in (2, 3, 4):
            _upload(client, gateway.url, tmp_path, seed)
        wait_until(
            lambda: len(_announced(fed)) == 4, EVENT_TIMEOUT_S, "four aggregations announced"
        )
        for index, event in enumerate(_announced(fed)):
            aggregation_id = event.data["aggregation_id"]
            for mode, shift in (("test", 0.0), ("train", 0.04)):
                data = {"accuracy": 0.6 + 0.08 * index + shift, "loss": 1.3 - 0.25 * index - shift}
                report = {"aggregation_id": aggregation_id, "mode": mode, "data": data}
                assert client.post(f"{gateway.url}/performance", json=report).status_code == 201
        refused = client.post(f"{gateway.url}/upload", files={"file": ("w.npz", b"not a zip")})
        assert refused.status_code == 422

        wait_for(
            driver,
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#feed li[data-type=aggregation]")) >= 3,
            EVENT_TIMEOUT_S,
            "three live aggregation events",
        )
        wait_for(
            driver,
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#metrics svg")) == 2,
            EVENT_TIMEOUT_S,
            "two metric charts",
        )
        wait_for(
            driver,
            lambda d: "refused" in d.find_element(By.ID, "uploads").text,
            EVENT_TIMEOUT_S,
            "the refused upload listed",
        )
        session = driver.find_element(By.ID, "session").text
        assert aggregator.leaves[0]["id"] in session
        assert aggregator.branch in session
        assert "connected" in driver.find_element(By.ID, "run").text
        link = driver.find_element(By.CSS_SELECTOR, "#aggregations a").get_attribute("href")
        assert link is not None
        assert "access_token=" in link
        assert httpx.get(link).status_code == 200  # the signed link works without the header
        screenshot(driver, shots / "status-page.png")

        driver.get(f"{aggregator.url}/#token={ADMIN}")
        wait_for(
            driver,
            lambda d: "connected" in d.find_element(By.ID, "leaves").text,
            EVENT_TIMEOUT_S,
            "the leaf's WebSocket shown",
        )
        assert len(driver.find_elements(By.CSS_SELECTOR, "#aggregations tbody tr")) == 4
        screenshot(driver, shots / "aggregator-page.png")
        driver.find_element(By.CSS_SELECTOR, "button[data-action=stop]").click()
        wait_for(
            driver,
            lambda d: "stop" in d.find_element(By.ID, "branches").text.split("#")[0],
            EVENT_TIMEOUT_S,
            "the run stopped",
        )
        branches = client.get(
            f"{aggregator.url}/admin/branches", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert branches.json()["data"][0]["run_status"] == "stop"

        driver.get(f"{gateway.url}/docs")
        wait_for(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"),
            EVENT_TIMEOUT_S,
            "Swagger UI's operations",
        )
        title = driver.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
        assert title.startswith("BranchKey Gateway")
        resources: list[str] = driver.execute_script(
            "return performance.getEntriesByType('resource').map((r) => r.name)"
        )
        assert resources
        assert all(r.startswith(gateway.url) for r in resources), resources
        screenshot(driver, shots / "docs.png")
    for name in ("status-page.png", "aggregator-page.png", "docs.png"):
        assert (shots / name).read_bytes().startswith(b"\x89PNG")
    _keep(shots / "status-page.png")
