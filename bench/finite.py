"""Benchmark: what the NaN/Inf check costs an upload's receive, same run, check on against check off.

    python bench/finite.py [--size 512M] [--repeat 3] [--dir DIR] [--forms form,raw] [--compressed]

It writes one SDK-layout NPZ (`weighting` + eight float32 layers, stored; `--compressed` adds a
deflated one of the same layers) and serves a small app on a loopback port whose one route runs
the gateway's own upload steps: `receiving.receive` (the body to disk, hashed, and with the check
on fed to `weights.StreamScan` beside the hash) and then `weights.upload_to_npz` (header validation,
and with the check on the verdict of every member, reading back only what the scan did not see).
curl sends the file (`-F file=@` and/or a raw body), alternating check on and off so both see the
same machine load; the server times each step, and the CPU time its process spent on the request
(all threads: the event loop parsing, the writer hashing and scanning, validation). The table gives
medians of `--repeat` runs and the overhead of the check against the same run without it, in wall
time (best and median; target: at most 15 % of the receive time, judged on the best run, the least
disturbed by other work) and in CPU time (the check's own work, whatever else the machine runs).
It never asserts and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/finite.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import uvicorn
from anyio import to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.procs import free_port
from gateway.receiving import Scratch, receive
from gateway.weights import StreamScan, ValidationPolicy, upload_to_npz
from gateway.weights.policy import GiB

LAYERS = 8
TARGET = 0.15


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def write_model(path: Path, size: int, *, compressed: bool) -> None:
    """`weighting` and LAYERS float32 layers of normal noise, about `size` bytes of data."""
    rng = np.random.default_rng(0)
    count = size // LAYERS // 4
    arrays: dict[str, Any] = {"weighting": np.float64(128)}
    arrays.update(
        (f"layer_{i}", rng.standard_normal(count, dtype=np.float32)) for i in range(LAYERS)
    )
    if compressed:
        np.savez_compressed(path, **arrays)
    else:
        np.savez(path, **arrays)


def app(scratch: Path) -> Starlette:
    """One route: the gateway's receive and validation steps, timed, with the check on or off."""
    policy_on = ValidationPolicy(limits=ValidationPolicy().limits)
    policy_off = ValidationPolicy(finite=False)

    async def measure(request: Request) -> JSONResponse:
        check = request.query_params.get("check") == "1"
        policy = policy_on if check else policy_off
        folder = scratch / f"run-{time.monotonic_ns()}"
        folder.mkdir()
        area = Scratch(folder)
        try:
            began, cpu = time.perf_counter(), time.process_time()
            scan = StreamScan(policy.limits) if check else None
            received = await receive(request, area, 64 * GiB, scan)
            got = time.perf_counter()
            assert received.file is not None  # noqa: S101 - the bench sends one file
            incoming = await to_thread.run_sync(
                functools.partial(
                    upload_to_npz,
                    received.file.path,
                    area.new(".npz"),
                    policy,
                    scan=received.file.scan,
                )
            )
            done, cpu_done = time.perf_counter(), time.process_time()
        finally:
            await to_thread.run_sync(area.cleanup)
            shutil.rmtree(folder, ignore_errors=True)
        return JSONResponse(
            {
                "receive_s": got - began,
                "validate_s": done - got,
                "cpu_s": cpu_done - cpu,
                "layers": incoming.payload.layer_count,
                "read_back": 0
                if scan is None
                else sum(1 for m in scan.members.values() if not m.complete),
            }
        )

    return Starlette(routes=[Route("/receive", measure, methods=["POST"])])


@contextlib.contextmanager
def serving(scratch: Path) -> Iterator[str]:
    """The app on a free loopback port, in a thread."""
    port = free_port()
    config = uvicorn.Config(
        app(scratch), host="127.0.0.1", port=port, log_level="warning", http="httptools"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def send(url: str, path: Path, form: str, check: bool) -> dict[str, float]:
    """One upload with curl; the server's timings."""
    target = f"{url}/receive?check={int(check)}"
    if form == "form":
        body = ["-F", f"file=@{path}"]
    else:
        body = ["-T", str(path), "-X", "POST", "-H", "Content-Type: application/octet-stream"]
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *body, target],  # noqa: S607 - curl on PATH
        capture_output=True,
        check=True,
    )
    timings: dict[str, float] = json.loads(out.stdout)
    return timings


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512M", help="Bytes of layer data (default 512M).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs per row (median shown).")
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the models.")
    parser.add_argument("--forms", default="form,raw", help="form (curl -F), raw (a raw body).")
    parser.add_argument("--compressed", action="store_true", help="Also a deflated NPZ.")
    args = parser.parse_args(argv)
    size = _size(args.size)
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bench-finite-"))
    folder.mkdir(parents=True, exist_ok=True)
    models = {"stored": folder / "stored.npz"}
    if args.compressed:
        models["deflated"] = folder / "deflated.npz"
    for name, path in models.items():
        write_model(path, size, compressed=name == "deflated")
    scratch = folder / "scratch"
    scratch.mkdir(exist_ok=True)
    rows = []
    try:
        with serving(scratch) as url:
            for name, path in models.items():
                for form in args.forms.split(","):
                    send(url, path, form, True)  # warm the page cache and the code paths
                    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
                    for _ in range(args.repeat):
                        for check in (False, True):
                            runs[check].append(send(url, path, form, check))
                    rows.append((name, form, path.stat().st_size, runs))
    finally:
        shutil.rmtree(folder, ignore_errors=args.dir is None)
    print_table(rows, size, args.repeat)
    return 0


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _best(runs: list[dict[str, float]]) -> float:
    return min(run["receive_s"] + run["validate_s"] for run in runs)


def print_table(
    rows: list[tuple[str, str, int, dict[bool, list[dict[str, float]]]]], size: int, repeat: int
) -> None:
    """One line per (model, form, check), with the check's overhead against the same run without it:
    on the best of the runs (the least disturbed by other work) and on their medians."""
    print(f"NaN/Inf check cost: {size / 2**20:.0f} MiB of float32 layers, {repeat} runs each")
    header = (
        f"{'model':9} {'form':5} {'check':5} {'file MiB':>8} {'receive s':>9} {'validate s':>10} "
        f"{'median s':>8} {'best s':>7} {'MiB/s':>6} {'best +':>8} {'median +':>9} {'target':>6} "
        f"{'CPU s':>6} {'CPU +':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, form, nbytes, runs in rows:
        base = _median(runs[False], "receive_s") + _median(runs[False], "validate_s")
        base_best = _best(runs[False])
        base_cpu = _median(runs[False], "cpu_s")
        for check in (False, True):
            receive_s = _median(runs[check], "receive_s")
            validate_s = _median(runs[check], "validate_s")
            cpu = _median(runs[check], "cpu_s")
            total, best = receive_s + validate_s, _best(runs[check])
            more = best / base_best - 1
            verdict = ("PASS" if more <= TARGET else "FAIL") if check else ""
            best_more = f"{more:+.1%}" if check else "baseline"
            median_more = f"{total / base - 1:+.1%}" if check else "baseline"
            cpu_more = f"{cpu / base_cpu - 1:+.1%}" if check else "baseline"
            print(
                f"{name:9} {form:5} {'on' if check else 'off':5} {nbytes / 2**20:8.0f} "
                f"{receive_s:9.3f} {validate_s:10.3f} {total:8.3f} {best:7.3f} "
                f"{nbytes / 2**20 / best:6.0f} {best_more:>8} {median_more:>9} {verdict:>6} "
                f"{cpu:6.2f} {cpu_more:>7}"
            )


if __name__ == "__main__":
    sys.exit(main())
