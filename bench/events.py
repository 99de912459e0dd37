"""Benchmark: the gateway's SSE fan-out (`GET /events`) to 1000 concurrent subscribers.

    python bench/events.py [--subscribers 1000] [--rounds 20] [--interval 0.5] [--workers W]
                           [--client raw|httpx] [--loop uvloop|asyncio] [--dialect v3|v1]
                           [--keep] [--profile]

The parent starts a local aggregator (`branchkey-gateway aggregator --dev-leaves 1`) and a gateway
in front of it (`branchkey-gateway serve`, BK_HOST = the aggregator), both as subprocesses on free
loopback ports with temp data dirs. It then starts `--workers` load processes (this script with
`--worker`; default CPUs - 1, at least 1, at most 4, since every load process competes with the
single-threaded gateway for the CPU during each event's burst), each holding its share of the `--subscribers` SSE streams on one event loop: by
default a bare asyncio Protocol per stream (HTTP/1.1 request, chunked decoding and SSE parsing by
hand, timestamp taken as `data_received` starts) on uvloop, so that the client side costs next to
nothing; `--client httpx` uses httpx streams instead, as a cross-check. Once every stream has
received the `retry: 3000` preamble the parent measures the gateway's idle RSS (median over 1 s),
then uploads `--rounds` tiny NPZ payloads straight to the aggregator's v3 route, `--interval` s
apart. With one dev leaf every upload closes a round; the aggregator runs FedAvg and announces the
aggregation on its WebSocket, and the gateway turns that into one `event: aggregation` per stream.
With `--dialect v1` the gateway speaks protocol v1 instead: the aggregator (started with `--amqp-url`
for the RabbitMQ on 127.0.0.1:5672) publishes to the leaf's queue and the gateway consumes it; the
vhost and user it provisioned are deleted at the end.

Latency of one receipt = the time the subscriber received the event minus the time the upload
request returned (the aggregator announces right after the FedAvg of a tiny model, which starts
after the response); every clock is time.time() of one machine. The event's own `received_at`
(stamped by the gateway when the notification arrived, millisecond resolution) splits that
into upstream (received_at - upload return) and fan-out (receipt - received_at). A thread samples
the gateway's RSS every 10 ms (VmHWM, reset when the rounds start, is the cross-check); the load
processes report their own CPU time and event-loop lag so that a slow client shows. `--profile`
runs the gateway under cProfile and prints its busiest functions (its latencies are then not
representative). It prints a table with informational PASS/FAIL targets; it never asserts and
exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as `python bench/events.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import (
    IDLE_SECONDS,
    POLL_SECONDS,
    SAMPLE_SECONDS,
    AggregatorService,
    BenchError,
    RssTrace,
    Service,
    clean_env,
    gateway_command,
    high_water_mark,
    reset_high_water_mark,
)

KiB = 1024
MiB = 1024 * KiB

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
"""The local broker the aggregator publishes v1 notifications on (`--dialect v1`)."""
SETTLE_SECONDS = 0.5
CONNECT_TIMEOUT = 180.0
DRAIN_TIMEOUT = 15.0
"""After the last upload, how long to wait for the missing receipts."""
TAIL_SECONDS = 0.5
"""After the last expected receipt, how long to keep listening for duplicates."""
WORKER_TIMEOUT = 60.0
PROGRESS_SECONDS = 0.1
LAG_TICK = 0.005
CONNECT_PARALLEL = 64
"""Connection attempts in flight per load process (the gateway's listen backlog is 2048)."""
FD_SLACK = 512

P99_TARGET = 0.250
RSS_TARGET = 150 * MiB
BAR = "-" * 100


def fmt_bytes(n: float) -> str:
    if abs(n) >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / KiB:.0f} KiB"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f} ms"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def raise_nofile(wanted: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to `wanted` (at most the hard limit); the new limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ============================================================================================
# The load process: many SSE streams on one event loop
# ============================================================================================


@dataclass
class WorkerStats:
    """Everything one load process saw; `result()` is what it sends to the parent."""

    receipts: list[tuple[int, int, float]] = field(default_factory=list)
    """(stream, event id, time.time() of receipt) of every `aggregation` event."""
    events: dict[int, dict[str, Any]] = field(default_factory=dict)
    other: Counter[str] = field(default_factory=Counter)
    connected: int = 0
    failed: int = 0
    closed: int = 0
    keepalives: int = 0
    received_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    stopping: bool = False
    measuring: bool = False
    lags: list[float] = field(default_factory=list)
    cpu_start: tuple[float, float] = (0.0, 0.0)

    def error(self, message: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(message)

    def progress(self) -> dict[str, int]:
        return {
            "connected": self.connected,
            "failed": self.failed,
            "closed": self.closed,
            "received": len(self.receipts),
        }

    def result(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            **self.progress(),
            "receipts": self.receipts,
            "events": {str(k): v for k, v in self.events.items()},
            "other": dict(self.other),
            "keepalives": self.keepalives,
            "received_bytes": self.received_bytes,
            "errors": self.errors,
            "lag_p99": percentile(self.lags, 99),
            "lag_max": max(self.lags, default=None),
            "cpu_user": usage.ru_utime - self.cpu_start[0],
            "cpu_system": usage.ru_stime - self.cpu_start[1],
        }


class SseParser:
    """text/event-stream parsing of one stream's body; every block is stamped with `at`."""

    def __init__(self, stream: int, stats: WorkerStats) -> None:
        self.stream = stream
        self.stats = stats
        self.buffer = b""
        self.connected = False

    def feed(self, data: bytes, at: float) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                return
            block, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            self._block(block, at)

    def _block(self, block: bytes, at: float) -> None:
        event_id: int | None = None
        kind = "message"
        data: list[bytes] = []
        fields = 0
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                self.stats.keepalives += 1
                continue
            name, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            fields += 1
            if name == b"retry":
                if not self.connected:
                    self.connected = True
                    self.stats.connected += 1
            elif name == b"id":
                event_id = int(value)
            elif name == b"event":
                kind = value.decode()
            elif name == b"data":
                data.append(value)
        if not data and event_id is None:
            return
        if kind == "aggregation" and event_id is not None:
            self.stats.receipts.append((self.stream, event_id, at))
            if event_id not in self.stats.events:
                self.stats.events[event_id] = json.loads(b"\n".join(data))
        elif fields:
            self.stats.other[kind] += 1


class Chunked:
    """Decoder of HTTP/1.1 chunked transfer coding (chunk extensions and trailers ignored)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.need = 0
        self.state = "size"  # size -> data -> crlf -> size ...; "end" after the last chunk

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out: list[bytes] = []
        while self.buffer and self.state != "end":
            if self.state == "size":
                line_end = self.buffer.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(self.buffer[:line_end].split(b";")[0].strip() or b"0", 16)
                self.buffer = self.buffer[line_end + 2 :]
                self.need, self.state = size, ("data" if size else "end")
            elif self.state == "data":
                piece = self.buffer[: self.need]
                out.append(piece)
                self.buffer = self.buffer[len(piece) :]
                self.need -= len(piece)
                if self.need == 0:
                    self.state = "crlf"
            else:  # crlf
                if len(self.buffer) < 2:
                    break
                self.buffer = self.buffer[2:]
                self.state = "size"
        return b"".join(out)


class RawStream(asyncio.Protocol):
    """One SSE stream over a bare asyncio transport: the cheapest client there is in Python."""

    def __init__(self, request: bytes, parser: SseParser, stats: WorkerStats) -> None:
        self.request = request
        self.parser = parser
        self.stats = stats
        self.head = b""
        self.in_body = False
        self.chunked: Chunked | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        at = time.time()
        self.stats.received_bytes += len(data)
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            status = head.split(b"\r\n", 1)[0].split()
            if len(status) < 2 or status[1] != b"200":
                self.stats.failed += 1
                self.stats.error(f"stream {self.parser.stream}: {head[:80]!r}")
                if self.transport is not None:
                    self.transport.close()
                return
            self.in_body = True
            if b"transfer-encoding: chunked" in head.lower():
                self.chunked = Chunked()
        body = self.chunked.feed(data) if self.chunked is not None else data
        if body:
            self.parser.feed(body, at)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.stats.stopping:
            self.stats.closed += 1
            self.stats.error(f"stream {self.parser.stream} closed by the server ({exc})")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _raw_streams(
    config: dict[str, Any], stats: WorkerStats, stop: asyncio.Event
) -> list[RawStream]:
    loop = asyncio.get_running_loop()
    host, port, path = config["host"], int(config["port"]), config["path"]
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n"
    ).encode()
    streams: list[RawStream] = []
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def open_one(index: int) -> None:
        stream = RawStream(request, SseParser(index, stats), stats)
        async with gate:
            if stop.is_set():
                return
            try:
                await loop.create_connection(lambda: stream, host, port)
            except OSError as exc:
                stats.failed += 1
                stats.error(f"stream {index}: connect: {exc}")
                return
        streams.append(stream)

    first = int(config["first"])
    await asyncio.gather(*(open_one(first + i) for i in range(int(config["count"]))))
    return streams


async def _httpx_stream(
    client: Any, url: str, parser: SseParser, stats: WorkerStats, gate: asyncio.Semaphore
) -> None:
    import httpx

    released = False
    await gate.acquire()
    try:
        async with client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response:
            gate.release()
            released = True
            if response.status_code != 200:
                stats.failed += 1
                stats.error(f"stream {parser.stream}: HTTP {response.status_code}")
                return
            async for chunk in response.aiter_raw():
                at = time.time()
                stats.received_bytes += len(chunk)
                parser.feed(chunk, at)
        if not stats.stopping:
            stats.closed += 1
            stats.error(f"stream {parser.stream} ended by the server")
    except httpx.HTTPError as exc:
        if not stats.stopping:
            stats.closed += 1
            stats.error(f"stream {parser.stream}: {type(exc).__name__}: {exc}")
    finally:
        if not released:
            gate.release()


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write("BENCH " + json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _worker(config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    stats = WorkerStats()
    stop = asyncio.Event()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_commands() -> None:  # a thread: stdin is a pipe, and blocking reads are simplest
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    threading.Thread(target=read_commands, daemon=True).start()

    async def report_progress() -> None:
        last: dict[str, int] = {}
        while True:
            now = stats.progress()
            if now != last:
                _say(now)
                last = now
            await asyncio.sleep(PROGRESS_SECONDS)

    async def watch_lag() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK)
            if stats.measuring:
                stats.lags.append(max(0.0, time.perf_counter() - before - LAG_TICK))

    helpers = [loop.create_task(report_progress()), loop.create_task(watch_lag())]
    tasks: list[asyncio.Task[None]] = []
    opening: asyncio.Task[list[RawStream]] | None = None
    client: Any = None
    if config["client"] == "httpx":
        import httpx

        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
            timeout=httpx.Timeout(None, connect=30.0),
        )
        url = f"http://{config['host']}:{config['port']}{config['path']}"
        gate = asyncio.Semaphore(CONNECT_PARALLEL)
        first = int(config["first"])
        tasks = [
            loop.create_task(_httpx_stream(client, url, SseParser(first + i, stats), stats, gate))
            for i in range(int(config["count"]))
        ]
    else:
        opening = loop.create_task(_raw_streams(config, stats, stop))
    while True:
        command = await commands.get()
        if command == "go":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats.cpu_start = (usage.ru_utime, usage.ru_stime)
            stats.lags.clear()
            stats.measuring = True
        elif command == "stop":
            break
    stats.measuring = False
    stats.stopping = True
    stop.set()
    for stream in await opening if opening is not None else []:
        stream.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if client is not None:
        await client.aclose()
    for helper in helpers:
        helper.cancel()
    _say({"result": stats.result()})


def worker_main(raw_config: str) -> None:
    config: dict[str, Any] = json.loads(raw_config)
    raise_nofile(int(config["count"]) + FD_SLACK)
    coroutine = _worker(config)
    if config["loop"] == "uvloop":
        try:
            import uvloop
        except ImportError:
            asyncio.run(coroutine)
        else:
            uvloop.run(coroutine)
    else:
        asyncio.run(coroutine)


# ============================================================================================
# The parent: servers, RSS, uploads, load processes
# ============================================================================================


def psutil_process(pid: int) -> Any:
    import psutil

    return psutil.Process(pid)


def thread_count(pid: int) -> int:
    try:
        return int(psutil_process(pid).num_threads())
    except Exception:
        return 0


class Aggregator(AggregatorService):
    """The local aggregator whose announcements are fanned out."""

    def forget_broker_objects(self) -> None:
        """Remove the vhost and user the aggregator provisioned for its leaf (v1 runs)."""
        ctl = shutil.which("rabbitmqctl")
        if not self.leaf or ctl is None:
            return
        for command in (["delete_vhost", self.leaf["tree_id"]], ["delete_user", self.leaf["id"]]):
            subprocess.run([ctl, "-q", *command], capture_output=True, check=False)

    def upload(self, body: bytes) -> str:
        """POST one weights file as BranchKey's client does (integrity headers, data then file)."""
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        meta = {
            "client_version": "bench",
            "file_size": len(body),
            "file_digest": f"sha256={digest}",
            "kind": "federated_learning",
        }
        headers = {
            "x-bk-file-size": str(len(body)),
            "x-bk-file-digest": f"sha256={digest}",
            **self.leaf_headers,
        }
        data = {"data": json.dumps({"leaf_name": self.leaf["name"], "metadata": json.dumps(meta)})}
        response = self.http.post(
            f"{self.base}/api/v1/file/upload",
            headers=headers,
            data=data,
            files={"file": ("weights.npz", body)},
        )
        if response.status_code not in (200, 201):
            raise BenchError(f"upload: HTTP {response.status_code}: {response.text[:200]}")
        file_id: str = response.json()["data"]["file_id"]
        return file_id


class Gateway(Service):
    name = "gateway"

    def start(self, upstream: Aggregator, profile: Path | None = None, dialect: str = "v3") -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        credentials = self.workdir / "credentials.json"
        leaf = upstream.leaf
        if dialect == "v1":  # the v1 client's credentials: ids come from /v1/leaf/authenticate
            shaped = {
                "leaf_name": leaf["name"],
                "leaf_id": leaf["id"],
                "leaf_session_token": leaf["session_token"],
                "response_host": "127.0.0.1",
            }
        else:
            shaped = leaf
        credentials.write_text(json.dumps(shaped))
        credentials.chmod(0o600)
        env = clean_env(("BK_", "GATEWAY_"))
        env |= {
            "BK_HOST": upstream.base,
            "BK_DIALECT": dialect,
            "BK_CREDENTIALS_FILE": str(credentials),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_DATA_DIR": str(self.workdir / "data"),
        }
        command = [*gateway_command(), "serve"]
        if profile is not None:  # cProfile writes `profile` when the process ends (SIGINT too)
            command = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "gateway"]
            command.append("serve")
        self.spawn(command, env)
        self.wait_ready(self._probe)

    def _probe(self) -> str | None:
        response = self.http.get(f"{self.base}/readyz")
        if response.status_code == 200:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"


class LoadWorker:
    """One load process (this script with --worker) and a thread reading its reports."""

    def __init__(self, index: int, config: dict[str, Any], log_path: Path) -> None:
        self.index = index
        self.count = int(config["count"])
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self.progress: dict[str, int] = {}
        self.result: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"load-{index}")
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None  # noqa: S101 - stdout=PIPE
        for line in self.process.stdout:
            if not line.startswith("BENCH "):
                continue
            message = json.loads(line[6:])
            with self._lock:
                if "result" in message:
                    self.result = message["result"]
                else:
                    self.progress = message

    def get(self, key: str) -> int:
        with self._lock:
            return int(self.progress.get(key, 0))

    def send(self, command: str) -> None:
        if self.process.stdin is None or self.process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu(self) -> tuple[float, float]:
        try:
            times = psutil_process(self.process.pid).cpu_times()
        except Exception:
            return 0.0, 0.0
        return float(times.user), float(times.system)

    def finish(self) -> dict[str, Any] | None:
        """Ask for the result, wait for the process to end (kill it after WORKER_TIMEOUT)."""
        self.send("stop")
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=WORKER_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        self._log.close()
        with self._lock:
            return self.result

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-3:])


