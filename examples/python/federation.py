"""A real federation through BranchKey Gateway: three trainers learn handwritten digits together.

Each trainer holds a non-IID shard of scikit-learn's bundled digits dataset (mostly a few classes),
trains a softmax logistic regression with numpy for a few local epochs, uploads its weights through
its own gateway, waits for the round's aggregation (the long-poll `GET /aggregations`), downloads the
weighted average and continues from it. After every round it prints the federated model's test
accuracy; at the end it prints the best accuracy any trainer reaches alone (same total epochs on its
own shard) and exits 1 unless the federation beat it. It writes `accuracy.png` when matplotlib is
installed.

    GATEWAY_URLS=http://127.0.0.1:8001,http://127.0.0.1:8002,http://127.0.0.1:8003 \\
        python federation.py            # against running gateways, one per trainer
    python federation.py --local        # starts an aggregator and three gateways itself

`ROUNDS` (default 10) sets the number of rounds, as `--rounds` does.
"""

# ruff: noqa: T201
# (An example program: printing its progress is its output.)

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_digits  # type: ignore[import-untyped]  # sklearn ships no types

CLASSES = 10
HOME_SHARE = 0.95
"""The share of each class that goes to its home trainer; the rest is spread over the others."""
LEARNING_RATE = 0.5
BATCH = 32
WAIT_S = 60.0
"""One long-poll of GET /aggregations (the gateway's maximum)."""
ROUND_TIMEOUT_S = 600.0
"""The longest wait for one round's aggregation (the other trainers may be slow)."""

Array = NDArray[np.float64]
Labels = NDArray[np.int64]
Shard = tuple[Array, Labels]
Seed = tuple[int, ...]
"""Seeds of numpy's generators: (seed, round, trainer) for one round of local training."""


