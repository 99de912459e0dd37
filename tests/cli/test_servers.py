"""The server commands of `branchkey-gateway`: `aggregator` and `serve`, and where their defaults come from."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.aggregator.settings import AggregatorSettings
from gateway.settings import Settings
from tests.support.aggregator import ready_leaves
from tests.support.ports import free_port
from tests.support.waiting import wait_until


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as users do (python -m gateway)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without BK_AGGREGATOR_* variables (the tests' own settings only), wide help."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BK_AGGREGATOR_")}
    env.update(COLUMNS="200", NO_COLOR="1", **extra)
    return env


@dataclass
class Aggregator:
    """A background `aggregator` command; its output once it has stopped."""

    process: subprocess.Popen[str]
    out: str = ""
    err: str = ""


@contextlib.contextmanager
def aggregator_command(*args: str, cwd: Path, **env: str) -> Iterator[Aggregator]:
    """`python -m gateway aggregator <args>` in the background, stopped with SIGINT (Ctrl-C) at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "aggregator", *args],
        cwd=cwd,
        env=clean_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = Aggregator(process)
    try:
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        running.out, running.err = process.communicate(timeout=30)


def test_aggregator_command_serves_dev_leaves(tmp_path: Path) -> None:
    """`aggregator` creates dev leaves, serves the v3 API on the given port and stops on SIGINT."""
    port = free_port()
    args = ["--port", str(port), "--data-dir", "data", "--dev-leaves", "2"]
    with aggregator_command(*args, cwd=tmp_path) as running:
        leaves = ready_leaves(port, tmp_path / "data" / "leaves.json")
        assert len(leaves) == 2
        assert (tmp_path / "data" / "admin-token").stat().st_mode & 0o077 == 0
    assert running.process.returncode == 0, running.err
    assert "leaf credentials" in running.out
    assert leaves[0]["session_token"] not in running.out + running.err


def test_aggregator_command_explains_a_bad_leaves_file(tmp_path: Path) -> None:
    """A malformed leaves file stops the command with exit code 2 and a sentence naming the problem."""
    (tmp_path / "leaves.json").write_text('[{"id": "a"}]')
    result = run("aggregator", "--leaves-file", "leaves.json", "--data-dir", "data", cwd=tmp_path)
    assert result.returncode == 2
    assert "needs the string fields" in result.stderr


def test_aggregator_options_left_out_come_from_the_settings_class(tmp_path: Path) -> None:
    """Options not given are AggregatorSettings' own (here from `.env`); options given override them."""
    port = free_port()
    (tmp_path / ".env").write_text(
        f"BK_AGGREGATOR_PORT={port}\nBK_AGGREGATOR_DATA_DIR=from-dotenv\nBK_AGGREGATOR_DEV_LEAVES=3\n"
    )
    with aggregator_command("--dev-leaves", "2", cwd=tmp_path) as running:
        leaves = ready_leaves(port, tmp_path / "from-dotenv" / "leaves.json")
        assert len(leaves) == 2
    assert running.process.returncode == 0, running.err
    assert f"aggregator on http://127.0.0.1:{port} (data in from-dotenv)\n" in running.out
    assert f"leaf credentials: {Path('from-dotenv', 'leaves.json')}\n" in running.out


