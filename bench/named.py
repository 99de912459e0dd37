"""Benchmark: safetensors uploads and `?format=safetensors` downloads against the NPZ path, same run.

    python bench/named.py [--size 512M] [--dir DIR] [--repeat N]

The parent writes one model twice with the same tensors and bytes (bench/weights.py's transformer-like
layout, float32, stored): the BranchKey NPZ (`weighting` + `layer_0..`) and a safetensors file in
PyTorch-style names. It starts a local aggregator with one dev leaf and a gateway in front of it (as
bench/transfer.py does: subprocesses on free loopback ports, temp data dirs) and measures with curl

  uploads    `curl -F file=@w.npz` (the baseline) and `curl -F file=@m.safetensors -F weighting=1`
             to POST /upload; each completes a round, and the next step waits for its FedAvg;
  downloads  GET /aggregations/{id} of the NPZ upload's aggregation: `?format=npz` first (cold: the
             gateway fetches it from the aggregator) and again (cached), then `?format=safetensors`
             (the plain NPZ cached, rewritten in the trainer's names) and again (cached); and of the
             safetensors upload's aggregation `?format=safetensors` cold (fetch and rewrite) and
             `?format=npz&names=original`.

For every step: wall time (curl's time_total; the median of --repeat runs where a step repeats), the
ratio to its NPZ baseline in this run, and the gateway's peak RSS above its idle RSS (10 ms samples and
the kernel's VmHWM, reset per step). It prints a table; it never asserts and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/named.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.procs import BenchError, RssTrace
from bench.transfer import Aggregator, Gateway, Phase, run_curl
from bench.weights import (
    Layout,
    fmt_bytes,
    fmt_seconds,
    generate,
    layout_for,
    parse_size,
    random_chunks,
)
from gateway.weights.safetensors import OutTensor, write_safetensors

AGGREGATION_TIMEOUT = 600.0


def write_model_safetensors(path: Path, layout: Layout, seed: int) -> None:
    """The layout's tensors with the bytes `generate` writes for `seed`, as safetensors, streamed."""
    rng = np.random.default_rng(seed)

    def chunks(count: int) -> Iterator[bytes]:
        for chunk in random_chunks(rng, count):
            yield bytes(chunk)

    tensors = [
        OutTensor(
            f"model.t{index:03d}.weight", "F32", shape, functools.partial(chunks, math.prod(shape))
        )
        for index, shape in enumerate(layout.shapes)
    ]
    with path.open("wb") as out:
        write_safetensors(out, tensors)


@dataclass(frozen=True)
class Row:
    """One measured step."""

    operation: str
    seconds: float
    nbytes: int
    gateway_delta: int
    baseline: str | None
    """The operation this one is compared with (None: it is a baseline)."""


