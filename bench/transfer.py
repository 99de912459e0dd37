"""Benchmark: 512 MiB .. 2 GiB NPZ uploads and downloads through the gateway, against the floor and the SDK.

    python bench/transfer.py [--sizes 512M,2G] [--dir DIR] [--keep] [--no-client] [--repeat N]
                             [--dry-run]

For every size the parent writes an SDK-layout payload (`weighting` float64 (1,), `layer_0..`
float32, stored) with bench/weights.py's streaming generator, then starts a fresh local aggregator
(`branchkey-gateway aggregator --dev-leaves 1`) and a gateway in front of it (`branchkey-gateway
serve`, BK_HOST = the aggregator), both as subprocesses on free loopback ports with temp data dirs.
It measures

  uploads    (a) `curl -F file=@w.npz` to the gateway's POST /upload (the gateway forwards it),
             (b) `curl -F` straight to the aggregator's POST /api/v1/file/upload, with the
                 integrity headers and the `data` part the official client sends (the floor),
             (c) the official client's (branchkey==3.0.1) `file_upload` straight to the aggregator
                 (the anchor);
             (a2) for reference, the same file as a raw body (`curl -X POST -T`, no multipart)
                 to the gateway;
             (a-cd) (a) with the part header `Content-Digest: sha-256=:<base64>:` and
             (a2-cd) (a2) with that request header: a gateway that trusts a declared digest
                 can forward while it receives (the digest is computed beforehand, as (b)'s);
  baselines  (s) `curl -F file=@w.npz` into a minimal streaming sink: bench/sink.py's asyncio
                 protocol on uvloop, which counts the Content-Length bytes as they arrive, drops
                 them and answers 201 (no parsing beyond the head, no disk, no hash), and
             (s2) the same into plain uvicorn (httptools, uvloop, its defaults) running a bare
                 ASGI app that awaits every body message and answers 201: what the server
                 framework itself costs;
  downloads  (d) `curl -o /dev/null` of the gateway's GET /aggregations/{id}, first (cold cache)
                 and second (cached),
             (e) `curl` of the aggregator's signed blob URL,
             (f) the official client's `file_download(id)`.

Every upload completes a round (one dev leaf), so the aggregator runs FedAvg afterwards: the next
measurement starts only once the admin API reports that aggregation done. For the uploads through
the gateway a poller of its scratch folder notes when the temp file has the payload's size: the
receive leg (the bytes parsed, hashed and on disk; the last ~1 MiB's hash and the validation come
after, and the poller adds up to 10 ms). A thread per process
samples the RSS of the gateway, the aggregator and the client (curl or python) every 10 ms; the
kernel's high-water mark (VmHWM: reset per phase through /proc/<pid>/clear_refs for the servers
and the python client, read with every sample for curl) is the cross-check. It prints a table with
informational PASS/FAIL targets, among them same-run ratios: (a)'s receive leg / (s) <= 2x, (a2)'s
receive leg / (a)'s <= 1x, (b) / (s) <= 2x, (a-cd) / (b) <= 1.2x; it never asserts and exits 0.
`--dry-run` prints the transfers and ratio rows it would measure, and starts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/transfer.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import numpy as np
import psutil

from bench.procs import (
    IDLE_SECONDS,
    SAMPLE_SECONDS,
    AggregatorService,
    BenchError,
    RssTrace,
    Service,
    clean_env,
    curl_path,
    curl_version,
    gateway_command,
    high_water_mark,
    read_marked,
    reset_high_water_mark,
    sha256_header,
)
from bench.weights import (
    MiB,
    fmt_bytes,
    fmt_seconds,
    generate,
    is_reusable,
    layout_for,
    leaf_path,
    parse_size,
)

CLIENT_IDLE_SECONDS = 0.5
TRANSFER_TIMEOUT = 1800.0
AGGREGATION_TIMEOUT = 900.0
CLIENT_VERSION = "3.0.1"
WEIGHTING = 120.0

GATEWAY_MAX_RSS = 100 * MiB
"""Gateway peak RSS above its idle RSS, for every transfer through it and every size."""
MAX_FLOOR_RATIO = 1.5
"""(a) may take at most this many times (b)."""
MIN_CLIENT_SPEEDUP = 3.0
MAX_COLD_RATIO = 1.3
"""(d) cold may take at most this many times (e), the direct blob download."""
MAX_CACHED_RATIO = 1.2
"""(d) cached may take at most this many times (e)."""
"""(c) must take at least this many times (a) at ANCHOR_BYTES."""
ANCHOR_BYTES = 512 * MiB
MAX_RECEIVE_RATIO = 2.0
"""The gateway's receive leg of (a), and the aggregator's whole (b), may take this many times (s)."""
MAX_RAW_RATIO = 1.0
"""(a2)'s receive leg may take at most this many times (a)'s: a raw body is no slower to take in."""
MAX_DIGEST_RATIO = 1.2
"""(a-cd) may take at most this many times (b): forwarding while receiving hides the first leg."""

TRANSFERS = (
    ("s", "(s) curl -F -> minimal sink"),
    ("s2", "(s2) curl -F -> uvicorn + bare ASGI"),
    ("a", "(a) curl -F -> gateway /upload"),
    ("b", "(b) curl -F -> aggregator (floor)"),
    ("a2", "(a2) curl raw body -> gateway"),
    ("a-cd", "(a-cd) curl -F + Content-Digest -> gateway"),
    ("a2-cd", "(a2-cd) raw body + Content-Digest -> gateway"),
    ("c", f"(c) branchkey {CLIENT_VERSION} file_upload"),
    ("d-cold", "(d) curl <- gateway, cold"),
    ("d-cached", "(d) curl <- gateway, cached"),
    ("e", "(e) curl <- aggregator blob URL"),
    ("f", f"(f) branchkey {CLIENT_VERSION} file_download"),
)
"""Every transfer (key, row title), in the order measured."""
RATIOS = (
    ("a-recv", "s", "(a) receive leg / (s) wall", MAX_RECEIVE_RATIO),
    ("a2-recv", "a-recv", "(a2) receive leg / (a) receive leg", MAX_RAW_RATIO),
    ("b", "s", "(b) / (s) wall", MAX_RECEIVE_RATIO),
    ("a-cd", "b", "(a-cd) / (b) wall", MAX_DIGEST_RATIO),
    ("s2", "s", "(s2) / (s) wall: the framework", None),
)
"""Same-run ratio rows: (numerator, denominator, title, at most): `-recv` is a receive leg."""
TITLES = dict(TRANSFERS)

DISK_EXTRA_COPIES = 5
"""Payload-sized files on disk besides the aggregator's stored uploads and FedAvg results (two per
upload): the gateway's upload temp file, its raw download and cached copy, the client's download,
and slack."""
CLIENT_MEMORY_FACTOR = 4
"""The official client holds the file about 3x (its sha256 read, the requests multipart body)."""

CLIENT_SCRIPT = r"""
import json, sys, time
from branchkey import APIConfig, Client, Credentials

