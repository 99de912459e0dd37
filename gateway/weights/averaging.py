"""Federated averaging of learning payloads, layer by layer and chunk by chunk from disk."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from gateway.weights.archive import Archive, Member
from gateway.weights.errors import WeightsError
from gateway.weights.members import MemberData
from gateway.weights.model import LEARNING, Payload, layer_key
from gateway.weights.npy import array_from_bytes
from gateway.weights.npz import inspect_aggregate, inspect_npz
from gateway.weights.policy import ValidationPolicy
from gateway.weights.writer import MemberSink, NpzWriter, atomic_path

_CHUNK_BYTES = 4 << 20
"""Bytes of each input read at once (two such buffers per input)."""
_BLOCK = 1 << 16
"""Elements averaged at once: float64 accumulators of 512 KiB stay in the CPU cache."""
_WIDEST = np.dtype(np.clongdouble).itemsize
"""The largest item size of a numeric dtype, for buffers shared by every layer."""


def fedavg(
    inputs: Sequence[Path],
    dst: Path,
    policy: ValidationPolicy | None = None,
    *,
    compress: bool = False,
    weightings: Sequence[float] | None = None,
) -> Payload:
    """Write the weighting-weighted mean of K learning NPZ payloads as an NPZ of `layer_i`.

    Memory is a few chunks per input, whatever the layer sizes or K: a thread per input reads
    the next chunk of a layer and one writes the previous chunk while this one is averaged.
    Accumulation is float64 (complex128 for complex layers, extended precision for wider
    types); each output layer has its inputs' dtype, rounded to the nearest value for integer
    and bool layers. `weightings`, one per input, replaces the payloads' own (all 1.0: the
    unweighted mean).
    """
    policy = policy or ValidationPolicy()
    if not inputs:
        raise WeightsError("no-inputs", "FedAvg needs at least one payload.")
    payloads = [inspect_npz(path, policy) for path in inputs]
    weights = [_weight(i, payload) for i, payload in enumerate(payloads)]
    if weightings is not None:
        weights = [float(w) for w in weightings]
    total = math.fsum(weights)
    if total == 0:
        raise WeightsError(
            "zero-weighting", "The weightings of all payloads sum to 0, so no average exists."
        )
    _check_agreement(payloads)
    with contextlib.ExitStack() as stack:
        archives = [stack.enter_context(Archive(path, policy.limits)) for path in inputs]
        pool = stack.enter_context(
            ThreadPoolExecutor(max_workers=len(inputs) + 1, thread_name_prefix="fedavg")
        )
        work = _Workspace(pool, len(inputs))
        ordered = [
            _ordered_members(archive, payload)
            for archive, payload in zip(archives, payloads, strict=True)
        ]
        with atomic_path(dst) as tmp:
            with NpzWriter(tmp, compress=compress) as writer:
                for index in range(len(payloads[0].arrays)):
                    layer = [
                        (archive, members[index])
                        for archive, members in zip(archives, ordered, strict=True)
                    ]
                    _average_layer(work, writer, layer_key(index), layer, weights, total)
            result = inspect_aggregate(tmp, ValidationPolicy.lenient(policy.limits))
    return result


def _weight(index: int, payload: Payload) -> float:
    if payload.kind != LEARNING:
        raise WeightsError(
            "unsupported-kind",
            f"Payload {index} is {payload.kind}; FedAvg averages learning payloads.",
        )
    weight = payload.weighting
    if weight is None or not math.isfinite(weight) or weight < 0:
        raise WeightsError(
            "bad-weighting",
            f"Payload {index} has weighting {weight!r}; FedAvg needs a finite number >= 0.",
        )
    return weight


def _check_agreement(payloads: list[Payload]) -> None:
    first = payloads[0].arrays
    for info in first:
        if np.dtype(info.dtype).kind not in "biufc":
            raise WeightsError(
                "not-numeric",
                f"{info.key} has dtype {info.dtype}; only numeric layers can be averaged.",
            )
    for k, payload in enumerate(payloads[1:], start=1):
        if len(payload.arrays) != len(first):
            raise WeightsError(
                "layer-mismatch",
                f"Payload {k} has {len(payload.arrays)} layers but payload 0 has {len(first)}; "
                "every leaf must send the same model.",
            )
        for index, (a, b) in enumerate(zip(first, payload.arrays, strict=True)):
            if a.shape != b.shape:
                raise WeightsError(
                    "layer-mismatch",
                    f"Layer {index} has shape {b.shape} in payload {k} but {a.shape} in payload 0.",
                )
            if np.dtype(a.dtype).newbyteorder("=") != np.dtype(b.dtype).newbyteorder("="):
                raise WeightsError(
                    "layer-mismatch",
                    f"Layer {index} has dtype {b.dtype} in payload {k} but {a.dtype} in payload 0.",
                )


def _ordered_members(archive: Archive, payload: Payload) -> list[Member]:
    members = {m.key: m for m in archive.members}
    return [members[info.key] for info in payload.arrays]


def _accumulator(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.kind == "c":
        return np.dtype(np.complex128 if dtype.itemsize <= 16 else np.clongdouble)
    if dtype.kind == "f" and dtype.itemsize > 8:
        return np.dtype(np.longdouble)
    return np.dtype(np.float64)


class _Workspace:
    """The read pool and every buffer of the average, allocated once (pages touched on use)."""

    def __init__(self, pool: ThreadPoolExecutor, inputs: int) -> None:
        self.pool = pool
        size = _CHUNK_BYTES + _WIDEST
        # Two read buffers per input: the pool fills one while the other is averaged.
        self.reads = [(np.empty(size, np.uint8), np.empty(size, np.uint8)) for _ in range(inputs)]
        # Two output buffers: one being averaged, one being written.
        self.out = (np.empty(size, np.uint8), np.empty(size, np.uint8))
        self.acc = np.empty(_BLOCK * _WIDEST, np.uint8)
        self.scratch = np.empty(_BLOCK * _WIDEST, np.uint8)


def _average_layer(
    work: _Workspace,
    writer: NpzWriter,
    key: str,
    layer: list[tuple[Archive, Member]],
    weights: list[float],
    total: float,
) -> None:
    headers = [member.header for _, member in layer]
    first = headers[0]
    out_dtype = first.dtype.newbyteorder("=")
    acc_dtype = _accumulator(out_dtype)
    if all(h.fortran_order == first.fortran_order for h in headers):
        with writer.open_member(key, out_dtype, first.shape, first.fortran_order) as sink:
            _average_stream(work, sink, layer, weights, total, out_dtype, acc_dtype)
        return
    # Mixed memory orders: element order differs between inputs, so whole layers are needed.
    acc = np.zeros(first.shape, dtype=acc_dtype)
    for (archive, member), weight in zip(layer, weights, strict=True):
        acc += array_from_bytes(member.header, archive.read_data(member)).astype(acc_dtype) * weight
    writer.write_array(key, _finish(acc / total, out_dtype))


def _average_stream(
    work: _Workspace,
    sink: MemberSink,
    layer: list[tuple[Archive, Member]],
    weights: list[float],
    total: float,
    out_dtype: np.dtype[Any],
    acc_dtype: np.dtype[Any],
) -> None:
    """Average chunk n while the pool reads chunk n+1 of every input and writes chunk n-1."""
    itemsize = out_dtype.itemsize
    count = layer[0][1].header.count
    if itemsize == 0 or count == 0:
        return
    step = max(1, _CHUNK_BYTES // itemsize)
    sizes = [min(step, count - start) for start in range(0, count, step)]
    readers = [MemberData(archive, member) for archive, member in layer]
    dtypes = [member.header.dtype for _, member in layer]
    block = min(_BLOCK, sizes[0])
    acc = work.acc[: block * acc_dtype.itemsize].view(acc_dtype)
    scratch = work.scratch[: block * acc_dtype.itemsize].view(acc_dtype)
    pool, buffers = work.pool, work.reads

    def read(n: int) -> list[Future[None]]:
        nbytes = sizes[n] * itemsize
        return [
            pool.submit(reader.readinto, pair[n % 2][:nbytes].data)
            for reader, pair in zip(readers, buffers, strict=True)
        ]

    pending = read(0)
    try:
        for n, size in enumerate(sizes):
            for future in pending:
                future.result()  # chunk n is read, and chunk n-1 written (its buffer is free)
            values = [
                pair[n % 2][: size * itemsize].view(dtype)
                for pair, dtype in zip(buffers, dtypes, strict=True)
            ]
            pending = read(n + 1) if n + 1 < len(sizes) else []
            out = work.out[n % 2][: size * itemsize]
            for start in range(0, size, block):
                stop = min(size, start + block)
                _average_block(
                    values, start, stop, weights, total, acc, scratch, out.view(out_dtype)
                )
            pending.append(pool.submit(sink.write, out.data))
        for future in pending:
            future.result()
        for reader in readers:
            reader.finish()
    finally:
        wait(pending)  # nothing may outlive the layer (its archive may be closed next)


def _average_block(
    values: list[np.ndarray[Any, Any]],
    start: int,
    stop: int,
    weights: list[float],
    total: float,
    acc_buffer: np.ndarray[Any, Any],
    scratch_buffer: np.ndarray[Any, Any],
    out: np.ndarray[Any, Any],
) -> None:
    """out[start:stop] = sum(w * x) / total, in accumulators small enough to stay in cache."""
    acc, scratch = acc_buffer[: stop - start], scratch_buffer[: stop - start]
    for index, (x, weight) in enumerate(zip(values, weights, strict=True)):
        target = acc if index == 0 else scratch
        np.copyto(target, x[start:stop], casting="unsafe")  # widen first, then multiply in place
        np.multiply(target, weight, out=target)
        if index:
            np.add(acc, scratch, out=acc)
    np.divide(acc, total, out=acc)
    if out.dtype.kind in "biu":
        np.rint(acc, out=acc)
    np.copyto(out[start:stop], acc, casting="unsafe")


def _finish(mean: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    if dtype.kind in "biu":
        mean = np.rint(mean)
    return mean.astype(dtype)
