"""The notification channel follows the leaf session by itself (no caller has to tell it)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import httpx

from gateway.events import EventHub, EventLog, Events
from gateway.upstream.channel import NotificationConsumer
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
