"""The official branchkey 3.0.1 client's federated analytics (`save_analytics`) against a real local aggregator."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.aggregator import start
from tests.support.peers import (
    SCRIPT_EPILOGUE,
    SCRIPT_PRELUDE,
    SCRIPT_V3_CLIENT,
    Peer,
    peer_or_fail,
    run_script,
)

# Building the peer virtualenv on the first run takes longer than the suite's 120 s per-test limit.
pytestmark = [pytest.mark.peers, pytest.mark.timeout(600)]

# The client prints its progress on stdout, which carries only our JSON event lines: it is swapped
# for stderr while the client runs. A watchdog ends the process whatever happens.
_SCRIPT = (
    SCRIPT_PRELUDE
    + r"""

import numpy as np
"""
    + SCRIPT_V3_CLIENT
    + r"""

def main(clients):
    for index in range(len(job["leaves"])):
        clients.append(make_client(index))
    emit("constructed")
    deadline = time.monotonic() + 20
    while not all(c.run_status == "start" for c in clients):
        if time.monotonic() > deadline:
            raise TimeoutError("run_status 'start' did not reach every client's WebSocket")
        time.sleep(0.02)
    paths = [
        client.save_analytics(
            {"age": np.array(values)}, file_path=os.path.join(job["work_dir"], f"site-{i}")
        )
        for i, (client, values) in enumerate(zip(clients, job["columns"]))
    ]
    file_ids = [client.file_upload(path) for client, path in zip(clients, paths)]
    aggregation_ids = [client.queue.get(timeout=30) for client in clients]
    emit(
        "done",
        file_ids=file_ids,
        aggregation_ids=aggregation_ids,
        download=clients[0].file_download(aggregation_ids[0]),
    )
"""
    + SCRIPT_EPILOGUE
)


@pytest.fixture(scope="module")
def peer() -> Peer:
    """The official 3.0.1 client in its own virtualenv (a failure, never a skip, if it cannot be built)."""
    return peer_or_fail("3.0.1")


def test_save_analytics_from_three_official_clients_is_combined(peer: Peer, tmp_path: Path) -> None:
    """Three 3.0.1 clients upload `save_analytics` files (NaNs omitted), all hear one aggregation id, and the
    download holds the combined bundle with its mean, variance, std and range."""
    columns: list[list[Any]] = [[31.0, 45.0, float("nan")], [22.0, 58.0, 40.0, 37.0], [64.0]]
    with start(tmp_path / "agg") as agg, httpx.Client(timeout=10) as client:
        agg.set_run(client, "stop")
        job = {"url": agg.url, "leaves": agg.leaves, "columns": columns}
        with run_script(peer, _SCRIPT, job, tmp_path / "peer") as script:
            script.expect("constructed", timeout=60)
            agg.set_run(client, "start")
            done = script.expect("done", timeout=90)
            script.finish(timeout=30)
    assert len(set(done["aggregation_ids"])) == 1
    with np.load(io.BytesIO(Path(done["download"]).read_bytes()), allow_pickle=False) as result:
        everything = np.array([v for column in columns for v in column])
        values = everything[~np.isnan(everything)]
        assert str(result["__bk_payload_kind__"]) == "federated_analytics"
        assert result["age_n"].tolist() == [values.size]
        assert result["age_nan"].tolist() == [1]
        assert result["age_min"].tolist() == [values.min()]
        assert result["age_max"].tolist() == [values.max()]
        np.testing.assert_allclose(result["age_sum"], [values.sum()])
        np.testing.assert_allclose(result["age_mean"], [values.mean()])
        np.testing.assert_allclose(result["age_variance"], [values.var()])
        np.testing.assert_allclose(result["age_std"], [values.std()])
        np.testing.assert_allclose(result["age_range"], [np.ptp(values)])
