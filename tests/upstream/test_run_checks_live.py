"""Against the local aggregator: uploads make no run call while the notification channel is up."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np

from tests.support.aggregator import Running
from tests.support.gateways import gateway_settings, run_gateway, write_credentials
from tests.support.waiting import wait_until
from tests.support.weights import sdk_weights

RUN_CALLS = re.compile(
    r'^gateway_upstream_request_duration_seconds_count\{route="/api/v1/run/\{branch\}",'
    r'status="200"\} ([0-9.e+]+)$',
    re.MULTILINE,
)


def _run_calls(client: httpx.Client, url: str) -> float:
    found = RUN_CALLS.search(client.get(f"{url}/metrics").text)
    return float(found[1]) if found else 0.0


def test_uploads_make_no_run_call_while_the_channel_is_connected(
    aggregator: Running, tmp_path: Path
) -> None:
    """The channel read the run when it connected and hears every change, so three uploads go out
    without a `GET /api/v1/run` (the official client makes none either)."""
    weights = sdk_weights(tmp_path / "w.npz", 2.0, [np.ones(3, dtype=np.float32)]).read_bytes()
    credentials = write_credentials(tmp_path / "leaf.json", aggregator.leaves[0])
    settings = gateway_settings(
        tmp_path / "gw",
        bk_host=aggregator.url,
        bk_credentials_file=credentials,
        bk_run_check_interval_s=60,
    )
    with run_gateway(settings) as gateway, httpx.Client(timeout=30) as client:
        wait_until(lambda: gateway.channel.state == "connected", 20, "the channel connected")
        before = _run_calls(client, gateway.url)
        assert before >= 1  # the log-in and the channel's read on connecting
        for _ in range(3):
            answer = client.post(f"{gateway.url}/upload", files={"file": ("w.npz", weights)})
            assert answer.status_code == 201, answer.text
        assert _run_calls(client, gateway.url) == before
