"""A subscriber that stops reading is cut off by the hub and never holds up the others."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx

from gateway.events import Subscriber
from tests.support.aggregator import Running
from tests.support.gateways import Gateway
from tests.support.live import Live
from tests.support.sse import ids
from tests.support.waiting import wait_until

BUFFER = 4
"""GATEWAY_SSE_BUFFER for this test: events queued per subscriber before the hub drops it."""

SERVER_SEND_BUFFER = 4096
"""SO_SNDBUF of the gateway's sockets. Left alone, Linux grows a loopback send buffer up to
net.ipv4.tcp_wmem's maximum (4 MiB here), so a reader that never reads would only be noticed after
megabytes of events; fixed small, about 70 KiB suffice (mostly the event loop's 64 KiB write buffer)."""

MAX_AGGREGATIONS = 3000
"""Upper bound of the burst (each aggregation event is ~140 bytes on the wire; ~500 are needed)."""


@contextmanager
def _never_reading(gateway: Gateway) -> Iterator[Subscriber]:
    """A raw socket with a tiny receive buffer that sends `GET /events` and never reads; its hub subscriber."""
    known = set(gateway.hub.subscribers)
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        stalled.connect((host, int(port)))
        stalled.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        wait_until(lambda: len(gateway.hub.subscribers) > len(known), 5, "the stalled subscriber")
        [subscriber] = set(gateway.hub.subscribers) - known
        yield subscriber


def _upload_until(agg: Running, live: Live, stop: threading.Event, sent: list[int]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set() and len(sent) < MAX_AGGREGATIONS:
            answer = agg.upload(client, live.fresh_weights())
            assert answer.status_code == 201, answer.text
            sent.append(1)


def test_a_subscriber_that_never_reads_is_cut_off_and_delays_no_one(live: Live) -> None:
    """A never-reading socket is dropped by the hub (its buffer stays <= 4) while a reader gets every event promptly."""
    agg = live.start_aggregator(dev_leaves=1)  # one leaf: every upload completes a round
    gateway = live.start_gateway(send_buffer=SERVER_SEND_BUFFER, gateway_sse_buffer=BUFFER)
    reader = live.subscribe(gateway)

    with _never_reading(gateway) as stalled:
        assert gateway.subscribers() == 2
        stop = threading.Event()
        sent: list[int] = []
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            workers = [pool.submit(_upload_until, agg, live, stop, sent) for _ in range(4)]
            try:
                wait_until(
                    lambda: gateway.subscribers() == 1, 60, "the hub dropped the stalled one"
                )
            finally:
                stop.set()
                for worker in workers:
                    worker.result()
        dropped_after = time.monotonic() - began
        assert stalled.lagged
        assert stalled not in gateway.hub.subscribers
        assert stalled.receive.statistics().current_buffer_used <= BUFFER

        newest = len(sent)  # one leaf: one aggregation, and one event, per upload
        wait_until(lambda: gateway.log.bounds()[1] == newest, 20, "every aggregation was logged")
        events = reader.wait_for(lambda events: newest in ids(events), 10, "every event")
        logged = gateway.log.after(0, limit=10_000)
    assert len(sent) > 100, "the burst was too small to prove anything"
    assert ids(events) == [e.id for e in logged] == list(range(1, newest + 1))
    lateness = [r.wall - e.created for r, e in zip(events, logged, strict=True)]
    assert max(lateness) < 1, f"the reader got an event {max(lateness):.2f} s late"
    assert gateway.subscribers() == 1
    assert reader.error is None
    assert dropped_after < 60
