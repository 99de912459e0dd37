"""The official branchkey 3.0.1 client from PyPI, unmodified, against a real local aggregator."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running, start
from tests.support.http import admin_get
from tests.support.peers import (
    SCRIPT_EPILOGUE,
    SCRIPT_V3_CLIENT,
    SCRIPT_WATCHDOG,
    Peer,
    peer_or_fail,
    run_script,
)
from tests.support.weights import sdk_weights

# Building the peer virtualenv on the first run takes longer than the suite's 120 s per-test limit.
pytestmark = [pytest.mark.peers, pytest.mark.timeout(600)]

VERSION = "3.0.1"

Array = np.ndarray[Any, Any]

# ---------------------------------------------------------------- scripts run inside the peer

# Shared by every script. The client prints its progress with print(); stdout is swapped for a
# console that forwards to stderr and remembers the text, so the real stdout carries only the JSON
# lines of `emit` (one object per line, each with an "event"). The job arrives as one JSON line on
# stdin. A watchdog ends the process whatever happens, so a stuck client can never outlive the test.
_PRELUDE = (
    r"""
import json, os, sys, threading, time, traceback

class _Console:
    def __init__(self, target):
        self.target = target
        self.text = ""
        self.changed = threading.Condition()

    def write(self, text):
        with self.changed:
            self.text += text
            self.changed.notify_all()
        return self.target.write(text)

    def flush(self):
        self.target.flush()

    def wait_for(self, needle, timeout):
        with self.changed:
            return self.changed.wait_for(lambda: needle in self.text, timeout)

_out = sys.stdout
_emit_lock = threading.Lock()
console = _Console(sys.stderr)
sys.stdout = console

def emit(event, **fields):
    with _emit_lock:
        _out.write(json.dumps({"event": event, **fields}) + "\n")
        _out.flush()

"""
    + SCRIPT_WATCHDOG
    + r"""

import numpy as np

WORK = job["work_dir"]
"""
    + SCRIPT_V3_CLIENT
    + r"""

def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.02)

def layers(rng):
    return [rng.standard_normal((32, 16)).astype(np.float32), rng.standard_normal(50)]
"""
)

_EPILOGUE = SCRIPT_EPILOGUE

# Scenario 1: three leaves, one round. The test stops the run before this starts.
#
# Waiting for the WebSockets: the server sends aggregation_status only to the sockets open when the
# round closes and never replays it, so every client must be connected before the last upload. Each
# constructor reads the run status over REST while the run is stopped; after that the client's
# in-memory status changes only on a run_status notification (§5.7). The test starts the run once
# every constructor has returned: a client whose socket is registered gets the published "start",
# and one that connects later gets "start" as the first message of its connection. Either way,
# `client.run_status == "start"` proves a message arrived over an open socket, which stays
# registered until it closes, and it uses only the client's public API. (A server that lost the
# change for a socket being opened at that moment would leave that client at "stop" for good: the
# wait below then fails, naming what it waited for.)
_ROUND_SCRIPT = (
    _PRELUDE
    + r"""
def main(clients):
    for index in range(3):
        clients.append(make_client(index))
    emit("constructed", run_status=[c.run_status for c in clients])
    wait_until(
        lambda: all(c.run_status == "start" for c in clients),
        20,
        "run_status 'start' over every client's WebSocket",
    )
    rng = np.random.default_rng(job["seed"])
    inputs = [
        client.save_weights(os.path.join(WORK, f"leaf-{i}"), weighting=job["weightings"][i], parameters=layers(rng))
        for i, client in enumerate(clients)
    ]
    started = time.perf_counter()
    file_ids = [client.file_upload(path) for client, path in zip(clients, inputs)]
    aggregation_ids = [client.queue.get(timeout=30) for client in clients]
    if len(set(aggregation_ids)) != 1:
        raise AssertionError(f"the leaves were told different aggregations: {aggregation_ids}")
    downloads = [client.file_download(a) for client, a in zip(clients, aggregation_ids)]
    round_trip_s = time.perf_counter() - started
    metrics_ok = clients[0].send_performance_metrics(
        aggregation_ids[0], data=json.dumps(job["metrics"]), mode="test"
    )
    emit(
        "done",
        inputs=inputs,
        file_ids=file_ids,
        aggregation_ids=aggregation_ids,
        downloads=downloads,
        round_trip_s=round_trip_s,
        metrics_ok=metrics_ok,
        branch_config=clients[0].get_branch_config(),
    )
