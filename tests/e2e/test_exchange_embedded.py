"""A bash trainer's rounds against the embedded aggregator: one curl /exchange per round, bad weights stopped at the door."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from gateway.state import running_state
from tests.support.gateways import gateway_settings, run_gateway
from tests.support.http import admin_get, curl, load_npz, wait_ready
from tests.support.readme import code_blocks


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


TRAIN_PY = """
import os, sys
import numpy as np

start, out = sys.argv[1], sys.argv[2]
rounds = len(open("rounds.log").read().split()) if os.path.exists("rounds.log") else 0
if rounds == 3:
    sys.exit(1)  # done: the loop ends
model = np.load(start)["layer_0"] if os.path.exists(start) else np.zeros((2, 3), np.float32)
np.save(out, model + 1)
open("rounds.log", "a").write(f"{rounds + 1}\\n")
"""


def test_the_readme_bash_loop_runs_as_printed(tmp_path: Path) -> None:
    """The README's bash trainer loop, with a stand-in train.py, makes three rounds through /exchange."""
    (loop,) = [block for block in code_blocks("sh") if "while true" in block]
    (tmp_path / "train.py").write_text(TRAIN_PY)
    settings = gateway_settings(tmp_path / "gw", bk_host=None)
    with run_gateway(settings) as gateway:
        wait_ready(gateway.url)
        script = loop.replace("localhost:8000", gateway.url).replace("python3", sys.executable)
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        with httpx.Client() as client:
            events = client.get(f"{gateway.url}/aggregations", params={"after": 0}).json()
    assert len(events) == 3
    np.testing.assert_array_equal(
        load_npz((tmp_path / "next.npz").read_bytes())["layer_0"], np.full((2, 3), 3.0)
    )
