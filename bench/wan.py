"""Benchmark: 512 MiB uploads and downloads through the gateway over a shaped WAN link, against direct ones.

    sudo .venv/bin/python bench/wan.py [--size 512M] [--repeat N] [--profiles 1g,100m] [--dry-run]

The local aggregator (`branchkey-gateway aggregator --dev-leaves 1`) runs in its own network
namespace behind a veth pair; both ends of the pair are shaped with `tc netem` (half the RTT of
delay in each direction, so a round trip sees the whole RTT, a `rate` limit, and a queue `limit`
large enough that nothing is dropped). The aggregator binds its veth address (a private /30 that
only this namespace and the root namespace's end of the pair can reach; nothing else is routed to
it). A gateway in the root namespace (`branchkey-gateway serve`, BK_HOST = the aggregator's veth
address) is the thing measured. Per link profile (1 Gbit/s with 20 ms RTT, 100 Mbit/s with 50 ms):

  uploads    (direct)  `curl -F` to the aggregator's POST /api/v1/file/upload with the headers and
                       the `data` part the official client sends (the floor),
             (gateway) `curl -F file=@w.npz` to the gateway's POST /upload, which forwards it
                       once it has received and checked it,
             (upload+cd) the same with the file's sha-256 in the part's Content-Digest
                       (`-F 'file=@w.npz;headers="Content-Digest: sha-256=:...:"'`), which the
                       gateway forwards while it arrives;
  downloads  (direct)  `curl` of the aggregator's signed blob URL,
             (gateway) `curl` of GET /aggregations/{id} on a gateway started just before with an
                       empty data dir (a cold cache).

Before the transfers, the header shows what the link really does: the TCP connect time to the
aggregator (one RTT) and a raw TCP throughput each way, so a shaping that did not take is visible.
Kernels without sch_netem (some VM kernels) get the same link from a userspace delay line: a
pair of tun devices (one in the namespace) and a small process that serialises every packet at
the rate, then delays it, first in first out, without drops (what netem does); without
/dev/net/tun either, `tbf` shapes the rate only and the header says RTT NOT SHAPED. Without root
or network namespaces it prints one SKIP line and exits 0. `--dry-run` prints the link's commands.
Everything it creates (namespace, devices, qdiscs, processes, temp dirs) is removed on exit,
on Ctrl-C and on SIGTERM; names carry the process id, so two runs do not collide. It prints the
table with same-run ratios (gateway / direct) and never asserts: it exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # run as `python bench/wan.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.procs import (
    BenchError,
    clean_env,
    curl_path,
    curl_version,
    gateway_command,
    sha256_header,
)
from bench.transfer import (
    WEIGHTING,
    Aggregator,
    Gateway,
    Transfer,
    load_average,
    run_curl,
)
from bench.weights import MiB, fmt_bytes, generate, is_reusable, layout_for, leaf_path, parse_size

AGGREGATION_TIMEOUT = 900.0
QUEUE_LIMIT = 100_000
"""netem's queue in packets (default 1 000): above the link's bandwidth-delay product even in
MTU-sized packets (1 Gbit/s x 20 ms = 2.5 MB, about 1 700 packets), so the shaper never drops."""
TARGET_RATIO = 1.10
"""The issue's target: the gateway adds at most 10 % to the direct transfer (reported, not asserted)."""
PROBE_SECONDS = 2.0
"""The raw throughput probe moves about this many seconds' worth of the link's rate each way."""


@dataclass(frozen=True)
class Profile:
    key: str
    mbit: int
    rtt_ms: float

    @property
    def name(self) -> str:
        rate = f"{self.mbit // 1000} Gbit/s" if self.mbit >= 1000 else f"{self.mbit} Mbit/s"
        return f"{rate}, {self.rtt_ms:g} ms RTT"


PROFILES = {"1g": Profile("1g", 1000, 20.0), "100m": Profile("100m", 100, 50.0)}


class Skip(Exception):
    """This machine cannot run the benchmark (no root, no namespaces); the message says why."""


def run(command: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(command)}: {(done.stderr or done.stdout).strip()}")
    return done


