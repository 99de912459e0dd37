"""A bash trainer's rounds against the embedded aggregator: one curl /exchange per round, bad weights stopped at the door."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from gateway.state import running_state
from tests.support.gateways import gateway_settings, run_gateway
from tests.support.http import admin_get, curl, load_npz, wait_ready


def test_curl_rounds_with_exchange_and_refusals_offline(tmp_path: Path) -> None:
    """Three rounds of `curl -F file=@w.npy /exchange -o next.npz`, each a new aggregation of that
    round's model; NaN and a changed layer shape are 422s that reach nothing; the check can be switched off."""
    settings = gateway_settings(tmp_path / "gw", bk_host=None)
    seen: list[str] = []
    with run_gateway(settings) as gateway:
        wait_ready(gateway.url)
        model = np.zeros((4, 3), np.float32)
        for round_number in range(1, 4):
            model = model + round_number  # "training"
            np.save(tmp_path / "w.npy", model)
            answer = curl("-F", "file=@w.npy", f"{gateway.url}/exchange", cwd=tmp_path)
            assert answer.status == 200, answer.body[:300]
            seen.append(answer.headers["x-aggregation-id"])
            got = load_npz(answer.body)["layer_0"]
            np.testing.assert_array_equal(got, model)  # one leaf: the mean is its own model
            model = got
        assert len(set(seen)) == 3

        bad = model.copy()
        bad[2, 1] = np.nan
        np.save(tmp_path / "nan.npy", bad)
        np.save(tmp_path / "wide.npy", np.zeros((4, 5), np.float32))
        refused = {
            "nan.npy": ("not-finite", "layer_0 holds NaN at index (2, 1)"),
            "wide.npy": ("architecture-mismatch", "layer_0 is <f4 of shape (4, 5) here"),
        }
        for name, (code, words) in refused.items():
            answer = curl("-F", f"file=@{name}", f"{gateway.url}/exchange", cwd=tmp_path)
            assert answer.status == 422
            assert answer.json()["type"] == f"/problems/weights/{code}"
            assert words in answer.json()["detail"]
        embedded = running_state(gateway.app).embedded
        assert embedded is not None
        with httpx.Client() as client:
            uploads = admin_get(embedded.url, embedded.admin_token, "uploads", client)
        assert len(uploads) == 3
    changed = gateway_settings(
        tmp_path / "gw", bk_host=None, gateway_check_architecture=False
    )  # the same data directory: the reference survived, the switch lets the new shape through
    with run_gateway(changed) as gateway:
        wait_ready(gateway.url)
        answer = curl("-F", "file=@wide.npy", f"{gateway.url}/exchange", cwd=tmp_path)
        assert answer.status == 200, answer.body[:300]
        assert load_npz(answer.body)["layer_0"].shape == (4, 5)