def npz_payload(round_: int) -> bytes:
    """A tiny SDK-layout payload, different every round (a repeat would be a duplicate upload)."""
    import numpy as np

    buffer = io.BytesIO()
    layer = np.arange(16, dtype=np.float32) * np.float32(round_ + 1)
    np.savez(buffer, weighting=np.array([float(round_ + 1)], dtype=np.float64), layer_0=layer)
    return buffer.getvalue()


def iso_seconds(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError):
        return None


# ============================================================================================
# The run
# ============================================================================================


@dataclass
class Round:
    index: int
    sent: float
    returned: float
    aggregation_id: str | None = None
    event_id: int | None = None
    received_at: float | None = None
    receipts: list[float] = field(default_factory=list)


@dataclass
class Outcome:
    """What one run measured; everything optional, so that a failed step still prints."""

    subscribers: int
    rounds: int
    workers: int
    client: str
    loop: str
    dialect: str = "v3"
    nofile: tuple[int, int] = (0, 0)
    connect_seconds: float | None = None
    connected: int = 0
    rss_empty: int | None = None
    rss_idle: int | None = None
    rss_peak: int | None = None
    rss_kernel: int | None = None
    rss_samples: int = 0
    rss_after: int | None = None
    gateway_threads: int = 0
    gateway_cpu: tuple[float, float] | None = None
    phase_seconds: float | None = None
    load_cpu: tuple[float, float] | None = None
    round_list: list[Round] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    lag_p99: float | None = None
    lag_max: float | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lagged_log_lines: int = 0


