"""The event log (persisted, monotonic ids, bounded retention) and the fan-out hub for subscribers."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import anyio

log = logging.getLogger("gateway.events")

EventType = Literal["aggregation", "run_status", "gap"]
EVENT_TYPES: tuple[EventType, ...] = ("aggregation", "run_status", "gap")


@dataclass(frozen=True)
class Event:
    """One stored event."""

    id: int
    type: EventType
    data: dict[str, Any]
    created: float

    def sse(self) -> bytes:
        """The event in text/event-stream framing (encoded once, however many streams send it)."""
        return self._frame

    @functools.cached_property
    def _frame(self) -> bytes:
        data = json.dumps(self.data, separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.type}\ndata: {data}\n\n".encode()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    dedup TEXT UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


class EventLog:
    """Append-only SQLite log; ids never repeat (AUTOINCREMENT), even after trimming or a restart."""

    def __init__(self, path: Path, max_count: int, max_age_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.max_count = max_count
        self.max_age_s = max_age_s

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def append(
        self, type_: EventType, data: dict[str, Any], dedup: str | None = None
    ) -> Event | None:
        """Store an event; None when an event with the same `dedup` key is already stored."""
        created = time.time()
        with self._lock, self._db:
            try:
                cursor = self._db.execute(
                    "INSERT INTO events (type, data, dedup, created) VALUES (?, ?, ?, ?)",
                    (type_, json.dumps(data), dedup, created),
                )
            except sqlite3.IntegrityError:
                return None
            event_id = int(cursor.lastrowid or 0)
            self._trim(created)
        return Event(event_id, type_, data, created)

    def _trim(self, now: float) -> None:
        self._db.execute("DELETE FROM events WHERE created < ?", (now - self.max_age_s,))
        self._db.execute(
            "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (self.max_count,),
        )

    def after(
        self, after_id: int, types: Iterable[str] = EVENT_TYPES, limit: int = 1000
    ) -> list[Event]:
        """Stored events with id > after_id, oldest first (at most `limit`)."""
        wanted = tuple(types)
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id, type, data, created FROM events WHERE id > ? AND type IN ({marks}) "  # noqa: S608 - only '?' marks are interpolated
                "ORDER BY id LIMIT ?",
                (after_id, *wanted, limit),
            ).fetchall()
        return [Event(int(r[0]), r[1], json.loads(r[2]), float(r[3])) for r in rows]

    def bounds(self) -> tuple[int, int]:
        """(oldest retained id, newest id ever issued); (0, newest) when the log is empty."""
        with self._lock:
            oldest = self._db.execute("SELECT MIN(id) FROM events").fetchone()[0]
            newest = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
            ).fetchone()
        return int(oldest or 0), int(newest[0]) if newest else 0

    def latest(self, type_: EventType) -> Event | None:
        """The newest stored event of one type."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, type, data, created FROM events WHERE type = ? ORDER BY id DESC LIMIT 1",
                (type_,),
            ).fetchone()
        return Event(int(row[0]), row[1], json.loads(row[2]), float(row[3])) if row else None

    def count(self) -> int:
        """Events currently retained."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def set_mark(self, name: str, value: float) -> None:
        """Remember a number across restarts (e.g. when the notification channel was last up)."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)", (name, value)
            )

    def first_sent(self, file_id: str, newest: int) -> int:
        """The newest event id noted when BranchKey first took the file `file_id`: `newest` the
        first time. An upstream that deduplicates answers a re-sent file with its first file id,
        so a retried exchange waits for the round of the first sending, not for one that never
        comes. Notes older than the log's oldest event are dropped (they can no longer help)."""
        name = f"sent:{file_id}"
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR IGNORE INTO marks (name, value) VALUES (?, ?)", (name, newest)
            )
            (oldest,) = self._db.execute("SELECT MIN(id) FROM events").fetchone()
            if oldest is not None:
                self._db.execute(
                    "DELETE FROM marks WHERE name LIKE 'sent:%' AND value < ?", (oldest - 1,)
                )
            row = self._db.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else newest

    def mark(self, name: str) -> float | None:
        """A number `set_mark` remembered, or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM marks WHERE name = ?", (name,)).fetchone()
        return float(row[0]) if row else None


KEEPALIVE = None
"""What a subscriber yields for the hub's keep-alive tick (an SSE stream writes a comment)."""