@dataclass
class Model:
    """Softmax regression: class scores are `x @ w + b`."""

    w: Array
    b: Array

    @classmethod
    def zeros(cls, features: int) -> Model:
        """The common starting point of every trainer."""
        return cls(np.zeros((features, CLASSES)), np.zeros(CLASSES))

    def accuracy(self, x: Array, y: Labels) -> float:
        """The share of `x` classified as `y`."""
        return float(np.mean(np.argmax(x @ self.w + self.b, axis=1) == y))

    def to_npz(self, weighting: float) -> bytes:
        """The upload: `weighting` plus layer_0 (w) and layer_1 (b) as float32."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            weighting=np.float64(weighting),
            layer_0=self.w.astype(np.float32),
            layer_1=self.b.astype(np.float32),
        )
        return buffer.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> Model:
        """A model from an aggregated NPZ (layer_0, layer_1)."""
        with np.load(io.BytesIO(data)) as arrays:
            return cls(arrays["layer_0"].astype(np.float64), arrays["layer_1"].astype(np.float64))


def train(model: Model, x: Array, y: Labels, epochs: int, seed: Seed) -> Model:
    """`epochs` of mini-batch gradient descent on the cross-entropy, starting from `model`."""
    rng = np.random.default_rng(seed)
    onehot = np.eye(CLASSES)[y]
    w, b = model.w.copy(), model.b.copy()
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            batch = order[start : start + BATCH]
            scores = x[batch] @ w + b
            scores -= scores.max(axis=1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=1, keepdims=True)
            grad = (p - onehot[batch]) / len(batch)
            w -= LEARNING_RATE * (x[batch].T @ grad)
            b -= LEARNING_RATE * grad.sum(axis=0)
    return Model(w, b)


@dataclass
class Data:
    """The test set and one training shard per trainer."""

    x_test: Array
    y_test: Labels
    shards: list[Shard]


def load_data(trainers: int, seed: int) -> Data:
    """Digits scaled to [0, 1], 30 % held out for testing, the rest split into non-IID shards."""
    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float64) / 16.0
    y = np.asarray(digits.target, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    n_test = len(y) * 3 // 10
    x_test, y_test, x_train, y_train = x[:n_test], y[:n_test], x[n_test:], y[n_test:]
    parts: list[list[int]] = [[] for _ in range(trainers)]
    for label in range(CLASSES):
        members = rng.permutation(np.flatnonzero(y_train == label))
        home = label * trainers // CLASSES  # three trainers: 0-3, 4-6 and 7-9
        kept = round(HOME_SHARE * len(members))
        parts[home].extend(members[:kept].tolist())
        others = [t for t in range(trainers) if t != home]
        for t, chunk in zip(others, np.array_split(members[kept:], len(others)), strict=True):
            parts[t].extend(chunk.tolist())
    shards = [(x_train[idx], y_train[idx]) for idx in (np.array(sorted(p)) for p in parts)]
    return Data(x_test, y_test, shards)


class Trainer:
    """One trainer's side of the gateway protocol: upload, wait for the aggregation, download."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        self.url = url.rstrip("/")
        self.stop = stop
        self.client = httpx.Client(timeout=httpx.Timeout(WAIT_S + 30, connect=10))
        self.last_event_id = self._latest_event_id()

    def close(self) -> None:
        """Release the connection pool."""
        self.client.close()

    def _latest_event_id(self) -> int:
        """The newest aggregation event the gateway already has: this trainer waits for later ones."""
        response = self.client.get(f"{self.url}/aggregations/latest")
        if response.status_code == 404:
            return 0
        _check(response)
        return int(response.json()["id"])

    def upload(self, model: Model, weighting: float) -> str:
        """Upload the model; the gateway's file id."""
        files = {"file": ("weights.npz", model.to_npz(weighting), "application/octet-stream")}
        response = _check(self.client.post(f"{self.url}/upload", files=files))
        return str(response.json()["file_id"])

    def wait_for_aggregation(self) -> str:
        """Long-poll `GET /aggregations?after=<last>&wait=60` until the round's aggregation arrives."""
        deadline = time.monotonic() + ROUND_TIMEOUT_S
        while time.monotonic() < deadline and not self.stop.is_set():
            params = {"after": self.last_event_id, "wait": WAIT_S}
            events = _check(self.client.get(f"{self.url}/aggregations", params=params)).json()
            if events:
                newest: dict[str, Any] = events[-1]
                self.last_event_id = int(newest["id"])
                return str(newest["aggregation_id"])
        if self.stop.is_set():
            raise RuntimeError(f"{self.url}: stopped waiting, another trainer failed")
        raise TimeoutError(f"{self.url}: no aggregation within {ROUND_TIMEOUT_S:g} s")

    def download(self, aggregation_id: str) -> Model:
        """The aggregated model."""
        return Model.from_npz(
            _check(self.client.get(f"{self.url}/aggregations/{aggregation_id}")).content
        )


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
        )
    return response


@dataclass
class Step:
    """One trainer's round: its local model and the aggregation it received."""

    local: Model
    aggregation_id: str
    aggregated: Model


@dataclass
class Round:
    """What one round produced."""

    number: int
    aggregation_id: str
    federated: float
    local: list[float]


def take_part(trainer: Trainer, shard: Shard, start: Model, epochs: int, seed: Seed) -> Step:
    """One trainer's round: train from `start` on its shard, upload, wait for the aggregation, download."""
    x, y = shard
    local = train(start, x, y, epochs, seed)
    trainer.upload(local, weighting=len(y))
    aggregation_id = trainer.wait_for_aggregation()
    return Step(local, aggregation_id, trainer.download(aggregation_id))


