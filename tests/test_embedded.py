"""No BK_HOST: the gateway runs its embedded local aggregator, so a single trainer works offline end to end."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import numpy as np
import pytest

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