"""
    + _EPILOGUE
)

# Scenario 2: the run is stopped when this starts. Leaf 0 (wait_for_run False) is refused locally;
# leaf 1 (wait_for_run True) blocks until the test starts the run.
_GATING_SCRIPT = (
    _PRELUDE
    + r"""
def main(clients):
    rng = np.random.default_rng(7)
    refused = make_client(0)
    clients.append(refused)
    path = refused.save_weights(os.path.join(WORK, "refused"), weighting=1, parameters=layers(rng))
    try:
        file_id = refused.file_upload(path)
    except Exception as exc:
        emit("refused", error=str(exc), run_status=refused.run_status)
    else:
        raise AssertionError(f"file_upload succeeded while the run was stopped: {file_id}")

    waiting = make_client(1, run_config=RunConfig(wait_for_run=True, check_interval_s=1))
    clients.append(waiting)
    path = waiting.save_weights(os.path.join(WORK, "waiting"), weighting=1, parameters=layers(rng))
    result = {}

    def upload():
        try:
            result["file_id"] = waiting.file_upload(path)
        except Exception as exc:
            result["error"] = str(exc)

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    if not console.wait_for("run is blocked, going into sleep", 10):
        raise TimeoutError("the waiting client never reported that the run is blocked")
    emit("waiting", run_status=waiting.run_status)
    thread.join(job["release_timeout_s"])
    if thread.is_alive():
        raise TimeoutError(f"the upload was not released within {job['release_timeout_s']} s")
    emit("uploaded", run_status=waiting.run_status, **result)
"""
    + _EPILOGUE
)

# Scenario 5: the host has a trailing slash, so every REST path starts with '//' (§2.1).
_SLASH_SCRIPT = (
    _PRELUDE
    + r"""
def main(clients):
    client = make_client(0, host=job["url"] + "/")
    clients.append(client)
    path = client.save_weights(
        os.path.join(WORK, "slash"), weighting=2, parameters=layers(np.random.default_rng(5))
    )
    file_id = client.file_upload(path)
    emit(
        "done",
        run_status=client.run_status,
        run_number=client.run_number,
        input=path,
        file_id=file_id,
        download=client.file_download(file_id),
        branch_config=client.get_branch_config(),
    )
"""
    + _EPILOGUE
)


def base_job(agg: Running) -> dict[str, Any]:
    """What every script needs: the aggregator's URL and the leaves' credentials."""
    return {"url": agg.url, "leaves": agg.leaves}


@pytest.fixture(scope="module")
def peer() -> Peer:
    """The official 3.0.1 client in its own virtualenv (a failure, never a skip, if it cannot be built)."""
    return peer_or_fail(VERSION)


# ---------------------------------------------------------------- admin API and wire helpers


def digest_of(body: bytes) -> str:
    """The client's x-bk-file-digest value for `body`."""
    return "sha256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()


