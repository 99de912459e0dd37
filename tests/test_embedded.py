"""No BK_HOST: the gateway runs its embedded local aggregator, so a single trainer works offline end to end."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.embedded import EmbeddedLogNames
from gateway.state import GatewayState, running_state
from tests.support.gateways import gateway_settings, run_gateway
from tests.support.http import curl, load_npz, wait_for_aggregation
from tests.support.weights import sdk_weights


def test_embedded_round_trip(tmp_path: Path) -> None:
    """Upload with curl, the embedded one-leaf aggregator aggregates, GET /aggregations/<id> returns the layers."""
    layers = [np.arange(20, dtype=np.float32).reshape(4, 5) / 3, np.array([1.5, -2.0, 0.25])]
    sdk_weights(tmp_path / "w.npz", 9.0, layers)
    settings = gateway_settings(tmp_path / "gw", bk_host=None)
    with run_gateway(settings) as gateway:
        state: GatewayState = running_state(gateway.app)
        embedded = state.embedded
        assert embedded is not None
        assert embedded.url.startswith("http://127.0.0.1:")
        with httpx.Client() as client:
            session = client.get(f"{gateway.url}/session").json()
            assert session["state"] == "authenticated"
            assert session["offline"] is True
            assert session["upstream_host"] == embedded.url
            assert client.get(f"{gateway.url}/readyz").status_code == 200

        uploaded = curl("-F", "file=@w.npz", f"{gateway.url}/upload", cwd=tmp_path)
        assert uploaded.status == 201, uploaded.body
        assert uploaded.json()["weighting"] == 9.0

        with httpx.Client() as client:
            record = wait_for_aggregation(embedded.url, embedded.admin_token, client)
        answer = curl(f"{gateway.url}/aggregations/{record['aggregation_id']}")
        assert answer.status == 200, answer.body
        arrays = load_npz(answer.body)
        assert list(arrays) == ["layer_0", "layer_1"]
        for index, layer in enumerate(layers):
            assert arrays[f"layer_{index}"].dtype == layer.dtype
            np.testing.assert_allclose(arrays[f"layer_{index}"], layer, rtol=1e-12)
        aggregator_url = embedded.url
    with httpx.Client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"{aggregator_url}/admin/aggregations")


def test_embedded_aggregator_data_is_private(tmp_path: Path) -> None:
    """The embedded aggregator's folder is 0700 and its database files 0600, as the standalone one's."""
    settings = gateway_settings(tmp_path / "gw", bk_host=None)
    with run_gateway(settings):
        folder = settings.gateway_data_dir / "aggregator"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        files = list(folder.glob("aggregator.db*"))
        assert files
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
            f.name: 0o600 for f in files
        }


def test_embedded_aggregator_bounds_request_headers(tmp_path: Path) -> None:
    """The embedded aggregator answers 431 to 17 KiB of headers, as the standalone one does."""
    settings = gateway_settings(tmp_path / "gw", bk_host=None)
    with run_gateway(settings) as gateway:
        embedded = running_state(gateway.app).embedded
        assert embedded is not None
        big = {"x-pad": "a" * 17 * 1024}
        assert httpx.get(f"{embedded.url}/api/v3/runs", headers=big, timeout=10).status_code == 431
        assert httpx.get(f"{gateway.url}/healthz", headers=big, timeout=10).status_code == 431


def test_embedded_aggregator_logs_under_its_own_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its HTTP lines are gateway.aggregator.*, never uvicorn.*, and only the gateway's server
    logs uvicorn's start-up banner (once)."""
    caplog.set_level(logging.INFO)
    sdk_weights(tmp_path / "w.npz", 2.0, [np.ones(3, dtype=np.float32)])
    settings = gateway_settings(tmp_path / "gw", bk_host=None)
    with run_gateway(settings) as gateway:
        embedded = running_state(gateway.app).embedded
        assert embedded is not None
        thread = embedded._thread.name  # the server thread whose lines are renamed
        # The test servers give uvicorn's loggers their own handlers, at WARNING: listen there too.
        access = logging.getLogger("uvicorn.access")
        caplog.set_level(logging.INFO, logger="uvicorn.access")
        access.addHandler(caplog.handler)
        try:
            assert curl("-F", "file=@w.npz", f"{gateway.url}/upload", cwd=tmp_path).status == 201
        finally:
            access.removeHandler(caplog.handler)
    from_embedded = [r for r in caplog.records if r.threadName == thread]
    names = {r.name for r in from_embedded}
    assert "gateway.aggregator.access" in names
    assert not {n for n in names if n.startswith("uvicorn")}
    offline = [r for r in caplog.records if r.getMessage().startswith("offline: no BK_HOST set")]
    assert len(offline) == 1


def _record(name: str, thread: str, message: str) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
    record.threadName = thread
    return record


def test_embedded_log_names_drop_the_second_banner() -> None:
    """From the embedded thread, uvicorn's banner lines are dropped at INFO and the others renamed;
    the same lines from the gateway's own server pass untouched."""
    names = EmbeddedLogNames("embedded-1")
    for message in (
        "Started server process [%d]",
        "Uvicorn running on %s",
        "Application startup complete.",
    ):
        assert not names.filter(_record("uvicorn.error", "embedded-1", message))
        own = _record("uvicorn.error", "MainThread", message)
        assert names.filter(own)
        assert own.name == "uvicorn.error"
    line = _record("uvicorn.error", "embedded-1", "connection open")
    assert names.filter(line)
    assert line.name == "gateway.aggregator.server"
    access = _record("uvicorn.access", "embedded-1", '"GET /api/v1/run/b HTTP/1.1" 200')
    assert names.filter(access)
    assert access.name == "gateway.aggregator.access"
