"""What a trainer sees of a misbehaving BranchKey through a running gateway: redirects give the
model, a recovered failure gives the upload, and a trickling upstream gives a prompt 504."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np

from tests.support.faulty_upstream import FaultyUpstream, Redirect, Reply, Trickle
from tests.support.gateways import leaf_gateway
from tests.support.http import check_problem, load_npz
from tests.support.weights import sdk_weights

CREDENTIALS = {
    "id": "leaf-f",
    "name": "leaf f",
    "session_token": "token-f",
    "tree_id": "tree-f",
    "branch_id": "branch-f",
}
RUN = "/api/v1/run/branch-f"
UPLOAD = "/api/v1/file/upload"
STARTED = Reply(200, {"data": {"run_status": "start", "run_number": 1}})


def test_a_redirected_download_gives_the_trainer_the_model(tmp_path: Path) -> None:
    """The download call answers 302 (same origin) and the blob 307 (another origin, as object
    stores do): the trainer gets the model, and the other origin never sees the leaf's token."""
    buffer = io.BytesIO()
    np.savez(buffer, layer_0=np.arange(6, dtype=np.float32))
    api, store = FaultyUpstream(), FaultyUpstream()
    with api.running(), store.running():
        api.on("GET", RUN, STARTED)
        api.on("GET", "/api/v1/file/download/agg-1", Redirect("/api/v1/v2/download/agg-1"))
        api.on(
            "GET",
            "/api/v1/v2/download/agg-1",
            Reply(200, {"data": {"download_url": f"{api.url}/blob/agg-1"}}),
        )
        api.on("GET", "/blob/agg-1", Redirect(f"{store.url}/bucket/agg-1?sig=x", 307))
        store.on("GET", "/bucket/agg-1", Reply(200, raw=buffer.getvalue()))
        with (
            leaf_gateway(tmp_path, api.url, CREDENTIALS) as gateway,
            httpx.Client(timeout=30) as client,
        ):
            answer = client.get(f"{gateway.url}/aggregations/agg-1")
    assert answer.status_code == 200, answer.text
    assert load_npz(answer.content)["layer_0"].tolist() == [0, 1, 2, 3, 4, 5]
    [moved] = api.requests("GET", "/api/v1/v2/download/agg-1")
    assert moved.headers["authorization"] == "Bearer leaf-f:token-f"
    [blob] = store.requests("GET", "/bucket/agg-1")
    assert not {"authorization", "leaf"} & set(blob.headers)


def test_an_upload_answered_500_then_201_succeeds(tmp_path: Path) -> None:
    """BranchKey fails the first upload with 500 and takes the second: the trainer gets 201."""
    weights = sdk_weights(tmp_path / "w.npz", 2.0, [np.ones(4, dtype=np.float32)]).read_bytes()
    fake = FaultyUpstream()
    with fake.running():
        fake.on("GET", RUN, STARTED)
        fake.on(
            "POST",
            UPLOAD,
            Reply(500, {"error": "database hiccup"}),
            Reply(201, {"data": {"file_id": "f-2"}}),
        )
        with (
            leaf_gateway(tmp_path, fake.url, CREDENTIALS, bk_max_retries=3) as gateway,
            httpx.Client(timeout=30) as client,
        ):
            answer = client.post(f"{gateway.url}/upload", files={"file": ("w.npz", weights)})
    assert answer.status_code == 201, answer.text
    assert answer.json()["file_id"] == "f-2"
    first, second = fake.requests("POST", UPLOAD)
    assert first.body == second.body


def test_a_trickling_upstream_gives_a_prompt_504(tmp_path: Path) -> None:
    """An upstream that answers the run call one byte every 0.15 s (a 10 s read timeout never
    fires) costs the trainer BK_UPSTREAM_DEADLINE_S, not the 25 s the answer would take."""
    fake = FaultyUpstream()
    with fake.running():
        fake.on("GET", RUN, STARTED, Trickle(STARTED, every_s=0.15))
        with (
            leaf_gateway(
                tmp_path, fake.url, CREDENTIALS, bk_read_timeout_s=10, bk_upstream_deadline_s=1.0
            ) as gateway,
            httpx.Client(timeout=30) as client,
        ):
            began = time.monotonic()
            answer = client.get(f"{gateway.url}/run")
            took = time.monotonic() - began
    problem = check_problem(answer, 504, "upstream-timeout")
    assert "BK_UPSTREAM_DEADLINE_S" in problem["detail"]
    assert took < 3.0