def test_aggregator_refuses_a_bad_variable_with_exit_2(tmp_path: Path) -> None:
    """A settings variable the class refuses (read by the class, not the CLI) exits 2 with its sentence."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "aggregator", "--data-dir", "data"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(BK_AGGREGATOR_AMQP_URL="http://not-amqp"),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "BK_AGGREGATOR_AMQP_URL must start with amqp:// or amqps://\n"


@pytest.mark.parametrize(
    ("option", "field"),
    [
        ("--host", "host"),
        ("--port", "port"),
        ("--data-dir", "data_dir"),
        ("--dev-leaves", "dev_leaves"),
    ],
)
def test_aggregator_help_shows_the_settings_defaults(
    option: str, field: str, tmp_path: Path
) -> None:
    """`aggregator --help` shows each option's variable and the AggregatorSettings default."""
    result = run("aggregator", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # click wraps help at 80 columns
    entry = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
    default = AggregatorSettings.model_fields[field].default
    assert f"[env var: BK_AGGREGATOR_{field.upper()}; default: {default}]" in entry


def test_serve_help_shows_the_settings_defaults(tmp_path: Path) -> None:
    """`serve --help` names GATEWAY_HOST and GATEWAY_PORT with the Settings defaults."""
    result = run("serve", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    host = Settings.model_fields["gateway_host"].default
    port = Settings.model_fields["gateway_port"].default
    assert f"Interface to bind (GATEWAY_HOST, {host})." in result.stdout
    assert f"Port to bind (GATEWAY_PORT, {port})." in result.stdout


def test_the_admin_token_is_announced_once_as_a_log_line(tmp_path: Path) -> None:
    """The first start logs (JSON) where the generated admin token is; a restart reading it back says nothing; the token is never shown."""
    outputs = []
    for _ in range(2):
        port = free_port()
        args = ["--port", str(port), "--data-dir", "data"]
        with aggregator_command(*args, cwd=tmp_path, GATEWAY_LOG_FORMAT="json") as running:
            ready_leaves(port, tmp_path / "data" / "leaves.json")
        outputs.append(running.out + running.err)
    token = (tmp_path / "data" / "admin-token").read_text(encoding="utf-8").strip()
    announced = [
        json.loads(line)
        for line in outputs[0].splitlines()
        if line.startswith("{") and "admin token" in line
    ]
    assert len(announced) == 1
    assert str(Path("data", "admin-token")) in announced[0]["msg"]
    assert "admin token" not in outputs[1]
    assert token not in outputs[0] + outputs[1]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _status_with_header_of(url: str, size: int) -> int:
    """The status of GET `url` with one header of `size` bytes."""
    return httpx.get(url, headers={"x-pad": "a" * size}, timeout=10).status_code


def test_aggregator_command_bounds_request_headers(tmp_path: Path) -> None:
    """`aggregator` answers 431 to headers over BK_AGGREGATOR_MAX_HEADER_BYTES (here 4 KiB) and serves smaller ones."""
    port = free_port()
    args = ["--port", str(port), "--data-dir", "data"]
    with aggregator_command(*args, cwd=tmp_path, BK_AGGREGATOR_MAX_HEADER_BYTES="4KiB"):
        ready_leaves(port, tmp_path / "data" / "leaves.json")
        url = f"http://127.0.0.1:{port}/api/v3/runs"
        assert _status_with_header_of(url, 5000) == 431
        assert _status_with_header_of(url, 3000) != 431


def test_serve_command_bounds_request_headers(tmp_path: Path) -> None:
    """`serve` answers 431 to headers over GATEWAY_MAX_HEADER_BYTES (here 4 KiB) and serves smaller ones."""
    port = free_port()
    env = clean_env(GATEWAY_PORT=str(port), GATEWAY_DATA_DIR="gw", GATEWAY_MAX_HEADER_BYTES="4KiB")
    env.pop("BK_HOST", None)  # the embedded aggregator: no network needed
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: _answers(url), 30, "the gateway answers /healthz")
        assert _status_with_header_of(url, 5000) == 431
        assert _status_with_header_of(url, 3000) == 200
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def _serve(cwd: Path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m gateway serve` on a free port with `env`, until it exits."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(**{"GATEWAY_DATA_DIR": str(cwd / "data"), **env}),
        timeout=timeout,
        check=False,
    )


def test_serve_with_a_list_of_leaves_and_no_pick_says_so_in_one_line(tmp_path: Path) -> None:
    """BK_CREDENTIALS_FILE=leaves.json without BK_LEAF_NAME: exit 3 and one line naming the leaves."""
    leaf = {
        "id": "l1",
        "name": "leaf-1",
        "session_token": "t" * 8,
        "tree_id": "t",
        "branch_id": "b",
    }
    leaves = tmp_path / "leaves.json"
    leaves.write_text(json.dumps([leaf, {**leaf, "id": "l2", "name": "leaf-2"}]))
    result = _serve(tmp_path, BK_HOST="http://127.0.0.1:9", BK_CREDENTIALS_FILE=str(leaves))
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    failures = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(failures) == 1, result.stderr
    assert failures[0].endswith(
        "cannot start: BK_CREDENTIALS_FILE lists 2 leaves (leaf-1, leaf-2): set BK_LEAF_NAME "
        "(e.g. BK_LEAF_NAME=leaf-1) or BK_LEAF_ID to pick one."
    )


def test_serve_with_an_unusable_data_dir_says_so_in_one_line(tmp_path: Path) -> None:
    """GATEWAY_DATA_DIR under a file: exit 3, one line naming the path, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _serve(tmp_path, GATEWAY_DATA_DIR=str(blocker / "data"))
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert f"cannot start: {blocker / 'data' / 'tmp'}: Not a directory" in result.stderr


def test_aggregator_start_up_failures_are_one_line(tmp_path: Path) -> None:
    """A data dir that is a file (exit 2) and an unreachable broker (exit 3): one line each, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run("aggregator", "--port", str(free_port()), "--data-dir", blocker, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"cannot start: {blocker}: File exists"
    broker = "amqp://guest:guest@127.0.0.1:1/"
    args = ["--port", str(free_port()), "--data-dir", "data", "--amqp-url", broker]
    result = run("aggregator", *args, cwd=tmp_path)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    failures = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert len(failures) == 1, result.stderr
    assert "Cannot connect to RabbitMQ at 127.0.0.1:1" in failures[0]