def run(args: argparse.Namespace, scratch: Path, out: Outcome) -> None:
    out.nofile = raise_nofile(args.subscribers + FD_SLACK * 2)
    if out.nofile[0] != resource.RLIM_INFINITY and out.nofile[0] < args.subscribers + 64:
        out.notes.append(
            f"RLIMIT_NOFILE soft limit {out.nofile[0]} is below the subscriber count: expect refusals"
        )
    aggregator = Aggregator(scratch / "aggregator")
    gateway = Gateway(scratch / "gateway")
    workers: list[LoadWorker] = []
    trace: RssTrace | None = None
    try:
        aggregator.start(AMQP_URL if args.dialect == "v1" else None)
        gateway.start(aggregator, scratch / "gateway.prof" if args.profile else None, args.dialect)
        trace = RssTrace(gateway.pid)
        trace.start()
        time.sleep(SETTLE_SECONDS)
        out.rss_empty = trace.idle()
        workers = start_workers(args, gateway, scratch)
        connect(workers, gateway, args.subscribers, out)
        time.sleep(SETTLE_SECONDS)
        out.rss_idle = trace.idle()
        out.gateway_threads = thread_count(gateway.pid)
        measure(args, aggregator, gateway, workers, trace, out)
    finally:
        for worker in workers:
            result = worker.finish()
            if result is None:
                out.errors.append(
                    f"load process {worker.index} sent no result: {worker.log_tail()}"
                )
            else:
                out.results.append(result)
        if trace is not None:
            trace.stop()
        out.lagged_log_lines = gateway.log_text().count("behind and was disconnected")
        for service in (gateway, aggregator):
            out.notes.append(service.stop())
        if args.dialect == "v1":
            aggregator.forget_broker_objects()


