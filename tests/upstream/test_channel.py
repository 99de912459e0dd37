"""The notification channel follows the leaf session by itself (no caller has to tell it)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.errors import GatewayError
from gateway.events import EventHub, EventLog, Events
from gateway.upstream.channel import ConsumerSettings, NotificationConsumer
from gateway.upstream.credentials import Credentials
from gateway.upstream.protocol import Outgoing, RunInfo, Sent, WeightsFile
from gateway.upstream.session import Session
from gateway.weights import ValidationPolicy


def _leaf(name: str) -> Credentials:
    return Credentials(id=name, name=name, session_token="tok", tree_id="t", branch_id="b")


class _FakeUpstream:
    """An upstream that accepts every leaf and reports a started run (no network)."""

    dialect = "fake"
    host = "http://fake.invalid"

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def authenticate(self) -> Credentials:
        return self.credentials

    async def run(self) -> RunInfo:
        return RunInfo(run_status="start", run_number=1)

    async def prepare(self, npz: WeightsFile, scratch: Path, policy: ValidationPolicy) -> Outgoing:
        raise NotImplementedError

    async def upload(self, outgoing: Outgoing) -> Sent:
        raise NotImplementedError

    async def download_url(self, file_id: str) -> str:
        raise NotImplementedError

    def blob(self, url: str) -> AbstractAsyncContextManager[httpx.Response]:
        raise NotImplementedError

    async def send_metrics(self, aggregation_id: str, mode: str, data: Any) -> None:
        raise NotImplementedError


class _RecordingChannel(NotificationConsumer):
    """A channel that records the leaf it connects as, then stays open until cancelled."""

    def __init__(self, session: Session, events: Events) -> None:
        super().__init__(session, events)
        self.leaves: list[str] = []

    async def _connect_and_read(self) -> None:
        upstream = self.session.require()
        self.leaves.append(upstream.credentials.id)
        await self._connected(upstream)
        await anyio.sleep_forever()


@contextlib.contextmanager
def _events(folder: Path) -> Iterator[Events]:
    log = EventLog(folder / "events.db", 100, 3600)
    try:
        yield Events(log, EventHub())
    finally:
        log.close()


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):  # up to 5 s
        if condition():
            return
        await anyio.sleep(0.01)
    raise AssertionError(f"timed out waiting until {what}")


def test_the_channel_follows_login_and_logout_by_itself(tmp_path: Path) -> None:
    """`session.login(other)` reconnects the channel as the new leaf, `logout()` leaves it down with
    "no leaf session", and the next login brings it back: nobody but the session is called."""

    async def main() -> None:
        session = Session(_FakeUpstream, "http://fake.invalid", 30)
        await session.login(_leaf("leaf-a"))
        with _events(tmp_path) as events:
            channel = _RecordingChannel(session, events)
            async with anyio.create_task_group() as group:
                group.start_soon(channel.run)
                await _until(lambda: channel.status.state == "connected", "connected as leaf-a")
                assert channel.leaves == ["leaf-a"]

                await session.login(_leaf("leaf-b"))
                await _until(lambda: channel.leaves == ["leaf-a", "leaf-b"], "reconnected as b")
                await _until(lambda: channel.status.state == "connected", "connected as leaf-b")

                session.logout()
                await _until(lambda: channel.status.state == "down", "down after the logout")
                assert channel.status.last_error == "no leaf session"

                session.adopt(_leaf("leaf-c"))
                await _until(lambda: channel.leaves[-1:] == ["leaf-c"], "back after adopt")
                assert channel.status.reconnects == 0  # session changes are not outages
                group.cancel_scope.cancel()
        assert channel.status.state == "stopped"

    anyio.run(main)


QUICK = ConsumerSettings(
    backoff_initial_s=0.05, backoff_max_s=0.1, ping_interval_s=0.2, ping_timeout_s=0.3
)
KNOWN_UP = "channel-known-up"


class _ProbedChannel(NotificationConsumer):
    """A channel whose keep-alive probe answers until `silent` is set; then it is found dead."""

    def __init__(self, session: Session, events: Events) -> None:
        super().__init__(session, events, QUICK)
        self.silent = False
        self.opened: list[float] = []
        self.lost: list[float] = []

    async def _connect_and_read(self) -> None:
        upstream = self.session.require()
        self.opened.append(time.time())
        await self._connected(upstream)
        reason = await self._keep_proving(self._probe)
        self.lost.append(time.time())
        raise TimeoutError(reason)

    async def _probe(self) -> None:
        if self.silent:
            await anyio.sleep_forever()


def _gaps(events: Events) -> list[dict[str, Any]]:
    return [e.data for e in events.log.after(0, ("gap",))]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_a_gap_after_a_silent_outage_starts_when_the_channel_was_last_known_up(
    tmp_path: Path,
) -> None:
    """The channel answers probes, then goes silent: it is found dead a ping interval and a ping
    timeout later, but the gap's `since` is its last answered probe, not that moment."""

    async def main() -> None:
        session = Session(_FakeUpstream, "http://fake.invalid", 30)
        await session.login(_leaf("leaf-a"))
        with _events(tmp_path) as events:
            channel = _ProbedChannel(session, events)
            async with anyio.create_task_group() as group:
                group.start_soon(channel.run)
                await _until(lambda: channel.status.state == "connected", "connected")
                await anyio.sleep(0.5)  # two probes answered
                silent_from = time.time()
                channel.silent = True
                await _until(lambda: len(channel.opened) == 2, "reconnected after the silence")
                await _until(lambda: bool(_gaps(events)), "the gap event")
                group.cancel_scope.cancel()
            [gap] = _gaps(events)
            assert gap["reason"] == "channel-reconnected"
            since = _epoch(gap["since"])
            assert silent_from - 0.3 <= since <= silent_from + 0.01
            assert channel.lost[0] - since >= 0.4  # found dead well after it was last known up

    anyio.run(main)