def federate(urls: Sequence[str], data: Data, rounds: int, epochs: int, seed: int) -> list[Round]:
    """Run `rounds` rounds with one trainer per gateway URL, all at once; print a line per round."""
    stop = threading.Event()
    trainers = [Trainer(url, stop) for url in urls]
    model = Model.zeros(data.x_test.shape[1])
    history: list[Round] = []
    try:
        with ThreadPoolExecutor(len(trainers)) as pool:
            for number in range(1, rounds + 1):
                futures = [
                    pool.submit(take_part, trainer, shard, model, epochs, (seed, number, i))
                    for i, (trainer, shard) in enumerate(zip(trainers, data.shards, strict=True))
                ]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                if any(future.exception() for future in done):
                    stop.set()  # the others stop waiting for an aggregation that cannot come
                steps = [future.result() for future in futures]
                model = check_same(number, steps)
                history.append(
                    Round(
                        number,
                        steps[0].aggregation_id,
                        model.accuracy(data.x_test, data.y_test),
                        [step.local.accuracy(data.x_test, data.y_test) for step in steps],
                    )
                )
                local = " ".join(f"{accuracy:.3f}" for accuracy in history[-1].local)
                print(
                    f"round {number:2d}: federated test accuracy {history[-1].federated:.4f}  "
                    f"(local models before averaging: {local})  "
                    f"aggregation {history[-1].aggregation_id}",
                    flush=True,
                )
    finally:
        for trainer in trainers:
            trainer.close()
    return history


def check_same(number: int, steps: list[Step]) -> Model:
    """The round's model: every trainer must have received the same aggregation."""
    ids = {step.aggregation_id for step in steps}
    if len(ids) != 1:
        raise RuntimeError(f"round {number}: the trainers got different aggregations {ids}")
    model = steps[0].aggregated
    for step in steps[1:]:
        if not (
            np.array_equal(step.aggregated.w, model.w)
            and np.array_equal(step.aggregated.b, model.b)
        ):
            raise RuntimeError(f"round {number}: the gateways served different models")
    return model


def alone(data: Data, rounds: int, epochs: int, seed: int) -> list[list[float]]:
    """Test accuracy of each trainer trained only on its own shard, after each round's worth of epochs."""
    curves = []
    for i, (x, y) in enumerate(data.shards):
        model = Model.zeros(x.shape[1])
        curve = []
        for number in range(1, rounds + 1):
            model = train(model, x, y, epochs, (seed, number, i))
            curve.append(model.accuracy(data.x_test, data.y_test))
        curves.append(curve)
    return curves


def plot(path: Path, history: list[Round], single: list[list[float]]) -> None:
    """accuracy.png: the federated model per round against each trainer alone."""
    try:
        import matplotlib as mpl

        mpl.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    rounds = [r.number for r in history]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(
        rounds,
        [r.federated for r in history],
        "o-",
        linewidth=2,
        label=f"federated ({len(single)} gateways)",
    )
    for i, curve in enumerate(single):
        axes.plot(rounds, curve, "--", label=f"trainer {i + 1} alone")
    axes.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title="Digits, non-IID shards")
    axes.set_xticks(rounds)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"wrote {path}")


# --- --local: an aggregator and one gateway per trainer as subprocesses --------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _command() -> list[str]:
    """How to run `branchkey-gateway`: the script next to this Python, on PATH, or `-m gateway`."""
    beside = Path(sys.executable).with_name("branchkey-gateway")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("branchkey-gateway")
    return [found] if found else [sys.executable, "-m", "gateway"]


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without BK_* / GATEWAY_* settings of its own, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BK_", "GATEWAY_"))}
    return {**env, **extra}