def start_workers(args: argparse.Namespace, gateway: Gateway, scratch: Path) -> list[LoadWorker]:
    workers: list[LoadWorker] = []
    count = max(1, min(args.workers, args.subscribers))
    first = 0
    for index in range(count):
        share = args.subscribers // count + (1 if index < args.subscribers % count else 0)
        config = {
            "host": "127.0.0.1",
            "port": gateway.port,
            "path": "/events",
            "first": first,
            "count": share,
            "client": args.client,
            "loop": args.loop,
        }
        workers.append(LoadWorker(index, config, scratch / f"load-{index}.log"))
        first += share
    return workers


def connect(workers: list[LoadWorker], gateway: Gateway, expected: int, out: Outcome) -> None:
    """Wait until every stream has its `retry:` preamble (or nothing moves any more)."""
    started = time.perf_counter()
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while time.monotonic() < deadline:
        gateway.check_alive()
        out.connected = sum(w.get("connected") for w in workers)
        settled = sum(w.get("connected") + w.get("failed") for w in workers)
        if out.connected >= expected:
            break
        if settled >= expected or not all(w.alive() for w in workers):
            raise BenchError(
                f"only {out.connected} of {expected} subscribers connected "
                f"({settled - out.connected} failed)"
            )
        time.sleep(POLL_SECONDS)
    else:
        raise BenchError(
            f"only {out.connected} of {expected} subscribers connected "
            f"within {CONNECT_TIMEOUT:.0f} s"
        )
    out.connect_seconds = time.perf_counter() - started


