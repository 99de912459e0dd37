"""`run_status` events: what a subscriber learns when the admin stops and starts the run."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.live import Live
from tests.support.sse import Received, of_type


def _upload(url: str, weights: Path) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.post(url, files={"file": ("w.npz", weights.read_bytes())})


def test_stop_is_announced_and_the_start_notification_releases_a_waiting_upload(
    live: Live,
) -> None:
    """Stopping the run emits run_status stop; the start notification (not the 30 s poll) releases a ?wait=true upload."""
    agg = live.start_aggregator()
    gateway = live.start_gateway(bk_run_check_interval_s=30)
    stream = live.subscribe(gateway)

    agg.set_run(live.client, "stop")
    stopped = stream.wait_for(lambda events: len(events) >= 1, 5, "the stop")
    assert [(e.event, e.data) for e in stopped] == [
        ("run_status", {"run_status": "stop", "run_number": 1})
    ]

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_upload, f"{gateway.url}/upload?wait=true", live.weights)
        time.sleep(0.5)
        assert not pending.done(), "the upload did not wait for the run"
        began = time.monotonic()
        started = agg.set_run(live.client, "start")
        answer = pending.result(timeout=20)
        released_after = time.monotonic() - began
    assert answer.status_code == 201, answer.text
    assert released_after < 3, f"the upload was released {released_after:.1f} s after the start"

    events = stream.wait_for(lambda events: len(events) >= 2, 5, "the start")
    assert events[1].event == "run_status"
    assert events[1].data == {"run_status": "start", "run_number": started["run_number"]}
    assert started["run_number"] == 2
    uploads = live.client.get(f"{agg.url}/admin/uploads", headers=agg.admin).json()["data"]
    assert [u["run_number"] for u in uploads] == [2]


def test_a_stop_right_after_a_start_is_announced_as_stop(live: Live) -> None:
    """When the admin starts and at once stops the run, the last run_status event says stop, like GET /run."""
    agg = live.start_aggregator()
    gateway = live.start_gateway()
    stream = live.subscribe(gateway, "?types=run_status")
    for _ in range(5):
        agg.set_run(live.client, "start")
        stopped = agg.set_run(live.client, "stop")
        expected = {"run_status": "stop", "run_number": stopped["run_number"]}

        def announced(events: list[Received], expected: object = expected) -> bool:
            return bool(events) and of_type(events, "run_status")[-1].data == expected

        stream.wait_for(announced, 3, f"the last run_status event is {expected}")
        time.sleep(0.2)  # nothing contradicts it afterwards
        assert stream.of_type("run_status")[-1].data == expected
        assert live.client.get(f"{gateway.url}/run").json() == expected
