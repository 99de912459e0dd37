"""Benchmark: header-only NPZ validation and streaming FedAvg on 64 MiB .. 2 GiB payloads.

    python bench/weights.py [--sizes 64M,512M,2G] [--dir DIR] [--keep] [--compressed] [--profile]
                            [--only fedavg] [--runs N] [--baseline-tree DIR] [--cold]

`--only fedavg` skips validation and times, in the same run and alternating N times, a plain
sequential read of the leaf files (`readinto` 8 MiB at a time, no parsing) and FedAvg over the
same files, then prints FedAvg's time as a multiple of the read (the wire-speed bound). With
`--baseline-tree DIR` FedAvg also runs from another source tree (e.g. `git archive main | tar -x`)
on the same files, for a same-run before/after. `--cold` drops the leaf files (only those) from
the page cache before every timed run (`posix_fadvise(DONTNEED)`), so both read from the disk.

The parent generates leaf payloads in the SDK's layout (`weighting` float64 (1,), `layer_0..`
float32) with a streaming writer, then measures every operation in a fresh interpreter so that
peak RSS is clean: the child imports numpy and gateway.weights, records its baseline RSS, and runs
the operation while a thread samples RSS every 5 ms (the kernel's high-water mark is the
cross-check). It prints a table with informational PASS/FAIL targets; it never asserts and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from gateway.weights import ValidationPolicy, WeightsError, fedavg, inspect_payload
from gateway.weights.npy import header_bytes
from gateway.weights.writer import NpzWriter

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

LEAVES = 3
WEIGHTINGS = (120.0, 340.0, 540.0)
"""Sample counts of the three leaves: different, so the mean is really weighted."""
VALIDATE_RUNS = 5
GEN_CHUNK_BYTES = 16 * MiB
SAMPLE_SECONDS = 0.005
READ_CHUNK_BYTES = 8 * MiB
FEDAVG_READ_RATIO = 1.5
FEDAVG_MIN_RATE = GiB

VALIDATE_MAX_SECONDS = 0.050
VALIDATE_MAX_RSS = 32 * MiB
FEDAVG_SLACK = 64 * MiB

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

# Transformer-like model: token embedding (about 1/4 of the parameters), positions, BLOCKS blocks
# of (ln, qkv, proj, ln, fc1, fc2) with biases, a final norm and a small classifier head.
BLOCKS = 6
CONTEXT = 512
CLASSES = 1000


# --------------------------------------------------------------------------------------------
# Model layout and generation (parent)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Shapes of `layer_0..layer_{n-1}` (all float32) for a payload of about `target` bytes."""

    label: str
    target: int
    shapes: tuple[tuple[int, ...], ...]

    @property
    def layer_bytes(self) -> list[int]:
        return [math.prod(shape) * F32.itemsize for shape in self.shapes]

    @property
    def data_bytes(self) -> int:
        return sum(self.layer_bytes) + F64.itemsize

    @property
    def largest(self) -> tuple[int, int]:
        """(index, bytes) of the largest layer."""
        sizes = self.layer_bytes
        index = max(range(len(sizes)), key=sizes.__getitem__)
        return index, sizes[index]