def test_a_restarted_gateway_dates_its_gap_from_the_stored_known_up_moment(tmp_path: Path) -> None:
    """The known-up moment outlives the process (the event log keeps it, written while connected
    and at stop): after a restart the gap's `since` is that moment, not the restart time."""

    async def main() -> None:
        session = Session(_FakeUpstream, "http://fake.invalid", 30)
        await session.login(_leaf("leaf-a"))
        with _events(tmp_path) as events:
            await events.emit("aggregation", {"aggregation_id": "a-1"}, dedup="aggregation:a-1")
            channel = _ProbedChannel(session, events)
            async with anyio.create_task_group() as group:
                group.start_soon(channel.run)
                await _until(lambda: channel.status.state == "connected", "first run connected")
                await anyio.sleep(0.5)
                group.cancel_scope.cancel()
            stopped = time.time()
            stored = events.log.mark(KNOWN_UP)
            assert stored is not None
            assert stopped - 0.3 <= stored <= stopped
            await anyio.sleep(0.3)  # "down" while no gateway runs

            restarted = _ProbedChannel(session, events)
            async with anyio.create_task_group() as group:
                group.start_soon(restarted.run)
                await _until(lambda: len(_gaps(events)) == 2, "the restart's gap")
                group.cancel_scope.cancel()
            gap = _gaps(events)[-1]
            assert gap["reason"] == "gateway-restarted"
            assert _epoch(gap["since"]) == pytest.approx(stored, abs=0.002)

    anyio.run(main)


def test_without_a_stored_moment_the_newest_event_dates_the_gap(tmp_path: Path) -> None:
    """A log written before the known-up moment was kept: the newest event's time stands in."""

    async def main() -> None:
        session = Session(_FakeUpstream, "http://fake.invalid", 30)
        await session.login(_leaf("leaf-a"))
        with _events(tmp_path) as events:
            await events.emit("aggregation", {"aggregation_id": "a-1"}, dedup="aggregation:a-1")
            newest = events.log.latest("aggregation")
            assert newest is not None
            await anyio.sleep(0.2)
            channel = _RecordingChannel(session, events)
            async with anyio.create_task_group() as group:
                group.start_soon(channel.run)
                await _until(lambda: bool(_gaps(events)), "the restart's gap")
                group.cancel_scope.cancel()
            [gap] = _gaps(events)
            assert gap["reason"] == "gateway-restarted"
            assert _epoch(gap["since"]) == pytest.approx(newest.created, abs=0.002)

    anyio.run(main)


class _FailsOnceUpstream(_FakeUpstream):
    """Its second run call (the channel's first read after the log-in's) fails."""

    calls = 0

    async def run(self) -> RunInfo:
        type(self).calls += 1
        if type(self).calls == 2:
            raise GatewayError("the run call failed")
        return await super().run()


def test_a_failed_first_connect_keeps_the_gap_start(tmp_path: Path) -> None:
    """After a restart the channel opens, but its run read fails: the gap announced by the next
    connect still starts at the stored moment, not at the failed attempt."""

    async def main() -> None:
        session = Session(_FailsOnceUpstream, "http://fake.invalid", 30)
        await session.login(_leaf("leaf-a"))
        with _events(tmp_path) as events:
            await events.emit("aggregation", {"aggregation_id": "a-1"}, dedup="aggregation:a-1")
            events.log.set_mark(KNOWN_UP, time.time() - 100)
            channel = _ProbedChannel(session, events)
            async with anyio.create_task_group() as group:
                group.start_soon(channel.run)
                await _until(lambda: bool(_gaps(events)), "the gap after the retry")
                group.cancel_scope.cancel()
            assert len(channel.opened) == 2
            [gap] = _gaps(events)
            assert gap["reason"] == "gateway-restarted"
            assert time.time() - _epoch(gap["since"]) >= 100

    anyio.run(main)
