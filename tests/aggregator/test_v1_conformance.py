"""The official v1 clients from PyPI (2.6.2, 2.5.6), unmodified, against a real aggregator and RabbitMQ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running, start
from tests.support.amqp import AMQP_URL
from tests.support.http import admin_get
from tests.support.peers import SCRIPT_PRELUDE, Peer, peer_or_fail, run_script
from tests.support.weights import layers_of, read_v1, write_v1

# Building a peer virtualenv on the first run takes longer than the suite's 120 s per-test limit.
pytestmark = [pytest.mark.peers, pytest.mark.timeout(600)]

VERSIONS = ("2.6.2", "2.5.6")
Array = np.ndarray[Any, Any]

# Runs in the peer, with the work dir as its cwd (the client saves to ./aggregated_output). The job
# arrives as one JSON line on stdin; stdout carries only the JSON event lines of `emit` (the client's
# own print() goes to stderr), and a watchdog ends the process whatever the client is stuck on.
#
# The run is stopped when this starts. Every client is constructed (authenticate, AMQP consumer, run),
# leaf 0 is refused locally ("run is blocked"), then the test starts the run: each client must see the
# run_status message on its own queue and re-fetch the run (run_number 2 proves the re-fetch). Then
# every leaf uploads the v1 file the test wrote, gets the aggregation id from `client.queue`,
# downloads the result and leaf 0 reports metrics.
_SCRIPT = (
    SCRIPT_PRELUDE
    + r"""

from branchkey.client import Client

def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.02)

def main():
    clients = [
        Client(credentials, host=job["url"], ssl=False) for credentials in job["credentials"]
    ]
    try:
        clients[0].file_upload(job["inputs"][0])
    except Exception as exc:
        refused = str(exc)
    else:
        raise AssertionError("file_upload succeeded while the run was stopped")
    emit(
        "constructed",
        ids=[[c.user_id, c.tree_id, c.branch_id] for c in clients],
        run=[[c.run_status, c.run_number] for c in clients],
        refused=refused,
    )
    wait_until(
        lambda: all(c.run_status == "start" and c.run_number == 2 for c in clients),
        20,
        "run_status 'start' over AMQP and the run re-fetched by every client",
    )
    file_ids = [c.file_upload(path) for c, path in zip(clients, job["inputs"])]
    aggregation_ids = [c.queue.get(timeout=30) for c in clients]
    downloaded = [c.file_download(a) for c, a in zip(clients, aggregation_ids)]
    metrics_ok = clients[0].send_performance_metrics(
        aggregation_ids[0], data=json.dumps(job["metrics"]), mode="test"
    )
    emit(
        "done",
        file_ids=file_ids,
        aggregation_ids=aggregation_ids,
        downloaded=downloaded,
        metrics_ok=metrics_ok,
        cwd=os.getcwd(),
    )

try:
    main()
except BaseException:
    emit("error", traceback=traceback.format_exc())
_out.flush()
os._exit(0)  # the clients' consumer threads hold blocking AMQP connections
"""
)


@pytest.fixture(scope="module", params=VERSIONS)
def peer(request: pytest.FixtureRequest) -> Peer:
    """An official v1 client in its own virtualenv (a failure, never a skip, if it cannot be built)."""
    return peer_or_fail(str(request.param))


def credentials(agg: Running, version: str) -> list[dict[str, str]]:
    """The v1 credentials dict of each leaf; 2.5.x also needs the performance analyser pair."""
    found = []
    for leaf in agg.leaves:
        creds = {
            "leaf_name": leaf["name"],
            "leaf_id": leaf["id"],
            "leaf_session_token": leaf["session_token"],
            "response_host": "127.0.0.1",
        }
        if version.startswith("2.5."):
            creds["performance_analyser_username"] = leaf["id"]
            creds["performance_analyser_password"] = leaf["session_token"]
        found.append(creds)
    return found


def test_v1_client_round_over_amqp(peer: Peer, tmp_path: Path) -> None:
    """Three unmodified v1 clients: run gating and restart over AMQP, uploads, the aggregation id on client.queue, the exact weighted mean downloaded as .npy, metrics."""
    weightings = [3, 11, 26]
    inputs = [
        write_v1(tmp_path / f"leaf-{i}.npy", w, layers_of(10 + i)) for i, w in enumerate(weightings)
    ]
    metrics = {"accuracy": 0.9}
    with (
        start(tmp_path / "agg", amqp_url=AMQP_URL) as agg,
        httpx.Client(timeout=10) as client,
    ):
        agg.set_run(client, "stop")
        job = {
            "url": agg.url,
            "credentials": credentials(agg, peer.version),
            "inputs": [str(p) for p in inputs],
            "metrics": metrics,
        }
        with run_script(peer, _SCRIPT, job, tmp_path / "peer") as script:
            constructed = script.expect("constructed", timeout=60)
            leaf = agg.leaves[0]
            assert constructed["ids"] == [[leaf["owner_id"], leaf["tree_id"], agg.branch]] * 3
            assert constructed["run"] == [["stop", 1]] * 3
            assert constructed["refused"].endswith(": run is blocked"), constructed["refused"]
            assert admin_get(agg.url, ADMIN, "uploads", client) == []
            agg.set_run(client, "start")
            done = script.expect("done", timeout=60)
            script.finish(timeout=30)

        aggregation_id = done["aggregation_ids"][0]
        assert done["aggregation_ids"] == [aggregation_id] * 3
        assert done["downloaded"] == [True] * 3
        assert len(set(done["file_ids"])) == 3
        [aggregation] = admin_get(agg.url, ADMIN, "aggregations", client)
        assert aggregation["aggregation_id"] == aggregation_id
        assert aggregation["run_number"] == 2

        saved = Path(done["cwd"]) / "aggregated_output" / f"{aggregation_id}.npy"
        num_samples, result = read_v1(saved)
        assert num_samples == sum(weightings)
        sent = [read_v1(path)[1] for path in inputs]
        for index in range(len(sent[0])):
            expected: Array = np.zeros(sent[0][index].shape)
            for w, layers in zip(weightings, sent, strict=True):
                expected += w * layers[index].astype(np.float64)
            expected /= sum(weightings)
            assert result[index].dtype == sent[0][index].dtype
            np.testing.assert_allclose(result[index], expected, rtol=1e-6, atol=1e-7)

        assert done["metrics_ok"] is True
        [report] = admin_get(agg.url, ADMIN, "metrics", client)
        assert report["aggregation_id"] == aggregation_id
        assert report["leaf_id"] == leaf["id"]
        assert json.loads(report["data"]) == metrics
