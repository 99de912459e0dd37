"""Virtualenvs holding the official `branchkey` client from PyPI, and a way to run scripts inside them."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS_DIR = ROOT / ".venv-peers"
"""Where the peer virtualenvs live (git-ignored, removed by `make clean`)."""

INSTALL_TIMEOUT = 540.0
"""Seconds for creating one virtualenv and installing the client into it (a cold pip cache is slow)."""

RUN_TIMEOUT = 120.0
"""Default seconds for one script run inside a peer."""

_MARKER = ".branchkey-installed"
# Checks the install: the client imports and is the pinned version. Written to stdout as JSON.
_PROBE = """
import importlib.metadata, json, sys
import branchkey.client
sys.stdout.write(json.dumps(importlib.metadata.version("branchkey")))
"""


class PeerError(RuntimeError):
    """A peer virtualenv could not be built, or a script inside it failed."""


@dataclass(frozen=True)
class Peer:
    """A virtualenv with `branchkey==version` installed."""

    version: str
    root: Path

    @property
    def python(self) -> Path:
        """The virtualenv's interpreter."""
        return self.root / "bin" / "python"

    def run(self, script: str, stdin: str = "", *, timeout: float = RUN_TIMEOUT) -> str:
        """Run `script` with the peer's interpreter (isolated mode) and return its stdout."""
        return _run_python(self.python, script, stdin, timeout, f"branchkey=={self.version}")

    def run_json(self, script: str, payload: Any = None, *, timeout: float = RUN_TIMEOUT) -> Any:
        """Run `script` with `payload` as JSON on stdin; it must print one JSON document."""
        out = self.run(script, json.dumps(payload), timeout=timeout)
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise PeerError(
                f"A script in the branchkey=={self.version} peer printed no JSON:\n{out[-2000:]}"
            ) from None


def ensure_peer(version: str, *, timeout: float = INSTALL_TIMEOUT) -> Peer:
    """The peer for `branchkey==version`: reused when it is installed, built from PyPI otherwise.

    Safe to call from several processes at once: a file lock serialises the builds, and a marker
    written after a verified install says the virtualenv is complete.
    """
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    peer = Peer(version=version, root=PEERS_DIR / f"branchkey-{version}")
    with _locked(PEERS_DIR / f"branchkey-{version}.lock"):
        if _is_ready(peer):
            return peer
        try:
            _build(peer, timeout)
        except BaseException:
            shutil.rmtree(peer.root, ignore_errors=True)  # never leave a half-built peer behind
            raise
    return peer


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _is_ready(peer: Peer) -> bool:
    marker = peer.root / _MARKER
    if not marker.is_file() or not peer.python.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text()) == {"branchkey": peer.version}) and (
            _probe(peer) == peer.version
        )
    except (PeerError, ValueError):
        return False


def _probe(peer: Peer) -> str:
    return str(json.loads(peer.run(_PROBE)))


def _build(peer: Peer, timeout: float) -> None:
    if peer.root.exists():
        shutil.rmtree(peer.root)  # a half-built or broken environment from an earlier run
    requirement = f"branchkey=={peer.version}"
    _install_step(
        [sys.executable, "-m", "venv", str(peer.root)], timeout, requirement, "python -m venv"
    )
    _install_step(
        [
            str(peer.python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            requirement,
        ],
        timeout,
        requirement,
        "pip install",
    )
    installed = _probe(peer)
    if installed != peer.version:
        raise PeerError(f"pip installed branchkey {installed} where {requirement} was asked for.")
    (peer.root / _MARKER).write_text(json.dumps({"branchkey": peer.version}))


def _install_step(command: list[str], timeout: float, requirement: str, step: str) -> None:
    hint = (
        f"Could not set up the peer virtualenv for {requirement} ({step}). The peer tests install "
        "the official client from PyPI and need network access; deselect them with -m 'not peers'."
    )
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=_clean_env(), check=False
        )
    except subprocess.TimeoutExpired:
        raise PeerError(f"{hint}\n{step} took longer than {timeout:.0f} s.") from None
    except OSError as exc:
        raise PeerError(f"{hint}\n{exc}") from None
    if done.returncode != 0:
        raise PeerError(
            f"{hint}\n{step} exited with {done.returncode}:\n{(done.stderr or done.stdout)[-3000:]}"
        )


