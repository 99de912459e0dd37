"""The client commands (`upload`, `download`, `watch`, `status`; `exchange` in test_exchange.py) against a live gateway and aggregator."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running, start
from tests.support.cli import cli, cli_env
from tests.support.faulty_upstream import FaultyUpstream, Reply
from tests.support.gateways import Gateway, gateway_settings, run_gateway, write_credentials
from tests.support.http import admin_get
from tests.support.ports import free_port
from tests.support.waiting import wait_until
from tests.support.weights import sdk_weights


@contextlib.contextmanager
def leaf0_gateway(
    upstream: Running, folder: Path, port: int, **overrides: Any
) -> Iterator[Gateway]:
    """A gateway for leaf 0 on `port` with its data in `folder`; ready once its channel has heard the upstream."""
    credentials = write_credentials(folder.parent / "leaf0.json", upstream.leaves[0])
    settings = gateway_settings(
        folder, bk_host=upstream.url, bk_credentials_file=credentials, **overrides
    )
    with run_gateway(settings, port, wait_heard=True) as gateway:
        yield gateway


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Running]:
    """A local aggregator whose rounds close with one leaf: every upload yields an aggregation."""
    with start(tmp_path / "agg", min_leaves=1) as running:
        yield running


@pytest.fixture
def gateway(upstream: Running, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway for leaf 0 on a free port."""
    with leaf0_gateway(upstream, tmp_path / "gw", free_port()) as running:
        yield running


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client for checks made beside the CLI."""
    with httpx.Client(timeout=30) as http:
        yield http


def weights(folder: Path, value: float, weighting: float = 4.0) -> Path:
    """A small SDK-layout NPZ whose layer is filled with `value` (so uploads differ)."""
    name = f"w{value:g}.npz"
    return sdk_weights(folder / name, weighting, [np.full((2, 3), value, dtype=np.float32)])


def upload(gateway: Gateway, path: Path) -> str:
    """Upload through the CLI; the file id it printed."""
    result = cli("upload", path, url=gateway.url, cwd=path.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def aggregations(
    client: httpx.Client, url: str, count: int, after: int = 0
) -> list[dict[str, Any]]:
    """The gateway's aggregation events after `after`, once there are `count` of them."""
    found: list[dict[str, Any]] = []

    def enough() -> bool:
        answer = client.get(f"{url}/aggregations", params={"after": after})
        assert answer.status_code == 200, answer.text
        found[:] = answer.json()
        return len(found) >= count

    wait_until(enough, 30, f"{count} aggregation(s) reached the gateway")
    return found


