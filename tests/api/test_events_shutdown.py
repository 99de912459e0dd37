"""Stopping the gateway does not wait for its long-lived requests."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.support.live import Live


def test_shutdown_ends_open_streams_promptly(live: Live) -> None:
    """With an httpx-sse and a `curl -N` stream open, stopping the gateway ends both within 3 s."""
    live.start_aggregator()
    gateway = live.start_gateway()
    sse = live.subscribe(gateway)
    curl = live.curl(gateway)
    assert gateway.subscribers() == 2

    began = time.monotonic()
    stop_took = live.stop_gateway(gateway)
    sse.join(5)
    curl.join(5)
    assert sse.ended_at is not None
    assert curl.ended_at is not None
    assert sse.ended_at - began < 3
    assert curl.ended_at - began < 3
    assert stop_took < 3, f"the server took {stop_took:.1f} s to stop"
    assert sse.error is None
    assert curl.returncode == 0, curl.stderr


def test_shutdown_answers_a_waiting_long_poll_promptly(live: Live) -> None:
    """A long-poll waiting (wait=30) when the gateway stops gets 200 [] within 3 s, not a 500 after the grace period."""
    live.start_aggregator()
    gateway = live.start_gateway()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_long_poll, f"{gateway.url}/aggregations?wait=30")
        time.sleep(0.5)
        assert not pending.done(), "the long-poll did not wait"
        began = time.monotonic()
        stop_took = live.stop_gateway(gateway)
        answer, answered_at = pending.result(timeout=30)
    assert answered_at - began < 3, f"the long-poll was answered after {answered_at - began:.1f} s"
    assert (answer.status_code, answer.text) == (200, "[]")
    assert stop_took < 3, f"the server took {stop_took:.1f} s to stop"


def _long_poll(url: str) -> tuple[httpx.Response, float]:
    with httpx.Client(timeout=60) as client:
        answer = client.get(url)
    return answer, time.monotonic()