def say(**fields):
    sys.stdout.write("BENCH " + json.dumps(fields) + "\n")
    sys.stdout.flush()

config = json.loads(sys.stdin.readline())
leaf = config["leaf"]
fields = ("id", "name", "session_token", "tree_id", "branch_id", "owner_id")
client = Client(
    Credentials(**{k: leaf.get(k, "") for k in fields}),
    api_config=APIConfig(host=config["host"], ssl=False),
    output_dir=config["output_dir"],
)
try:
    say(ready=True, run_status=client.run_status)
    sys.stdin.readline()
    result, error = None, None
    start = time.perf_counter()
    try:
        if config["op"] == "upload":
            result = client.file_upload(config["arg"])
        else:
            result = client.file_download(config["arg"])
    except Exception as exc:
        error = str(exc)
    say(wall=time.perf_counter() - start, result=result, error=error)
    sys.stdin.readline()  # the parent reads our high-water mark before we exit
finally:
    client.close()
"""
"""Runs in the peer's interpreter: builds a Client, says ready, waits for a line, times one call."""


# --------------------------------------------------------------------------------------------
# RSS of other processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peak:
    """Peak RSS of one process during one phase, relative to its idle RSS before the phase."""

    baseline: int
    sampled: int
    kernel: int | None
    samples: int

    @property
    def delta(self) -> int:
        return max(0, max(self.sampled, self.kernel or 0) - self.baseline)

    def text(self) -> str:
        return fmt_bytes(self.delta)

    def detail(self) -> str:
        sampled = fmt_bytes(max(0, self.sampled - self.baseline))
        kernel = "n/a" if self.kernel is None else fmt_bytes(max(0, self.kernel - self.baseline))
        return f"s {sampled} / k {kernel}, {self.samples} samples"


class Phase:
    """The peak RSS of a traced process from construction to `end()`; VmHWM is reset at both ends."""

    def __init__(self, trace: RssTrace, baseline: int) -> None:
        self.trace = trace
        self.baseline = baseline
        self.hwm_ok = reset_high_water_mark(trace.pid)
        self.start = time.perf_counter()

    def end(self) -> Peak:
        end = time.perf_counter()
        kernel = high_water_mark(self.trace.pid) if self.hwm_ok else None
        reset_high_water_mark(self.trace.pid)
        samples = self.trace.window(self.start, end)
        return Peak(
            baseline=self.baseline,
            sampled=max((s.rss for s in samples), default=0),
            kernel=kernel,
            samples=len(samples),
        )


@dataclass(frozen=True)
class ClientPeak:
    """The client process's peak RSS: absolute, and above its RSS once ready (python client)."""

    absolute: int
    above_ready: int | None = None

    def text(self) -> str:
        if self.above_ready is None:
            return fmt_bytes(self.absolute)
        return f"{fmt_bytes(self.absolute)} (+{fmt_bytes(self.above_ready)})"


# --------------------------------------------------------------------------------------------
# The aggregator and the gateway
# --------------------------------------------------------------------------------------------


class Aggregator(AggregatorService):
    """The local aggregator the transfers go to."""


SINK_SCRIPT = Path(__file__).resolve().with_name("sink.py")


class Sink(Service):
    """bench/sink.py: (s) the raw asyncio sink, or (s2) plain uvicorn + a bare ASGI app."""

    def __init__(self, workdir: Path, asgi: bool) -> None:
        super().__init__(workdir)
        self.asgi = asgi
        self.name = "uvicorn sink" if asgi else "sink"

    def start(self) -> None:
        command = [sys.executable, str(SINK_SCRIPT), str(self.port)]
        self.spawn([*command, "--asgi"] if self.asgi else command, clean_env(("UVICORN_",)))
        self.wait_ready(self._probe)

    def _probe(self) -> str | None:
        response = self.http.post(self.base, content=b"ping")
        if response.status_code == 201 and response.text.strip() == "4":
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"


class Gateway(Service):
    name = "gateway"

    def start(self, upstream: Aggregator) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        credentials = self.workdir / "credentials.json"
        credentials.write_text(json.dumps(upstream.leaf))
        credentials.chmod(0o600)
        env = clean_env(("BK_", "GATEWAY_"))
        env |= {
            "BK_HOST": upstream.base,
            "BK_CREDENTIALS_FILE": str(credentials),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_DATA_DIR": str(self.workdir / "data"),
        }
        self.spawn([*gateway_command(), "serve"], env)
        self.wait_ready(self._probe)

    def _probe(self) -> str | None:
        response = self.http.get(f"{self.base}/readyz")
        if response.status_code == 200:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"