def measure(
    args: argparse.Namespace,
    aggregator: Aggregator,
    gateway: Gateway,
    workers: list[LoadWorker],
    trace: RssTrace,
    out: Outcome,
) -> None:
    expected = args.subscribers * args.rounds
    payloads = [npz_payload(k) for k in range(args.rounds)]
    known = set(aggregator.aggregations())
    for worker in workers:
        worker.send("go")
    load_cpu = [w.cpu() for w in workers]
    gateway_cpu = trace.cpu()
    hwm_ok = reset_high_water_mark(gateway.pid)
    phase_start = time.perf_counter()
    start = time.monotonic() + 0.2
    for k, body in enumerate(payloads):
        pause = start + k * args.interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        sent = time.time()
        aggregator.upload(body)
        out.round_list.append(Round(k + 1, sent, time.time()))
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        if sum(w.get("received") for w in workers) >= expected:
            break
        gateway.check_alive()
        time.sleep(POLL_SECONDS / 5)
    time.sleep(TAIL_SECONDS)
    phase_end = time.perf_counter()
    kernel = high_water_mark(gateway.pid) if hwm_ok else None
    samples = trace.window(phase_start, phase_end)
    out.rss_peak = max((s.rss for s in samples), default=None)
    out.rss_kernel = kernel
    out.rss_samples = len(samples)
    user, system = trace.cpu()
    out.gateway_cpu = (user - gateway_cpu[0], system - gateway_cpu[1])
    out.phase_seconds = phase_end - phase_start
    now_cpu = [w.cpu() for w in workers]
    out.load_cpu = (
        sum(n[0] - b[0] for n, b in zip(now_cpu, load_cpu, strict=True)),
        sum(n[1] - b[1] for n, b in zip(now_cpu, load_cpu, strict=True)),
    )
    out.rss_after = trace.idle(0.3)
    fresh = [a for i, a in aggregator.aggregations().items() if i not in known]
    if len(fresh) != args.rounds:
        out.notes.append(
            f"the aggregator lists {len(fresh)} new aggregations for {args.rounds} uploads"
        )
    for round_, aggregation in zip(out.round_list, fresh, strict=False):
        round_.aggregation_id = aggregation["aggregation_id"]
        if aggregation.get("status") != "done":
            out.notes.append(
                f"round {round_.index}: aggregation status {aggregation.get('status')}"
            )


