"""The image, its build context and the compose stack, linted, validated and replayed without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.packaging.docker import (
    REPO,
    DockerIgnore,
    env_file_values,
    env_files,
    load_compose,
    mount_options,
    parse_dockerfile,
    secret_targets,
    service_env,
    volume_mounts,
)
from tests.packaging.replay import (
    Container,
    Image,
    loopback_url,
    replay_build,
    stop,
    wait_for,
)
from tests.support.ports import free_port
from tests.support.weights import sdk_weights

DOCKERFILES = (REPO / "Dockerfile", REPO / "deploy" / "trainer.Dockerfile")
BASE_IMAGE = "python:3.11-slim-bookworm"
IMAGE_UID = "10001"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what the containers must bind; compared, never bound here
SERVICES = {"aggregator", "gateway-a", "gateway-b", "trainer-a", "trainer-b"}
GATEWAYS = ("gateway-a", "gateway-b")
DATA_VOLUMES = {"aggregator-data", "gateway-a-data", "gateway-b-data"}
#: Where each kind of service takes its bind address and port, and the port it uses by default.
LISTEN = {
    "aggregator": ("BK_AGGREGATOR_HOST", "BK_AGGREGATOR_PORT", 8080),
    "serve": ("GATEWAY_HOST", "GATEWAY_PORT", 8000),
}


def tool(name: str) -> str:
    """A command-line tool of the test extra: the one next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: install the test extra (pip install -e '.[test]')"
    return found


