"""The official branchkey 3.0.1 client across a pause: a leaf that uploaded before it still gets the round's aggregation."""

from __future__ import annotations

from pathlib import Path

import httpx
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
# for stderr. The test drives the run between the steps: "go" lines on stdin move the script on.
_SCRIPT = (
    SCRIPT_PRELUDE
    + r"""
def wait_until(condition, what):
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


import numpy as np
"""
    + SCRIPT_V3_CLIENT
    + r"""

def main(clients):
    for index in range(len(job["leaves"])):
        clients.append(make_client(index))
    emit("constructed")
    wait_until(lambda: all(c.run_status == "start" for c in clients), "start on every WebSocket")
    rng = np.random.default_rng(5)
    paths = [
        c.save_weights(os.path.join(job["work_dir"], f"leaf-{i}"), weighting=i + 1,
                       parameters=[rng.standard_normal(8)])
        for i, c in enumerate(clients)
    ]
    first = clients[0].file_upload(paths[0])
    emit("uploaded", run_number=clients[0].run_number)
    sys.stdin.readline()  # the test pauses the run
    wait_until(lambda: all(c.run_status == "pause" for c in clients), "pause on every WebSocket")
    emit("paused")
    sys.stdin.readline()  # the test starts it again
    wait_until(lambda: all(c.run_status == "start" for c in clients), "start again")
    others = [c.file_upload(p) for c, p in zip(clients[1:], paths[1:])]
    aggregation_ids = [c.queue.get(timeout=30) for c in clients]
    emit("done", run_numbers=[c.run_number for c in clients], aggregation_ids=aggregation_ids,
         file_ids=[first, *others])
"""
    + SCRIPT_EPILOGUE
)


@pytest.fixture(scope="module")
def peer() -> Peer:
    """The official 3.0.1 client in its own virtualenv (a failure, never a skip, if it cannot be built)."""
    return peer_or_fail("3.0.1")


def test_a_leaf_that_uploaded_before_a_pause_gets_the_aggregation(
    peer: Peer, tmp_path: Path
) -> None:
    """Leaf 0 uploads, the run is paused and started again, the others upload: all three official clients
    are told the same aggregation, and the run number has not moved."""
    with start(tmp_path / "agg") as agg, httpx.Client(timeout=10) as client:
        agg.set_run(client, "stop")
        job = {"url": agg.url, "leaves": agg.leaves}
        with run_script(peer, _SCRIPT, job, tmp_path / "peer") as script:
            script.expect("constructed", timeout=60)
            run_number = agg.set_run(client, "start")["run_number"]
            assert script.expect("uploaded", timeout=60)["run_number"] == run_number
            agg.set_run(client, "pause")
            assert script.process.stdin is not None
            script.process.stdin.write("go\n")
            script.process.stdin.flush()
            script.expect("paused", timeout=30)
            assert agg.set_run(client, "start")["run_number"] == run_number
            script.process.stdin.write("go\n")
            script.process.stdin.flush()
            done = script.expect("done", timeout=90)
            script.finish(timeout=30)
    assert done["run_numbers"] == [run_number] * 3
    assert len(set(done["aggregation_ids"])) == 1
    assert len(set(done["file_ids"])) == 3
