"""Gaps: the upstream restarting under a running gateway, and the gateway itself restarting."""

from __future__ import annotations

import time
from datetime import datetime

from tests.support.live import Live
from tests.support.ports import free_port
from tests.support.sse import aggregation_ids, ids, of_type
from tests.support.waiting import wait_until


def test_aggregator_restart_on_the_same_port_gives_a_gap_and_events_resume(live: Live) -> None:
    """The aggregator restarts on its port: /readyz is 503 then 200, a channel-reconnected gap, later aggregations arrive."""
    port = free_port()
    live.start_aggregator(port)
    gateway = live.start_gateway()
    ready = f"{gateway.url}/readyz"
    assert live.client.get(ready).status_code == 200
    stream = live.subscribe(gateway)
    before = live.aggregate()
    stream.wait_for(lambda events: len(events) >= 1, 10, "the first aggregation")

    went_down = time.time()
    live.stop_aggregator()
    wait_until(lambda: live.client.get(ready).status_code == 503, 10, "/readyz said 503")
    problem = live.client.get(ready).json()
    assert problem["type"] == "/problems/not-ready"
    assert gateway.channel.state != "connected"

    came_back = time.time()
    live.start_aggregator(port)  # same data directory: same leaves, branch and run
    wait_until(lambda: live.client.get(ready).status_code == 200, 10, "/readyz said 200 again")
    stream.wait_for(lambda events: bool(of_type(events, "gap")), 5, "the gap event")
    after = live.aggregate()
    stream.wait_for(lambda events: after in aggregation_ids(events), 10, "the later aggregation")
    live.stop_gateway(gateway)

    events = stream.join()
    assert aggregation_ids(events) == [before, after]
    [gap] = of_type(events, "gap")
    assert gap.data["reason"] == "channel-reconnected"
    since = datetime.fromisoformat(gap.data["since"]).timestamp()
    assert went_down - 1 <= since <= came_back + 1
    assert all(
        e.data == {"run_status": "start", "run_number": 1} for e in of_type(events, "run_status")
    )
    event_ids = ids(events)
    assert event_ids == sorted(set(event_ids))
    assert [e.event for e in events].index("gap") == 1  # between the two aggregations


def test_gateway_restart_continues_ids_replays_and_says_gateway_restarted(live: Live) -> None:
    """A gateway restarted on the same data dir keeps ids rising, replays from a pre-restart id, emits gateway-restarted."""
    live.start_aggregator()
    first = live.start_gateway()
    before = [live.aggregate() for _ in range(2)]
    before_ids = [first.event_of(a) for a in before]
    live.stop_gateway(first)

    second = live.start_gateway()  # same data directory "gw"
    after = live.aggregate()
    after_id = second.event_of(after)
    assert after_id > before_ids[-1]

    replay = live.subscribe(second, headers={"Last-Event-ID": str(before_ids[0])})
    replay.wait_for(lambda events: after in aggregation_ids(events), 10, "the replay")
    live.stop_gateway(second)

    events = replay.join()
    assert aggregation_ids(events) == [before[1], after]
    [gap] = of_type(events, "gap")
    assert gap.data["reason"] == "gateway-restarted"
    assert gap.id is not None
    assert before_ids[-1] < gap.id < after_id
    event_ids = ids(events)
    assert event_ids == sorted(set(event_ids))
    assert event_ids[0] == before_ids[1]
