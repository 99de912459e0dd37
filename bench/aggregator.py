"""Benchmark: the local aggregator's memory and speed on 512 MiB .. 2 GiB uploads, FedAvg and downloads.

    python bench/aggregator.py [--sizes 512M,2G] [--dir DIR] [--keep] [--no-client]

The parent writes SDK-layout payloads (`weighting` float64 (1,), `layer_0..` float32, stored)
with bench/weights.py's streaming generator, starts `branchkey-gateway aggregator --dev-leaves 1`
on a free loopback port, and samples the server's RSS every 10 ms in a thread (the kernel's
high-water mark, reset per phase through /proc/<pid>/clear_refs, is the cross-check). For every
size it measures (a) a curl multipart upload (which, with one leaf, closes the round), the FedAvg
that follows until the admin API reports the aggregation done, and (b) a curl download of the
result through the signed URL. Then (c) the official client (branchkey==3.0.1, in the peer
virtualenv of tests/support/peers.py) uploads the 512 MiB payload to the same server as an anchor, with the
client process's own RSS sampled the same way. It prints a table with an informational PASS/FAIL
target; it never asserts and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/aggregator.py`: make `bench` importable
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
    curl_path,
    curl_version,
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

AGGREGATION_TIMEOUT = 900.0
CLIENT_VERSION = "3.0.1"
WEIGHTING = 120.0

UPLOAD_MAX_RSS = 128 * MiB

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
    Credentials(**{k: leaf[k] for k in fields}),
    api_config=APIConfig(host=config["host"], ssl=False),
    output_dir=config["output_dir"],
)
try:
    say(ready=True, run_status=client.run_status)
    sys.stdin.readline()
    start = time.perf_counter()
    try:
        file_id, error = client.file_upload(config["path"]), None
    except Exception as exc:
        file_id, error = None, str(exc)
    say(wall=time.perf_counter() - start, file_id=file_id, error=error)
finally:
    client.close()
"""
"""Runs in the peer's interpreter: builds a Client, says ready, waits for a line, times file_upload."""


# --------------------------------------------------------------------------------------------
# RSS of another process
# --------------------------------------------------------------------------------------------


