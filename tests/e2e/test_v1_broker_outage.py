"""The AMQP consumer under broker trouble: dropped connections, unacked ids, messages it cannot read."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import aio_pika
import anyio
import httpx
import numpy as np
import pytest

from gateway.events import Event, EventType
from gateway.state import running_state
from tests.support.aggregator import Running, upload_v3
from tests.support.amqp import AMQP_URL, close_connections, connections, queue_counts
from tests.support.gateways import Gateway, GatewayFactory
from tests.support.sse import SseSubscriber, aggregation_ids, of_type
from tests.support.waiting import wait_until
from tests.support.weights import sdk_weights


def _weights(folder: Path) -> Path:
    return sdk_weights(folder / "w.npz", 2.0, [np.ones((2, 2), dtype=np.float32)])


def _aggregations_in_log(gateway: Gateway) -> list[str]:
    return [str(e.data["aggregation_id"]) for e in gateway.log.after(0, ("aggregation",))]


def test_consumer_reconnects_after_the_broker_drops_it(
    rabbit_aggregator: Running, gateways: GatewayFactory, tmp_path: Path
) -> None:
    """`rabbitmqctl close_connection` on the gateway's connection: the channel goes down, comes
    back by itself, a `gap` event says so, and a later aggregation still arrives."""
    agg = rabbit_aggregator
    leaf_id = agg.leaves[0]["id"]
    gateway = gateways(0)
    subscriber = SseSubscriber(f"{gateway.url}/events")
    subscriber.start()
    wait_until(lambda: bool(connections(leaf_id)), 10, "the broker lists the connection")
    assert close_connections(leaf_id) == 1
    wait_until(lambda: gateway.channel.reconnects >= 1, 10, "the consumer noticed the drop")
    wait_until(lambda: gateway.channel.state == "connected", 20, "the consumer reconnected")
    events = subscriber.wait_for(lambda evs: bool(of_type(evs, "gap")), 10, "a gap event")
    assert of_type(events, "gap")[0].data["reason"] == "channel-reconnected"
    assert len(connections(leaf_id)) == 1
    with httpx.Client(timeout=30) as client:
        upload_v3(agg, client, _weights(tmp_path), leaf=1)
    events = subscriber.wait_for(
        lambda evs: bool(aggregation_ids(evs)), 20, "an aggregation after the reconnect"
    )
    assert len(aggregation_ids(events)) == 1


def test_an_id_is_acked_only_once_it_is_in_the_event_log(
    rabbit_aggregator: Running,
    gateways: GatewayFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the event log write is held, the message stays unacked; a broker drop at that moment
    hands it back to the queue, and once the write completes the id is logged once and acked."""
    agg = rabbit_aggregator
    leaf = agg.leaves[0]
    gateway = gateways(0)
    events = running_state(gateway.app).events
    original = events.emit
    release = threading.Event()
    held = threading.Event()

    async def held_emit(
        type_: EventType, data: dict[str, Any], dedup: str | None = None
    ) -> Event | None:
        if type_ == "aggregation":
            held.set()
            # abandoned when cancelled: a dropped connection abandons this write
            await anyio.to_thread.run_sync(release.wait, abandon_on_cancel=True)
        result: Event | None = await original(type_, data, dedup)
        return result

    monkeypatch.setattr(events, "emit", held_emit)
    try:
        with httpx.Client(timeout=30) as client:
            upload_v3(agg, client, _weights(tmp_path), leaf=1)
        assert held.wait(20), "the aggregation message did not reach the consumer"
        assert queue_counts(leaf["tree_id"], leaf["id"]) == (0, 1)  # delivered, not acked
        assert _aggregations_in_log(gateway) == []

        held.clear()
        assert close_connections(leaf["id"]) == 1
        wait_until(lambda: gateway.channel.reconnects >= 1, 10, "the consumer noticed the drop")
        assert held.wait(20), "the unacked message was not redelivered after the reconnect"
        assert sum(queue_counts(leaf["tree_id"], leaf["id"])) == 1  # still there: nothing was lost
    finally:
        release.set()
    wait_until(lambda: len(_aggregations_in_log(gateway)) == 1, 10, "the id reached the log")
    wait_until(
        lambda: queue_counts(leaf["tree_id"], leaf["id"]) == (0, 0), 10, "the message was acked"
    )
    assert len(_aggregations_in_log(gateway)) == 1


async def _publish_raw(vhost: str, queue: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(AMQP_URL.rstrip("/") + "/" + vhost)
    async with connection:
        channel = await connection.channel()
        for body in bodies:
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)


