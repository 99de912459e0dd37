"""Replay the image's install steps and run its containers as host processes, container paths mapped to temp dirs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.packaging.docker import (
    REPO,
    DockerIgnore,
    copy_into,
    mount_options,
    parse_dockerfile,
    parse_env,
)

INSTALL_SCRIPT = REPO / "deploy" / "install.sh"


def _pip_environment() -> dict[str, str]:
    """This machine's environment for pip, without its local package sources (a container has none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "BK_", "GATEWAY_"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # no pip.conf: no find-links, extra indexes or constraints
    for key in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT"):
        if key in os.environ:
            env[key] = os.environ[key]
    env["PYTHON"] = sys.executable  # the image's python3 is CPython 3.11, and so is this one
    return env


@dataclass
class Image:
    """The runtime stage replayed on the host: where its / is, its ENV, entrypoint, command and healthcheck."""

    root: Path
    env: dict[str, str]
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    installed: list[list[str]] = field(default_factory=list)

    def host(self, path: str) -> Path:
        """The host path standing in for a path of the image's file system."""
        return self.root / path.lstrip("/")


def replay_build(tmp: Path, log: Path) -> Image:
    """Replay the Dockerfile's COPYs and its install steps (the RUNs of deploy/install.sh), stage by stage."""
    stages = parse_dockerfile(REPO / "Dockerfile")
    ignore = DockerIgnore((REPO / ".dockerignore").read_text(encoding="utf-8"))
    roots: dict[str, Path] = {}
    installed: list[list[str]] = []
    for stage in stages:
        root = roots[stage.name] = tmp / stage.name
        root.mkdir(parents=True)
        workdir, env = "/", _pip_environment()
        for instruction in stage.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = instruction.rest
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "ENV":
                env |= parse_env(instruction.rest)
            elif instruction.keyword == "COPY":
                assert not instruction.flag("from"), "COPY --from: install through the wheels mount"
                *sources, dest = shlex.split(instruction.rest)
                target = root / (dest if dest.startswith("/") else f"{workdir}/{dest}").lstrip("/")
                copy_into(REPO, ignore, sources, target, into_directory=dest.endswith("/"))
            elif instruction.keyword == "RUN":
                mounts = _bind_mounts(instruction.flag("mount"), roots, ignore)
                words = shlex.split(instruction.rest)
                if INSTALL_SCRIPT not in [mounts.get(word) for word in words]:
                    # System set-up as root (user, directories), not replayed here; it installs nothing.
                    assert not {"pip", "pip3", "python", "python3"} & set(words), words
                    continue
                argv = [
                    str(mounts[w]) if w in mounts else str(root / w[1:]) if w.startswith("/") else w
                    for w in words
                ]
                _run_logged(argv, root / workdir.lstrip("/"), env, log)
                installed.append(words)
    runtime = stages[-1]
    return Image(
        root=roots[runtime.name],
        env=runtime.env(),
        workdir=runtime.workdir(),
        entrypoint=runtime.last("ENTRYPOINT").exec_form(),
        cmd=runtime.last("CMD").exec_form(),
        healthcheck=_healthcheck(runtime.last("HEALTHCHECK").rest),
        installed=installed,
    )


def _bind_mounts(specs: list[str], roots: dict[str, Path], ignore: DockerIgnore) -> dict[str, Path]:
    """RUN --mount target -> the host path it shows: an earlier stage's replay, or the build context."""
    mounts: dict[str, Path] = {}
    for spec in specs:
        options = mount_options(spec)
        if options.get("type") == "cache":
            continue  # a cache changes how fast, never what is installed
        assert options.get("type") == "bind", f"unexpected mount {spec}"
        if "from" in options:
            mounts[options["target"]] = roots[options["from"]] / options["source"].lstrip("/")
        else:
            source = options["source"]
            assert not ignore.excluded(source), f"{source} is excluded by .dockerignore"
            mounts[options["target"]] = REPO / source
    return mounts


def _run_logged(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(argv)}\n")
        out.flush()
        result = subprocess.run(
            argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=240, check=False
        )
    assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{_tail(log)}"


def _healthcheck(rest: str) -> list[str]:
    kind, _, command = rest.partition(" ")
    assert kind == "CMD", f"HEALTHCHECK {rest}: expected the exec form CMD [...]"
    value = json.loads(command)
    assert isinstance(value, list)
    return [str(v) for v in value]


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass
class Container:
    """One container of the image as a host process: its environment and its mounts mapped to the host."""

    image: Image
    mounts: dict[str, Path]
    env: dict[str, str]

    def host(self, path: str) -> Path:
        """The host path for a container path: inside a mount (longest first), else in the image."""
        for target in sorted(self.mounts, key=len, reverse=True):
            if path == target or path.startswith(target.rstrip("/") + "/"):
                return self.mounts[target] / path[len(target) :].lstrip("/")
        return self.image.host(path)

    def process_env(self) -> dict[str, str]:
        """The process environment: the container's variables with paths mapped, and nothing of ours."""
        env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}
        env["HOME"] = str(self.host("/data"))
        for key, value in self.env.items():
            if key == "PATH":
                env[key] = ":".join(
                    os.environ["PATH"] if part == "$PATH" else str(self.host(part))
                    for part in value.split(":")
                )
            elif value.startswith("/"):
                env[key] = str(self.host(value))
            else:
                env[key] = value
        return env

    def resolve(self, argv: list[str]) -> list[str]:
        """argv with its program found on the container's PATH."""
        env = self.process_env()
        program = shutil.which(argv[0], path=env["PATH"])
        assert program, f"{argv[0]} is not on the container's PATH {env['PATH']}"
        return [program, *argv[1:]]

    def run(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in the container (as `docker exec` or a healthcheck would) and wait for it."""
        return subprocess.run(
            self.resolve(argv),
            cwd=self.host(self.image.workdir),
            env=self.process_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Start the container's main process (ENTRYPOINT + command)."""
        cwd = self.host(self.image.workdir)
        cwd.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen(
                self.resolve(argv),
                cwd=cwd,
                env=self.process_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )


def stop(process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> bool:
    """Stop a process as `docker stop` does (SIGTERM); whether it shut down gracefully in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    # uvicorn re-raises the signal after its graceful shutdown (Docker reports 143, a normal stop).
    graceful = "Application shutdown complete" in log.read_text(encoding="utf-8", errors="replace")
    return code in (0, -signal.SIGTERM) and graceful


def wait_for(
    url: str,
    process: subprocess.Popen[bytes],
    log: Path,
    headers: dict[str, str] | None = None,
    deadline_s: float = 60,
) -> httpx.Response:
    """GET url until it answers 200 (or the process exits, or the deadline passes)."""
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        assert process.poll() is None, (
            f"the process exited with {process.returncode}:\n{_tail(log)}"
        )
        try:
            response = httpx.get(url, headers=headers, timeout=5)
        except httpx.TransportError as exc:
            last = repr(exc)
        else:
            if response.status_code == 200:
                return response
            last = f"{response.status_code} {response.text[:300]}"
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200 (last: {last}):\n{_tail(log)}")


def loopback_url(value: str, ports: dict[tuple[str, int], int]) -> str:
    """`http://<service>:<port>` with the service's port replaced by where its process listens here."""

    def _replace(match: re.Match[str]) -> str:
        key = (match.group(2), int(match.group(3)))
        assert key in ports, f"{value}: no service {key[0]} listening on {key[1]}"
        return f"{match.group(1)}127.0.0.1:{ports[key]}"

    return re.sub(r"^(https?://)([A-Za-z0-9_.-]+):(\d+)", _replace, value)
