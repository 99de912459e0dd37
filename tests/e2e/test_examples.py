"""The examples in examples/ run against a real aggregator and real gateways, as CI runs them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from safetensors import safe_open
from safetensors.numpy import load_file

from gateway.app import create_app
from gateway.settings import Settings
from tests.support.aggregator import start
from tests.support.http import wait_ready
from tests.support.readme import npm_project
from tests.support.servers import serve

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROUNDS = 2
TRAINER_TIMEOUT_S = 120
SAMPLES = (100, 300)
"""The weightings of the two trainers of the bash and node federations."""

ROUND_LINE = re.compile(
    r"^round (\d+)/(\d+): uploaded (\S+), aggregation (\S+) \(event (\d+)\)", re.MULTILINE
)


@dataclass
class Trainer:
    """What one example trainer process left behind."""

    stdout: str
    work_dir: Path
    samples: int
    """The SAMPLES (weighting) it was given."""

    @property
    def aggregation_ids(self) -> list[str]:
        """The aggregation id it reported for each round, in order."""
        return [match[3] for match in ROUND_LINE.findall(self.stdout)]


@contextlib.contextmanager
def federation(folder: Path, leaves: int) -> Iterator[list[str]]:
    """An aggregator with `leaves` dev leaves and one ready gateway per leaf; yields the gateway URLs."""
    with start(folder / "agg", dev_leaves=leaves) as upstream, contextlib.ExitStack() as gateways:
        urls = []
        for i, leaf in enumerate(upstream.leaves):
            credentials = folder / f"leaf{i}.json"
            credentials.write_text(json.dumps(leaf), encoding="utf-8")
            settings = Settings(
                _env_file=None,
                bk_host=upstream.url,
                bk_credentials_file=credentials,
                gateway_data_dir=folder / f"gw{i}",
                bk_max_retries=0,
            )
            urls.append(gateways.enter_context(serve(create_app(settings))))
        for url in urls:
            wait_ready(url)
        yield urls  # the gateways stop before the aggregator


def example_env(**extra: str) -> dict[str, str]:
    """This environment without gateway settings of its own, with `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BK_", "GATEWAY_"))}
    return {**env, **extra}


def run_trainers(
    commands: Sequence[Sequence[str]], urls: Sequence[str], folder: Path
) -> list[Trainer]:
    """Run `commands[i]` against gateway `urls[i]`, all at once, for ROUNDS rounds; each must exit 0."""
    processes = []
    for i, (command, url) in enumerate(zip(commands, urls, strict=True)):
        work_dir = folder / f"trainer{i}"
        work_dir.mkdir()
        env = example_env(
            GATEWAY_URL=url,
            ROUNDS=str(ROUNDS),
            SAMPLES=str(SAMPLES[i]),
            WORK_DIR=str(work_dir),
            WAIT_TIMEOUT_S="60",
            PYTHON=sys.executable,  # the bash trainer's numpy
        )
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        processes.append((process, work_dir))
    trainers: list[Trainer] = []
    failures: list[str] = []
    deadline = time.monotonic() + TRAINER_TIMEOUT_S
    for samples, (process, work_dir) in zip(SAMPLES, processes, strict=False):
        try:
            stdout, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            failures.append(f"timed out after {TRAINER_TIMEOUT_S} s:\n{stdout}\n{stderr}")
            continue
        if process.returncode != 0:
            failures.append(f"exit {process.returncode}:\n{stdout}\n{stderr}")
        trainers.append(Trainer(stdout, work_dir, samples))
    assert not failures, "\n\n".join(failures)
    return trainers


def load(path: Path) -> dict[str, NDArray[Any]]:
    """Every array of an NPZ file, read at once."""
    with np.load(path) as arrays:
        return {key: arrays[key] for key in arrays.files}


NODE_NAMES = {"dense.weight": "layer_0", "dense.bias": "layer_1"}
"""The Node trainer's tensor names and the layers they travel as."""


def uploaded(trainer: Trainer) -> dict[str, NDArray[Any]]:
    """A trainer's last upload as layers and weighting: its NPZ, or the Node trainer's safetensors
    (whose weighting is the form field, its SAMPLES)."""
    if (trainer.work_dir / "weights.npz").exists():
        return load(trainer.work_dir / "weights.npz")
    tensors = load_file(str(trainer.work_dir / "weights.safetensors"))
    assert sorted(tensors) == sorted(NODE_NAMES)
    layers = {NODE_NAMES[name]: array for name, array in tensors.items()}
    return {**layers, "weighting": np.array(float(trainer.samples))}


def aggregated(trainer: Trainer) -> dict[str, NDArray[Any]]:
    """The last aggregate a trainer downloaded, as layers (the Node trainer's in its own names)."""
    if (trainer.work_dir / "aggregated.npz").exists():
        return load(trainer.work_dir / "aggregated.npz")
    tensors = load_file(str(trainer.work_dir / "aggregated.safetensors"))
    assert sorted(tensors) == sorted(NODE_NAMES), (
        "the aggregate comes back in the Node trainer's names"
    )
    return {NODE_NAMES[name]: array for name, array in tensors.items()}


def check_federation(trainers: list[Trainer]) -> None:
    """Every trainer saw the same aggregation each round, and the last one is the weighted mean."""
    ids = [trainer.aggregation_ids for trainer in trainers]
    assert len(ids[0]) == ROUNDS, trainers[0].stdout
    assert all(theirs == ids[0] for theirs in ids), ids
    assert len(set(ids[0])) == ROUNDS, "each round has its own aggregation"
    uploads = [uploaded(trainer) for trainer in trainers]
    result = aggregated(trainers[0])
    assert sorted(result) == ["layer_0", "layer_1"]
    for trainer in trainers[1:]:
        theirs = aggregated(trainer)
        for key, array in result.items():
            assert theirs[key].dtype == array.dtype
            np.testing.assert_array_equal(theirs[key], array)
    weights = [float(upload["weighting"]) for upload in uploads]
    assert weights == [float(s) for s in SAMPLES]
    for key in ("layer_0", "layer_1"):
        mean = sum(
            w * upload[key].astype(np.float64) for w, upload in zip(weights, uploads, strict=True)
        )
        expected = mean / sum(weights)
        assert result[key].dtype == np.float32
        np.testing.assert_allclose(result[key], expected, rtol=1e-5, atol=1e-6)


BASH_TRAINER = ["bash", str(EXAMPLES / "bash" / "trainer.sh")]


@pytest.fixture(scope="module")
def node_trainer(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`node trainer.mjs` in a copy of examples/node after `npm ci` (node 20+ and npm are required)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "The Node.js example needs node 20+ and npm on PATH (e.g. apt-get install nodejs npm); "
            f"found node={node}, npm={npm}."
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    assert int(version.lstrip("v").split(".")[0]) >= 20, f"{node} is {version}; 20+ is needed."
    project = tmp_path_factory.mktemp("node")
    names = ("package.json", "package-lock.json", "trainer.mjs")
    npm_project(npm, EXAMPLES / "node", names, project)
    return [node, str(project / "trainer.mjs")]


def check_node_files(trainer: Trainer, samples: int) -> None:
    """The official safetensors reader opens the file the Node trainer wrote (weight first, so it is
    layer_0), and the values it printed are those of the aggregate it downloaded in its names."""
    path = str(trainer.work_dir / "weights.safetensors")
    with safe_open(path, "np") as written:  # its own writer, read by the official one
        assert list(written.keys()) == ["dense.bias", "dense.weight"]  # the reader sorts names
        assert written.get_tensor("dense.weight").shape == (16, 8)
        assert written.get_tensor("dense.weight").dtype == np.dtype("<f4")
        assert written.get_tensor("dense.bias").shape == (8,)
    header = (trainer.work_dir / "weights.safetensors").read_bytes()
    assert header.index(b"dense.weight") < header.index(b"dense.bias"), "the file's own order"
    assert trainer.samples == samples
    last = trainer.stdout.strip().splitlines()[-1]
    printed = [float(v) for v in last.rpartition("starts ")[2].split()]
    first = aggregated(trainer)["layer_0"].ravel()[:4]
    assert len(printed) == 4, last
    np.testing.assert_allclose(printed, first, rtol=1e-6, atol=1e-9)


def test_bash_trainers_federate(tmp_path: Path) -> None:
    """Two bash + curl trainers on two gateways federate for two rounds, one /exchange call each per round."""
    with federation(tmp_path, leaves=2) as urls:
        trainers = run_trainers([BASH_TRAINER, BASH_TRAINER], urls, tmp_path)
    check_federation(trainers)
    assert f"round {ROUNDS}/{ROUNDS}:" in trainers[0].stdout


@pytest.mark.timeout(300)
def test_node_trainers_federate(tmp_path: Path, node_trainer: list[str]) -> None:
    """Two Node.js trainers (safetensors written by hand, fetch, SSE, the aggregate by name) federate
    for two rounds after `npm ci`."""
    with federation(tmp_path, leaves=2) as urls:
        trainers = run_trainers([node_trainer, node_trainer], urls, tmp_path)
    check_federation(trainers)
    for trainer, samples in zip(trainers, SAMPLES, strict=True):
        check_node_files(trainer, samples)


@pytest.mark.timeout(300)
def test_bash_and_node_trainers_federate_together(tmp_path: Path, node_trainer: list[str]) -> None:
    """A bash trainer and a Node.js trainer are two leaves of one federation."""
    with federation(tmp_path, leaves=2) as urls:
        trainers = run_trainers([BASH_TRAINER, node_trainer], urls, tmp_path)
    check_federation(trainers)
    check_node_files(trainers[1], SAMPLES[1])


ACCURACY_LINE = re.compile(r"^round +(\d+): federated test accuracy ([0-9.]+)", re.MULTILINE)
BEST_LINE = re.compile(r"^best single shard accuracy ([0-9.]+)", re.MULTILINE)


def run_python_example(tmp_path: Path, *args: str, **env: str) -> tuple[list[float], float]:
    """Run examples/python/federation.py for 3 rounds; the accuracy per round and the best shard's."""
    plot = tmp_path / "accuracy.png"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "python" / "federation.py"), *args, "--plot", str(plot)],
        cwd=tmp_path,
        env=example_env(ROUNDS="3", **env),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    rounds = [(int(n), float(acc)) for n, acc in ACCURACY_LINE.findall(result.stdout)]
    assert [n for n, _ in rounds] == [1, 2, 3], result.stdout
    best = BEST_LINE.search(result.stdout)
    assert best is not None, result.stdout
    assert "federated beats the best single shard: yes" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return [acc for _, acc in rounds], float(best[1])


@pytest.mark.timeout(300)
def test_python_federation_local_mode(tmp_path: Path) -> None:
    """`federation.py --local` starts an aggregator and three gateways and beats every shard alone in 3 rounds."""
    accuracy, best_single = run_python_example(tmp_path, "--local")
    assert accuracy[-1] > best_single + 0.2, (accuracy, best_single)
    assert accuracy[-1] > accuracy[0]


@pytest.mark.timeout(300)
def test_python_federation_against_running_gateways(tmp_path: Path) -> None:
    """With GATEWAY_URLS, three trainers federate through three running gateways and one aggregator."""
    with federation(tmp_path, leaves=3) as urls:
        accuracy, best_single = run_python_example(tmp_path, GATEWAY_URLS=",".join(urls))
    assert accuracy[-1] > best_single + 0.2, (accuracy, best_single)
    assert accuracy[-1] > accuracy[0]