def test_messages_it_cannot_read_are_rejected_not_requeued(
    rabbit_aggregator: Running, gateways: GatewayFactory
) -> None:
    """Not JSON, an unknown message_type, an aggregation without an id: each is rejected (the queue
    empties, nothing redelivers forever), nothing is logged, and the next good id still arrives."""
    agg = rabbit_aggregator
    leaf = agg.leaves[0]
    gateway = gateways(0)
    bad = [
        b"\xff not json",
        json.dumps({"message_type": "promotion", "body": {"x": 1}}).encode(),
        json.dumps({"message_type": "aggregation_status", "body": {}}).encode(),
    ]
    good = json.dumps(
        {"message_type": "aggregation_status", "body": {"aggregation_id": "agg-after-bad"}}
    ).encode()
    anyio.run(_publish_raw, leaf["tree_id"], leaf["id"], [*bad, good])
    wait_until(
        lambda: _aggregations_in_log(gateway) == ["agg-after-bad"], 10, "the good id was logged"
    )
    wait_until(lambda: queue_counts(leaf["tree_id"], leaf["id"]) == (0, 0), 10, "queue drained")
    assert gateway.channel.state == "connected"
    assert gateway.channel.reconnects == 0


def test_aggregator_publishes_again_after_its_broker_connection_drops(
    rabbit_aggregator: Running,
) -> None:
    """The aggregator's own publishing connection is closed by the broker: the next run change
    still lands, persistent, in every leaf queue of the branch (robust reconnect plus retries)."""
    agg = rabbit_aggregator
    assert close_connections("guest") >= 1
    with httpx.Client(timeout=30) as client:
        agg.set_run(client, "pause")
    for leaf in agg.leaves:
        vhost, queue = leaf["tree_id"], leaf["id"]

        def landed(vhost: str = vhost, queue: str = queue) -> bool:
            return queue_counts(vhost, queue) == (1, 0)

        wait_until(landed, 20, f"the run_status message in queue {queue}")


def test_a_failed_log_write_drops_the_connection_and_the_id_comes_again(
    rabbit_aggregator: Running,
    gateways: GatewayFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event log cannot be written (disk full) when an id arrives: the message stays unacked,
    the consumer reconnects instead of dying, and the redelivered id is logged once and acked."""
    agg = rabbit_aggregator
    leaf = agg.leaves[0]
    gateway = gateways(0)
    events = running_state(gateway.app).events
    original = events.emit
    failures: list[str] = []

    async def failing_emit(
        type_: EventType, data: dict[str, Any], dedup: str | None = None
    ) -> Event | None:
        if type_ == "aggregation" and not failures:
            failures.append(str(data["aggregation_id"]))
            raise sqlite3.OperationalError("database or disk is full")
        result: Event | None = await original(type_, data, dedup)
        return result

    monkeypatch.setattr(events, "emit", failing_emit)
    with httpx.Client(timeout=30) as client:
        upload_v3(agg, client, _weights(tmp_path), leaf=1)
    wait_until(lambda: len(_aggregations_in_log(gateway)) == 1, 20, "the id after the reconnect")
    assert _aggregations_in_log(gateway) == failures
    assert gateway.channel.reconnects >= 1
    wait_until(lambda: gateway.channel.state == "connected", 20, "the channel is back")
    wait_until(
        lambda: queue_counts(leaf["tree_id"], leaf["id"]) == (0, 0), 10, "the message was acked"
    )


async def _recreate_queue(vhost: str, queue: str, exchange: str) -> None:
    """Delete the leaf's queue and declare it again as the aggregator does (bounded, bound)."""
    connection = await aio_pika.connect(AMQP_URL.rstrip("/") + "/" + vhost)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
        await anyio.sleep(0.5)
        declared = await channel.declare_queue(
            queue, durable=True, arguments={"x-max-length": 10_000}
        )
        await declared.bind(exchange)


def test_a_consumer_cancelled_by_the_broker_reconnects(
    rabbit_aggregator: Running, gateways: GatewayFactory, tmp_path: Path
) -> None:
    """The leaf's queue is deleted and declared again (re-provisioning, a failover): the broker
    cancels the consumer, the gateway notices, reconnects, and the next aggregation arrives."""
    agg = rabbit_aggregator
    leaf = agg.leaves[0]
    gateway = gateways(0)
    anyio.run(_recreate_queue, leaf["tree_id"], leaf["id"], leaf["branch_id"])
    wait_until(lambda: gateway.channel.reconnects >= 1, 10, "the consumer noticed the cancel")
    wait_until(lambda: gateway.channel.state == "connected", 20, "the consumer is back")
    with httpx.Client(timeout=30) as client:
        upload_v3(agg, client, _weights(tmp_path), leaf=1)
    wait_until(lambda: len(_aggregations_in_log(gateway)) == 1, 20, "the next aggregation")