def _wait_until_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{url} exited with {process.returncode}:\n{log.read_text()[-2000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout:g} s:\n{log.read_text()[-2000:]}")


@contextlib.contextmanager
def local_federation(trainers: int) -> Iterator[list[str]]:
    """Start `branchkey-gateway aggregator` (one dev leaf per trainer) and one gateway per leaf; yield the gateway URLs."""
    command = _command()
    with (
        tempfile.TemporaryDirectory(prefix="bk-federation-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        processes: list[subprocess.Popen[bytes]] = []

        def launch(
            name: str, args: list[str], env: dict[str, str]
        ) -> tuple[subprocess.Popen[bytes], Path]:
            log = folder / f"{name}.log"
            out = stack.enter_context(log.open("wb"))
            process = subprocess.Popen(  # noqa: S603 - our own command line, no shell
                [*command, *args], cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT
            )
            processes.append(process)
            return process, log

        try:
            port = _free_port()
            aggregator_url = f"http://127.0.0.1:{port}"
            data_dir = folder / "aggregator"
            aggregator, log = launch(
                "aggregator",
                [
                    "aggregator",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(data_dir),
                    "--dev-leaves",
                    str(trainers),
                ],
                _clean_env(),
            )
            deadline = time.monotonic() + 60
            while not (data_dir / "leaves.json").exists() or not _listening(port):
                if aggregator.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the aggregator did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
            leaves = json.loads((data_dir / "leaves.json").read_text())
            urls, started = [], []
            for i, leaf in enumerate(leaves[:trainers]):
                credentials = folder / f"leaf-{i + 1}.json"
                credentials.write_text(json.dumps(leaf))
                gateway_port = _free_port()
                env = _clean_env(
                    BK_HOST=aggregator_url,
                    BK_CREDENTIALS_FILE=str(credentials),
                    GATEWAY_HOST="127.0.0.1",
                    GATEWAY_PORT=str(gateway_port),
                    GATEWAY_DATA_DIR=str(folder / f"gateway-{i + 1}"),
                )
                url = f"http://127.0.0.1:{gateway_port}"
                urls.append(url)
                started.append((url, *launch(f"gateway-{i + 1}", ["serve"], env)))
            for url, process, log in started:
                _wait_until_ready(
                    f"{url}/readyz", process, log
                )  # session and notification channel up
            print(
                f"local federation: aggregator {aggregator_url}, gateways {' '.join(urls)}",
                flush=True,
            )
            yield urls
        finally:
            for process in reversed(processes):  # gateways first, then the aggregator
                _stop(process)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the federation; 0 when it beats every trainer alone."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--local", action="store_true", help="start an aggregator and three gateways"
    )
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "10")))
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--plot", type=Path, default=Path("accuracy.png"), help="where to write the plot"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be at least 1")

    urls = [u.strip() for u in os.environ.get("GATEWAY_URLS", "").split(",") if u.strip()]
    if not args.local and len(urls) < 2:
        parser.error("set GATEWAY_URLS to the trainers' gateways (comma-separated), or use --local")
    trainers = 3 if args.local else len(urls)
    data = load_data(trainers, args.seed)
    sizes = ", ".join(
        f"{len(y)} ({'/'.join(str(int(n)) for n in np.bincount(y, minlength=CLASSES))})"
        for _, y in data.shards
    )
    print(
        f"{trainers} trainers, shard sizes (per class): {sizes}; {len(data.y_test)} test images",
        flush=True,
    )

    try:
        with local_federation(trainers) if args.local else contextlib.nullcontext(urls) as gateways:
            history = federate(gateways, data, args.rounds, args.epochs, args.seed)
    except (httpx.HTTPError, RuntimeError, TimeoutError) as error:
        print(f"federation failed: {error}", file=sys.stderr)
        return 2
    single = alone(data, args.rounds, args.epochs, args.seed)
    best = max(range(trainers), key=lambda i: single[i][-1])
    federated = history[-1].federated
    print(
        "trained alone for the same "
        f"{args.rounds * args.epochs} epochs: " + " ".join(f"{curve[-1]:.4f}" for curve in single)
    )
    print(f"best single shard accuracy {single[best][-1]:.4f} (trainer {best + 1})")
    print(f"federated accuracy {federated:.4f} after {args.rounds} rounds")
    plot(args.plot, history, single)
    beats = federated > single[best][-1]
    print(f"federated beats the best single shard: {'yes' if beats else 'NO'}")
    return 0 if beats else 1


if __name__ == "__main__":
    sys.exit(main())