class Watcher:
    """`python -m gateway watch ...` running in the background; its output read line by line."""

    def __init__(self, *args: str, url: str, cwd: Path, program: list[str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *(program or ["-m", "gateway"]), "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=cli_env(url),
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.stdout)),
            threading.Thread(target=self._read, args=(self.process.stderr, self.stderr)),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for_stderr(self, text: str, occurrences: int = 1) -> None:
        """Until `text` has appeared in that many stderr lines."""
        wait_until(
            lambda: sum(text in line for line in self.stderr) >= occurrences,
            20,
            f"watch said {text!r} ({self.stderr})",
        )

    def wait_for_lines(self, count: int) -> None:
        """Until `count` lines are on stdout."""
        wait_until(lambda: len(self.stdout) >= count, 20, f"{count} line(s) from watch")

    def finish(self, timeout: float = 30) -> int:
        """Wait for the process to exit by itself; its exit code."""
        code = self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """Stop it if it still runs (and let it run again if it was stopped)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.finish()
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.process.stdout.close()
        self.process.stderr.close()


@contextlib.contextmanager
def watching(
    *args: str, url: str, cwd: Path, program: list[str] | None = None
) -> Iterator[Watcher]:
    """A background `watch`, killed at the end if it has not exited."""
    watcher = Watcher(*args, url=url, cwd=cwd, program=program)
    try:
        yield watcher
    finally:
        watcher.kill()


def parse(line: str) -> tuple[int, str, dict[str, Any]]:
    """`<id> <event> <compact json>` -> its parts."""
    event_id, event, data = line.split(" ", 2)
    assert data == json.dumps(json.loads(data), separators=(",", ":"))
    parsed: dict[str, Any] = json.loads(data)
    return int(event_id), event, parsed


def test_upload_prints_the_file_id_the_aggregator_received(
    gateway: Gateway, upstream: Running, client: httpx.Client, tmp_path: Path
) -> None:
    """`upload` prints the file id, which the aggregator has stored; `--json` prints the whole answer."""
    file_id = upload(gateway, weights(tmp_path, 1))
    result = cli(
        "upload", weights(tmp_path, 2), "--weighting", "7", "--json", url=gateway.url, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["weighting"] == 7.0
    assert answer["layers"] == [{"key": "layer_0", "dtype": "<f4", "shape": [2, 3], "name": None}]
    stored = {u["file_id"]: u for u in admin_get(upstream.url, ADMIN, "uploads", client)}
    assert set(stored) == {file_id, answer["file_id"]}
    assert stored[answer["file_id"]]["weighting"] == 7.0


def test_upload_sends_the_file_digest_on_its_part(tmp_path: Path) -> None:
    """`upload` and `exchange` put the file's sha-256 in the part's Content-Digest (RFC 9530), so
    the gateway can send the file on while it arrives."""
    path = weights(tmp_path, 1)
    b64 = base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()
    recorder = FaultyUpstream()
    with recorder.running():
        recorder.on("POST", "/upload", Reply(201, {"file_id": "f-1"}))
        recorder.on("POST", "/exchange", Reply(404, {"title": "t", "detail": "d"}))
        assert cli("upload", path, url=recorder.url, cwd=tmp_path).stdout == "f-1\n"
        cli("exchange", path, url=recorder.url, cwd=tmp_path)
    for route in ("/upload", "/exchange"):
        [seen] = recorder.requests("POST", route)
        head, _, rest = seen.body.partition(b"\r\n\r\n")
        assert f"Content-Digest: sha-256=:{b64}:".encode() in head.split(b"\r\n")
        assert rest.startswith(path.read_bytes())


def test_refused_upload_prints_the_problem_and_exits_1(
    gateway: Gateway, upstream: Running, client: httpx.Client, tmp_path: Path
) -> None:
    """A file the gateway refuses gives exit 1 and `error: <title>: <detail>` on stderr, nothing on stdout."""
    path = tmp_path / "no-weighting.npz"
    np.savez(path, layer_0=np.ones(2))
    with path.open("rb") as stream:
        direct = client.post(f"{gateway.url}/upload", files={"file": stream})
    problem = direct.json()
    assert direct.status_code == 422, problem
    result = cli("upload", path, url=gateway.url, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"error: {problem['title']}: {problem['detail']}\n"
    assert admin_get(upstream.url, ADMIN, "uploads", client) == []


def test_upload_to_no_gateway_exits_3(tmp_path: Path) -> None:
    """With nothing listening at GATEWAY_URL, `upload` and `status` exit 3 and say so."""
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("upload", weights(tmp_path, 1)), ("status",)):
        result = cli(*args, url=url, cwd=tmp_path)
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith(f"error: cannot talk to the gateway at {url}"), result
    assert cli("status", "--gateway", "localhost:1", url=url, cwd=tmp_path).returncode == 2


def test_download_writes_the_aggregation(
    gateway: Gateway, client: httpx.Client, tmp_path: Path
) -> None:
    """`download ID -o PATH` writes what GET /aggregations/ID serves; `--format npy` writes <id>.npy."""
    upload(gateway, weights(tmp_path, 3))
    (event,) = aggregations(client, gateway.url, 1)
    aggregation_id = event["aggregation_id"]
    served = client.get(f"{gateway.url}/aggregations/{aggregation_id}")
    assert served.status_code == 200
    out = tmp_path / "models" / "agg.npz"
    out.parent.mkdir()
    result = cli("download", aggregation_id, "-o", out, url=gateway.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert out.read_bytes() == served.content
    assert sorted(p.name for p in out.parent.iterdir()) == ["agg.npz"]  # no temp file left
    with np.load(out, allow_pickle=False) as data:
        assert np.array_equal(data["layer_0"], np.full((2, 3), 3, dtype=np.float32))

    result = cli("download", aggregation_id, "--format", "npy", url=gateway.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    npy = tmp_path / f"{aggregation_id}.npy"
    assert result.stdout == f"{npy.name}\n"
    served_npy = client.get(f"{gateway.url}/aggregations/{aggregation_id}?format=npy")
    assert npy.read_bytes() == served_npy.content

    missing = cli("download", "no-such-aggregation", url=gateway.url, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ")
    assert not (tmp_path / "no-such-aggregation.npz").exists()
    assert not list(tmp_path.glob(".*.part"))  # the temp file is gone too


def test_download_latest(gateway: Gateway, client: httpx.Client, tmp_path: Path) -> None:
    """`download latest` exits 1 before any aggregation, then writes the newest as <id>.npz."""
    before = cli("download", "latest", url=gateway.url, cwd=tmp_path)
    assert before.returncode == 1
    assert before.stderr == "error: Not found: No aggregation has been announced yet.\n"
    upload(gateway, weights(tmp_path, 1))
    upload(gateway, weights(tmp_path, 2))
    newest = aggregations(client, gateway.url, 2)[-1]["aggregation_id"]
    result = cli("download", "latest", url=gateway.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{newest}.npz\n"
    served = client.get(f"{gateway.url}/aggregations/{newest}")
    assert (tmp_path / f"{newest}.npz").read_bytes() == served.content


def test_watch_count_prints_two_aggregation_lines(
    gateway: Gateway, client: httpx.Client, tmp_path: Path
) -> None:
    """`watch --count 2` prints `<id> aggregation <json>` for two uploads' aggregations, then exits 0."""
    with watching("--count", "2", url=gateway.url, cwd=tmp_path) as watcher:
        watcher.wait_for_stderr("following")
        upload(gateway, weights(tmp_path, 1))
        upload(gateway, weights(tmp_path, 2))
        assert watcher.finish() == 0, watcher.stderr
    stored = aggregations(client, gateway.url, 2)
    lines = [parse(line) for line in watcher.stdout]
    assert [(i, e, d["aggregation_id"]) for i, e, d in lines] == [
        (s["id"], "aggregation", s["aggregation_id"]) for s in stored
    ]