# ============================================================================================
# Report
# ============================================================================================


@dataclass
class Tally:
    unique: int = 0
    duplicates: int = 0
    missing: int = 0
    latencies: list[float] = field(default_factory=list)
    fanout: list[float] = field(default_factory=list)
    upstream: list[float] = field(default_factory=list)
    unmatched: int = 0


def tally(out: Outcome) -> Tally:
    by_aggregation = {r.aggregation_id: r for r in out.round_list if r.aggregation_id}
    events: dict[int, dict[str, Any]] = {}
    for result in out.results:
        events.update({int(k): v for k, v in result["events"].items()})
    rounds_by_event: dict[int, Round] = {}
    for event_id, data in events.items():
        round_ = by_aggregation.get(str(data.get("aggregation_id")))
        if round_ is not None:
            round_.event_id = event_id
            round_.received_at = iso_seconds(str(data.get("received_at")))
            rounds_by_event[event_id] = round_
    t = Tally()
    seen: set[tuple[int, int]] = set()
    for result in out.results:
        for stream, event_id, at in result["receipts"]:
            key = (int(stream), int(event_id))
            if key in seen:
                t.duplicates += 1
                continue
            seen.add(key)
            round_ = rounds_by_event.get(int(event_id))
            if round_ is None:
                t.unmatched += 1
                continue
            round_.receipts.append(float(at))
            t.latencies.append(float(at) - round_.returned)
            if round_.received_at is not None:
                t.fanout.append(float(at) - round_.received_at)
    t.unique = len(seen)
    t.missing = sum(out.subscribers - len(r.receipts) for r in out.round_list)
    t.upstream = [r.received_at - r.returned for r in out.round_list if r.received_at is not None]
    return t


def triple(values: Sequence[float]) -> str:
    """p50 / p99 / max."""
    worst = max(values) if values else None
    return " / ".join(fmt_ms(v) for v in (percentile(values, 50), percentile(values, 99), worst))


