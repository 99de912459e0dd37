"""The fan-out hub's bookkeeping: keep-alive ticks never count as events a subscriber fell behind."""

from __future__ import annotations

from pathlib import Path

import anyio

from gateway.events import Event, EventHub, EventLog


def _event(number: int) -> Event:
    return Event(number, "aggregation", {"aggregation_id": f"a{number}"}, 0.0)


def test_ticks_do_not_pile_up_or_take_event_slots() -> None:
    """A stalled stream gets at most one queued tick however many ticks pass; it still holds
    `buffer` events before it is cut off, and is cut off at the next one."""
    hub = EventHub(buffer=4)
    stalled = hub.subscribe()
    for _ in range(300):  # over an hour of 15 s ticks with nobody reading
        hub.keepalive()
    assert stalled.send.statistics().current_buffer_used == 1
    for number in range(1, 5):
        hub.publish(_event(number))
    assert not stalled.lagged
    hub.publish(_event(5))
    assert stalled.lagged
    assert stalled not in hub.subscribers
    hub.unsubscribe(stalled)


def test_a_reading_stream_gets_its_tick_and_all_events() -> None:
    """Ticks reach an idle stream; a taken tick frees its slot for the next one."""
    hub = EventHub(buffer=2)
    reader = hub.subscribe()

    async def main() -> list[object]:
        got: list[object] = []
        hub.keepalive()
        got.append(await anext(reader))  # taking the tick frees its slot
        hub.publish(_event(1))
        hub.publish(_event(2))
        hub.keepalive()  # events queued: no tick needed
        got.append(await anext(reader))
        got.append(await anext(reader))
        return got

    got = anyio.run(main)
    assert got[0] is None
    assert [e.id for e in got[1:] if isinstance(e, Event)] == [1, 2]
    assert reader.receive.statistics().current_buffer_used == 0
    assert not reader.lagged
    hub.unsubscribe(reader)


def test_a_stream_opened_during_shutdown_ends_at_once() -> None:
    """After close() a new subscriber's buffer is already closed: its stream ends, not lingers."""
    hub = EventHub()
    hub.close()
    late = hub.subscribe()
    assert late not in hub.subscribers

    async def main() -> list[Event | None]:
        return [item async for item in late]

    assert anyio.run(main) == []
    hub.unsubscribe(late)


def test_a_file_sent_again_keeps_the_event_id_of_its_first_sending(tmp_path: Path) -> None:
    """first_sent remembers the first note per file id; notes older than the log's oldest event go."""
    log = EventLog(tmp_path / "events.db", max_count=2, max_age_s=3600)
    assert log.first_sent("f1", 0) == 0
    assert log.first_sent("f1", 7) == 0  # the upstream answered a re-sent file with its first id
    assert log.first_sent("f2", 7) == 7
    for n in range(5):
        log.append("aggregation", {"aggregation_id": f"a{n}"})
    oldest = log.bounds()[0]
    assert oldest > 2
    assert log.first_sent("f3", oldest) == oldest
    assert log.first_sent("f1", oldest) == oldest  # its old note went with the trimmed events
    log.close()