def test_watch_resumes_after_the_gateway_restarts(
    upstream: Running, client: httpx.Client, tmp_path: Path
) -> None:
    """Across a gateway restart (same port and data), `watch` resumes after its last event: none twice, none missed."""
    port = free_port()
    folder = tmp_path / "gw"
    watcher: Watcher | None = None
    try:
        with leaf0_gateway(upstream, folder, port) as first:
            watcher = Watcher("--types", "aggregation", "--count", "3", url=first.url, cwd=tmp_path)
            watcher.wait_for_stderr("following")
            upload(first, weights(tmp_path, 1))
            watcher.wait_for_lines(1)
            # Hold the watcher while the gateway is away and the next two aggregations happen,
            # so that they can only reach it by replay after its last event id.
            watcher.process.send_signal(signal.SIGSTOP)
        with leaf0_gateway(upstream, folder, port) as second:
            upload(second, weights(tmp_path, 2))
            upload(second, weights(tmp_path, 3))
            first_id = parse(watcher.stdout[0])[0]
            aggregations(client, second.url, 2, after=first_id)
            assert len(watcher.stdout) == 1
            watcher.process.send_signal(signal.SIGCONT)
            assert watcher.finish() == 0, watcher.stderr
            stored = aggregations(client, second.url, 3)
    finally:
        if watcher is not None:
            watcher.kill()
    lines = [parse(line) for line in watcher.stdout]
    assert [(i, e, d["aggregation_id"]) for i, e, d in lines] == [
        (s["id"], "aggregation", s["aggregation_id"]) for s in stored
    ]
    assert len({d["aggregation_id"] for _, _, d in lines}) == 3
    assert any(
        f"following {second.url}/events after event {first_id}" in line for line in watcher.stderr
    )