def client_upload_request(
    agg: Running, client: httpx.Client, path: Path, leaf: int, *, digest: str | None = None
) -> httpx.Request:
    """The upload request 3.0.1 sends (§5.5.1), multipart built as requests does; `digest` overrides the header."""
    body = path.read_bytes()
    real = digest_of(body)
    metadata = json.dumps(
        {
            "client_version": VERSION,
            "timestamp": "2025-01-31T12:00:00.000000",
            "file_size": len(body),
            "file_digest": real,
            "kind": "federated_learning",
        }
    )
    data = json.dumps({"leaf_name": agg.leaves[leaf]["name"], "metadata": metadata})
    boundary = secrets.token_hex(16)
    multipart = b"".join(
        [
            f"--{boundary}\r\n".encode(),
            b'Content-Disposition: form-data; name="data"\r\n\r\n',
            data.encode(),
            f"\r\n--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="file"; filename="{path.name}"\r\n\r\n'.encode(),
            body,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    headers = {
        **agg.auth(leaf),
        "x-bk-file-size": str(len(body)),
        "x-bk-file-digest": digest or real,
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    return client.build_request(
        "POST", f"{agg.url}/api/v1/file/upload", headers=headers, content=multipart
    )


def load_layers(path: Path) -> dict[str, Array]:
    """Every array of an NPZ, without pickle."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


# ---------------------------------------------------------------- scenarios


def test_three_leaves_complete_a_round(
    peer: Peer, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Three official clients upload, all get one aggregation id over the WebSocket, and download the exact weighted mean."""
    weightings = [3.0, 11.0, 26.0]
    metrics = {"accuracy": 0.91, "loss": 0.24}
    with start(tmp_path / "agg") as agg, httpx.Client(timeout=10) as client:
        agg.set_run(client, "stop")
        job = {**base_job(agg), "seed": 20250131, "weightings": weightings, "metrics": metrics}
        with run_script(peer, _ROUND_SCRIPT, job, tmp_path / "peer") as script:
            constructed = script.expect("constructed", timeout=60)
            assert constructed["run_status"] == ["stop"] * 3
            agg.set_run(client, "start")
            done = script.expect("done", timeout=75)
            script.finish(timeout=30)
        record_property("round_trip_s", round(float(done["round_trip_s"]), 4))

        aggregation_id = done["aggregation_ids"][0]
        assert done["aggregation_ids"] == [aggregation_id] * 3
        assert len(set(done["file_ids"])) == 3
        [aggregation] = admin_get(agg.url, ADMIN, "aggregations", client)
        assert aggregation["aggregation_id"] == aggregation_id
        assert aggregation["status"] == "done"
        assert sorted(json.loads(aggregation["contributors"])) == sorted(
            leaf["id"] for leaf in agg.leaves
        )

        # The weighted mean, computed here from the files the client wrote.
        inputs = [load_layers(Path(p)) for p in done["inputs"]]
        assert [float(i["weighting"][0]) for i in inputs] == weightings
        total = sum(weightings)
        downloads = [Path(p) for p in done["downloads"]]
        assert len(set(downloads)) == 3
        assert all(p.name == f"{aggregation_id}.npz" for p in downloads)
        assert len({p.read_bytes() for p in downloads}) == 1
        result = load_layers(downloads[0])
        assert sorted(result) == ["layer_0", "layer_1"]
        for key in ("layer_0", "layer_1"):
            expected: Array = np.zeros(inputs[0][key].shape)
            for weighting, layers in zip(weightings, inputs, strict=True):
                expected += weighting * layers[key].astype(np.float64)
            expected /= total
            got = result[key]
            assert got.dtype == inputs[0][key].dtype
            assert got.shape == inputs[0][key].shape
            np.testing.assert_allclose(got.astype(np.float64), expected, rtol=1e-6, atol=1e-12)

        assert done["metrics_ok"] is True
        reports = [
            m
            for m in admin_get(agg.url, ADMIN, "metrics", client)
            if m["aggregation_id"] == aggregation_id
        ]
        assert len(reports) == 1
        assert reports[0]["mode"] == "test"
        assert reports[0]["leaf_id"] == agg.leaves[0]["id"]
        assert json.loads(reports[0]["data"]) == metrics

        config = done["branch_config"]
        assert isinstance(config, dict)
        assert {"branch", "service"} <= config.keys()
        assert config["branch"]["id"] == agg.branch


def test_run_gating(peer: Peer, tmp_path: Path) -> None:
    """A stopped run refuses uploads locally ("run is blocked"); a waiting upload is released by the run_status notification."""
    with start(tmp_path / "agg") as agg, httpx.Client(timeout=10) as client:
        agg.set_run(client, "stop")
        job = {**base_job(agg), "release_timeout_s": 20}
        with run_script(peer, _GATING_SCRIPT, job, tmp_path / "peer") as script:
            refused = script.expect("refused", timeout=60)
            assert refused["error"].endswith(": run is blocked"), refused["error"]
            assert refused["run_status"] == "stop"
            assert admin_get(agg.url, ADMIN, "uploads", client) == []

            waiting = script.expect("waiting", timeout=30)
            assert waiting["run_status"] == "stop"
            assert admin_get(agg.url, ADMIN, "uploads", client) == []
            agg.set_run(client, "start")
            uploaded = script.expect("uploaded", timeout=15)
            script.finish(timeout=30)

        assert "error" not in uploaded, uploaded
        assert uploaded["run_status"] == "start"
        [stored] = admin_get(agg.url, ADMIN, "uploads", client)
        assert stored["file_id"] == uploaded["file_id"]
        assert stored["leaf_id"] == agg.leaves[1]["id"]


def test_tampered_digest_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    """An upload whose x-bk-file-digest is well formed but wrong gets 422 with an error, and nothing is kept."""
    path = sdk_weights(tmp_path / "weights.npz", 4, [np.arange(12, dtype=np.float32).reshape(3, 4)])
    wrong = digest_of(path.read_bytes() + b"tampered")
    assert len(wrong) == len("sha256=") + 44
    with start(tmp_path / "agg") as agg, httpx.Client(timeout=10) as client:
        response = client.send(client_upload_request(agg, client, path, 0, digest=wrong))
        assert response.status_code == 422, response.text
        assert isinstance(response.json().get("error"), str)
        assert admin_get(agg.url, ADMIN, "uploads", client) == []
        assert admin_get(agg.url, ADMIN, "rounds", client)[0]["leaves"] == []
        assert list((agg.data_dir / "uploads").iterdir()) == []
        assert list((agg.data_dir / "tmp").iterdir()) == []


def test_retried_upload_returns_the_same_file_id(tmp_path: Path) -> None:
    """The client's retry after a read timeout (the identical request twice) stores one upload and returns its id twice."""
    path = sdk_weights(tmp_path / "weights.npz", 4, [np.linspace(0, 1, 10)])
    with start(tmp_path / "agg") as agg, httpx.Client(timeout=10) as client:
        request = client_upload_request(agg, client, path, 1)
        request.read()  # the same bytes, boundary included, on both attempts
        first = client.send(request)
        second = client.send(request)
        assert first.status_code == second.status_code == 201, (first.text, second.text)
        file_id = first.json()["data"]["file_id"]
        assert second.json()["data"]["file_id"] == file_id
        assert [u["file_id"] for u in admin_get(agg.url, ADMIN, "uploads", client)] == [file_id]
        assert admin_get(agg.url, ADMIN, "rounds", client)[0]["leaves"] == [agg.leaves[1]["id"]]
        assert admin_get(agg.url, ADMIN, "aggregations", client) == []


def test_host_with_trailing_slash(peer: Peer, tmp_path: Path) -> None:
    """A client whose host ends in '/' (so its paths start with '//') gets its run, uploads, downloads and reads the config."""
    with start(tmp_path / "agg") as agg, httpx.Client(timeout=10) as client:
        with run_script(peer, _SLASH_SCRIPT, base_job(agg), tmp_path / "peer") as script:
            done = script.expect("done", timeout=60)
            script.finish(timeout=30)
        assert done["run_status"] == "start"
        assert done["run_number"] == 1
        [stored] = admin_get(agg.url, ADMIN, "uploads", client)
        assert stored["file_id"] == done["file_id"]
        sent, got = load_layers(Path(done["input"])), load_layers(Path(done["download"]))
        assert sorted(got) == sorted(sent)
        for key, array in sent.items():
            np.testing.assert_array_equal(got[key], array)
        assert done["branch_config"]["branch"]["id"] == agg.branch