def _run_python(python: Path, script: str, stdin: str, timeout: float, what: str) -> str:
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", script],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_env(),
            cwd=python.parent,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PeerError(f"A script in the {what} peer ran longer than {timeout:.0f} s.") from None
    except OSError as exc:
        raise PeerError(f"The {what} peer's interpreter cannot be started: {exc}") from None
    if done.returncode != 0:
        raise PeerError(
            f"A script in the {what} peer exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return done.stdout


def peer_or_fail(version: str) -> Peer:
    """The peer of `version`, or a test failure (never a skip) that says why it could not be built."""
    try:
        return ensure_peer(version)
    except PeerError as exc:
        problem = str(exc)
    pytest.fail(problem, pytrace=False)


def _clean_env() -> dict[str, str]:
    """The environment without the variables that would point a child at this project's venv."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PIP_REQUIRE_VIRTUALENV"}
    return {key: value for key, value in os.environ.items() if key not in drop}


PEER_DEADLINE_S = 90.0
"""A peer script ends itself (exit 3) after this long, whatever it is waiting for."""


SCRIPT_WATCHDOG = r"""
job = json.loads(sys.stdin.readline())
_watchdog = threading.Timer(job["deadline_s"], os._exit, (3,))
_watchdog.daemon = True
_watchdog.start()
"""
"""Peer-script lines that read the job `run_script` sends (its first stdin line) and end the process
(exit 3) at its deadline, whatever it is stuck on; the script imports json, os, sys and threading."""

SCRIPT_PRELUDE = (
    r"""
import json, os, sys, threading, time, traceback

_out = sys.stdout
sys.stdout = sys.stderr

def emit(event, **fields):
    _out.write(json.dumps({"event": event, **fields}) + "\n")
    _out.flush()
"""
    + SCRIPT_WATCHDOG
)
"""The start of a peer script: stdout carries only the JSON event lines of `emit` (the client's own
print() goes to stderr), then `job` and the watchdog of SCRIPT_WATCHDOG."""


SCRIPT_V3_CLIENT = r"""
from branchkey import APIConfig, Client, Credentials, RunConfig

def make_client(index, host=None, run_config=None):
    return Client(
        credentials=Credentials.from_dict(job["leaves"][index]),
        api_config=APIConfig(host=host or job["url"], ssl=False),
        run_config=run_config,
        output_dir=os.path.join(job["work_dir"], f"out-{index}"),
    )
"""
"""Peer-script lines (after SCRIPT_PRELUDE) defining `make_client(index)`: a 3.x client for the job's
leaf `index`, against the job's `url` unless `host` is given, saving below the work dir."""

SCRIPT_EPILOGUE = r"""
clients = []
try:
    main(clients)
except BaseException:
    emit("error", traceback=traceback.format_exc())
finally:
    for client in clients:
        client.close()
"""
"""The end of a peer script that defines `main(clients)`: it runs it, sends any failure as an
`error` event, and closes every client `main` appended, whatever happened."""


class PeerScript:
    """A script running in the peer; reads its JSON event lines, keeps the tail of its stderr."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self._events: queue.Queue[str | None] = queue.Queue()
        self._stderr: deque[str] = deque(maxlen=60)
        self._readers = [
            threading.Thread(target=self._read_stdout, name="peer-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="peer-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._events.put(line)
        self._events.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def _explain(self) -> str:
        return "".join(self._stderr)[-4000:]

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event line, which must be `event` and arrive within `timeout` seconds."""
        try:
            line = self._events.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(
                f"The peer sent no {event!r} within {timeout} s. Its stderr:\n{self._explain()}"
            )
        if line is None:
            self.process.wait(timeout=10)
            pytest.fail(
                f"The peer exited ({self.process.returncode}) before {event!r}. Its stderr:\n"
                f"{self._explain()}"
            )
        try:
            message: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"The peer wrote a line that is not an event: {line!r}")
        if message["event"] == "error":
            pytest.fail(
                f"The peer script failed:\n{message['traceback']}\nIts stderr:\n{self._explain()}"
            )
        assert message["event"] == event, message
        return message

    def finish(self, timeout: float) -> None:
        """Wait for the script to end by itself (it closes its clients), then for the readers."""
        self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        assert self.process.returncode == 0, self._explain()

    def kill(self) -> None:
        """End the script at once (a failed test) and drain its pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)


@contextmanager
def run_script(
    peer: Peer, script: str, job: dict[str, Any], work_dir: Path
) -> Iterator[PeerScript]:
    """Start `script` in the peer with `job` (plus the work dir and deadline) as its first stdin line."""
    work_dir.mkdir(parents=True, exist_ok=True)
    job = {**job, "work_dir": str(work_dir), "deadline_s": PEER_DEADLINE_S}
    with subprocess.Popen(
        [str(peer.python), "-I", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(),
        cwd=work_dir,
    ) as process:
        running = PeerScript(process)
        try:
            assert process.stdin is not None
            process.stdin.write(json.dumps(job) + "\n")
            process.stdin.flush()
            yield running
        finally:
            running.kill()
