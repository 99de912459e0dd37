"""The supervised notification channel (backoff, `gap` and run-status re-reads after every outage),
shared by the v3 WebSocket consumer (`websocket.py`) and the v1 AMQP consumer (`amqp.py`)."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from gateway._io import cancel_on
from gateway.clock import iso_at, now_iso
from gateway.errors import GatewayError
from gateway.events import EVENT_TYPES, Events
from gateway.upstream.protocol import Upstream
from gateway.upstream.session import Session

log = logging.getLogger("gateway.consumer")

_KNOWN_UP = "channel-known-up"
_STORE_EVERY_S = 1.0
"""Write the known-up moment at most this often (and once more when the consumer stops)."""

ChannelState = Literal["starting", "connecting", "connected", "down", "stopped"]


@dataclass
class ChannelStatus:
    """What /readyz and /metrics report about the notification channel."""

    state: ChannelState = "starting"
    since: float = 0.0
    reconnects: int = 0
    last_error: str | None = None
    last_message_at: float | None = None


@dataclass(frozen=True)
class ConsumerSettings:
    """Timing of the consumer."""

    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_after_s: float = 10.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    open_timeout_s: float = 10.0


class NotificationConsumer(ABC):
    """Keeps one notification channel to the upstream open for the current session and turns its
    messages into events. It watches `session.changed` itself: a login reconnects with the new leaf,
    a logout leaves it `down` until the next one. Subclasses open the channel (`_connect_and_read`);
    the hub, the log and the routes only see `run()` and `status`."""

    transient_errors: tuple[type[BaseException], ...] = (
        OSError,
        TimeoutError,
        GatewayError,
    )
    """Failures that end one connection attempt; the channel is reopened after a backoff."""

    def __init__(
        self, session: Session, events: Events, settings: ConsumerSettings | None = None
    ) -> None:
        self.session = session
        self.events = events
        self.settings = settings or ConsumerSettings()
        self.status = ChannelStatus(since=time.time())
        self._gap_since: float | None = None
        """Where the gap not yet announced starts (epoch seconds), or None."""
        self._restarted = False
        self._announced: tuple[str, Any] | None = None
        self._known_up: float | None = None
        """The last moment (epoch seconds) the channel was known up: opened, a message, a probe."""
        self._stored_up = 0.0

    async def run(self) -> None:
        """Supervise the channel until cancelled: reconnect with capped, jittered exponential backoff."""
        try:
            await self._supervise()
        finally:
            self._set("stopped")
            with anyio.CancelScope(shield=True):
                await self._store_known_up(force=True)

    async def _supervise(self) -> None:
        attempt = 0
        self._restarted, self._known_up = await anyio.to_thread.run_sync(self._last_run_facts)
        if self._restarted:  # the log's events came before this process: say what may be missing
            self._gap_since = self._known_up if self._known_up is not None else time.time()
        while True:
            changed = self.session.changed.armed()
            if self.session.upstream is None:
                self._set("down", "no leaf session")
                await changed.wait()
                continue
            self._set("connecting")
            opened_at = time.monotonic()
            reason = "the upstream closed the channel"
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_on, changed, group.cancel_scope)
                try:
                    await self._connect_and_read()
                except Exception as exc:  # supervised: every failure ends in a reconnect
                    reason = _describe(exc)
                    if not isinstance(exc, self.transient_errors):
                        log.exception("notification channel failed unexpectedly")
                group.cancel_scope.cancel()
            self.session.channel_up(None)
            if changed.is_set():  # a new session: connect again at once, nothing was missed
                attempt = 0
                if not self._restarted:
                    self._gap_since = None
                continue
            self._set("down", reason)
            if self._gap_since is None:
                self._gap_since = self._known_up or time.time()
            healthy = time.monotonic() - opened_at >= self.settings.healthy_after_s
            attempt = 1 if healthy else attempt + 1
            self.status.reconnects += 1
            delay = min(
                self.settings.backoff_initial_s * 2 ** (attempt - 1), self.settings.backoff_max_s
            )
            delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography
            log.warning("notification channel down (%s); reconnecting in %.1f s", reason, delay)
            with anyio.move_on_after(delay):
                await changed.wait()

    @abstractmethod
    async def _connect_and_read(self) -> None:
        """Open the channel, call `_connected(upstream)` once it is up, then read until it ends."""

    async def _connected(self, upstream: Upstream) -> None:
        """The channel to `upstream` is up: re-read the run, and after an outage or a restart say so
        (`gap`)."""
        self._set("connected")
        log.info("notification channel connected (protocol %s)", upstream.dialect)
        info = await self.session.refresh_run()
        self.session.channel_up(upstream)
        if self._gap_since is not None:
            reason = "gateway-restarted" if self._restarted else "channel-reconnected"
            await self.events.emit("gap", {"reason": reason, "since": iso_at(self._gap_since)})
            self._announced = None  # after a gap, say where the run stands now
            await self._announce_run(info.run_status, info.run_number)
        else:
            self._announced = (info.run_status, info.run_number)  # the baseline, not news
        self._gap_since = None
        self._restarted = False
        await self._proved_up()  # only now: the gap is announced, so it may close

    async def _handle_raw(self, raw: str | bytes) -> bool:
        """One message as received: True when it was understood and is now in the event log."""
        self.status.last_message_at = self._known_up = time.time()
        understood = await self._understand(raw)
        await self._store_known_up()
        return understood

    async def _understand(self, raw: str | bytes) -> bool:
        try:
            message = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("skipped a notification that is not JSON")
            return False
        if not isinstance(message, dict):
            log.warning("skipped a notification that is not a JSON object")
            return False
        return await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> bool:
        kind = message.get("message_type")
        body = message.get("body")
        if not isinstance(body, dict):
            log.warning("skipped a %s notification without a body object", kind)
            return False
        if kind == "aggregation_status":
            aggregation_id = body.get("aggregation_id")
            if not isinstance(aggregation_id, str) or not aggregation_id:
                log.warning("skipped an aggregation notification without an id")
                return False
            run = self.session.run
            data = {
                "aggregation_id": aggregation_id,
                "run_number": run.run_number if run else None,
                "received_at": now_iso(),
            }
            await self.events.emit("aggregation", data, dedup=f"aggregation:{aggregation_id}")
        elif kind == "run_status":
            status = body.get("run_status")
            if not isinstance(status, str) or not status:
                log.warning("skipped a run_status notification without a status")
                return False
            self.session.notify_run_status(status)
            if status == "start":
                try:
                    await self.session.refresh_run()
                except GatewayError as exc:
                    log.warning(
                        "run status refresh failed after a start notification: %s", exc.detail
                    )
            # Announce what the run is now (a start may already be followed by a stop), once.
            run = self.session.run
            await self._announce_run(
                run.run_status if run else status, run.run_number if run else None
            )
        else:
            log.warning("skipped a notification of unknown type %r", kind)
            return False
        return True

    async def _announce_run(self, status: str, number: Any) -> None:
        if self._announced == (status, number):
            return
        self._announced = (status, number)
        await self.events.emit("run_status", {"run_status": status, "run_number": number})

    def _set(self, state: ChannelState, error: str | None = None) -> None:
        if state != self.status.state:
            self.status.state = state
            self.status.since = time.time()
        if error is not None:
            self.status.last_error = error

    async def _proved_up(self) -> None:
        """The channel is up now (it opened, carried a message or answered a probe): remember it,
        in the event log too, so a `gap` after a restart starts where the channel was last up."""
        self._known_up = time.time()
        await self._store_known_up()

    async def _store_known_up(self, *, force: bool = False) -> None:
        known = self._known_up
        if known is None or known == self._stored_up:
            return
        if force or known - self._stored_up >= _STORE_EVERY_S:
            self._stored_up = known
            try:
                await anyio.to_thread.run_sync(self.events.log.set_mark, _KNOWN_UP, known)
            except (OSError, sqlite3.Error) as exc:  # a full disk must not take the channel down
                log.warning("could not record when the notification channel was last up: %s", exc)

    async def _keep_proving(self, probe: Callable[[], Awaitable[object]]) -> str:
        """Probe the open channel every ping interval; return why it is dead once a probe gets no
        answer within the ping timeout (the caller then closes it)."""
        interval, timeout = self.settings.ping_interval_s, self.settings.ping_timeout_s
        while True:
            await anyio.sleep(interval)
            with anyio.move_on_after(timeout) as waited:
                await probe()
            if waited.cancelled_caught:
                return f"no answer to a keep-alive probe within {timeout:g} s"
            await self._proved_up()

    def _last_run_facts(self) -> tuple[bool, float | None]:
        """Whether an earlier process logged events, and when its channel was last known up (its
        mark, else its newest event)."""
        log_ = self.events.log
        if log_.bounds()[1] == 0:
            return False, None
        known = log_.mark(_KNOWN_UP)
        if known is None:
            newest = [event.created for t in EVENT_TYPES if (event := log_.latest(t)) is not None]
            known = max(newest, default=None)
        return True, known


def _describe(exc: BaseException) -> str:
    detail = getattr(exc, "detail", None)
    return str(detail) if detail else f"{type(exc).__name__}: {exc}"