class LegWatch(threading.Thread):
    """When an upload through the gateway stops arriving and starts leaving, from its temp files.

    Polls the gateway's and the aggregator's temp folders every SAMPLE_SECONDS for the multipart
    temp files (`.upload-*`): the gateway's reaching the payload's size ends the receiving leg,
    the aggregator's first byte starts the forwarding leg.
    """

    def __init__(self, gateway_tmp: Path, aggregator_tmp: Path, size: int) -> None:
        super().__init__(daemon=True, name="leg-watch")
        self._folders = (gateway_tmp, aggregator_tmp)
        self._size = size
        self._stop_event = threading.Event()
        self.start_at = 0.0
        self.received_at: float | None = None
        self.forwarding_at: float | None = None

    @staticmethod
    def _bytes(folder: Path) -> int:
        total = 0
        with contextlib.suppress(OSError):
            for entry in folder.glob(".upload-*"):
                with contextlib.suppress(OSError):
                    total += entry.stat().st_size
        return total

    def run(self) -> None:
        self.start_at = time.perf_counter()
        while not self._stop_event.wait(SAMPLE_SECONDS):
            now = time.perf_counter()
            if self.received_at is None and self._bytes(self._folders[0]) >= self._size:
                self.received_at = now
            if self.forwarding_at is None and self._bytes(self._folders[1]) > 0:
                self.forwarding_at = now
            if self.received_at is not None and self.forwarding_at is not None:
                break

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    @property
    def received(self) -> float | None:
        """Seconds from the start to the gateway's temp file complete, if seen."""
        return None if self.received_at is None else self.received_at - self.start_at

    def text(self, seconds: float) -> str:
        """The two legs of a transfer that took `seconds` (curl's clock, started with ours)."""
        if self.received_at is None or self.forwarding_at is None:
            return "legs not seen (temp files missed by the poller)"
        received = self.received_at - self.start_at
        forwarding = self.forwarding_at - self.start_at
        return (
            f"gateway temp file complete at {received:.2f} s, first byte at the aggregator at "
            f"{forwarding:.2f} s, response at {seconds:.2f} s: receiving {received:.2f} s, "
            f"validating {max(0.0, forwarding - received):.2f} s, forwarding "
            f"{max(0.0, seconds - forwarding):.2f} s"
        )


# --------------------------------------------------------------------------------------------
# Clients: curl and the official SDK
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    """One timed transfer as the client saw it."""

    status: int
    seconds: float
    nbytes: int
    body: str
    client: ClientPeak


def run_curl(args: list[str], scratch: Path, ready: Callable[[], None]) -> Transfer:
    """curl with `-w` status, time and sizes; the response body (first 2 KiB kept) goes to a file.

    `ready` is called right before curl starts. Its peak RSS is the larger of a 10 ms sampler's
    and the last VmHWM that sampler read. (Not ru_maxrss: Linux carries the parent's high-water
    mark over the vfork+exec, so a child of this process reports at least our own peak.) Popen
    returns after the exec, so every sample is curl's own.
    """
    body_path = scratch / f".curl-body-{os.getpid()}"
    out_path = scratch / f".curl-out-{os.getpid()}"
    err_path = scratch / f".curl-err-{os.getpid()}"
    write_out = "%{http_code} %{time_total} %{size_upload} %{size_download}"
    command = [curl_path(), "-sS", "-o", str(body_path), "-w", write_out, *args]
    try:
        with out_path.open("wb") as out, err_path.open("wb") as err:
            ready()
            proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            trace = RssTrace(proc.pid, hwm=True)
            trace.start()
            try:
                proc.wait(timeout=TRANSFER_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            finally:
                trace.stop()
        fields = out_path.read_text().split()
        if proc.returncode != 0 or len(fields) != 4:
            stderr = err_path.read_text(errors="replace").strip()[-300:]
            raise BenchError(f"curl exited {proc.returncode}: {stderr}")
        body = ""
        with contextlib.suppress(OSError), body_path.open("rb") as stream:
            body = stream.read(2048).decode(errors="replace")
    finally:
        for path in (body_path, out_path, err_path):
            path.unlink(missing_ok=True)
    code, seconds, up, down = fields
    peak = max(trace.peak(), trace.last_hwm)
    return Transfer(
        int(code), float(seconds), int(float(up)) + int(float(down)), body, ClientPeak(peak)
    )


def run_official(
    python: Path,
    agg: Aggregator,
    op: str,
    arg: str,
    scratch: Path,
    ready: Callable[[], None],
) -> tuple[float, str, ClientPeak]:
    """One `file_upload(arg)` or `file_download(arg)` of the official client in its own process.

    Returns (seconds of the call, its result, the process's peak RSS). `ready` is called once the
    client is constructed and idle, right before the call.
    """
    stderr_path = scratch / f".client-{os.getpid()}.stderr"
    config = {
        "leaf": agg.leaf,
        "host": agg.base,
        "op": op,
        "arg": arg,
        "output_dir": str(scratch / "client-output"),
    }
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [str(python), "-I", "-c", CLIENT_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=scratch,
        )
    trace = RssTrace(proc.pid)
    trace.start()
    try:
        stdin, stdout = proc.stdin, proc.stdout
        if stdin is None or stdout is None:  # pragma: no cover - both are pipes
            raise BenchError("no pipes to the client script")
        stdin.write(json.dumps(config) + "\n")
        stdin.flush()
        if not read_marked(stdout).get("ready"):
            raise BenchError("the client did not get ready")
        start = time.perf_counter()
        time.sleep(CLIENT_IDLE_SECONDS)
        idle = trace.window(start, time.perf_counter())
        baseline = int(statistics.median(s.rss for s in idle))
        ready()
        phase = Phase(trace, baseline)
        stdin.write("go\n")
        stdin.flush()
        outcome = read_marked(stdout)
        peak = phase.end()
        stdin.write("exit\n")
        stdin.flush()
        stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    finally:
        trace.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if outcome.get("error"):
        tail = " | ".join(stderr_path.read_text(errors="replace").strip().splitlines()[-3:])
        stderr_path.unlink(missing_ok=True)
        raise BenchError(f"{op} failed: {outcome['error']} {tail}".strip())
    stderr_path.unlink(missing_ok=True)
    absolute = max(peak.sampled, peak.kernel or 0)
    return float(outcome["wall"]), str(outcome["result"]), ClientPeak(absolute, peak.delta)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    size: str
    operation: str
    wall: str = "-"
    rate: str = "-"
    gateway: str = "-"
    aggregator: str = "-"
    client: str = "-"
    target: str = "-"
    result: str = "-"

    def cells(self) -> list[str]:
        return [
            self.size,
            self.operation,
            self.wall,
            self.rate,
            self.gateway,
            self.aggregator,
            self.client,
            self.target,
            self.result,
        ]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def error(self, size: str, operation: str, exc: BaseException) -> None:
        self.rows.append(Row(size, operation, result=f"ERROR {exc}"))


def rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / seconds / MiB:.0f} MiB/s" if seconds > 0 else "-"


