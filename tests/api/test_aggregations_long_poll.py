"""`GET /aggregations` (long-poll) and `GET /aggregations/latest`."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.support.http import check_problem
from tests.support.live import Live


def _long_poll(url: str, **params: Any) -> tuple[httpx.Response, float]:
    """The answer of one long-poll and `time.monotonic()` when it came."""
    with httpx.Client(timeout=90) as client:
        answer = client.get(f"{url}/aggregations", params=params)
    return answer, time.monotonic()


def test_long_poll_answers_at_once_when_aggregations_are_stored(live: Live) -> None:
    """`?after=0&wait=10` answers at once with every stored aggregation, oldest first."""
    live.start_aggregator()
    gateway = live.start_gateway()
    announced = [live.aggregate() for _ in range(2)]
    event_ids = [gateway.event_of(a) for a in announced]

    began = time.monotonic()
    answer, answered_at = _long_poll(gateway.url, after=0, wait=10)
    assert answered_at - began < 1
    assert answer.status_code == 200
    found = answer.json()
    assert [a["aggregation_id"] for a in found] == announced
    assert [a["id"] for a in found] == event_ids
    assert all(set(a) == {"id", "aggregation_id", "run_number", "received_at"} for a in found)


def test_long_poll_wakes_within_a_second_of_an_aggregation(live: Live) -> None:
    """A waiting long-poll answers within 1 s of the aggregation being announced, with just that one."""
    live.start_aggregator()
    gateway = live.start_gateway()
    newest = gateway.event_of(live.aggregate())

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_long_poll, gateway.url, after=newest, wait=10)
        time.sleep(0.5)
        assert not pending.done(), "the long-poll did not wait"
        aggregation_id = live.aggregate()
        announced_at = time.monotonic()
        answer, answered_at = pending.result(timeout=20)
    assert answer.status_code == 200
    assert [a["aggregation_id"] for a in answer.json()] == [aggregation_id]
    assert answered_at - announced_at < 1


def test_long_poll_times_out_with_an_empty_list(live: Live) -> None:
    """With nothing new, `?wait=1` answers 200 [] after about one second."""
    live.start_aggregator()
    gateway = live.start_gateway()
    newest = gateway.event_of(live.aggregate())

    began = time.monotonic()
    answer, answered_at = _long_poll(gateway.url, after=newest, wait=1)
    assert answer.status_code == 200
    assert answer.json() == []
    assert 0.9 <= answered_at - began < 2


def test_latest_aggregation_is_a_404_problem_before_any_and_the_newest_after(live: Live) -> None:
    """`GET /aggregations/latest` is a 404 problem before any aggregation, then the newest one."""
    live.start_aggregator()
    gateway = live.start_gateway()
    check_problem(live.client.get(f"{gateway.url}/aggregations/latest"), 404, "not-found")

    announced = [live.aggregate() for _ in range(2)]
    newest = gateway.event_of(announced[-1])
    answer = live.client.get(f"{gateway.url}/aggregations/latest")
    assert answer.status_code == 200
    latest = answer.json()
    assert (latest["id"], latest["aggregation_id"], latest["run_number"]) == (
        newest,
        announced[-1],
        1,
    )


def test_unknown_resume_ids_are_reported(live: Live) -> None:
    """An id the gateway never issued gets a gap on /events and a 409 problem from the long-poll, never silence."""
    live.start_aggregator()
    gateway = live.start_gateway()
    live.aggregate()
    with httpx.Client(timeout=10) as client:
        answer = client.get(f"{gateway.url}/aggregations", params={"after": 50})
        assert answer.status_code == 409
        assert answer.json()["type"] == "/problems/unknown-event-id"
        with client.stream(
            "GET", f"{gateway.url}/events", headers={"Last-Event-ID": "50"}
        ) as stream:
            lines = stream.iter_lines()
            seen = [next(lines) for _ in range(4)]
    assert seen[2] == "event: gap"
    assert '"reason":"unknown-event-id"' in seen[3]
