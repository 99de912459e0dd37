"""Process helpers shared by the benchmarks: free ports, the gateway's command, clean environments,
peak RSS, and the server subprocesses they measure."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

KiB = 1024
START_TIMEOUT = 60.0
"""Seconds a server may take to answer after it was started."""
STOP_TIMEOUT = 15.0
"""Seconds a server may take to exit after SIGINT before it is killed."""
POLL_SECONDS = 0.05
"""How often the admin API is asked whether an aggregation is done."""
SAMPLE_SECONDS = 0.010
"""RSS sampling interval of `RssTrace`."""
IDLE_SECONDS = 1.0
"""How long an idle RSS baseline is measured."""


class BenchError(Exception):
    """A step of the benchmark failed; the message goes into the table."""


def reset_high_water_mark(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0, same user)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def high_water_mark(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("branchkey-gateway")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def clean_env(prefixes: tuple[str, ...]) -> dict[str, str]:
    """The environment without variables that would configure the servers behind our back."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


@dataclass(frozen=True)
class Sample:
    at: float
    rss: int
    anon: int
    """RSS minus file-backed and shared pages (psutil's `shared`): heap, stacks, anonymous maps."""


class RssTrace(threading.Thread):
    """Every RSS sample of one process, each stamped with time.perf_counter(), until it exits.

    With `hwm`, every sample also reads the process's VmHWM, whose last value is the kernel's
    peak for a process too short-lived to reset and read it around a phase (curl).
    """

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS, *, hwm: bool = False) -> None:
        import psutil  # here, not at the top: load processes import this module without needing it

        super().__init__(daemon=True, name=f"rss-{pid}")
        self.pid = pid
        self.hwm = hwm
        self.last_hwm = 0
        self._process: psutil.Process | None
        try:
            self._process = psutil.Process(pid)
        except psutil.Error:
            self._process = None
        self._interval = interval
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._samples: list[Sample] = []

    def _sample(self) -> bool:
        import psutil

        if self._process is None:
            return False
        try:
            info = self._process.memory_info()
        except psutil.Error:
            return False
        if info.rss == 0:  # a zombie: exited, not yet reaped
            return False
        if self.hwm:
            self.last_hwm = max(self.last_hwm, high_water_mark(self.pid) or 0)
        shared = int(getattr(info, "shared", 0))
        with self._lock:
            self._samples.append(Sample(time.perf_counter(), info.rss, info.rss - shared))
        return True

    def run(self) -> None:
        while self._sample():
            if self._stop_event.wait(self._interval):
                break

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def window(self, start: float, end: float) -> list[Sample]:
        self._sample()  # one fresh sample, so a short window is never empty
        with self._lock:
            return [s for s in self._samples if start <= s.at <= end]

    def peak(self) -> int:
        with self._lock:
            return max((s.rss for s in self._samples), default=0)

    def idle(self, seconds: float = IDLE_SECONDS) -> int:
        """The median RSS over `seconds` from now."""
        start = time.perf_counter()
        time.sleep(seconds)
        samples = self.window(start, time.perf_counter())
        return int(statistics.median(s.rss for s in samples))

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds the process has used so far (0, 0 once it is gone)."""
        import psutil

        if self._process is None:
            return 0.0, 0.0
        try:
            times = self._process.cpu_times()
        except psutil.Error:
            return 0.0, 0.0
        return times.user, times.system


class Service:
    """A server subprocess with its output in a log file next to its working folder."""

    name = "service"

    def __init__(self, workdir: Path) -> None:
        import httpx  # here, not at the top: load processes import this module without needing it

        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(timeout=60.0)
        self._log: IO[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir.with_name(self.workdir.name + ".log")

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError(f"the {self.name} is not running")
        return self.process.pid

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])

    def spawn(self, command: list[str], env: dict[str, str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        # cwd: its own folder, so that no stray .env of the caller's directory configures it.
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env
        )

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise BenchError(f"the {self.name} exited: {self.log_tail()}")

    def wait_ready(self, probe: Callable[[], str | None]) -> None:
        """Call `probe` until it returns None (ready); it returns what is still wrong otherwise."""
        import httpx

        deadline = time.monotonic() + START_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                problem = probe()
            except (OSError, ValueError, LookupError, httpx.HTTPError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is None:
                return
            last = problem
            time.sleep(0.1)
        raise BenchError(f"the {self.name} was not ready within {START_TIMEOUT:.0f} s ({last})")

    def stop(self) -> str:
        """SIGINT, then SIGKILL after STOP_TIMEOUT; returns how it ended."""
        self.http.close()
        outcome = "not started"
        if self.process is not None:
            if self.process.poll() is not None:
                outcome = f"had already exited ({self.process.returncode})"
            else:
                self.process.send_signal(signal.SIGINT)
                started = time.perf_counter()
                try:
                    code = self.process.wait(timeout=STOP_TIMEOUT)
                    outcome = f"stopped by SIGINT in {time.perf_counter() - started:.1f} s ({code})"
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
                    outcome = f"did not stop within {STOP_TIMEOUT:.0f} s of SIGINT: killed"
        if self._log is not None:
            self._log.close()
            self._log = None
        return f"{self.name} {outcome}"


class AggregatorService(Service):
    """`branchkey-gateway aggregator` with one dev leaf on a free port (every upload closes a round)."""

    name = "aggregator"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.admin_token = secrets.token_urlsafe(24)
        self.leaf: dict[str, str] = {}

    @property
    def leaf_headers(self) -> dict[str, str]:
        """The v3 headers of the official client for the dev leaf."""
        return {
            "Authorization": f"Bearer {self.leaf['id']}:{self.leaf['session_token']}",
            "accept": "application/json",
            "LEAF": "true",
        }

    def start(self, amqp_url: str | None = None) -> None:
        """Start it (with `amqp_url`: provisioning RabbitMQ for v1 leaves) and wait until it answers."""
        command = [*gateway_command(), "aggregator", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--data-dir", str(self.workdir)]
        command += ["--dev-leaves", "1", "--admin-token", self.admin_token]
        if amqp_url is not None:
            command += ["--amqp-url", amqp_url]
        self.spawn(command, clean_env(("BK_AGGREGATOR_",)))
        self.wait_ready(self._probe)

    def _probe(self) -> str | None:
        if not self.leaf:
            leaves = json.loads((self.workdir / "leaves.json").read_text())
            self.leaf = {k: str(v) for k, v in leaves[0].items()}
        url = f"{self.base}/api/v1/run/{self.leaf['branch_id']}"
        response = self.http.get(url, headers=self.leaf_headers)
        if response.status_code == 200:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"

    def aggregations(self) -> dict[str, dict[str, Any]]:
        """Every aggregation by id, oldest first."""
        response = self.http.get(
            f"{self.base}/admin/aggregations",
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        if response.status_code != 200:
            raise BenchError(f"GET /admin/aggregations: HTTP {response.status_code}")
        found = sorted(response.json()["data"], key=lambda a: str(a.get("created_at", "")))
        return {a["aggregation_id"]: a for a in found}

    def new_run(self) -> int:
        """Stop and start the run; the new run number. The aggregator counts a re-sent identical
        file once per run, so a benchmark that uploads one payload again needs a new run first."""
        number = 0
        for status in ("stop", "start"):
            response = self.http.post(
                f"{self.base}/admin/run",
                headers={"Authorization": f"Bearer {self.admin_token}"},
                json={"status": status},
            )
            if response.status_code != 200:
                raise BenchError(f"POST /admin/run {status}: HTTP {response.status_code}")
            number = int(response.json()["data"]["run_number"])
        return number

    def fresh_run(self, gateway: Service, timeout: float = 20.0) -> None:
        """A new run (`new_run`), once the gateway in front of this aggregator has heard of it too."""
        number = self.new_run()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = gateway.http.get(f"{gateway.base}/run").json()
            if run.get("run_status") == "start" and run.get("run_number") == number:
                return
            time.sleep(POLL_SECONDS)
        raise BenchError(f"the gateway did not hear of run {number} within {timeout:.0f} s")

    def wait_new_aggregation(self, known: set[str], timeout: float) -> dict[str, Any]:
        """The first aggregation not in `known`, once it is no longer pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = [a for i, a in self.aggregations().items() if i not in known]
            finished = [a for a in fresh if a["status"] != "pending"]
            if finished:
                return finished[0]
            self.check_alive()
            time.sleep(POLL_SECONDS)
        raise BenchError(f"no aggregation finished within {timeout:.0f} s")

    def download_url(self, file_id: str) -> str:
        """Step one of a v3 download: the signed blob URL."""
        response = self.http.get(
            f"{self.base}/api/v1/file/download/{file_id}", headers=self.leaf_headers
        )
        if response.status_code != 200:
            raise BenchError(f"download URL: HTTP {response.status_code}: {response.text[:200]}")
        url: str = response.json()["data"]["download_url"]
        return url


def curl_path() -> str:
    path = shutil.which("curl")
    if path is None:
        raise BenchError("curl is not on PATH")
    return path


def curl_version() -> str:
    try:
        out = subprocess.run(
            [curl_path(), "--version"], capture_output=True, text=True, check=False
        ).stdout
    except (BenchError, OSError):
        return "curl missing"
    words = out.split()
    return " ".join(words[:2]) if words else "curl ?"


def read_marked(stream: IO[str]) -> dict[str, Any]:
    """The next `BENCH {json}` line of the client script (the client prints other lines too)."""
    while line := stream.readline():
        if line.startswith("BENCH "):
            data: dict[str, Any] = json.loads(line[len("BENCH ") :])
            return data
    raise BenchError("the client script ended without a result")


def sha256_header(path: Path) -> str:
    """The x-bk-file-digest value of a file."""
    with path.open("rb") as stream:
        digest = hashlib.file_digest(stream, "sha256").digest()
    return "sha256=" + base64.b64encode(digest).decode()