def print_table(report: Report) -> None:
    header = ["size", "transfer", "wall", "rate", "gateway RSS+", "aggregator RSS+"]
    header += ["client peak RSS", "target", "result"]
    table = [header] + [row.cells() for row in report.rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print()
    for n, line in enumerate(table):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
        if n == 0:
            print("  ".join("-" * width for width in widths))
    print()
    print(f"RSS+: peak RSS above the process's idle RSS (median over {IDLE_SECONDS:.0f} s right")
    print(
        f"  before the transfer) = max(sampler every {SAMPLE_SECONDS * 1000:.0f} ms, VmHWM reset at"
    )
    print("  the transfer's start). client peak RSS: absolute, max(sampler, VmHWM); for the")
    print("  official client also (+ above its RSS once constructed, before the call).")
    print("wall: curl's time_total, or the duration of the official client's call (which includes")
    print("  its own whole-file sha256 and np.load validation). Targets are informational.")
    for note in report.notes:
        print(f"  {note}")


# --------------------------------------------------------------------------------------------
# One size
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    label: str
    path: Path
    size: int


def prepare_payload(
    label: str, target: int, directory: Path, uploads: int, report: Report
) -> Payload | None:
    """The payload of one size, generated unless a valid one is there; None if the disk is short."""
    layout = layout_for(label, target)
    path = leaf_path(directory, layout, 0, False)
    reusable = is_reusable(path, layout, WEIGHTING, False)
    copies = 2 * uploads + DISK_EXTRA_COPIES + (0 if reusable else 1)
    need = int(copies * layout.data_bytes * 1.02) + 512 * MiB
    free = shutil.disk_usage(directory).free
    if free < need:
        message = f"skipped: needs {fmt_bytes(need)} free in {directory}, has {fmt_bytes(free)}"
        print(f"[{label}] {message}", flush=True)
        report.rows.append(Row(label, "all", result=message))
        return None
    if reusable:
        print(f"[{label}] reusing {path}", flush=True)
    else:
        print(f"[{label}] generating {path} ...", end=" ", flush=True)
        start = time.perf_counter()
        generate(path, layout, WEIGHTING, seed=7 * target, compressed=False)
        took = time.perf_counter() - start
        print(f"{fmt_bytes(path.stat().st_size)} in {took:.1f} s", flush=True)
    _, largest = layout.largest
    report.notes.append(
        f"{label}: {len(layout.shapes)} float32 layers + weighting, file "
        f"{fmt_bytes(path.stat().st_size)}, largest layer {fmt_bytes(largest)}; "
        f"{fmt_bytes(free)} free on disk before the run"
    )
    return Payload(label, path, path.stat().st_size)


@dataclass(frozen=True)
class Measurement:
    """One transfer: the client's view, and what it cost the two servers."""

    seconds: float
    nbytes: int
    client: ClientPeak
    gateway: Peak
    aggregator: Peak
    gateway_cpu: float
    aggregator_cpu: float


def combine(runs: Sequence[Measurement]) -> Measurement:
    """Repeated runs as one: the median time, the worst peaks, the median CPU."""
    return Measurement(
        seconds=statistics.median(m.seconds for m in runs),
        nbytes=runs[0].nbytes,
        client=max((m.client for m in runs), key=lambda c: c.absolute),
        gateway=max((m.gateway for m in runs), key=lambda p: p.delta),
        aggregator=max((m.aggregator for m in runs), key=lambda p: p.delta),
        gateway_cpu=statistics.median(m.gateway_cpu for m in runs),
        aggregator_cpu=statistics.median(m.aggregator_cpu for m in runs),
    )


def cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


Runner = Callable[[Callable[[], None]], tuple[float, int, ClientPeak]]
"""Runs one transfer: calls `ready()` right before its timed part, returns (seconds, bytes, peak)."""


def watched(run: Runner, watch: LegWatch) -> Runner:
    """`run` with `watch` started right after its `ready()` and stopped when it returns."""

    def wrapper(ready: Callable[[], None]) -> tuple[float, int, ClientPeak]:
        def start() -> None:
            ready()
            watch.start()

        try:
            return run(start)
        finally:
            if watch.is_alive():
                watch.stop()

    return wrapper


@dataclass
class Bench:
    """One size's servers, traces and results."""

    label: str
    payload: Payload
    scratch: Path
    report: Report
    agg: Aggregator
    gateway: Gateway
    repeat: int = 1
    agg_trace: RssTrace | None = None
    gw_trace: RssTrace | None = None
    walls: dict[str, float] = field(default_factory=dict)
    aggregation_ids: dict[str, str] = field(default_factory=dict)
    gateway_idle: list[int] = field(default_factory=list)
    cached_digest: str | None = None

    def traces(self) -> tuple[RssTrace, RssTrace]:
        if self.agg_trace is None or self.gw_trace is None:
            raise BenchError("the servers are not traced")
        return self.agg_trace, self.gw_trace

    def measure(self, run: Runner) -> Measurement:
        """One transfer, with the idle RSS of both servers taken over IDLE_SECONDS right before."""
        agg_trace, gw_trace = self.traces()
        gw_process, agg_process = psutil.Process(self.gateway.pid), psutil.Process(self.agg.pid)
        phases: list[Phase] = []
        cpu: list[float] = []

        def ready() -> None:
            self.agg.check_alive()
            self.gateway.check_alive()
            start = time.perf_counter()
            time.sleep(IDLE_SECONDS)
            end = time.perf_counter()
            gw_idle = int(statistics.median(s.rss for s in gw_trace.window(start, end)))
            agg_idle = int(statistics.median(s.rss for s in agg_trace.window(start, end)))
            self.gateway_idle.append(gw_idle)
            cpu[:] = [cpu_seconds(gw_process), cpu_seconds(agg_process)]
            phases[:] = [Phase(gw_trace, gw_idle), Phase(agg_trace, agg_idle)]

        seconds, nbytes, client = run(ready)
        if len(phases) != 2:
            raise BenchError("the transfer never started")
        gw_peak, agg_peak = phases[0].end(), phases[1].end()
        return Measurement(
            seconds=seconds,
            nbytes=nbytes,
            client=client,
            gateway=gw_peak,
            aggregator=agg_peak,
            gateway_cpu=cpu_seconds(gw_process) - cpu[0],
            aggregator_cpu=cpu_seconds(agg_process) - cpu[1],
        )

    def row(self, key: str, operation: str, m: Measurement, gateway_target: bool) -> None:
        self.walls[key] = m.seconds
        row = Row(
            self.label,
            operation,
            wall=fmt_seconds(m.seconds),
            rate=rate(m.nbytes, m.seconds),
            gateway=m.gateway.text(),
            aggregator=m.aggregator.text(),
            client=m.client.text(),
        )
        if gateway_target:
            row.target = f"gateway < {fmt_bytes(GATEWAY_MAX_RSS)}"
            row.result = "PASS" if m.gateway.delta < GATEWAY_MAX_RSS else "FAIL"
        self.report.rows.append(row)
        self.report.notes.append(
            f"{self.label} {operation}: CPU gateway {m.gateway_cpu:.2f} s, aggregator "
            f"{m.aggregator_cpu:.2f} s; RSS gateway {m.gateway.detail()}; aggregator "
            f"{m.aggregator.detail()}"
        )

    def wait_aggregation(self, key: str, known: set[str], finished_at: float) -> None:
        """Wait for the round's FedAvg so that the next measurement does not overlap it."""
        print(f"[{self.label}] waiting for the aggregator's FedAvg ...", flush=True)
        aggregation = self.agg.wait_new_aggregation(known, AGGREGATION_TIMEOUT)
        took = time.perf_counter() - finished_at
        if aggregation["status"] != "done":
            raise BenchError(f"aggregation {aggregation['status']}: {aggregation.get('error')}")
        self.aggregation_ids.setdefault(key, aggregation["aggregation_id"])
        size = aggregation.get("size")
        self.report.notes.append(
            f"{self.label} {key}: FedAvg K=1 done {took:.1f} s after the upload returned "
            f"(result {fmt_bytes(size) if isinstance(size, int) else '?'})"
        )

    def fresh_run(self) -> None:
        """A new run (one payload is uploaded many times, and a run counts it once), once the
        gateway has heard of it too."""
        self.agg.fresh_run(self.gateway)

    def upload(self, key: str, operation: str, run: Runner, times: int, gateway: bool) -> None:
        """`times` uploads, each followed by its FedAvg; one row with the median time."""
        runs: list[Measurement] = []
        received: list[float] = []
        for _ in range(times):
            self.fresh_run()
            known = set(self.agg.aggregations())
            watch = LegWatch(
                self.gateway.workdir / "data" / "tmp", self.agg.workdir / "tmp", self.payload.size
            )
            runs.append(self.measure(watched(run, watch) if gateway else run))
            if gateway:
                self.report.notes.append(f"{self.label} {key}: {watch.text(runs[-1].seconds)}")
                if watch.received is not None:
                    received.append(watch.received)
            self.wait_aggregation(key, known, time.perf_counter())
        if times > 1:
            walls = ", ".join(fmt_seconds(m.seconds) for m in runs)
            operation += f" (median of {times})"
            self.report.notes.append(f"{self.label} {key}: walls {walls}")
        self.row(key, operation, combine(runs), gateway_target=gateway)
        if received:
            self.walls[f"{key}-recv"] = statistics.median(received)
            seen = ", ".join(f"{r:.2f} s" for r in received)
            self.report.notes.append(f"{self.label} {key}: receive legs {seen}")

    def curl_runner(self, args: list[str], expect: int, payload_bytes: bool) -> Runner:
        """A runner of one curl call that must answer `expect`."""

        def run(ready: Callable[[], None]) -> tuple[float, int, ClientPeak]:
            transfer = run_curl(args, self.scratch, ready)
            if transfer.status != expect:
                raise BenchError(f"HTTP {transfer.status}: {transfer.body[:300]}")
            nbytes = self.payload.size if payload_bytes else transfer.nbytes
            return transfer.seconds, nbytes, transfer.client

        return run

    # ---------------------------------------------------------------- uploads

    def upload_gateway(self) -> None:
        print(f"[{self.label}] (a) curl -F to the gateway ...", flush=True)
        args = ["-F", f"file=@{self.payload.path}", f"{self.gateway.base}/upload"]
        run = self.curl_runner(args, 201, payload_bytes=True)
        self.upload("a", "(a) curl -F -> gateway /upload", run, self.repeat, gateway=True)

    def upload_sink(self, key: str, sink: Sink) -> None:
        """(s) or (s2): `curl -F` of the payload into a sink, `repeat` times, the median."""
        print(f"[{self.label}] {TITLES[key]} ...", flush=True)
        args = ["-F", f"file=@{self.payload.path}", f"{sink.base}/upload"]
        run = self.curl_runner(args, 201, payload_bytes=True)
        runs = []
        for _ in range(self.repeat):
            sink.check_alive()
            runs.append(self.measure(run))
        if self.repeat > 1:
            walls = ", ".join(fmt_seconds(m.seconds) for m in runs)
            self.report.notes.append(f"{self.label} {key}: walls {walls}")
        self.row(key, TITLES[key], combine(runs), gateway_target=False)

    def content_digest(self) -> str:
        """The payload's `Content-Digest` value (RFC 9530), computed once, outside any timing."""
        if self.cached_digest is None:
            self.cached_digest = f"sha-256=:{sha256_header(self.payload.path).partition('=')[2]}:"
        return self.cached_digest

    def upload_gateway_digest(self) -> None:
        print(f"[{self.label}] (a-cd) curl -F with a Content-Digest part header ...", flush=True)
        part = f'file=@{self.payload.path};headers="Content-Digest: {self.content_digest()}"'
        run = self.curl_runner(["-F", part, f"{self.gateway.base}/upload"], 201, True)
        self.upload("a-cd", TITLES["a-cd"], run, self.repeat, gateway=True)

    def upload_gateway_raw_digest(self) -> None:
        print(f"[{self.label}] (a2-cd) raw body with a Content-Digest header ...", flush=True)
        args = ["-X", "POST", "-T", str(self.payload.path)]
        args += ["-H", "Content-Type: application/octet-stream"]
        args += ["-H", f"Content-Digest: {self.content_digest()}", f"{self.gateway.base}/upload"]
        run = self.curl_runner(args, 201, payload_bytes=True)
        self.upload("a2-cd", TITLES["a2-cd"], run, 1, gateway=True)

    def upload_gateway_raw(self) -> None:
        print(f"[{self.label}] (a2) curl -T (raw body) to the gateway ...", flush=True)
        # -T streams the file (--data-binary @file would read all of it into curl's memory).
        args = ["-X", "POST", "-T", str(self.payload.path)]
        args += ["-H", "Content-Type: application/octet-stream", f"{self.gateway.base}/upload"]
        run = self.curl_runner(args, 201, payload_bytes=True)
        self.upload("a2", "(a2) curl raw body -> gateway", run, 1, gateway=True)

    def upload_floor(self) -> None:
        print(f"[{self.label}] (b) curl -F straight to the aggregator ...", flush=True)
        start = time.perf_counter()
        digest = sha256_header(self.payload.path)
        digest_seconds = time.perf_counter() - start
        self.walls["digest"] = digest_seconds
        self.report.notes.append(
            f"{self.label} (b): its x-bk-file-digest was computed beforehand in "
            f"{digest_seconds:.2f} s (not in its wall time)"
        )
        size = self.payload.size
        metadata = {
            "client_version": CLIENT_VERSION,
            "timestamp": datetime.now().isoformat(),
            "file_size": size,
            "file_digest": digest,
            "kind": "federated_learning",
        }
        data = json.dumps({"leaf_name": self.agg.leaf["name"], "metadata": json.dumps(metadata)})
        headers = {**self.agg.leaf_headers, "x-bk-file-size": str(size), "x-bk-file-digest": digest}
        args: list[str] = []
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        # --form-string: -F would read `;type=...` or a leading `@`/`<` inside the JSON.
        args += ["--form-string", f"data={data}", "-F", f"file=@{self.payload.path}"]
        args.append(f"{self.agg.base}/api/v1/file/upload")
        run = self.curl_runner(args, 201, payload_bytes=True)
        self.upload("b", "(b) curl -F -> aggregator (floor)", run, self.repeat, gateway=False)

    def check_client_memory(self) -> None:
        need = CLIENT_MEMORY_FACTOR * self.payload.size + 512 * MiB
        available = psutil.virtual_memory().available
        if available < need:
            raise BenchError(
                f"skipped: the official client needs about {fmt_bytes(need)} of RAM, "
                f"{fmt_bytes(available)} available"
            )

    def upload_client(self, python: Path) -> None:
        print(f"[{self.label}] (c) branchkey {CLIENT_VERSION} file_upload ...", flush=True)
        self.check_client_memory()

        def run(ready: Callable[[], None]) -> tuple[float, int, ClientPeak]:
            seconds, _, client = run_official(
                python, self.agg, "upload", str(self.payload.path), self.scratch, ready
            )
            return seconds, self.payload.size, client

        self.upload("c", f"(c) branchkey {CLIENT_VERSION} file_upload", run, 1, gateway=False)

    # ---------------------------------------------------------------- downloads

    def aggregation_id(self) -> str:
        for key in ("a", "b", "c", "a2"):
            if key in self.aggregation_ids:
                return self.aggregation_ids[key]
        raise BenchError("no upload produced an aggregation to download")

    def download_gateway(self, which: str) -> None:
        file_id = self.aggregation_id()
        print(
            f"[{self.label}] (d) curl the gateway's /aggregations/{{id}}, {which} ...", flush=True
        )
        run = self.curl_runner([f"{self.gateway.base}/aggregations/{file_id}"], 200, False)
        m = self.measure(run)
        self.row(f"d-{which}", f"(d) curl <- gateway, {which}", m, gateway_target=True)

    def download_direct(self) -> None:
        file_id = self.aggregation_id()
        print(f"[{self.label}] (e) curl the aggregator's blob URL ...", flush=True)
        run = self.curl_runner([self.agg.download_url(file_id)], 200, False)
        m = self.measure(run)
        self.row("e", "(e) curl <- aggregator blob URL", m, gateway_target=False)

    def download_client(self, python: Path) -> None:
        file_id = self.aggregation_id()
        print(f"[{self.label}] (f) branchkey {CLIENT_VERSION} file_download ...", flush=True)
        self.check_client_memory()
        written: list[Path] = []

        def run(ready: Callable[[], None]) -> tuple[float, int, ClientPeak]:
            seconds, result, client = run_official(
                python, self.agg, "download", file_id, self.scratch, ready
            )
            path = Path(result)
            written.append(path)
            return seconds, path.stat().st_size, client

        try:
            m = self.measure(run)
        finally:
            for path in written:
                path.unlink(missing_ok=True)
        self.row("f", f"(f) branchkey {CLIENT_VERSION} file_download", m, gateway_target=False)

    # ---------------------------------------------------------------- targets

    def ratio_rows(self) -> None:
        walls = self.walls
        for numerator, denominator, title, limit in RATIOS:
            if walls.get(numerator, 0) > 0 and walls.get(denominator, 0) > 0:
                ratio = walls[numerator] / walls[denominator]
                row = Row(self.label, title, wall=f"{ratio:.2f}x")
                if limit is not None:
                    row.target = f"<= {limit:g}x"
                    row.result = "PASS" if ratio <= limit else "FAIL"
                self.report.rows.append(row)
        for key, limit in (("d-cold", MAX_COLD_RATIO), ("d-cached", MAX_CACHED_RATIO)):
            if key in walls and walls.get("e", 0) > 0:
                ratio = walls[key] / walls["e"]
                row = Row(self.label, f"(d) {key[2:]} / (e) wall", wall=f"{ratio:.2f}x")
                row.target = f"<= {limit:g}x"
                row.result = "PASS" if ratio <= limit else "FAIL"
                self.report.rows.append(row)
        if "d-cold" in walls and walls.get("f", 0) > 0:
            speedup = walls["f"] / walls["d-cold"]
            row = Row(self.label, "(f) / (d) cold wall: speedup", wall=f"{speedup:.2f}x")
            row.target = f">= {MIN_CLIENT_SPEEDUP:g}x"
            row.result = "PASS" if speedup >= MIN_CLIENT_SPEEDUP else "FAIL"
            self.report.rows.append(row)
        if "a" in walls and "b" in walls and walls["b"] > 0:
            ratio = walls["a"] / walls["b"]
            row = Row(self.label, "(a) / (b) wall", wall=f"{ratio:.2f}x")
            row.target = f"<= {MAX_FLOOR_RATIO:g}x"
            row.result = "PASS" if ratio <= MAX_FLOOR_RATIO else "FAIL"
            self.report.rows.append(row)
            if "digest" in walls:
                with_digest = walls["a"] / (walls["b"] + walls["digest"])
                self.report.notes.append(
                    f"{self.label}: (a) / ((b) + its digest computed beforehand) = {with_digest:.2f}x"
                )
        if "a" in walls and "c" in walls and walls["a"] > 0:
            speedup = walls["c"] / walls["a"]
            row = Row(self.label, "(c) / (a) wall: speedup", wall=f"{speedup:.2f}x")
            if abs(self.payload.size - ANCHOR_BYTES) < 8 * MiB:
                row.target = f">= {MIN_CLIENT_SPEEDUP:g}x"
                row.result = "PASS" if speedup >= MIN_CLIENT_SPEEDUP else "FAIL"
            else:
                row.target = f"(>= {MIN_CLIENT_SPEEDUP:g}x at 512 MiB only)"
            self.report.rows.append(row)


def guarded(report: Report, size: str, operation: str, step: Callable[[], None]) -> bool:
    try:
        step()
    except (BenchError, OSError, httpx.HTTPError, subprocess.SubprocessError, ValueError) as exc:
        print(f"[{size}] {operation} failed: {exc}", flush=True)
        report.error(size, operation, exc)
        return False
    return True


def peer_python(report: Report) -> Path | None:
    from tests.support.peers import PeerError, ensure_peer

    print(f"official client {CLIENT_VERSION}: preparing its virtualenv ...", flush=True)
    try:
        peer = ensure_peer(CLIENT_VERSION)
    except PeerError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        report.notes.append(f"no branchkey=={CLIENT_VERSION} peer, (c) and (f) skipped: {first}")
        return None
    return peer.python


def bench_size(
    label: str,
    size: int,
    directory: Path,
    keep: bool,
    python: Path | None,
    repeat: int,
    report: Report,
) -> None:
    uploads = 3 * repeat + 2 + (1 if python is not None else 0)
    payload = prepare_payload(label, size, directory, uploads, report)
    if payload is None:
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"run-{label}-", dir=directory))
    agg = Aggregator(scratch / "aggregator")
    gateway = Gateway(scratch / "gateway")
    bench = Bench(label, payload, scratch, report, agg, gateway, repeat)
    sinks = (Sink(scratch / "sink", asgi=False), Sink(scratch / "uvicorn-sink", asgi=True))
    try:
        print(f"[{label}] starting the aggregator on {agg.base} ...", flush=True)
        if not guarded(report, label, "start aggregator", agg.start):
            return
        print(f"[{label}] starting the gateway on {gateway.base} ...", flush=True)
        if not guarded(report, label, "start gateway", lambda: gateway.start(agg)):
            return
        bench.agg_trace = RssTrace(agg.pid)
        bench.gw_trace = RssTrace(gateway.pid)
        bench.agg_trace.start()
        bench.gw_trace.start()
        for process, name in ((agg.pid, "aggregator"), (gateway.pid, "gateway")):
            children = psutil.Process(process).children(recursive=True)
            if children:
                report.notes.append(f"the {name} has {len(children)} child processes (not sampled)")

        for sink in sinks:
            key = "s2" if sink.asgi else "s"
            print(f"[{label}] starting the {sink.name} on {sink.base} ...", flush=True)
            if guarded(report, label, f"start {sink.name}", sink.start):
                guarded(report, label, TITLES[key], functools.partial(bench.upload_sink, key, sink))
            report.notes.append(f"{label}: {sink.name} {sink.stop()}")
        guarded(report, label, "(a) upload via gateway", bench.upload_gateway)
        guarded(report, label, "(b) upload to aggregator", bench.upload_floor)
        guarded(report, label, "(a2) raw upload via gateway", bench.upload_gateway_raw)
        guarded(report, label, TITLES["a-cd"], bench.upload_gateway_digest)
        guarded(report, label, TITLES["a2-cd"], bench.upload_gateway_raw_digest)
        if python is not None:
            guarded(report, label, "(c) official file_upload", lambda: bench.upload_client(python))
        guarded(report, label, "(d) gateway download, cold", lambda: bench.download_gateway("cold"))
        guarded(
            report, label, "(d) gateway download, cached", lambda: bench.download_gateway("cached")
        )
        guarded(report, label, "(e) blob download", bench.download_direct)
        if python is not None:
            guarded(
                report, label, "(f) official file_download", lambda: bench.download_client(python)
            )
        bench.ratio_rows()
        if bench.gateway_idle:
            first, last = bench.gateway_idle[0], bench.gateway_idle[-1]
            report.notes.append(
                f"{label}: gateway idle RSS {fmt_bytes(first)} before (a), {fmt_bytes(last)} "
                f"before the last transfer ({'+' if last >= first else '-'}"
                f"{fmt_bytes(abs(last - first))})"
            )
    finally:
        for trace in (bench.agg_trace, bench.gw_trace):
            if trace is not None:
                trace.stop()
        for sink in sinks:
            sink.stop()
        report.notes.append(f"{label}: {gateway.stop()}; {agg.stop()}")
        if keep:
            report.notes.append(f"{label}: kept {scratch} (servers' data and logs) and the payload")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
            payload.path.unlink(missing_ok=True)


