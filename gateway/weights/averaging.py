"""Federated averaging of learning payloads, layer by layer and chunk by chunk from disk."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.weights.archive import Archive, Member
from gateway.weights.errors import WeightsError
from gateway.weights.model import LEARNING, Payload, layer_key
from gateway.weights.npy import array_from_bytes
from gateway.weights.npz import inspect_aggregate, inspect_npz
from gateway.weights.policy import ValidationPolicy
from gateway.weights.writer import NpzWriter, atomic_path

_CHUNK_BYTES = 4 << 20


def fedavg(
    inputs: Sequence[Path],
    dst: Path,
    policy: ValidationPolicy | None = None,
    *,
    compress: bool = False,
    weightings: Sequence[float] | None = None,
) -> Payload:
    """Write the weighting-weighted mean of K learning NPZ payloads as an NPZ of `layer_i`.

    Memory is a few chunks per input, whatever the layer sizes or K. Accumulation is float64
    (complex128 for complex layers, extended precision for wider types); each output layer has
    its inputs' dtype, rounded to the nearest value for integer and bool layers. `weightings`,
    one per input, replaces the payloads' own (all 1.0: the unweighted mean).
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
                    _average_layer(writer, layer_key(index), layer, weights, total)
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


def _average_layer(
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
        chunks = _average_chunks(layer, weights, total, out_dtype, acc_dtype)
        writer.write_stream(key, out_dtype, first.shape, first.fortran_order, chunks)
        return
    # Mixed memory orders: element order differs between inputs, so whole layers are needed.
    acc = np.zeros(first.shape, dtype=acc_dtype)
    for (archive, member), weight in zip(layer, weights, strict=True):
        acc += array_from_bytes(member.header, archive.read_data(member)).astype(acc_dtype) * weight
    writer.write_array(key, _finish(acc / total, out_dtype))


def _average_chunks(
    layer: list[tuple[Archive, Member]],
    weights: list[float],
    total: float,
    out_dtype: np.dtype[Any],
    acc_dtype: np.dtype[Any],
) -> Iterator[bytes]:
    itemsize = out_dtype.itemsize
    if itemsize == 0 or layer[0][1].header.count == 0:
        return
    step = max(1, _CHUNK_BYTES // itemsize)
    streams = [_Exact(archive.iter_data(member, step * itemsize)) for archive, member in layer]
    left = layer[0][1].header.count
    # Buffers allocated once per layer and reused for every chunk.
    acc_buffer = np.empty(min(step, left), dtype=acc_dtype)
    scratch_buffer = np.empty_like(acc_buffer)
    out_buffer = np.empty(min(step, left), dtype=out_dtype)
    while left > 0:
        count = min(step, left)
        acc, scratch, out = acc_buffer[:count], scratch_buffer[:count], out_buffer[:count]
        for index, (stream, (_, member), weight) in enumerate(
            zip(streams, layer, weights, strict=True)
        ):
            values = np.frombuffer(stream.read(count * itemsize), dtype=member.header.dtype)
            target = acc if index == 0 else scratch
            np.multiply(values, weight, out=target, dtype=acc_dtype, casting="unsafe")
            if index:
                acc += scratch
        acc /= total
        if out_dtype.kind in "biu":
            np.rint(acc, out=acc)
        np.copyto(out, acc, casting="unsafe")
        yield out.tobytes()
        left -= count
    for stream in streams:
        stream.finish()


def _finish(mean: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    if dtype.kind in "biu":
        mean = np.rint(mean)
    return mean.astype(dtype)


class _Exact:
    """Exact-size reads over a chunk iterator."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = next(self._chunks, b"")
            if not chunk:
                raise WeightsError("truncated", "A layer ended early while it was being averaged.")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def finish(self) -> None:
        """Drain the iterator so the archive checks the member's size and CRC."""
        for _ in self._chunks:
            pass