def hadolint(tmp_path: Path, *args: str, stdin: str | None = None) -> list[dict[str, Any]]:
    """hadolint's JSON findings, with no user or project configuration in play."""
    result = subprocess.run(
        [tool("hadolint"), "--no-fail", "--format", "json", *args],
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return findings


def test_dockerfiles_pass_hadolint(tmp_path: Path) -> None:
    """hadolint finds nothing at error or warning level in the gateway's and the trainers' Dockerfiles."""
    findings = hadolint(tmp_path, *map(str, DOCKERFILES))
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert serious == []


def test_hadolint_reports_a_known_problem(tmp_path: Path) -> None:
    """hadolint flags an unpinned base image (DL3007), so the clean report above means something."""
    findings = hadolint(tmp_path, "-", stdin='FROM python:latest\nCMD ["python"]\n')
    assert [f["code"] for f in findings] == ["DL3007"]


def test_install_script_passes_shellcheck() -> None:
    """deploy/install.sh, the Dockerfile's only install step (which hadolint does not read), passes shellcheck as POSIX sh."""
    result = subprocess.run(
        [tool("shellcheck"), "--shell=sh", str(REPO / "deploy" / "install.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_is_justified() -> None:
    """Each `# hadolint ignore=` line in the Dockerfiles follows a comment that says why."""
    for path in DOCKERFILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if "hadolint ignore" in line:
                before = lines[number - 1].strip() if number else ""
                where = f"{path.name}:{number + 1}: explain the ignore in a comment above it"
                assert before.startswith("#"), where
                assert "hadolint" not in before, where


def test_image_is_multi_stage_slim_and_unprivileged() -> None:
    """The runtime stage is python:3.11-slim, installs from the builder's wheels only, runs as uid 10001 in /data and serves on 8000."""
    stages = parse_dockerfile(REPO / "Dockerfile")
    builder, runtime = stages[0], stages[-1]
    assert len(stages) == 2
    assert builder.base == runtime.base == BASE_IMAGE
    assert runtime.last("USER").rest.split(":")[0] == IMAGE_UID
    assert runtime.workdir() == "/data"
    env = runtime.env()
    assert env["GATEWAY_HOST"] == ALL_INTERFACES
    assert env["GATEWAY_DATA_DIR"] == "/data/gateway"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert runtime.last("EXPOSE").rest == "8000"
    assert runtime.last("ENTRYPOINT").exec_form() == ["branchkey-gateway"]
    assert runtime.last("CMD").exec_form() == ["serve"]
    health = runtime.last("HEALTHCHECK")
    assert health.rest.startswith("CMD [")
    assert "/healthz" in health.rest
    # Nothing of the build context is copied into the runtime stage, and nothing is fetched there.
    assert runtime.all("COPY") == runtime.all("ADD") == []
    runs = " ".join(i.rest for i in runtime.all("RUN"))
    assert "install.sh venv /wheels /opt/venv" in runs
    assert "[test]" not in (REPO / "Dockerfile").read_text(encoding="utf-8")
    mounts = [mount_options(m) for i in runtime.all("RUN") for m in i.flag("mount")]
    assert {
        "type": "bind",
        "from": builder.name,
        "source": "/wheels",
        "target": "/wheels",
    } in mounts


def test_compose_file_follows_the_compose_spec() -> None:
    """docker-compose.yml validates against the Compose Specification's JSON schema."""
    result = subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(REPO / "docker-compose.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _depends(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service["depends_on"].items()}


def test_compose_wires_the_federation() -> None:
    """Five services; the aggregator and gateways have healthchecks, start in order, keep data in named volumes and find each other by name."""
    compose = load_compose()
    services: dict[str, Any] = compose["services"]
    assert set(services) == SERVICES
    aggregator = services["aggregator"]
    aggregator_env = service_env(aggregator)
    assert aggregator["command"] == ["aggregator"]
    assert aggregator_env["BK_AGGREGATOR_HOST"] == ALL_INTERFACES
    port = aggregator_env["BK_AGGREGATOR_PORT"]
    for name in ("aggregator", *GATEWAYS):
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
        assert services[name]["image"] == aggregator["image"]
    assert "BK_AGGREGATOR_PORT" in aggregator["healthcheck"]["test"][3]
    image_check = parse_dockerfile(REPO / "Dockerfile")[-1].last("HEALTHCHECK").rest
    for name in GATEWAYS:  # the image's own HEALTHCHECK, spelled out
        assert services[name]["healthcheck"]["test"][1:] == json.loads(image_check.split(" ", 1)[1])
    for letter in ("a", "b"):
        gateway, trainer = services[f"gateway-{letter}"], services[f"trainer-{letter}"]
        assert "/healthz" in gateway["healthcheck"]["test"][3]
        assert _depends(gateway) == {"aggregator": "service_healthy"}
        assert _depends(trainer) == {f"gateway-{letter}": "service_healthy"}
        assert service_env(gateway)["BK_HOST"] == f"http://aggregator:{port}"
        assert service_env(gateway)["BK_CREDENTIALS_FILE"] in secret_targets(gateway)
        assert service_env(trainer)["GATEWAY_URL"] == f"http://gateway-{letter}:8000"
        assert env_files(trainer) == env_files(gateway)  # the trainer holds its gateway's token
        assert trainer["build"] == {"context": "deploy", "dockerfile": "trainer.Dockerfile"}
        assert volume_mounts(trainer) == {"/examples": "./examples/bash"}
        assert trainer["volumes"][0].endswith(":ro")
        assert trainer["command"] == ["bash", "/examples/trainer.sh"]
    # Every data volume is declared, used by exactly one service, and mounted where that service keeps its data.
    assert set(compose["volumes"]) == DATA_VOLUMES
    image_data_dir = parse_dockerfile(REPO / "Dockerfile")[-1].env()["GATEWAY_DATA_DIR"]
    users = {
        name: {t: s for t, s in volume_mounts(service).items() if s in DATA_VOLUMES}
        for name, service in services.items()
    }
    assert users == {
        "aggregator": {aggregator_env["BK_AGGREGATOR_DATA_DIR"]: "aggregator-data"},
        "gateway-a": {image_data_dir: "gateway-a-data"},
        "gateway-b": {image_data_dir: "gateway-b-data"},
        "trainer-a": {},
        "trainer-b": {},
    }
    # Published ports are reachable from this machine only.
    for service in services.values():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), mapping


SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|PRIVATE_KEY", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?+][^}]*)?\}")


def test_compose_file_holds_no_secrets() -> None:
    """Environment values are file references, `${VAR}` interpolations or plain settings; no token is written in the file."""
    compose = load_compose()
    for name, service in compose["services"].items():
        for key, value in service_env(service).items():
            if key.endswith("_FILE"):
                assert value in secret_targets(service), f"{name}: {key} is not a mounted secret"
            elif SECRET_NAME.search(key):
                assert INTERPOLATION.fullmatch(value), f"{name}: {key} is written in the file"
            assert not re.search(r"://[^/@\s]*@", value), f"{name}: {key} carries a password"
        assert not any("token" in str(arg) for arg in service.get("command", [])), name
    # Nothing token-shaped anywhere (secrets.token_urlsafe(32) is 43 characters of [A-Za-z0-9_-]).
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    assert re.findall(r"[A-Za-z0-9_-]{32,}", text) == []


def _git_ignored(path: Path) -> bool:
    result = subprocess.run(
        ["git", "check-ignore", "--quiet", "--no-index", str(path.relative_to(REPO))],
        cwd=REPO,
        check=False,
        timeout=30,
    )
    assert result.returncode in (0, 1), f"git check-ignore failed for {path}"
    return result.returncode == 0


def _template(path: Path) -> Path:
    return path.with_name(f"{path.stem}.example{path.suffix}")


def test_credentials_are_mounted_from_ignored_files_with_templates() -> None:
    """Every secret and env file lives in deploy/credentials, is git-ignored, and has a committed `.example` template."""
    compose = load_compose()
    files = [REPO / spec["file"] for spec in compose["secrets"].values()]
    for service in compose["services"].values():
        files += [REPO / path for path in env_files(service)]
        for secret in secret_targets(service).values():
            assert secret in compose["secrets"]
    assert {path.name for path in files} == {
        "leaves.json",
        "leaf-a.json",
        "leaf-b.json",
        "gateway-a.env",
        "gateway-b.env",
    }
    for path in files:
        assert path.parent == REPO / "deploy" / "credentials"
        assert _git_ignored(path), f"{path} would be committed"
        assert _template(path).is_file(), f"{_template(path)} is missing"
        assert not _git_ignored(_template(path))


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    """.dockerignore leaves out virtualenvs, data dirs, caches, .git and credentials, and keeps every COPY and mount source."""
    ignore = DockerIgnore((REPO / ".dockerignore").read_text(encoding="utf-8"))
    left_out = [
        ".venv/bin/python",
        ".venv-peers/branchkey-3.0.1/bin/python",
        ".git/HEAD",
        "gateway-data/events.sqlite",
        "aggregator-data/leaves.json",
        "bench/out/model.npz",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/gateway",
        ".ruff_cache/content",
        ".hypothesis/examples/x",
        "gateway/__pycache__/app.cpython-311.pyc",
        "gateway/weights/__pycache__/npz.cpython-311.pyc",
        "branchkey_gateway.egg-info/PKG-INFO",
        "build/lib/gateway/app.py",
        "deploy/credentials/leaf-a.json",
        "deploy/credentials/gateway-a.env",
        "tests/cli/test_client.py",
        ".env",
    ]
    assert [path for path in left_out if not ignore.excluded(path)] == []
    sent = ["pyproject.toml", "README.md", "gateway/__main__.py", "gateway/aggregator/app.py"]
    assert [path for path in sent if ignore.excluded(path)] == []
    for stage in parse_dockerfile(REPO / "Dockerfile"):
        sources = [s for i in stage.all("COPY") for s in i.rest.split()[:-1]]
        sources += [
            options["source"]
            for i in stage.all("RUN")
            for options in map(mount_options, i.flag("mount"))
            if options["type"] == "bind" and "from" not in options
        ]
        for source in sources:
            assert ignore.files(REPO, REPO / source), f"{source} is not sent to the builder"
    # The trainers' image needs nothing from deploy/, which holds the credentials.
    trainer = parse_dockerfile(REPO / "deploy" / "trainer.Dockerfile")[-1]
    assert trainer.all("COPY") == trainer.all("ADD") == []
    trainer_ignore = DockerIgnore(
        (REPO / "deploy" / "trainer.Dockerfile.dockerignore").read_text(encoding="utf-8")
    )
    assert trainer_ignore.excluded("credentials/leaves.json")


def test_dockerignore_matcher_follows_buildkit() -> None:
    """The matcher used above agrees with BuildKit on parents, exceptions, `**` and `*`."""
    ignore = DockerIgnore("*\n!src/\n**/__pycache__\n*.md\n")
    assert ignore.excluded("a/b/c")  # `*` matches the parent directory `a`
    assert not ignore.excluded("src/x/y.py")  # the exception re-includes the whole directory
    assert ignore.excluded("src/__pycache__/y.pyc")
    assert ignore.excluded("__pycache__")  # `**/` matches zero directories too
    assert ignore.excluded("README.md")
    assert not ignore.excluded("src/doc.md")  # `*` never crosses a `/`


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The Dockerfile's install steps replayed once: wheels built, then a fresh venv installed from them alone."""
    tmp = tmp_path_factory.mktemp("image")
    return replay_build(tmp, tmp / "build.log")


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _distributions(venv: Path) -> set[str]:
    site = next((venv / "lib").glob("python3*/site-packages"))
    return {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}


@pytest.mark.timeout(300)
def test_install_steps_build_a_working_gateway(image: Image, tmp_path: Path) -> None:
    """The Dockerfile's install steps give a venv with only runtime deps whose gateway serves /healthz and passes the HEALTHCHECK."""
    assert [words[2:] for words in image.installed] == [
        ["wheels", "/src", "/wheels"],
        ["venv", "/wheels", "/opt/venv"],
    ]
    installed = _distributions(image.host("/opt/venv"))
    assert {"branchkey_gateway", "fastapi", "uvicorn", "numpy", "typer"} <= installed
    assert installed.isdisjoint({"pytest", "ruff", "mypy", "hypothesis", "pip", "setuptools"})
    port = free_port()
    # Loopback here: this machine's tests never listen on every interface.
    env = image.env | {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port)}
    container = Container(image, mounts={}, env=env)
    usage = container.run(["branchkey-gateway", "--help"])
    assert usage.returncode == 0, usage.stderr
    assert "serve" in usage.stdout
    assert "aggregator" in usage.stdout
    assert container.run(image.healthcheck).returncode != 0  # nothing listens yet
    log = tmp_path / "gateway.log"
    process = container.start([*image.entrypoint, *image.cmd], log)
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz", process, log)
        health = container.run(image.healthcheck)
    finally:
        graceful = stop(process, log)
    assert health.returncode == 0, health.stderr
    assert graceful, log.read_text(encoding="utf-8")
    # All state went to GATEWAY_DATA_DIR: the compose file runs the image with a read-only root.
    assert [p.name for p in image.host("/data").iterdir()] == ["gateway"]


def _compose_container(
    image: Image,
    compose: dict[str, Any],
    name: str,
    credentials: Path,
    volumes: Path,
    ports: dict[tuple[str, int], int],
) -> tuple[Container, list[str], list[str]]:
    """A compose service as a host process: its volumes, secrets, env files and variables, listening on loopback."""
    service = compose["services"][name]
    mounts: dict[str, Path] = {}
    for target, source in volume_mounts(service).items():
        mounts[target] = volumes / source
        mounts[target].mkdir(parents=True, exist_ok=True)
    for target, secret in secret_targets(service).items():
        mounts[target] = credentials / Path(compose["secrets"][secret]["file"]).name
    env = dict(image.env)
    for path in env_files(service):
        env |= env_file_values(credentials / Path(path).name)
    env |= service_env(service)
    argv = [*image.entrypoint, *(service.get("command") or image.cmd)]
    host_var, port_var, default_port = LISTEN[argv[1]]
    port = ports[(name, int(env.get(port_var) or default_port))] = free_port()
    # The containers bind every interface on their own port; here each listens on loopback only.
    env |= {host_var: "127.0.0.1", port_var: str(port)}
    env = {key: loopback_url(value, ports) for key, value in env.items()}
    check = service["healthcheck"]["test"]
    assert check[0] == "CMD"
    return Container(image, mounts=mounts, env=env), argv, check[1:]


@dataclass
class _Running:
    """A compose service running here: its container, process and log."""

    container: Container
    process: subprocess.Popen[bytes]
    log: Path

    def wait_healthy(self, check: list[str], deadline_s: float = 60) -> None:
        """Run the service's healthcheck until it passes, as compose does before starting dependants."""
        deadline = time.monotonic() + deadline_s
        while self.container.run(check).returncode != 0:
            assert self.process.poll() is None, self.log.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, "never healthy:\n" + self.log.read_text("utf-8")
            time.sleep(0.5)

    def gateway(self) -> tuple[str, dict[str, str]]:
        """A gateway's loopback base URL and the Authorization header its trainer sends."""
        env = self.container.env
        return f"http://127.0.0.1:{env['GATEWAY_PORT']}", {
            "Authorization": f"Bearer {env['GATEWAY_TOKEN']}"
        }


@pytest.mark.timeout(300)
def test_compose_services_federate_as_configured(image: Image, tmp_path: Path) -> None:
    """The aggregator and both gateways, run with docker-compose.yml's settings and generated credentials, pass their healthchecks, enforce GATEWAY_TOKEN and complete a round."""
    credentials = tmp_path / "credentials"
    made = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "make_credentials.py"), "--out", str(credentials)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    compose = load_compose()
    ports: dict[tuple[str, int], int] = {}
    running: dict[str, _Running] = {}
    image_files = _tree(image.root)
    try:
        for name in ("aggregator", *GATEWAYS):  # in depends_on order
            container, argv, check = _compose_container(
                image, compose, name, credentials, tmp_path / "volumes", ports
            )
            assert container.run(check).returncode != 0, f"{name}: healthy before it started"
            log = tmp_path / f"{name}.log"
            running[name] = _Running(container, container.start(argv, log), log)
            running[name].wait_healthy(check)
        for weighting, name in enumerate(GATEWAYS, start=1):
            base, auth = running[name].gateway()
            assert httpx.get(f"{base}/session", timeout=10).status_code == 401
            wait_for(f"{base}/readyz", running[name].process, running[name].log, headers=auth)
            container = running[name].container
            leaf_file = container.host(container.env["BK_CREDENTIALS_FILE"])
            leaf = json.loads(leaf_file.read_text(encoding="utf-8"))
            session = httpx.get(f"{base}/session", headers=auth, timeout=10).json()
            assert session["leaf_id"] == leaf["id"]
            layer = np.full((2, 2), weighting, np.float32)
            weights = sdk_weights(tmp_path / f"{name}.npz", weighting, [layer])
            upload = httpx.post(
                f"{base}/upload", headers=auth, files={"file": weights.read_bytes()}, timeout=30
            )
            assert upload.is_success, upload.text
        # Both leaves have uploaded: the round closes and each gateway hears of the aggregation.
        for name in GATEWAYS:
            base, auth = running[name].gateway()
            events = httpx.get(
                f"{base}/aggregations", params={"after": 0, "wait": 30}, headers=auth, timeout=40
            ).json()
            assert len(events) == 1, events
            model = httpx.get(
                f"{base}/aggregations/{events[0]['aggregation_id']}", headers=auth, timeout=30
            )
            assert model.status_code == 200, model.text
            (tmp_path / "model.npz").write_bytes(model.content)
            with np.load(tmp_path / "model.npz", allow_pickle=False) as aggregate:
                np.testing.assert_allclose(aggregate["layer_0"], np.full((2, 2), 5 / 3), rtol=1e-6)
    finally:
        graceful = {name: stop(r.process, r.log) for name, r in reversed(running.items())}
    assert all(graceful.values()), {n: running[n].log.read_text("utf-8") for n in graceful}
    # Only volumes were written to, as the services' read-only root file system demands.
    assert _tree(image.root) == image_files