DELAY_LINE = r"""
import collections, fcntl, os, select, signal, struct, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which closes our stdin
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000

def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd

a, b = tun(sys.argv[1]), tun(sys.argv[2])
rate, delay = 1e9, 0.0  # bits/s, one-way seconds; set by "<bits/s> <seconds>" lines on stdin
peer = {a: b, b: a}
busy = {a: 0.0, b: 0.0}  # when each direction's "wire" is free again
queue = {a: collections.deque(), b: collections.deque()}  # (deliver at, packet), FIFO
print("ready", flush=True)
while True:
    now = time.monotonic()
    due = [q[0][0] for q in queue.values() if q]
    timeout = max(0.0, min(due) - now) if due else None
    readable, _, _ = select.select([a, b, sys.stdin], [], [], timeout)
    for fd in readable:
        if fd is sys.stdin:
            line = sys.stdin.readline()
            if not line:
                sys.exit(0)
            rate, delay = (float(x) for x in line.split())
            print("shaped", flush=True)
            continue
        for _ in range(64):
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                sys.exit(0)  # a device was removed: the link is being torn down
            now = time.monotonic()
            busy[fd] = max(now, busy[fd]) + len(packet) * 8 / rate
            queue[fd].append((busy[fd] + delay, packet))
    now = time.monotonic()
    for fd, q in queue.items():
        while q and q[0][0] <= now:
            try:
                os.write(peer[fd], q.popleft()[1])
            except OSError:
                pass  # the far side is down: the packet is lost, as on a wire
"""
"""Runs as root in the root namespace, owns a pair of tun devices and moves every packet from one to
the other like netem would: serialised at the rate, then delayed, first in first out, never
dropped. One end is moved into the namespace; closing the process removes both devices."""

TUN_MTU = 64_000
"""A tun device has no segmentation offload: large packets keep the delay line's packet rate (and
its CPU) low enough for 1 Gbit/s (about 2 000 packets a second each way)."""


