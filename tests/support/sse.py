"""SSE subscribers of `GET /events` in threads (httpx-sse as a trainer, curl -N as a shell user), and their events."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

JOIN_TIMEOUT_S = 10.0
"""How long a subscriber thread may take to finish once its stream has been ended."""


@dataclass(frozen=True)
class Received:
    """One event as a subscriber parsed it; `id` is None when the event carried no `id:` line."""

    id: int | None
    event: str
    data: dict[str, Any]
    at: float
    """`time.monotonic()` when it arrived."""
    wall: float
    """`time.time()` when it arrived (to compare with the log's `created`)."""


class Stream:
    """A subscriber reading `GET /events` in a thread until the stream ends (or `stop_when` holds)."""

    def __init__(self, stop_when: Callable[[list[Received]], bool] | None = None) -> None:
        self.events: list[Received] = []
        self.comments: list[tuple[str, float]] = []
        self.retry: int | None = None
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self._stop_when = stop_when
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._guarded, name="sse-subscriber", daemon=True)

    def start(self, timeout: float = 10) -> None:
        """Start reading; return once the stream has begun (the `retry:` field arrived)."""
        self._thread.start()
        if not self.opened.wait(timeout):
            self.ended.wait(0.5)
            raise AssertionError(f"the event stream did not open: {self.error!r}")

    def of_type(self, event: str) -> list[Received]:
        """The events of one type so far."""
        with self._changed:
            return [e for e in self.events if e.event == event]

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float, what: str
    ) -> list[Received]:
        """Wait until `predicate(events)` holds; the events then, or fail naming `what`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.ended.is_set() and not predicate(self.events)):
                    raise AssertionError(
                        f"{what}: not within {timeout} s (ended: {self.ended.is_set()}, "
                        f"error: {self.error!r}); got {self.events}"
                    )
                self._changed.wait(min(remaining, 0.1))
            return list(self.events)

    def join(self, timeout: float = JOIN_TIMEOUT_S) -> list[Received]:
        """Wait for the stream to end; every event it delivered."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the subscriber's stream did not end"
        return list(self.events)

    def _record(self, event: Received) -> bool:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
            return self._stop_when is not None and self._stop_when(self.events)

    def _comment(self, text: str) -> None:
        with self._changed:
            self.comments.append((text, time.monotonic()))
            self._changed.notify_all()

    def _guarded(self) -> None:
        try:
            self._read()
        except BaseException as exc:  # kept for the test to report
            self.error = exc
        finally:
            with self._changed:
                self.ended_at = time.monotonic()
                self.ended.set()
                self._changed.notify_all()

    def _read(self) -> None:
        raise NotImplementedError


class SseSubscriber(Stream):
    """A subscriber using httpx-sse, as a Python trainer would."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        stop_when: Callable[[list[Received]], bool] | None = None,
    ) -> None:
        super().__init__(stop_when)
        self.url = url
        self.headers = headers or {}
        self.content_type: str | None = None

    def _read(self) -> None:
        timeout = httpx.Timeout(10, read=60)
        with (
            httpx.Client(timeout=timeout) as client,
            connect_sse(client, "GET", self.url, headers=dict(self.headers)) as source,
        ):
            source.response.raise_for_status()
            self.content_type = source.response.headers.get("content-type")
            for sse in source.iter_sse():
                if sse.retry is not None:
                    self.retry = sse.retry
                    self.opened.set()
                if not sse.data:  # the retry block, or a keep-alive once an id was seen
                    continue
                event = Received(
                    id=int(sse.id) if sse.id else None,
                    event=sse.event,
                    data=sse.json(),
                    at=time.monotonic(),
                    wall=time.time(),
                )
                if self._record(event):
                    return


class CurlSubscriber(Stream):
    """`curl -sS -N <url>` in a subprocess, its stdout parsed line by line, as a shell user sees it."""

    def __init__(self, url: str, *args: str) -> None:
        super().__init__()
        self.argv = ["curl", "-sS", "-N", *args, url]
        self.returncode: int | None = None
        self.stderr = b""
        self._process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        """End curl if it is still running (for clean-up after a failure)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()

    def _read(self) -> None:
        with subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
            self._process = process
            assert process.stdout is not None
            block: dict[str, str] = {}
            for raw in process.stdout:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self._comment(line[1:].strip())
                elif line:
                    name, _, value = line.partition(":")
                    block[name] = value.removeprefix(" ")
                else:
                    self._block(block)
                    block = {}
            assert process.stderr is not None
            self.stderr = process.stderr.read()
            self.returncode = process.wait()

    def _block(self, block: dict[str, str]) -> None:
        if "retry" in block:
            self.retry = int(block["retry"])
            self.opened.set()
        if "event" in block:
            self._record(
                Received(
                    id=int(block["id"]) if "id" in block else None,
                    event=block["event"],
                    data=json.loads(block["data"]),
                    at=time.monotonic(),
                    wall=time.time(),
                )
            )


def ids(events: list[Received]) -> list[int]:
    """The ids of events that carry one."""
    return [e.id for e in events if e.id is not None]


def of_type(events: list[Received], event: str) -> list[Received]:
    """The events of one type."""
    return [e for e in events if e.event == event]


def aggregation_ids(events: list[Received]) -> list[str]:
    """The upstream aggregation ids of the aggregation events, in arrival order."""
    return [str(e.data["aggregation_id"]) for e in events if e.event == "aggregation"]