def minor_faults(pid: int) -> int:
    """Minor page faults of the whole process so far (0 when unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return int(fields[7])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True)
class Baseline:
    rss: int
    anon: int


def idle_baseline(trace: RssTrace, seconds: float = IDLE_SECONDS) -> Baseline:
    """The median RSS over `seconds` of doing nothing."""
    start = time.perf_counter()
    time.sleep(seconds)
    samples = trace.window(start, time.perf_counter())
    return Baseline(
        int(statistics.median(s.rss for s in samples)),
        int(statistics.median(s.anon for s in samples)),
    )


@dataclass(frozen=True)
class Peak:
    """Peak RSS of one phase, relative to a baseline."""

    baseline: Baseline
    sampled: int
    sampled_anon: int
    kernel: int | None
    samples: int
    cpu_user: float
    cpu_system: float
    faults: int

    @property
    def delta(self) -> int:
        return max(0, max(self.sampled, self.kernel or 0) - self.baseline.rss)

    @property
    def anon_delta(self) -> int:
        return max(0, self.sampled_anon - self.baseline.anon)

    def text(self) -> str:
        sampled = fmt_bytes(max(0, self.sampled - self.baseline.rss))
        kernel = (
            fmt_bytes(max(0, self.kernel - self.baseline.rss)) if self.kernel is not None else "n/a"
        )
        return f"{fmt_bytes(self.delta)} (s {sampled} / k {kernel})"

    def cpu_text(self) -> str:
        return f"{self.cpu_user:.2f} + {self.cpu_system:.2f} s, {self.faults / 1000:.0f}k flt"


class Phase:
    """Measures the peak RSS of `pid` from construction to `end()`; VmHWM is reset at both ends."""

    def __init__(self, trace: RssTrace, baseline: Baseline) -> None:
        self.trace = trace
        self.baseline = baseline
        self.hwm_ok = reset_high_water_mark(trace.pid)
        self.cpu = trace.cpu()
        self.faults = minor_faults(trace.pid)
        self.start = time.perf_counter()

    def end(self) -> Peak:
        end = time.perf_counter()
        user, system = self.trace.cpu()
        faults = minor_faults(self.trace.pid)
        kernel = high_water_mark(self.trace.pid) if self.hwm_ok else None
        reset_high_water_mark(self.trace.pid)
        samples = self.trace.window(self.start, end)
        return Peak(
            baseline=self.baseline,
            sampled=max((s.rss for s in samples), default=0),
            sampled_anon=max((s.anon for s in samples), default=0),
            kernel=kernel,
            samples=len(samples),
            cpu_user=max(0.0, user - self.cpu[0]),
            cpu_system=max(0.0, system - self.cpu[1]),
            faults=max(0, faults - self.faults),
        )


# --------------------------------------------------------------------------------------------
# The aggregator
# --------------------------------------------------------------------------------------------


class Aggregator(AggregatorService):
    """The aggregator under measurement."""

    @property
    def data_dir(self) -> Path:
        return self.workdir


# --------------------------------------------------------------------------------------------
# curl
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurlResult:
    status: int
    seconds: float
    bytes: int
    body: str


def run_curl(args: list[str], body_file: Path | None, timeout: float) -> CurlResult:
    """curl with `-w` giving status, time_total and size_up+down; the body goes to `body_file`."""
    out = str(body_file) if body_file is not None else os.devnull
    command = [curl_path(), "-sS", "-o", out, "-w", "%{http_code} %{time_total} %{size_upload}"]
    command[-1] += " %{size_download}"
    proc = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    fields = proc.stdout.split()
    if proc.returncode != 0 or len(fields) != 4:
        raise BenchError(f"curl exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    body = ""
    if body_file is not None:
        with contextlib.suppress(OSError):
            body = body_file.read_text(errors="replace")[:500]
            body_file.unlink()
    status, seconds, up, down = fields
    return CurlResult(int(status), float(seconds), int(float(up)) + int(float(down)), body)


def curl_upload(agg: Aggregator, path: Path, digest: str, scratch: Path) -> CurlResult:
    size = path.stat().st_size
    metadata = {"file_size": size, "file_digest": digest, "kind": "federated_learning"}
    data = json.dumps({"leaf_name": agg.leaf["name"], "metadata": json.dumps(metadata)})
    headers = {**agg.leaf_headers, "x-bk-file-size": str(size), "x-bk-file-digest": digest}
    args: list[str] = []
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    args += ["-H", "Expect:"]  # no 100-continue round trip: what requests and httpx do
    # --form-string: curl's -F would read `;type=...` or a leading `@`/`<` inside the JSON.
    args += ["--form-string", f"data={data}", "-F", f"file=@{path}"]
    args.append(f"{agg.base}/api/v1/file/upload")
    return run_curl(args, scratch / f".response-{os.getpid()}.json", timeout=AGGREGATION_TIMEOUT)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    size: str
    operation: str
    wall: str = "-"
    rate: str = "-"
    cpu: str = "-"
    peak: str = "-"
    anon: str = "-"
    target: str = "-"
    result: str = "-"

    def cells(self) -> list[str]:
        return [
            self.size,
            self.operation,
            self.wall,
            self.rate,
            self.cpu,
            self.peak,
            self.anon,
            self.target,
            self.result,
        ]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def error(self, size: str, operation: str, exc: BaseException) -> None:
        self.rows.append(Row(size, operation, result=f"ERROR {exc}"))


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / MiB:.0f} MiB/s" if seconds > 0 else "-"


def peak_row(size: str, operation: str, seconds: float, nbytes: int, peak: Peak) -> Row:
    return Row(
        size,
        operation,
        wall=fmt_seconds(seconds),
        rate=rate(nbytes, seconds),
        cpu=peak.cpu_text(),
        peak=peak.text(),
        anon=fmt_bytes(peak.anon_delta),
    )


def print_table(report: Report) -> None:
    header = [
        "size",
        "operation",
        "wall",
        "rate",
        "CPU user + sys, minor faults",
        "peak RSS above idle",
    ]
    header += ["anon peak"]
    header += ["target", "result"]
    table = [header] + [row.cells() for row in report.rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print()
    for n, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))
    print()
    print(f"peak RSS: max(sampler every {SAMPLE_SECONDS * 1000:.0f} ms, kernel VmHWM reset at the")
    print(
        "  phase's start) minus the median RSS over 1 s of idle before it; s = sampler, k = VmHWM."
    )
    print("  anon = RSS minus file-backed/shared pages (heap, thread stacks), sampler only.")
    print("CPU: the measured process's CPU time and minor page faults (4 KiB each) over the phase.")
    print("aggregator rows: upload = the curl request (FedAvg may start in its last milliseconds),")
    print("  FedAvg = from the upload's response until /admin/aggregations says done,")
    print("  download = the curl GET of the signed URL (baseline: idle right before it).")
    for note in report.notes:
        print(f"  {note}")


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    label: str
    path: Path
    size: int


def prepare_payload(label: str, target: int, directory: Path, report: Report) -> Payload | None:
    layout = layout_for(label, target)
    path = leaf_path(directory, layout, 0, False)
    if is_reusable(path, layout, WEIGHTING, False):
        print(f"[{label}] reusing {path}", flush=True)
    else:
        # The payload, its copy in the aggregator's uploads, the FedAvg result, and slack.
        need = int(3 * layout.data_bytes * 1.02) + 256 * MiB
        free = shutil.disk_usage(directory).free
        if free < need:
            message = f"skipped: needs {fmt_bytes(need)} free in {directory}, has {fmt_bytes(free)}"
            print(f"[{label}] {message}", flush=True)
            report.rows.append(Row(label, "all", result=message))
            return None
        print(f"[{label}] generating {path} ...", end=" ", flush=True)
        start = time.perf_counter()
        generate(path, layout, WEIGHTING, seed=7 * target, compressed=False)
        took = time.perf_counter() - start
        print(f"{fmt_bytes(path.stat().st_size)} in {took:.1f} s", flush=True)
    _, largest = layout.largest
    report.notes.append(
        f"{label}: {len(layout.shapes)} float32 layers + weighting, file "
        f"{fmt_bytes(path.stat().st_size)}, largest layer {fmt_bytes(largest)}"
    )
    return Payload(label, path, path.stat().st_size)


def bench_aggregator(
    agg: Aggregator, trace: RssTrace, payload: Payload, scratch: Path, report: Report
) -> None:
    label = payload.label
    start = time.perf_counter()
    digest = sha256_header(payload.path)
    report.notes.append(
        f"{label}: digest header computed beforehand in {time.perf_counter() - start:.2f} s"
    )
    known = set(agg.aggregations())

    print(f"[{label}] curl upload ...", flush=True)
    baseline = idle_baseline(trace)
    phase = Phase(trace, baseline)
    result = curl_upload(agg, payload.path, digest, scratch)
    upload_peak = phase.end()
    fedavg = Phase(trace, baseline)
    if result.status != 201:
        raise BenchError(f"upload answered HTTP {result.status}: {result.body}")
    row = peak_row(label, "curl upload (aggregator)", result.seconds, payload.size, upload_peak)
    row.target = f"< {fmt_bytes(UPLOAD_MAX_RSS)}"
    row.result = "PASS" if upload_peak.delta < UPLOAD_MAX_RSS else "FAIL"
    report.rows.append(row)

    print(f"[{label}] waiting for FedAvg ...", flush=True)
    aggregation = agg.wait_new_aggregation(known, AGGREGATION_TIMEOUT)
    fedavg_peak = fedavg.end()
    fedavg_seconds = time.perf_counter() - fedavg.start
    if aggregation["status"] != "done":
        raise BenchError(f"aggregation {aggregation['status']}: {aggregation.get('error')}")
    report.rows.append(
        peak_row(label, "FedAvg K=1 (aggregator)", fedavg_seconds, payload.size, fedavg_peak)
    )
    report.notes.append(
        f"{label}: idle RSS before upload {fmt_bytes(baseline.rss)} (anon "
        f"{fmt_bytes(baseline.anon)}); {upload_peak.samples} + {fedavg_peak.samples} samples"
    )

    print(f"[{label}] curl download ...", flush=True)
    url = agg.download_url(aggregation["aggregation_id"])
    before = idle_baseline(trace)
    retained = before.rss - baseline.rss
    report.notes.append(
        f"{label}: idle RSS after FedAvg {fmt_bytes(before.rss)} "
        f"({'+' if retained >= 0 else '-'}{fmt_bytes(abs(retained))} vs before the upload)"
    )
    phase = Phase(trace, before)
    download = run_curl([url], None, timeout=AGGREGATION_TIMEOUT)
    download_peak = phase.end()
    if download.status != 200:
        raise BenchError(f"download answered HTTP {download.status}")
    if download.bytes != aggregation["size"]:
        report.notes.append(
            f"{label}: downloaded {download.bytes} bytes, aggregation says {aggregation['size']}"
        )
    report.rows.append(
        peak_row(
            label, "curl download (aggregator)", download.seconds, download.bytes, download_peak
        )
    )


def bench_client(
    agg: Aggregator, trace: RssTrace, payload: Payload, scratch: Path, report: Report
) -> None:
    from tests.support.peers import PeerError, ensure_peer

    label = payload.label
    print(f"[{label}] official client {CLIENT_VERSION}: preparing its virtualenv ...", flush=True)
    try:
        peer = ensure_peer(CLIENT_VERSION)
    except PeerError as exc:
        raise BenchError(f"no branchkey=={CLIENT_VERSION} peer: {exc}") from None
    agg.new_run()  # the anchor payload was uploaded before, and a run counts a file once
    known = set(agg.aggregations())
    stderr_path = scratch / f".client-{os.getpid()}.stderr"
    config = {
        "leaf": agg.leaf,
        "host": agg.base,
        "path": str(payload.path),
        "output_dir": str(scratch / "client-output"),
    }
    print(f"[{label}] official client file_upload ...", flush=True)
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [str(peer.python), "-I", "-c", CLIENT_SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=scratch,
        )
    client_trace = RssTrace(proc.pid)
    client_trace.start()
    try:
        stdin, stdout = proc.stdin, proc.stdout
        if stdin is None or stdout is None:  # pragma: no cover - both are pipes
            raise BenchError("no pipes to the client script")
        stdin.write(json.dumps(config) + "\n")
        stdin.flush()
        ready = read_marked(stdout)
        if ready.get("run_status") != "start":
            report.notes.append(
                f"client: run status {ready.get('run_status')!r} after construction"
            )
        client_baseline = idle_baseline(client_trace, 0.5)
        server_baseline = idle_baseline(trace, 0.5)
        client_phase = Phase(client_trace, client_baseline)
        server_phase = Phase(trace, server_baseline)
        stdin.write("go\n")
        stdin.flush()
        outcome = read_marked(stdout)
        client_peak = client_phase.end()
        server_peak = server_phase.end()
        stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            report.notes.append("client: the script did not exit within 30 s of close(): killed")
    finally:
        client_trace.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if outcome.get("error"):
        tail = " | ".join(stderr_path.read_text(errors="replace").strip().splitlines()[-3:])
        stderr_path.unlink(missing_ok=True)
        raise BenchError(f"file_upload failed: {outcome['error']} {tail}".strip())
    stderr_path.unlink(missing_ok=True)
    wall = float(outcome["wall"])
    report.rows.append(
        peak_row(
            label,
            f"branchkey {CLIENT_VERSION} file_upload (client)",
            wall,
            payload.size,
            client_peak,
        )
    )
    report.rows.append(
        peak_row(label, "  same upload (aggregator)", wall, payload.size, server_peak)
    )
    report.notes.append(
        f"client: RSS after `Client(...)` {fmt_bytes(client_baseline.rss)} "
        f"(anon {fmt_bytes(client_baseline.anon)}); wall includes its whole-file sha256, "
        "np.load validation and the POST; the aggregator's window ends when file_upload returns, "
        "so it also holds the first moments of that upload's FedAvg"
    )
    agg.wait_new_aggregation(known, AGGREGATION_TIMEOUT)  # let its FedAvg finish before stopping


def guarded(report: Report, size: str, operation: str, step: Callable[[], None]) -> bool:
    try:
        step()
    except (BenchError, OSError, httpx.HTTPError, subprocess.SubprocessError, ValueError) as exc:
        print(f"[{size}] {operation} failed: {exc}", flush=True)
        report.error(size, operation, exc)
        return False
    return True


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def run(
    sizes: list[tuple[str, int]], directory: Path, keep: bool, client: bool, report: Report
) -> None:
    payloads: list[Payload] = []
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=directory))
    agg = Aggregator(scratch / "aggregator-data")
    trace: RssTrace | None = None
    try:
        for label, size in sizes:
            payload = prepare_payload(label, size, directory, report)
            if payload is not None:
                payloads.append(payload)
        if not payloads:
            return
        print(f"starting the aggregator on {agg.base} ...", flush=True)
        if not guarded(report, "-", "start aggregator", agg.start):
            return
        trace = RssTrace(agg.pid)
        trace.start()
        children = psutil.Process(agg.pid).children(recursive=True)
        if children:
            report.notes.append(f"the aggregator has {len(children)} child processes (not sampled)")
        for payload in payloads:

            def step(payload: Payload = payload) -> None:
                assert trace is not None  # noqa: S101 - for mypy: set just above
                bench_aggregator(agg, trace, payload, scratch, report)

            guarded(report, payload.label, "upload/FedAvg/download", step)
        if client:
            anchor = next((p for p in payloads if p.size <= 768 * MiB), payloads[0])

            def client_step() -> None:
                assert trace is not None  # noqa: S101 - for mypy: set just above
                bench_client(agg, trace, anchor, scratch, report)

            guarded(report, anchor.label, f"branchkey {CLIENT_VERSION} file_upload", client_step)
    finally:
        if trace is not None:
            trace.stop()
        outcome = agg.stop()
        report.notes.append(outcome)
        if keep:
            report.notes.append(f"kept {scratch} (aggregator data) and the payloads")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
            for payload in payloads:
                payload.path.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="512M,2G", help="comma-separated, e.g. 512M,2G")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "branchkey-bench-aggregator",
        help="where payloads (reused if present) and the aggregator's data dir are written",
    )
    parser.add_argument("--keep", action="store_true", help="keep payloads and aggregator data")
    parser.add_argument(
        "--no-client", action="store_true", help=f"skip the branchkey {CLIENT_VERSION} anchor"
    )
    args = parser.parse_args(argv)

    labels = [s.strip() for s in args.sizes.split(",") if s.strip()]
    try:
        sizes = [(label, parse_size(label)) for label in labels]
    except ValueError:
        parser.error(f"--sizes takes sizes like 512M,2G (got {args.sizes!r})")
    directory: Path = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, {curl_version()}, "
        f"{os.cpu_count()} CPUs, {fmt_bytes(psutil.virtual_memory().total)} RAM, dir {directory}",
        flush=True,
    )
    report = Report()
    try:
        run(sizes, directory, args.keep, not args.no_client, report)
    except KeyboardInterrupt:
        report.notes.append("interrupted")
    print_table(report)
    if not args.keep:
        with contextlib.suppress(OSError):  # not empty: it holds files this run did not make
            directory.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