def print_report(out: Outcome) -> None:
    t = tally(out)
    expected = out.subscribers * out.rounds
    rows: list[tuple[str, str, str, str]] = []

    def row(metric: str, value: str, target: str = "", result: str = "") -> None:
        rows.append((metric, value, target, result))

    connect_text = (
        f"{out.connected}/{out.subscribers} in {out.connect_seconds:.2f} s"
        if out.connect_seconds is not None
        else f"{out.connected}/{out.subscribers}"
    )
    row("subscribers connected (retry: preamble)", connect_text)
    received = t.unique + t.duplicates
    complete = received == expected and t.duplicates == 0 and t.missing == 0 and t.unmatched == 0
    row(
        "aggregation events received",
        f"{received}/{expected} (dup {t.duplicates}, missing {t.missing}, unmatched {t.unmatched})",
        "N*K, each once",
        ("PASS" if complete else "FAIL") if out.round_list else "n/a",
    )
    p50, p99 = percentile(t.latencies, 50), percentile(t.latencies, 99)
    row("latency upload return -> receipt  p50", fmt_ms(p50))
    row(
        "                                  p99",
        fmt_ms(p99),
        f"< {P99_TARGET * 1000:.0f} ms",
        "n/a" if p99 is None else ("PASS" if p99 < P99_TARGET else "FAIL"),
    )
    row("                                  max", fmt_ms(max(t.latencies, default=None)))
    row("upstream: received_at - upload return (p50/p99/max)", triple(t.upstream))
    row("fan-out: receipt - received_at (p50/p99/max)", triple(t.fanout))
    spreads = [max(r.receipts) - min(r.receipts) for r in out.round_list if r.receipts]
    row("per-event spread, last - first receipt (p50/max)", spread_text(spreads))
    if out.rss_empty is not None:
        row("gateway idle RSS, 0 subscribers", fmt_bytes(out.rss_empty))
    if out.rss_idle is not None:
        per = (
            f" (+{fmt_bytes((out.rss_idle - out.rss_empty) / max(1, out.connected))}/subscriber)"
            if out.rss_empty is not None
            else ""
        )
        row(f"gateway idle RSS, {out.connected} subscribers", fmt_bytes(out.rss_idle) + per)
    if out.rss_idle is not None and out.rss_peak is not None:
        sampled = max(0, out.rss_peak - out.rss_idle)
        kernel = None if out.rss_kernel is None else max(0, out.rss_kernel - out.rss_idle)
        delta = max(sampled, kernel or 0)
        row(
            "gateway peak RSS above idle during rounds",
            f"{fmt_bytes(delta)} (s {fmt_bytes(sampled)} / k "
            f"{'n/a' if kernel is None else fmt_bytes(kernel)}, {out.rss_samples} samples)",
            f"< {fmt_bytes(RSS_TARGET)}",
            "PASS" if delta < RSS_TARGET else "FAIL",
        )
    if out.rss_after is not None and out.rss_idle is not None:
        row("gateway RSS after rounds - idle", fmt_bytes(out.rss_after - out.rss_idle))
    if out.gateway_cpu is not None and out.phase_seconds:
        user, system = out.gateway_cpu
        row(
            "gateway CPU during rounds",
            f"{user:.2f} user + {system:.2f} sys s in {out.phase_seconds:.1f} s "
            f"({(user + system) / out.phase_seconds * 100:.0f}% of a core; "
            f"{(user + system) / max(1, expected) * 1e6:.0f} us/receipt)",
        )
    if out.gateway_threads:
        row("gateway threads (idle, N subscribers)", str(out.gateway_threads))
    if out.load_cpu is not None and out.phase_seconds:
        user, system = out.load_cpu
        row(
            f"load processes CPU ({out.workers} x {out.client}/{out.loop})",
            f"{user:.2f} user + {system:.2f} sys s "
            f"({(user + system) / out.phase_seconds * 100:.0f}% of a core)",
        )
    lags = [r["lag_max"] for r in out.results if r.get("lag_max") is not None]
    lag99 = [r["lag_p99"] for r in out.results if r.get("lag_p99") is not None]
    if lags:
        row(
            "load event-loop lag (worst p99 / max)",
            f"{fmt_ms(max(lag99, default=None))} / {fmt_ms(max(lags))}",
        )
    closed = sum(int(r.get("closed", 0)) for r in out.results)
    failed = sum(int(r.get("failed", 0)) for r in out.results)
    keepalives = sum(int(r.get("keepalives", 0)) for r in out.results)
    other: Counter[str] = Counter()
    for r in out.results:
        other.update(r.get("other", {}))
    row(
        "streams failed / closed early / keep-alives",
        f"{failed} / {closed} / {keepalives}"
        + (f"; gateway logged {out.lagged_log_lines} lag cut-offs" if out.lagged_log_lines else ""),
    )
    if other:
        row("other events", ", ".join(f"{k} x{v}" for k, v in sorted(other.items())))

    print()
    print(
        f"GET /events fan-out: {out.subscribers} subscribers in {out.workers} load processes "
        f"({out.client} client on {out.loop}), {out.rounds} aggregations, upstream protocol "
        f"{out.dialect} ({'RabbitMQ' if out.dialect == 'v1' else 'WebSocket'} notifications)"
    )
    print(
        f"host: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; RLIMIT_NOFILE {out.nofile[0]}/{out.nofile[1]}"
    )
    header = ("metric", "value", "target", "result")
    table = [header, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print(BAR)
    for n, line in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print_rounds(out)
    print()
    print("latency: receipt time at the subscriber (as data_received starts) minus the time the")
    print("  upload request returned (the aggregator announces after the FedAvg that starts then).")
    print("  received_at is the gateway's stamp when the notification arrived (ms resolution).")
    print(f"RSS: idle = median over {IDLE_SECONDS:.0f} s with every subscriber connected; peak =")
    print(
        f"  max(sampler every {SAMPLE_SECONDS * 1000:.0f} ms, VmHWM reset when the rounds start)."
    )
    print("Targets are informational; the benchmark never asserts.")
    for note in out.notes:
        print(f"  {note}")
    for error in out.errors:
        print(f"  ERROR {error}")
    for result in out.results:
        for error in result.get("errors", []):
            print(f"  load: {error}")


def spread_text(spreads: Sequence[float]) -> str:
    if not spreads:
        return "-"
    return f"{fmt_ms(percentile(spreads, 50))} / {fmt_ms(max(spreads))}"


def print_rounds(out: Outcome) -> None:
    header = ("round", "event", "upload", "upstream", "first", "p50", "p99", "last", "got")
    table: list[tuple[str, ...]] = [header]
    for r in out.round_list:
        lat = [at - r.returned for at in r.receipts]
        table.append(
            (
                str(r.index),
                "-" if r.event_id is None else str(r.event_id),
                fmt_ms(r.returned - r.sent),
                "-" if r.received_at is None else fmt_ms(r.received_at - r.returned),
                fmt_ms(min(lat, default=None)),
                fmt_ms(percentile(lat, 50)),
                fmt_ms(percentile(lat, 99)),
                fmt_ms(max(lat, default=None)),
                f"{len(r.receipts)}/{out.subscribers}",
            )
        )
    if len(table) == 1:
        return
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print("per round (latencies from the upload's return; upload = its own request time)")
    for n, line in enumerate(table):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_profile(path: Path, top: int = 25) -> None:
    """The gateway's busiest functions over its whole life (start-up and connections included)."""
    import pstats

    print()
    if not path.is_file():
        print(f"no profile written at {path}")
        return
    print("gateway under cProfile (whole process life; its latencies above are inflated by it)")
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    prefixes = sorted({str(Path(p)) + os.sep for p in sys.path if p}, key=len, reverse=True)
    for raw in stream.getvalue().splitlines():
        line = raw
        for prefix in prefixes:  # site-packages/... and the repository's own paths, shortened
            line = line.replace(prefix, "")
        if line.strip() and not line.startswith(("   Ordered by", "   List")):
            print(line)


# ============================================================================================
# Entry point
# ============================================================================================


def default_workers() -> int:
    """One load process per CPU the gateway does not need, 1..4.

    A raw-protocol stream costs the client next to nothing (well under 5% of a core for 1000
    streams and 20 events), while every extra process competes with the single-threaded
    gateway for the CPU during the burst that each event causes; on a 2-CPU host one load
    process gives the gateway's true latency, and more processes only add scheduling noise.
    """
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--subscribers", type=int, default=1000, help="concurrent SSE streams (N)")
    parser.add_argument("--rounds", type=int, default=20, help="aggregations to announce (K)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between uploads")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="load processes (default: CPUs - 1, 1..4: each one competes with the gateway for CPU)",
    )
    parser.add_argument(
        "--dialect",
        choices=("v3", "v1"),
        default="v3",
        help="upstream protocol of the gateway: v3 (WebSocket) or v1 (RabbitMQ on 127.0.0.1:5672)",
    )
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--keep", action="store_true", help="keep server data and logs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the gateway under cProfile and print its top functions (slows it down)",
    )
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return
    scratch = Path(tempfile.mkdtemp(prefix="branchkey-bench-events-"))
    out = Outcome(
        args.subscribers, args.rounds, max(1, args.workers), args.client, args.loop, args.dialect
    )
    try:
        run(args, scratch, out)
    except BenchError as exc:
        out.errors.append(str(exc))
    except KeyboardInterrupt:
        out.errors.append("interrupted")
    finally:
        print_report(out)
        if args.profile:
            print_profile(scratch / "gateway.prof")
        if args.keep:
            print(f"  kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as `python bench/events.py`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