def layout_for(label: str, target: int) -> Layout:
    params = target // F32.itemsize
    d = max(16, round(math.sqrt(params / 96) / 16) * 16)
    blocks: list[tuple[int, ...]] = []
    for _ in range(BLOCKS):
        blocks += [
            (d,),  # ln_1.weight
            (d,),  # ln_1.bias
            (3 * d, d),  # attn.qkv.weight
            (3 * d,),  # attn.qkv.bias
            (d, d),  # attn.proj.weight
            (d,),  # attn.proj.bias
            (d,),  # ln_2.weight
            (d,),  # ln_2.bias
            (4 * d, d),  # mlp.fc1.weight
            (4 * d,),  # mlp.fc1.bias
            (d, 4 * d),  # mlp.fc2.weight
            (d,),  # mlp.fc2.bias
        ]
    tail: list[tuple[int, ...]] = [(d,), (d,), (CLASSES, d), (CLASSES,)]
    rest = sum(math.prod(s) for s in [(CONTEXT, d), *blocks, *tail])
    vocab = max(1, (params - rest) // d)
    return Layout(label, target, ((vocab, d), (CONTEXT, d), *blocks, *tail))


def leaf_path(directory: Path, layout: Layout, index: int, compressed: bool) -> Path:
    suffix = "-deflate" if compressed else ""
    return directory / f"leaf-{layout.label}-{index}{suffix}.npz"


def is_reusable(path: Path, layout: Layout, weighting: float, compressed: bool) -> bool:
    """An existing file is reused only if every member has exactly the expected size."""
    if not path.is_file():
        return False
    expected = {"weighting.npy": len(header_bytes(F64, (1,), False)) + F64.itemsize}
    for i, shape in enumerate(layout.shapes):
        data = math.prod(shape) * F32.itemsize
        expected[f"layer_{i}.npy"] = len(header_bytes(F32, shape, False)) + data
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
        if {i.filename: i.file_size for i in infos} != expected:
            return False
        if any(i.compress_type != method for i in infos):
            return False
        return inspect_payload(path, ValidationPolicy()).weighting == weighting
    except (OSError, zipfile.BadZipFile, WeightsError):
        return False


def random_chunks(rng: np.random.Generator, count: int) -> Iterator[memoryview]:
    step = GEN_CHUNK_BYTES // F32.itemsize
    left = count
    while left > 0:
        n = min(step, left)
        values = rng.standard_normal(n, dtype=np.float32)
        values *= 0.02
        yield values.view(np.uint8).data
        left -= n


def generate(path: Path, layout: Layout, weighting: float, seed: int, compressed: bool) -> None:
    """Write one leaf member by member; memory holds one ~16 MiB chunk, never the model."""
    rng = np.random.default_rng(seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with NpzWriter(tmp, compress=compressed) as writer:
            writer.write_weighting(weighting)
            for i, shape in enumerate(layout.shapes):
                chunks = random_chunks(rng, math.prod(shape))
                writer.write_stream(f"layer_{i}", F32, shape, False, chunks)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Measurement (child)
# --------------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Record the peak RSS every few milliseconds until stopped."""

    def __init__(self, process: psutil.Process, interval: float) -> None:
        super().__init__(daemon=True)
        self._process = process
        self._interval = interval
        self._stop_event = threading.Event()
        self.peak = 0
        self.samples = 0

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            self.samples += 1
            if self._stop_event.wait(self._interval):
                break
        self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so it covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def high_water_mark() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def ru_maxrss() -> int:
    """Lifetime peak RSS in bytes (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def plain_read(paths: Sequence[Path]) -> int:
    """Read the files one after another into one reused buffer: the floor FedAvg is held to."""
    buffer = bytearray(READ_CHUNK_BYTES)
    total = 0
    for path in paths:
        with path.open("rb", buffering=0) as file:
            while n := file.readinto(buffer):
                total += n
    return total


def child_main(op: str, paths: Sequence[str], out: str | None, profile: bool) -> None:
    inputs = [Path(p) for p in paths]
    dst = Path(out) if out else None
    gc.collect()
    process = psutil.Process()
    sampler = Sampler(process, SAMPLE_SECONDS)
    sampler.start()
    hwm_reset = reset_high_water_mark()
    baseline = process.memory_info().rss
    ru_before = ru_maxrss()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    profiler = cProfile.Profile() if profile else None
    detail: dict[str, Any] = {}
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    if op == "validate":
        payload = inspect_payload(inputs[0], ValidationPolicy())
        detail["arrays"] = len(payload.arrays)
    elif op == "read":
        detail["bytes"] = plain_read(inputs)
    elif op == "fedavg" and dst is not None:
        result = fedavg(inputs, dst, ValidationPolicy())
        detail["arrays"] = len(result.arrays)
        detail["output_bytes"] = result.size
    else:
        raise SystemExit(f"unknown child operation {op!r} (fedavg needs --out)")
    if profiler is not None:
        profiler.disable()
    wall = time.perf_counter() - start
    ru_after = ru_maxrss()
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    hwm = high_water_mark() if hwm_reset else None
    sampler.stop()
    if dst is not None:
        dst.unlink(missing_ok=True)
    # ru_maxrss is a lifetime peak (and, after vfork+exec, may even carry the parent's peak):
    # it says something about the operation only if it grew while the operation ran.
    kernel_candidates = [hwm or 0, ru_after if ru_after > ru_before else 0]
    kernel = max(kernel_candidates)
    report: dict[str, Any] = {
        "op": op,
        "wall": wall,
        "baseline": baseline,
        "sampled_peak": sampler.peak,
        "samples": sampler.samples,
        "kernel_peak": kernel or None,
        "ru_before": ru_before,
        "ru_after": ru_after,
        "user": usage_after.ru_utime - usage_before.ru_utime,
        "system": usage_after.ru_stime - usage_before.ru_stime,
        "minor_faults": usage_after.ru_minflt - usage_before.ru_minflt,
        "vmhwm": hwm,
        "peak_delta": max(0, max(sampler.peak, kernel) - baseline),
        **detail,
    }
    if profiler is not None:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(15)
        report["profile"] = text.getvalue()
    print(json.dumps(report))


# --------------------------------------------------------------------------------------------
# Orchestration (parent)
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    size: str
    operation: str
    wall: str = "-"
    rate: str = "-"
    peak: str = "-"
    largest: str = "-"
    target: str = "-"
    result: str = "-"

    def cells(self) -> list[str]:
        return [
            self.size,
            self.operation,
            self.wall,
            self.rate,
            self.peak,
            self.largest,
            self.target,
            self.result,
        ]


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[tuple[str, str]] = field(default_factory=list)


def run_child(args: list[str], tree: Path | None = None) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child exited {proc.returncode}: {tail}"}
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def fmt_bytes(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / KiB:.0f} KiB"


def fmt_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


def fmt_peak(result: dict[str, Any]) -> str:
    sampled = max(0, result["sampled_peak"] - result["baseline"])
    kernel = result["kernel_peak"]
    kernel_text = fmt_bytes(max(0, kernel - result["baseline"])) if kernel else "n/a"
    return f"{fmt_bytes(result['peak_delta'])} (s {fmt_bytes(sampled)} / k {kernel_text})"


@dataclass(frozen=True)
class Options:
    directory: Path
    compressed: bool
    keep: bool
    profile: bool
    only_fedavg: bool
    runs: int
    baseline_tree: Path | None
    cold: bool


def evict(paths: Sequence[Path]) -> None:
    """Drop the files' pages from the page cache, so that the next read comes from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_speed(
    label: str, leaves: list[Path], largest: int, options: Options, report: Report
) -> None:
    """FedAvg against a plain read of the same files, alternating, `runs` times, same run."""
    out = options.directory / f"fedavg-{label}.npz"
    read = sum(p.stat().st_size for p in leaves)
    trees: list[tuple[str, Path | None]] = [("fedavg", None)]
    if options.baseline_tree is not None:
        trees.insert(0, (f"fedavg ({options.baseline_tree.name})", options.baseline_tree))
    results: dict[str, list[dict[str, Any]]] = {"plain read": []}
    results.update({name: [] for name, _ in trees})
    for run in range(options.runs):
        print(f"[{label}] run {run + 1}/{options.runs}: plain read, fedavg ...", flush=True)
        if options.cold:
            evict(leaves)
        results["plain read"].append(run_child(["read", *map(str, leaves)]))
        for name, tree in trees:
            if options.cold:
                evict(leaves)
            try:
                args = ["fedavg", *map(str, leaves), "--out", str(out)]
                results[name].append(run_child(args, tree))
            finally:
                out.unlink(missing_ok=True)
    errors = [r["error"] for rs in results.values() for r in rs if "error" in r]
    if errors:
        report.rows.append(Row(label, "fedavg vs read", result=f"ERROR {errors[0]}"))
        return
    floor = statistics.median(r["wall"] for r in results["plain read"])
    limit = 2 * largest + FEDAVG_SLACK
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        worst = max(runs, key=lambda r: int(r["peak_delta"]))
        rate = read / wall
        ratio = wall / floor
        is_fedavg = name != "plain read"
        ok = (rate >= FEDAVG_MIN_RATE or ratio <= FEDAVG_READ_RATIO) and (
            worst["peak_delta"] < limit
        )
        cpu = statistics.median(r["user"] + r["system"] for r in runs)
        report.rows.append(
            Row(
                label,
                f"{name} x{len(runs)} (median)",
                wall=fmt_seconds(wall),
                rate=f"{rate / MiB:.0f} MiB/s in, {ratio:.2f}x read, CPU {cpu:.2f} s",
                peak=fmt_peak(worst),
                largest=fmt_bytes(largest),
                target=(
                    f">= {FEDAVG_MIN_RATE / MiB:.0f} MiB/s or <= {FEDAVG_READ_RATIO}x read, "
                    f"< {fmt_bytes(limit)}"
                    if is_fedavg
                    else "baseline"
                ),
                result=("PASS" if ok else "FAIL") if is_fedavg else "-",
            )
        )


def bench_size(label: str, target: int, options: Options, report: Report) -> None:
    directory, compressed, keep, profile = (
        options.directory,
        options.compressed,
        options.keep,
        options.profile,
    )
    layout = layout_for(label, target)
    largest_index, largest = layout.largest
    leaves = [leaf_path(directory, layout, i, compressed) for i in range(LEAVES)]
    reusable = [is_reusable(p, layout, WEIGHTINGS[i], compressed) for i, p in enumerate(leaves)]
    missing = reusable.count(False)
    need = int((missing + 1) * layout.data_bytes * 1.02) + 64 * MiB
    free = shutil.disk_usage(directory).free
    if free < need:
        message = f"skipped: needs {fmt_bytes(need)} free in {directory}, has {fmt_bytes(free)}"
        print(f"[{label}] {message}", flush=True)
        report.rows.append(Row(label, "all", result=message))
        return
    report.notes.append(
        f"{label}: {len(layout.shapes)} float32 layers + weighting, "
        f"{fmt_bytes(layout.data_bytes)} of data per leaf; largest layer_{largest_index} "
        f"{layout.shapes[largest_index]} = {fmt_bytes(largest)} "
        f"({100 * largest / layout.data_bytes:.0f}% of the model)"
    )
    try:
        for i, path in enumerate(leaves):
            if reusable[i]:
                print(f"[{label}] reusing {path}", flush=True)
                continue
            print(f"[{label}] generating {path} ...", end=" ", flush=True)
            start = time.perf_counter()
            generate(path, layout, WEIGHTINGS[i], seed=1000 * target + i, compressed=compressed)
            took = time.perf_counter() - start
            print(f"{fmt_bytes(path.stat().st_size)} in {took:.1f} s", flush=True)
        file_size = leaves[0].stat().st_size
        if options.only_fedavg:
            bench_speed(label, leaves, largest, options, report)
            return

        print(f"[{label}] validating x{VALIDATE_RUNS} ...", flush=True)
        runs = [run_child(["validate", str(leaves[0])]) for _ in range(VALIDATE_RUNS)]
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            report.rows.append(Row(label, "validate", result=f"ERROR {errors[0]}"))
        else:
            wall = statistics.median(r["wall"] for r in runs)
            worst = max(runs, key=lambda r: int(r["peak_delta"]))
            ok = wall < VALIDATE_MAX_SECONDS and worst["peak_delta"] < VALIDATE_MAX_RSS
            report.rows.append(
                Row(
                    label,
                    f"validate x{VALIDATE_RUNS} (median, max RSS)",
                    wall=fmt_seconds(wall),
                    rate=f"{fmt_bytes(file_size)} file",
                    peak=fmt_peak(worst),
                    largest=fmt_bytes(largest),
                    target=f"< {VALIDATE_MAX_SECONDS * 1000:.0f} ms, < {fmt_bytes(VALIDATE_MAX_RSS)}",
                    result="PASS" if ok else "FAIL",
                )
            )

        out = directory / f"fedavg-{label}.npz"
        print(f"[{label}] fedavg of {LEAVES} leaves ...", flush=True)
        try:
            result = run_child(["fedavg", *map(str, leaves), "--out", str(out)])
        finally:
            out.unlink(missing_ok=True)
        limit = 2 * largest + FEDAVG_SLACK
        if "error" in result:
            report.rows.append(Row(label, f"fedavg K={LEAVES}", result=f"ERROR {result['error']}"))
        else:
            read = sum(p.stat().st_size for p in leaves)
            report.notes.append(
                f"{label} fedavg: CPU user {result['user']:.2f} s + system {result['system']:.2f} s "
                f"over {result['wall']:.2f} s wall, {result['minor_faults']} minor page faults, "
                f"output {fmt_bytes(result['output_bytes'])}"
            )
            ok = result["peak_delta"] < limit
            report.rows.append(
                Row(
                    label,
                    f"fedavg K={LEAVES}",
                    wall=fmt_seconds(result["wall"]),
                    rate=f"{read / result['wall'] / MiB:.0f} MiB/s in",
                    peak=fmt_peak(result),
                    largest=fmt_bytes(largest),
                    target=f"< {fmt_bytes(limit)} (2x largest + 64 MiB)",
                    result="PASS" if ok else "FAIL",
                )
            )
        if profile:
            print(f"[{label}] fedavg under cProfile ...", flush=True)
            try:
                profiled = run_child(["fedavg", *map(str, leaves), "--out", str(out), "--profile"])
            finally:
                out.unlink(missing_ok=True)
            text = profiled.get("profile") or profiled.get("error", "")
            report.profiles.append((label, str(text)))
    finally:
        if not keep:
            for path in leaves:
                path.unlink(missing_ok=True)


def print_table(report: Report) -> None:
    header = ["size", "operation", "wall", "data", "peak RSS above baseline", "largest layer"]
    header += ["target", "result"]
    table = [header] + [row.cells() for row in report.rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    print()
    for n, line in enumerate(table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * width for width in widths))
    print()
    print("peak RSS: max(sampler every 5 ms, kernel high-water mark) minus the child's baseline")
    print("  after `import numpy, gateway.weights`; s = sampler, k = VmHWM/ru_maxrss.")
    print("targets are informational; validation's (set for 2 GiB) is applied to every size.")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for note in report.notes:
        print(f"  {note}")
    for label, text in report.profiles:
        print(f"\ncProfile of fedavg {label} (tottime):\n{text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="64M,512M,2G", help="comma-separated, e.g. 64M,2G")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "branchkey-bench-weights",
        help="where leaf payloads are written (and reused)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated payloads")
    parser.add_argument(
        "--compressed", action="store_true", help="deflate payloads like savez_compressed (slow)"
    )
    parser.add_argument("--profile", action="store_true", help="also run fedavg under cProfile")
    parser.add_argument(
        "--only",
        choices=["fedavg"],
        help="fedavg: skip validation; time FedAvg against a plain read of the same files",
    )
    parser.add_argument("--runs", type=int, default=3, help="alternating runs with --only fedavg")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="with --only fedavg: also run FedAvg from this source tree (same files, same run)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="with --only fedavg: evict the leaf files from the page cache before every run",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        op, *paths = args.child
        child_main(op, paths, args.out, args.profile)
        return 0

    labels = [s.strip() for s in args.sizes.split(",") if s.strip()]
    try:
        sizes = [(label, parse_size(label)) for label in labels]
    except ValueError:
        parser.error(f"--sizes takes sizes like 64M,512M,2G (got {args.sizes!r})")
    directory: Path = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"{fmt_bytes(psutil.virtual_memory().total)} RAM, dir {directory} "
        f"({'deflate' if args.compressed else 'stored'} payloads"
        f"{', page cache evicted before each run' if args.cold else ''}), "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    report = Report()
    if args.runs < 1:
        parser.error("--runs takes a count >= 1")
    options = Options(
        directory=directory,
        compressed=args.compressed,
        keep=args.keep,
        profile=args.profile,
        only_fedavg=args.only == "fedavg",
        runs=args.runs,
        baseline_tree=args.baseline_tree.resolve() if args.baseline_tree else None,
        cold=args.cold,
    )
    for label, size in sizes:
        bench_size(label, size, options, report)
    print_table(report)
    if not args.keep:
        with contextlib.suppress(OSError):  # not empty: it holds files this run did not make
            directory.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