class Bench:
    """The aggregator, the gateway, and the steps measured against them."""

    def __init__(self, gateway: Gateway, aggregator: Aggregator, scratch: Path, repeat: int):
        self.gateway = gateway
        self.aggregator = aggregator
        self.scratch = scratch
        self.repeat = repeat
        self.trace = RssTrace(gateway.pid)
        self.trace.start()
        self.rows: list[Row] = []

    def step(
        self, operation: str, args: list[str], expect: int, baseline: str | None, *, once: bool
    ) -> None:
        """Run curl (`repeat` times unless `once`), keeping the median time and the peak RSS."""
        runs = []
        for _ in range(1 if once else self.repeat):
            phase = Phase(self.trace, self.trace.idle(0.5))
            transfer = run_curl(args, self.scratch, lambda: None)
            peak = phase.end()
            if transfer.status != expect:
                raise BenchError(f"{operation}: HTTP {transfer.status}: {transfer.body[:300]}")
            runs.append((transfer.seconds, transfer.nbytes, peak.delta))
        seconds = statistics.median(r[0] for r in runs)
        delta = max(r[2] for r in runs)
        self.rows.append(Row(operation, seconds, runs[0][1], delta, baseline))

    def fresh_run(self) -> None:
        """A new run, once the gateway has heard of it: the converted safetensors upload may be the
        very bytes of the NPZ upload, which the aggregator counts once per run."""
        self.aggregator.fresh_run(self.gateway)

    def upload(self, operation: str, form: list[str], baseline: str | None) -> str:
        """One upload (a round): the id of the aggregation it completed, once aggregated."""
        known = set(self.aggregator.aggregations())
        self.step(operation, [*form, f"{self.gateway.base}/upload"], 201, baseline, once=True)
        record = self.aggregator.wait_new_aggregation(known, AGGREGATION_TIMEOUT)
        if record["status"] != "done":
            raise BenchError(f"aggregation {record['aggregation_id']}: {record['status']}")
        self.wait_announced(str(record["aggregation_id"]))
        return str(record["aggregation_id"])

    def wait_announced(self, aggregation_id: str) -> None:
        """Until the gateway has heard of the aggregation (its download needs no session then)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            latest = self.gateway.http.get(f"{self.gateway.base}/aggregations/latest")
            if latest.status_code == 200 and latest.json()["aggregation_id"] == aggregation_id:
                return
            time.sleep(0.1)
        raise BenchError(f"the gateway never announced {aggregation_id}")

    def download(
        self, operation: str, aggregation_id: str, query: str, baseline: str | None, *, once: bool
    ) -> None:
        """GET /aggregations/{id}{query} to /dev/null."""
        url = f"{self.gateway.base}/aggregations/{aggregation_id}{query}"
        self.step(operation, ["-o", "/dev/null", url], 200, baseline, once=once)


def print_table(rows: list[Row], title: str) -> None:
    """The steps with their ratio to the baseline of the same run."""
    times = {row.operation: row.seconds for row in rows}
    header = ["operation", "time", "vs baseline", "MiB/s", "gateway RSS above idle"]
    lines = [header]
    for row in rows:
        ratio = "baseline" if row.baseline is None else f"{row.seconds / times[row.baseline]:.2f}x"
        lines.append(
            [
                row.operation,
                fmt_seconds(row.seconds),
                ratio if row.baseline is None else f"{ratio} {row.baseline.split(',')[0]}",
                f"{row.nbytes / 2**20 / max(row.seconds, 1e-9):.0f}",
                fmt_bytes(row.gateway_delta),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(title)
    for index, line in enumerate(lines):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def run(size: int, folder: Path, repeat: int) -> None:
    layout = layout_for(fmt_bytes(size).replace(" ", ""), size)
    npz, st = folder / "w.npz", folder / "m.safetensors"
    generate(npz, layout, 1.0, seed=1, compressed=False)
    write_model_safetensors(st, layout, seed=1)
    print(
        f"model: {len(layout.shapes)} float32 tensors, {fmt_bytes(layout.data_bytes)}; "
        f"w.npz {fmt_bytes(npz.stat().st_size)}, m.safetensors {fmt_bytes(st.stat().st_size)}"
    )
    aggregator, gateway = Aggregator(folder / "agg"), Gateway(folder / "gw")
    try:
        aggregator.start()
        gateway.start(aggregator)
        bench = Bench(gateway, aggregator, folder, repeat)
        up_npz = "upload NPZ (curl -F)"
        from_npz = bench.upload(up_npz, ["-F", f"file=@{npz}"], None)
        bench.fresh_run()
        from_st = bench.upload(
            "upload safetensors (curl -F, weighting=1)",
            ["-F", f"file=@{st}", "-F", "weighting=1"],
            up_npz,
        )
        cold, cached = "download npz, cold (fetched upstream)", "download npz, cached"
        safetensors, original = "?format=safetensors", "?format=npz&names=original"
        bench.download(cold, from_npz, "", None, once=True)
        bench.download(cached, from_npz, "", None, once=False)
        rewrite = "download safetensors, npz cached (rewrite)"
        bench.download(rewrite, from_npz, safetensors, cached, once=True)
        bench.download("download safetensors, cached", from_npz, safetensors, cached, once=False)
        fetched = "download safetensors, cold (fetch + rewrite)"
        bench.download(fetched, from_st, safetensors, cold, once=True)
        bench.download(
            "download npz names=original (rewrite)", from_st, original, cached, once=True
        )
        bench.trace.stop()
        print_table(bench.rows, f"\nnamed tensors through the gateway, {fmt_bytes(size)} model:")
    finally:
        for service in (gateway, aggregator):
            print(service.stop())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", default="512M", help="Model size (default 512M).")
    parser.add_argument("--dir", type=Path, default=None, help="Work folder (default: a temp one).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each cached download.")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        run(size, args.dir, args.repeat)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-named-") as folder:
            run(size, Path(folder), args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