def dry_run(sizes: Sequence[tuple[str, int]], repeat: int, client: bool) -> None:
    """Print what a run would measure, starting nothing."""
    skipped = set() if client else {"c", "f"}
    sized = ", ".join(f"{label} ({fmt_bytes(size)})" for label, size in sizes)
    print(f"dry run: sizes {sized}; each upload of (s), (s2), (a), (b), (a-cd) {repeat} time(s)")
    print(f"sinks: {SINK_SCRIPT} PORT (s), {SINK_SCRIPT} PORT --asgi (s2)")
    for key, title in TRANSFERS:
        print(f"  transfer {key}: {title}{' (skipped: --no-client)' if key in skipped else ''}")
    for numerator, denominator, title, limit in RATIOS:
        target = "informational" if limit is None else f"target <= {limit:g}x"
        print(f"  ratio {numerator} / {denominator}: {title}, {target}")


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="512M,2G", help="comma-separated, e.g. 512M,2G")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "branchkey-bench-transfer",
        help="where payloads (reused if present) and the servers' data dirs are written",
    )
    parser.add_argument("--keep", action="store_true", help="keep payloads, server data and logs")
    parser.add_argument(
        "--no-client",
        action="store_true",
        help=f"skip the branchkey {CLIENT_VERSION} runs (c), (f)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the uploads (s), (s2), (a), (b), (a-cd) this many times each and report the "
        "median (default 1)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the transfers and ratio rows, run nothing"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    labels = [s.strip() for s in args.sizes.split(",") if s.strip()]
    try:
        sizes = [(label, parse_size(label)) for label in labels]
    except ValueError:
        parser.error(f"--sizes takes sizes like 512M,2G (got {args.sizes!r})")
    if args.dry_run:
        dry_run(sizes, args.repeat, not args.no_client)
        return 0
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    memory = psutil.virtual_memory()
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, {curl_version()}, "
        f"{os.cpu_count()} CPUs, {fmt_bytes(memory.total)} RAM ({fmt_bytes(memory.available)} "
        f"available), dir {directory} ({fmt_bytes(shutil.disk_usage(directory).free)} free), "
        f"load average {load_average()}",
        flush=True,
    )
    report = Report()
    try:
        python = None if args.no_client else peer_python(report)
        for label, size in sizes:
            bench_size(label, size, directory, args.keep, python, args.repeat, report)
    except KeyboardInterrupt:
        report.notes.append("interrupted")
    report.notes.append(
        f"load average at the end {load_average()} on {os.cpu_count()} CPUs (other processes "
        "on this machine share them: compare rows of one run, not across runs)"
    )
    print_table(report)
    if not args.keep:
        with contextlib.suppress(OSError):  # not empty: it holds files this run did not make
            directory.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
