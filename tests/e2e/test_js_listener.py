"""The README's JavaScript in Node.js 20 (with the `eventsource` package), and examples/js/listen.mjs
against a gateway with GATEWAY_TOKEN (signed `?access_token=` for its EventSource)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.gateways import Federation, one_leaf_federation
from tests.support.readme import ROOT, js_listener, npm_project
from tests.support.waiting import wait_until
from tests.support.weights import sdk_weights

EXAMPLE = ROOT / "examples" / "js"
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/js after `npm ci` (node 20+ and npm are required)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node, "Node.js 20+ must be on PATH (apt-get install nodejs npm)."
    assert npm, "npm must be on PATH (apt-get install npm)."
    folder = tmp_path_factory.mktemp("js")
    names = ("package.json", "package-lock.json", "npz.mjs", "listen.mjs")
    return npm_project(npm, EXAMPLE, names, folder)


@contextmanager
def _node(script: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["node", script.name], cwd=script.parent, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def _upload(fed: Federation, folder: Path, seed: int) -> float:
    layers = [np.full((2, 2), seed, np.float32), np.arange(3, dtype=np.float32)]
    path = sdk_weights(folder / f"w{seed}.npz", 5.0, layers)
    headers = {"Authorization": f"Bearer {fed.token}"} if fed.token else {}
    with path.open("rb") as file:
        answer = httpx.post(f"{fed.gateway.url}/upload", files={"file": file}, headers=headers)
    assert answer.status_code == 201, answer.text
    return float(seed)


def _lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8", errors="replace").splitlines()


def test_readme_javascript_in_node(project: Path, tmp_path: Path) -> None:
    """The README's snippet, as printed, in Node 20 (no global EventSource: the `eventsource`
    package): it prints the layers of each aggregation announced while uploads happen."""
    with one_leaf_federation(tmp_path) as fed:
        script = project / "readme.mjs"
        script.write_text(js_listener(fed.gateway.url), encoding="utf-8")
        log = tmp_path / "node.log"
        with _node(script, {"PATH": os.environ["PATH"]}, log) as process:
            wait_until(
                lambda: fed.gateway.subscribers() == 1, TIMEOUT_S, "the snippet's EventSource"
            )
            firsts = [_upload(fed, tmp_path, seed) for seed in (3, 4)]
            wait_until(
                lambda: len(_lines(log)) >= 2 or process.poll() is not None, TIMEOUT_S, "two lines"
            )
        announced = [e.data["aggregation_id"] for e in fed.gateway.log.after(0, ("aggregation",))]
    expected = [
        f"{aggregation} layer_0 [2,2] {first:g}, layer_1 [3] 0"
        for aggregation, first in zip(announced, firsts, strict=True)
    ]
    assert _lines(log)[:2] == expected, _lines(log)


def test_listen_example_with_a_gateway_token(project: Path, tmp_path: Path) -> None:
    """examples/js/listen.mjs trades GATEWAY_TOKEN for an ?access_token=, follows the events and
    reads both aggregations' layers, then stops (COUNT=2)."""
    with one_leaf_federation(tmp_path, token="js-listener-token") as fed:
        env = {
            "PATH": os.environ["PATH"],
            "GATEWAY_URL": fed.gateway.url,
            "GATEWAY_TOKEN": "js-listener-token",
            "COUNT": "2",
        }
        log = tmp_path / "listen.log"
        with _node(project / "listen.mjs", env, log) as process:
            wait_until(
                lambda: fed.gateway.subscribers() == 1, TIMEOUT_S, "listen.mjs's EventSource"
            )
            for seed in (6, 7):
                _upload(fed, tmp_path, seed)
            deadline = time.monotonic() + TIMEOUT_S
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert process.returncode == 0, _lines(log)
    lines = [line for line in _lines(log) if line.startswith("aggregation ")]
    assert len(lines) == 2, _lines(log)
    for line, seed in zip(lines, (6, 7), strict=True):
        assert f"layer_0 <f4 [2,2] first={seed}, layer_1 <f4 [3] first=0" in line, line