class Subscriber:
    """One stream's bounded buffer, async-iterable: yields events, and `KEEPALIVE` for each tick.

    Iteration ends when the hub closes (shutdown) or cuts the subscriber off; `lagged` then says
    it could not keep up and must reconnect. Use it as a context manager to unsubscribe at the end.
    """

    def __init__(self, hub: EventHub, types: frozenset[str]) -> None:
        # One slot more than the events it may fall behind: room for a keep-alive tick.
        send, receive = anyio.create_memory_object_stream[Event | None](hub.buffer + 1)
        self.hub = hub
        self.send = send
        self.receive = receive
        self.types = types
        self.lagged = False
        self._queued = 0
        """Items in the buffer (counted here: asking the stream costs more than the send itself)."""
        self._tick_pending = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.hub.unsubscribe(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event | None:
        """The next event, or `KEEPALIVE`; stops at shutdown or when cut off."""
        try:
            item = await self.receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._queued -= 1
        if item is KEEPALIVE:
            self._tick_pending = False
        return item

    def offer(self, event: Event) -> bool:
        """Queue `event`; False when the subscriber is `buffer` events behind (it is then closed)."""
        if self._queued - self._tick_pending >= self.hub.buffer:  # the spare slot is for a tick
            self.lagged = True
            self.send.close()
            return False
        self.send.send_nowait(event)
        self._queued += 1
        return True

    def tick(self) -> None:
        """Queue a keep-alive tick if nothing is queued (a stream with news writes anyway)."""
        if not self._queued:
            self.send.send_nowait(KEEPALIVE)
            self._queued += 1
            self._tick_pending = True

    def close(self) -> None:
        """End the iteration (the reader sees the end after what is queued)."""
        self.send.close()


class EventHub:
    """Fan-out of new events to live subscribers; never blocks on a slow one."""

    def __init__(self, buffer: int = 256) -> None:
        self.buffer = buffer
        self.subscribers: set[Subscriber] = set()
        self.closing = anyio.Event()

    def subscribe(self, types: Iterable[str] = EVENT_TYPES) -> Subscriber:
        """A new subscriber (use it as a context manager, or call `unsubscribe` when done)."""
        subscriber = Subscriber(self, frozenset(types))
        if self.closing.is_set():  # shutting down: the stream ends right after it starts
            subscriber.close()
        else:
            self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a subscriber and close its buffer."""
        self.subscribers.discard(subscriber)
        subscriber.send.close()
        subscriber.receive.close()

    def publish(self, event: Event) -> None:
        """Queue `event` for every interested subscriber; one whose buffer is full is cut off."""
        for subscriber in list(self.subscribers):
            if event.type not in subscriber.types:
                continue
            try:
                if not subscriber.offer(event):
                    self.subscribers.discard(subscriber)
                    log.info(
                        "an event subscriber fell %d events behind and was disconnected",
                        self.buffer,
                    )
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.subscribers.discard(subscriber)

    def keepalive(self) -> None:
        """Ask every idle stream to write a keep-alive comment (one shared timer instead of one per
        stream); ticks never pile up in a stalled stream's buffer or take an event's place."""
        for subscriber in list(self.subscribers):
            try:
                subscriber.tick()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self.subscribers.discard(subscriber)

    async def run_keepalive(self, interval_s: float) -> None:
        """Tick `keepalive` every `interval_s` until cancelled."""
        while True:
            await anyio.sleep(interval_s)
            self.keepalive()

    def close(self) -> None:
        """End every stream (shutdown)."""
        self.closing.set()
        for subscriber in list(self.subscribers):
            subscriber.close()
        self.subscribers.clear()


class Events:
    """The log and the hub together: what producers call."""

    def __init__(self, log_: EventLog, hub: EventHub) -> None:
        self.log = log_
        self.hub = hub

    async def wait_after(
        self, after: int, types: tuple[EventType, ...], limit: int, timeout_s: float
    ) -> list[Event] | None:
        """Stored events of `types` after `after` at once, else the first to come within
        `timeout_s`: [] when none came, None when the gateway is shutting down."""
        deadline = anyio.current_time() + timeout_s
        while True:
            # Subscribed before the log is read: an event stored in between still wakes the wait.
            with self.hub.subscribe(types) as subscriber:
                found = await anyio.to_thread.run_sync(self.log.after, after, types, limit)
                remaining = deadline - anyio.current_time()
                if found or remaining <= 0:
                    return found
                if self.hub.closing.is_set():
                    return None
                with anyio.move_on_after(remaining):
                    await anext(subscriber, None)  # an event, a keep-alive tick, or shutdown

    async def emit(
        self, type_: EventType, data: dict[str, Any], dedup: str | None = None
    ) -> Event | None:
        """Persist and fan out an event (stored once per dedup key)."""
        event = await anyio.to_thread.run_sync(self.log.append, type_, data, dedup)
        if event is not None:
            self.hub.publish(event)
        return event
