"""`GET /events`: live delivery to curl and httpx-sse, resuming, replay, type filters, gaps, keep-alives."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

from tests.support.http import check_problem
from tests.support.live import Live
from tests.support.sse import Received, aggregation_ids, ids, of_type
from tests.support.waiting import wait_until


def test_aggregations_reach_curl_and_httpx_sse_in_order_once(live: Live) -> None:
    """Three aggregations in a row reach a `curl -N` and an httpx-sse subscriber in order, each once, ids rising."""
    live.start_aggregator()
    gateway = live.start_gateway()
    curl = live.curl(gateway)
    sse = live.subscribe(gateway)
    assert gateway.subscribers() == 2

    announced = [live.aggregate() for _ in range(3)]
    for stream in (curl, sse):
        stream.wait_for(
            lambda events: len(of_type(events, "aggregation")) >= 3, 10, "three aggregations"
        )
    live.stop_gateway(gateway)  # ends both streams: whatever else was coming has come

    curl_events, sse_events = curl.join(), sse.join()
    assert curl.returncode == 0, curl.stderr
    assert curl.stderr == b""
    assert sse.error is None
    assert sse.content_type is not None
    assert sse.content_type.startswith("text/event-stream")
    for stream, events in ((curl, curl_events), (sse, sse_events)):
        assert stream.retry == 3000
        assert [e.event for e in events] == ["aggregation"] * 3  # a first start has no gap
        assert aggregation_ids(events) == announced
        event_ids = ids(events)
        assert len(event_ids) == 3
        assert event_ids == sorted(set(event_ids))
        for event in events:
            assert set(event.data) == {"aggregation_id", "run_number", "received_at"}
            assert event.data["run_number"] == 1
            assert datetime.fromisoformat(event.data["received_at"]).tzinfo is not None
    assert [(e.id, e.data) for e in curl_events] == [(e.id, e.data) for e in sse_events]


def test_reconnect_with_last_event_id_gets_exactly_the_missed_aggregations(live: Live) -> None:
    """A subscriber that drops and reconnects with Last-Event-ID gets exactly the two aggregations it missed."""
    live.start_aggregator()
    gateway = live.start_gateway()
    first = live.subscribe(gateway, stop_when=lambda events: bool(of_type(events, "aggregation")))
    seen = live.aggregate()
    before = first.join()
    assert aggregation_ids(before) == [seen]
    last_id = before[-1].id
    assert last_id is not None
    wait_until(lambda: gateway.subscribers() == 0, 5, "the gateway noticed the disconnect")

    missed = [live.aggregate(), live.aggregate()]
    again = live.subscribe(gateway, headers={"Last-Event-ID": str(last_id)})
    again.wait_for(lambda events: len(of_type(events, "aggregation")) >= 2, 10, "the replay")
    live.stop_gateway(gateway)

    after = again.join()
    assert aggregation_ids(after) == missed
    replayed = ids(of_type(after, "aggregation"))
    assert replayed == sorted(set(replayed))
    assert replayed[0] > last_id


def test_after_query_replays_like_last_event_id(live: Live) -> None:
    """`?after=<id>` replays exactly what the `Last-Event-ID` header does."""
    live.start_aggregator()
    gateway = live.start_gateway()
    announced = [live.aggregate() for _ in range(3)]
    event_ids = [gateway.event_of(a) for a in announced]

    def through_newest(events: list[Received]) -> bool:
        return event_ids[-1] in ids(events)

    by_query = live.subscribe(gateway, f"?after={event_ids[0]}", stop_when=through_newest)
    by_header = live.subscribe(
        gateway, headers={"Last-Event-ID": str(event_ids[0])}, stop_when=through_newest
    )
    from_query, from_header = by_query.join(), by_header.join()
    assert aggregation_ids(from_query) == announced[1:]
    assert [(e.id, e.event, e.data) for e in from_query] == [
        (e.id, e.event, e.data) for e in from_header
    ]


def test_types_filter_sends_only_the_chosen_types(live: Live) -> None:
    """`?types=run_status` delivers the run being stopped and no aggregation; an unknown type is a 400 problem."""
    agg = live.start_aggregator()
    gateway = live.start_gateway()
    only = live.subscribe(gateway, "?types=run_status")
    everything = live.subscribe(gateway)

    live.aggregate()
    agg.set_run(live.client, "stop")
    everything.wait_for(
        lambda events: len(of_type(events, "run_status")) >= 1, 10, "the stop in the full stream"
    )
    only.wait_for(lambda events: len(events) >= 1, 10, "the stop in the filtered stream")
    live.stop_gateway(gateway)

    assert [e.event for e in everything.join()] == ["aggregation", "run_status"]
    filtered = only.join()
    assert [e.event for e in filtered] == ["run_status"]
    assert filtered[0].data == {"run_status": "stop", "run_number": 1}


def test_unknown_event_type_is_a_problem(live: Live) -> None:
    """`?types=` naming an unknown type answers 400 with a problem document, not a stream."""
    live.start_aggregator()
    gateway = live.start_gateway()
    answer = live.client.get(f"{gateway.url}/events", params={"types": "aggregation,weather"})
    check_problem(answer, 400, "bad-request")


def test_replay_from_before_the_retained_log_starts_with_a_gap(live: Live) -> None:
    """With 10 events kept and 12 produced, a replay from 0 starts with a log-truncated gap, then ids 3..12."""
    live.start_aggregator()
    gateway = live.start_gateway(gateway_events_max_count=10)
    announced = [live.aggregate() for _ in range(12)]
    newest = gateway.event_of(announced[-1])
    assert gateway.log.bounds() == (newest - 9, newest)

    def through_newest(events: list[Received]) -> bool:
        return newest in ids(events)

    from_zero = live.curl(gateway, "?after=0")
    from_zero.wait_for(through_newest, 10, "the replay from 0")
    just_before = live.subscribe(gateway, f"?after={newest - 10}", stop_when=through_newest)
    kept = just_before.join()
    live.stop_gateway(gateway)

    events = from_zero.join()
    gap, *rest = events
    assert (gap.event, gap.id, gap.data) == ("gap", None, {"reason": "log-truncated", "since": 0})
    assert ids(rest) == list(range(newest - 9, newest + 1))
    assert aggregation_ids(rest) == announced[2:]
    assert [e.event for e in kept] == ["aggregation"] * 10  # nothing was lost after that id: no gap


def test_keepalive_comments_arrive(live: Live) -> None:
    """With GATEWAY_SSE_KEEPALIVE_S=0.5 an idle `curl -N` stream gets a keep-alive comment about every 0.5 s."""
    live.start_aggregator()
    gateway = live.start_gateway(gateway_sse_keepalive_s=0.5)
    curl = live.curl(gateway)
    wait_until(lambda: len(curl.comments) >= 3, 5, "three keep-alive comments")
    assert curl.events == []
    comments = list(curl.comments)
    assert {text for text, _ in comments} == {"keep-alive"}
    gaps = [later - earlier for (_, earlier), (_, later) in pairwise(comments)]
    assert all(0.3 < gap < 1.2 for gap in gaps), gaps