def test_watch_exits_0_on_ctrl_c(gateway: Gateway, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) ends `watch` with exit 0 and no traceback."""
    restore_sigint = (  # a shell's background job may have SIGINT ignored; a terminal's has not
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'branchkey-gateway'; from gateway.cli import main; main()"
    )
    with watching(url=gateway.url, cwd=tmp_path, program=["-c", restore_sigint]) as watcher:
        watcher.wait_for_stderr("following")
        watcher.process.send_signal(signal.SIGINT)
        assert watcher.finish(timeout=20) == 0, watcher.stderr
    assert watcher.stdout == []
    assert watcher.stderr == [f"watch: following {gateway.url}/events"]


def test_watch_refuses_unknown_types(gateway: Gateway, tmp_path: Path) -> None:
    """`watch --types` with an unknown type exits 1 with the gateway's problem instead of retrying."""
    result = cli("watch", "--types", "nonsense", url=gateway.url, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: Malformed request: Unknown event type(s)"), (
        result.stderr
    )


def test_status_shows_session_run_and_channel(
    gateway: Gateway, upstream: Running, client: httpx.Client, tmp_path: Path
) -> None:
    """`status` summarises the leaf, the run and the channel (exit 0 when ready, 1 once logged out); `--json` too."""
    leaf = upstream.leaves[0]
    result = cli("status", url=gateway.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["gateway"] == gateway.url
    assert rows["session"].startswith(f"authenticated as leaf {leaf['name']} ({leaf['id']})")
    assert leaf["branch_id"] in rows["session"]
    assert rows["upstream"].startswith(upstream.url)
    assert rows["run"] == "start (run 1)"
    assert rows["channel"] == "connected"
    assert rows["ready"] == "yes"

    result = cli("status", "--json", url=gateway.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ready"] is True
    assert document["session"]["leaf_id"] == leaf["id"]
    assert document["run"] == {"run_status": "start", "run_number": 1}
    assert document["readyz"]["channel"] == "connected"

    assert client.delete(f"{gateway.url}/session").status_code == 200
    result = cli("status", url=gateway.url, cwd=tmp_path)
    assert result.returncode == 1
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    assert rows["session"].startswith("logged out")
    assert rows["run"].startswith("unknown: ")
    assert rows["ready"].startswith("no: Not ready: No leaf session")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("upload", ["--weighting", "--wait", "--wait-timeout", "--json"]),
        ("download", ["--output", "-o", "--format", "latest"]),
        ("watch", ["--types", "--after", "--count", "--idle-timeout", "Last-Event-ID"]),
        ("status", ["--json", "/readyz"]),
    ],
)
def test_help_describes_each_command(command: str, options: list[str], tmp_path: Path) -> None:
    """`<command> --help` exits 0 and names its options, the connection options and the exit codes."""
    result = cli(command, "--help", url="http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in [*options, "--gateway", "GATEWAY_URL", "--token", "GATEWAY_TOKEN", "Exit codes"]:
        assert text in result.stdout, f"{text!r} missing from {command} --help"


def test_token_is_sent_as_bearer(upstream: Running, tmp_path: Path) -> None:
    """With GATEWAY_TOKEN set on the gateway, commands need --token (or the env variable) and send it as Bearer."""
    with leaf0_gateway(upstream, tmp_path / "gw", free_port(), gateway_token="s3cret") as gateway:
        refused = cli("status", url=gateway.url, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: Gateway token required: "), refused.stderr
        wrong = cli("status", "--token", "wrong", url=gateway.url, cwd=tmp_path)
        assert wrong.returncode == 1
        assert cli("status", "--token", "s3cret", url=gateway.url, cwd=tmp_path).returncode == 0
        path = weights(tmp_path, 5)
        uploaded = cli("upload", path, url=gateway.url, cwd=tmp_path, token="s3cret")
        assert uploaded.returncode == 0, uploaded.stderr
        watched = cli(
            "watch", "--after", "0", "--count", "1", url=gateway.url, cwd=tmp_path, token="s3cret"
        )
        assert watched.returncode == 0, watched.stderr
        assert watched.stdout.split(" ")[1] in ("aggregation", "run_status", "gap")
