"""Virtualenvs holding the official `branchkey` client from PyPI, and a way to run scripts inside them."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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


def _clean_env() -> dict[str, str]:
    """The environment without the variables that would point a child at this project's venv."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PIP_REQUIRE_VIRTUALENV"}
    return {key: value for key, value in os.environ.items() if key not in drop}