class Link:
    """A namespace joined to the root namespace by a shaped point-to-point link.

    With sch_netem (mode "netem"): a veth pair with netem on both ends. Without it (some VM
    kernels): a tun pair bridged by the DELAY_LINE process (mode "tun"), or, without /dev/net/tun,
    a veth pair with tbf, which shapes the rate but adds no delay (mode "tbf").
    """

    def __init__(self, dry: bool = False) -> None:
        tag = os.getpid() % 100_000
        self.netns = f"bkwan-{tag}"
        self.outer, self.inner = f"bkw{tag}o", f"bkw{tag}i"
        # A /30 of 10.213.0.0/16 chosen by the process id: two runs take different ones.
        block = (tag % 16_384) * 4
        prefix = f"10.213.{block // 256}."
        self.outer_addr, self.inner_addr = (
            f"{prefix}{block % 256 + 1}",
            f"{prefix}{block % 256 + 2}",
        )
        self.dry = dry
        self.mode = "netem"
        self.line: subprocess.Popen[str] | None = None
        self.created: list[str] = []

    @property
    def description(self) -> str:
        if self.mode == "netem":
            return "veth pair, tc netem on both ends (delay = RTT/2 each way, rate, no drops)"
        if self.mode == "tun":
            return (
                "this kernel has no sch_netem: tun pair (MTU 64000) bridged by a userspace delay "
                "line (rate, then RTT/2 each way, no drops)"
            )
        return "RTT NOT SHAPED: no sch_netem and no /dev/net/tun: veth pair with tbf (rate only)"

    def sh(self, command: list[str]) -> None:
        if self.dry:
            print("  " + " ".join(command))
            return
        run(command)

    def in_ns(self, command: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *command]

    def create(self) -> None:
        if not self.dry:
            if os.geteuid() != 0:
                raise Skip("needs root (ip netns, tc)")
            for tool in ("ip", "tc"):
                if shutil.which(tool) is None:
                    raise Skip(f"{tool} is not on PATH (iproute2)")
            done = run(["ip", "netns", "add", self.netns], check=False)
            if done.returncode != 0:
                raise Skip(f"network namespaces are not permitted here: {done.stderr.strip()}")
        else:
            self.sh(["ip", "netns", "add", self.netns])
        self.created.append("netns")
        if not self.dry:
            self.mode = self.choose_mode()
        if self.mode == "tun":
            self.start_line()
        else:
            self.sh(["ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner])
        self.sh(["ip", "link", "set", self.inner, "netns", self.netns])
        self.sh(["ip", "addr", "add", f"{self.outer_addr}/30", "dev", self.outer])
        self.sh(self.in_ns(["ip", "addr", "add", f"{self.inner_addr}/30", "dev", self.inner]))
        for device, prefix in ((self.outer, []), (self.inner, self.in_ns([]))):
            if self.mode == "tun":
                self.sh([*prefix, "ip", "link", "set", device, "mtu", str(TUN_MTU)])
                self.sh([*prefix, "ip", "link", "set", device, "txqueuelen", "10000"])
            self.sh([*prefix, "ip", "link", "set", device, "up"])
        self.sh(self.in_ns(["ip", "link", "set", "lo", "up"]))

    def choose_mode(self) -> str:
        """netem if this kernel has it (tried on a throw-away veth pair in the namespace)."""
        run(self.in_ns(["ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"]))
        try:
            probe = ["tc", "qdisc", "add", "dev", "probe0", "root", "netem", "delay", "1ms"]
            done = run(self.in_ns(probe), check=False)
        finally:
            run(self.in_ns(["ip", "link", "del", "probe0"]), check=False)
        if done.returncode == 0:
            return "netem"
        if "unknown" not in done.stderr.lower():
            raise BenchError(f"tc netem: {done.stderr.strip()}")
        return "tun" if Path("/dev/net/tun").exists() else "tbf"

    def start_line(self) -> None:
        command = [sys.executable, "-I", "-c", DELAY_LINE, self.outer, self.inner]
        self.line = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.created.append("line")
        if self.line.stdout is None or self.line.stdout.readline().strip() != "ready":
            raise BenchError("the delay line did not start")

    def shape(self, profile: Profile) -> None:
        """Half the RTT on each direction, the rate on both (re-shapable between profiles)."""
        if self.mode == "tun" and self.line is not None:
            if self.line.stdin is None or self.line.stdout is None:  # pragma: no cover - pipes
                raise BenchError("no pipes to the delay line")
            self.line.stdin.write(f"{profile.mbit * 1_000_000} {profile.rtt_ms / 2000}\n")
            self.line.stdin.flush()
            if self.line.stdout.readline().strip() != "shaped":
                raise BenchError("the delay line did not take the new profile")
            return
        half = f"{profile.rtt_ms / 2:g}ms"
        for device, prefix in ((self.outer, []), (self.inner, self.in_ns([]))):
            netem = ["tc", "qdisc", "replace", "dev", device, "root", "netem", "delay", half]
            netem += ["rate", f"{profile.mbit}mbit", "limit", str(QUEUE_LIMIT)]
            self.sh([*prefix, *(netem if self.mode == "netem" else self.tbf(device, profile))])

    @staticmethod
    def tbf(device: str, profile: Profile) -> list[str]:
        # burst: 10 ms of the rate, at least 256 KiB, so that GSO-sized packets pass
        burst = max(256 * 1024, profile.mbit * 1_000_000 // 8 // 100)
        return [
            "tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", f"{profile.mbit}mbit",
            "burst", str(burst), "limit", str(64 * MiB),
        ]  # fmt: skip

    def destroy(self) -> list[str]:
        """Remove what `create` made; the problems met (empty: all gone)."""
        problems: list[str] = []
        if self.dry:
            print(f"  ip netns del {self.netns}  (removes {self.inner} and its peer {self.outer})")
            return problems
        if self.line is not None:  # its devices go with it
            if self.line.stdin is not None:
                with contextlib.suppress(OSError):
                    self.line.stdin.close()
            try:
                self.line.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.line.kill()
                self.line.wait()
        if "netns" in self.created:
            done = run(["ip", "netns", "del", self.netns], check=False)
            if done.returncode != 0:
                problems.append(f"ip netns del {self.netns}: {done.stderr.strip()}")
        # Deleting the namespace deletes the veth end in it and with it its peer; a device that
        # never moved into the namespace is still here.
        if run(["ip", "link", "show", self.outer], check=False).returncode == 0:
            done = run(["ip", "link", "del", self.outer], check=False)
            if done.returncode != 0:
                problems.append(f"ip link del {self.outer}: {done.stderr.strip()}")
        return problems


class RemoteAggregator(Aggregator):
    """The aggregator inside the namespace, bound to the namespace's veth address."""

    def __init__(self, workdir: Path, link: Link) -> None:
        super().__init__(workdir)
        self.link = link

    @property
    def base(self) -> str:
        return f"http://{self.link.inner_addr}:{self.port}"

    def start(self, amqp_url: str | None = None) -> None:
        if amqp_url is not None:
            raise BenchError("the WAN benchmark runs the v3 dialect only (no RabbitMQ)")
        # Binding a non-loopback address is safe here: the /30 exists only between this
        # namespace and the root namespace's end of the pair.
        command = [*gateway_command(), "aggregator", "--host", self.link.inner_addr]
        command += ["--port", str(self.port), "--data-dir", str(self.workdir)]
        command += ["--dev-leaves", "1", "--admin-token", self.admin_token]
        # `ip netns exec` execs the command: the Popen pid is the aggregator's, SIGINT reaches it.
        self.spawn(self.link.in_ns(command), clean_env(("BK_AGGREGATOR_",)))
        self.wait_ready(self._probe)


PROBE_SERVER = r"""
import socket, sys
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
for _ in range(2):
    conn, _ = server.accept()
    with conn:
        mode = conn.recv(1)
        if mode == b"U":
            while conn.recv(1 << 20):
                pass
            conn.sendall(b"k")
        else:
            size = int.from_bytes(conn.recv(8), "big")
            block = bytes(1 << 20)
            while size > 0:
                conn.sendall(block[: min(size, len(block))])
                size -= min(size, len(block))
"""
"""Runs in the namespace: takes one upload (reads to EOF, answers one byte), sends one download."""


def probe_link(link: Link, aggregator: str, profile: Profile) -> str:
    """One RTT (TCP connect, median of 5) and raw TCP throughput each way."""
    connects = []
    for _ in range(5):
        done = run([curl_path(), "-s", "-o", "/dev/null", "-w", "%{time_connect}", aggregator])
        connects.append(float(done.stdout) * 1000)
    size = int(profile.mbit * 1_000_000 / 8 * PROBE_SECONDS)
    command = link.in_ns([sys.executable, "-I", "-c", PROBE_SERVER, link.inner_addr])
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().strip() if server.stdout is not None else ""
        if not line.isdigit():
            raise BenchError("the throughput probe did not start")
        port = int(line)
        block = bytes(1 << 20)
        with socket.create_connection((link.inner_addr, port), timeout=60) as conn:
            start = time.perf_counter()
            conn.sendall(b"U")
            for offset in range(0, size, len(block)):
                conn.sendall(block[: min(len(block), size - offset)])
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
            up = time.perf_counter() - start
        with socket.create_connection((link.inner_addr, port), timeout=60) as conn:
            start = time.perf_counter()
            conn.sendall(b"D" + size.to_bytes(8, "big"))
            received = 0
            while chunk := conn.recv(1 << 20):
                received += len(chunk)
            down = time.perf_counter() - start
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return (
        f"measured: TCP connect {statistics.median(connects):.1f} ms (one RTT, median of 5), raw "
        f"TCP {fmt_bytes(size)} up {mbit(size, up)}, {fmt_bytes(received)} down {mbit(received, down)}"
        " (slow start included)"
    )


def mbit(nbytes: int, seconds: float) -> str:
    return f"{nbytes * 8 / seconds / 1e6:.0f} Mbit/s"


@dataclass
class Result:
    profile: Profile
    header: str = ""
    times: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)

    def median(self, key: str) -> float | None:
        found = self.times.get(key)
        return statistics.median(found) if found else None


class Bench:
    def __init__(self, link: Link, payload: Path, scratch: Path, repeat: int) -> None:
        self.link = link
        self.payload = payload
        self.size = payload.stat().st_size
        self.scratch = scratch
        self.repeat = repeat
        self.agg = RemoteAggregator(scratch / "aggregator", link)
        self.gateways: list[Gateway] = []
        self.stopped: list[str] = []
        self.digest = sha256_header(payload)

    def gateway(self) -> Gateway:
        """A new gateway with an empty data dir (the previous one is stopped)."""
        if self.gateways:
            self.stopped.append(self.gateways[-1].stop())
        gateway = Gateway(self.scratch / f"gateway-{len(self.gateways)}")
        self.gateways.append(gateway)
        gateway.start(self.agg)
        return gateway

    def curl(self, args: list[str], expect: int) -> Transfer:
        transfer = run_curl(args, self.scratch, lambda: None)
        if transfer.status != expect:
            raise BenchError(f"HTTP {transfer.status} (expected {expect}): {transfer.body[:300]}")
        return transfer

    def upload(self, variant: str, gateway: Gateway) -> float:
        """One upload (`direct`, `gateway`, or `digest`: through the gateway with the file's
        Content-Digest on its part, which the gateway forwards while it arrives) into a new run,
        then its FedAvg (not timed); curl's seconds."""
        self.agg.new_run()
        known = set(self.agg.aggregations())
        if variant == "gateway":
            args = ["-F", f"file=@{self.payload}", f"{gateway.base}/upload"]
        elif variant == "digest":
            told = f"sha-256=:{self.digest.removeprefix('sha256=')}:"
            args = ["-F", f'file=@{self.payload};headers="Content-Digest: {told}"']
            args.append(f"{gateway.base}/upload")
        else:
            metadata = {
                "client_version": "3.0.1",
                "file_size": self.size,
                "file_digest": self.digest,
                "kind": "federated_learning",
            }
            data = {"leaf_name": self.agg.leaf["name"], "metadata": json_text(metadata)}
            headers = {
                **self.agg.leaf_headers,
                "x-bk-file-size": str(self.size),
                "x-bk-file-digest": self.digest,
            }
            args = [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
            args += ["--form-string", f"data={json_text(data)}", "-F", f"file=@{self.payload}"]
            args.append(f"{self.agg.base}/api/v1/file/upload")
        seconds = self.curl(args, 201).seconds
        self.agg.wait_new_aggregation(known, AGGREGATION_TIMEOUT)
        return seconds

    def latest(self) -> str:
        done = [i for i, a in self.agg.aggregations().items() if a["status"] != "pending"]
        if not done:
            raise BenchError("no aggregation to download")
        return done[-1]

    def measure(self, profile: Profile, result: Result) -> None:
        self.link.shape(profile)
        result.header = probe_link(self.link, self.agg.base, profile)
        print(f"[{profile.key}] {result.header}", flush=True)
        for index in range(self.repeat):
            order = (False, True) if index % 2 == 0 else (True, False)  # alternate who goes first
            variants = UPLOADS if index % 2 == 0 else UPLOADS[::-1]
            gateway = self.gateway()
            for name in variants:
                print(f"[{profile.key}] upload {name} #{index + 1} ...", end=" ", flush=True)
                seconds = self.upload(name, gateway)
                print(f"{seconds:.2f} s", flush=True)
                result.add(f"up-{name}", seconds)
            file_id = self.latest()
            for via in order:
                name = "gateway" if via else "direct"
                print(f"[{profile.key}] download {name} #{index + 1} ...", end=" ", flush=True)
                if via:
                    fresh = self.gateway()  # an empty cache: the cold download
                    args = [f"{fresh.base}/aggregations/{file_id}"]
                else:
                    args = [self.agg.download_url(file_id)]
                seconds = self.curl(args, 200).seconds
                print(f"{seconds:.2f} s", flush=True)
                result.add(f"down-{name}", seconds)

    def stop(self) -> list[str]:
        last = [self.gateways[-1].stop()] if self.gateways else []
        gateways = [*self.stopped, *last]
        states = sorted(set(gateways), key=gateways.index)
        summary = f"{len(gateways)} gateways: " + "; ".join(states) if gateways else "no gateway"
        return [summary, self.agg.stop()]


UPLOADS = ("direct", "gateway", "digest")
"""The upload variants, run in this order (reversed every other repetition)."""
ROWS = (("up", "gateway", "upload"), ("up", "digest", "upload+cd"), ("down", "gateway", "download"))
"""Table rows: the measurement, the gateway variant compared with `direct`, the label."""


def json_text(value: object) -> str:
    return json.dumps(value)


def print_table(results: Sequence[Result], size: int, repeat: int) -> None:
    print()
    print(f"payload {fmt_bytes(size)}, median of {repeat} per cell; ratio = gateway / direct "
          f"(issue target <= {TARGET_RATIO:.2f}, reported, not asserted)")  # fmt: skip
    head = f"{'link':<24} {'transfer':<9} {'direct':>9} {'gateway':>9} {'ratio':>6}  direct rate"
    print(head)
    print("-" * len(head))
    for result in results:
        for op, key, label in ROWS:
            direct, via = result.median(f"{op}-direct"), result.median(f"{op}-{key}")
            cells = [f"{direct:.2f} s" if direct else "-", f"{via:.2f} s" if via else "-"]
            ratio = f"{via / direct:.3f}" if direct and via else "-"
            rate = mbit(size, direct) if direct else "-"
            print(
                f"{result.profile.name:<24} {label:<9} {cells[0]:>9} {cells[1]:>9} {ratio:>6}  {rate}"
            )
    print()
    for result in results:
        print(f"{result.profile.name}: {result.header}")
        for error in result.errors:
            print(f"{result.profile.name}: FAILED {error}")


def terminate(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", default="512M", help="payload size, e.g. 512M, 1G (default 512M)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="transfers per cell (median; default 1)"
    )
    parser.add_argument(
        "--profiles",
        default="1g,100m",
        help="comma-separated: 1g (1 Gbit/s, 20 ms RTT), 100m (100 Mbit/s, 50 ms RTT)",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(tempfile.gettempdir()) / "branchkey-bench-wan"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the payload and the servers' logs"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the namespace, veth and tc commands it would run, and exit (no root needed)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        size = parse_size(args.size)
    except ValueError:
        parser.error(f"--size takes a size like 512M or 1G (got {args.size!r})")
    keys = [k.strip() for k in args.profiles.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PROFILES]
    if unknown or not keys:
        parser.error(f"--profiles takes {','.join(PROFILES)} (got {args.profiles!r})")
    profiles = [PROFILES[k] for k in keys]

    if args.dry_run:
        link = Link(dry=True)
        print(f"would set up netns {link.netns}, {link.outer} {link.outer_addr}/30 <-> "
              f"{link.inner} {link.inner_addr}/30 (in the netns):")  # fmt: skip
        link.create()
        for profile in profiles:
            print(f"{profile.name}:")
            link.shape(profile)
        print("and on exit:")
        link.destroy()
        return 0
    # SIGINT too: a shell without job control starts background commands with SIGINT ignored.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    return bench(args.dir.resolve(), size, args.repeat, profiles, args.keep)


def bench(directory: Path, size: int, repeat: int, profiles: list[Profile], keep: bool) -> int:
    link = Link()
    try:
        link.create()
    except Skip as exc:
        link.destroy()
        print(f"SKIP bench/wan.py: {exc}")
        return 0
    results: list[Result] = []
    notes: list[str] = []
    workers: Bench | None = None
    directory.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=directory))
    layout = layout_for(f"{size // MiB}M", size)
    payload = leaf_path(directory, layout, 0, False)
    try:
        if not is_reusable(payload, layout, WEIGHTING, False):
            print(f"generating {payload} ...", flush=True)
            generate(payload, layout, WEIGHTING, seed=7 * size, compressed=False)
        print(
            f"{curl_version()}, {os.cpu_count()} CPUs, load average {load_average()}; netns "
            f"{link.netns}: aggregator on {link.inner_addr}, gateway in the root namespace; "
            f"link: {link.description}",
            flush=True,
        )
        workers = Bench(link, payload, scratch, repeat)
        workers.agg.start()
        for profile in profiles:
            result = Result(profile)
            results.append(result)
            try:
                workers.measure(profile, result)
            except BenchError as exc:
                result.errors.append(str(exc))
    except KeyboardInterrupt:
        notes.append("interrupted")
    except BenchError as exc:
        notes.append(f"FAILED: {exc}")
    finally:
        if workers is not None:
            notes += workers.stop()
        problems = link.destroy()
        notes += [f"cleanup: {p}" for p in problems] or [
            f"removed netns {link.netns} and the link's devices"
        ]
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                payload.unlink(missing_ok=True)
                directory.rmdir()
    notes.append(f"load average at the end {load_average()} on {os.cpu_count()} CPUs")
    print_table(results, size, repeat)
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
